"""Helpers shared by the benchmarks: timing, figures printed as JSON lines, generated ISIC-like corpora.

Each ``benchmarks/<topic>.py`` prints human lines while it runs and, as its last lines, one JSON object per
figure, made by ``figure`` (ours against a baseline doing the same work: ``baseline``, ``ratio``, ``better``),
``target_figure`` (an absolute value against its goal: ``target``, ``met``) or ``measurement`` (a cost that
explains a choice, no verdict), with ``"quick": true`` on a
``--quick`` run and the raw passes under ``detail``. Run as a script, this module is the runner behind
``make bench``: it runs the benchmark scripts it is given, passes their output through and writes every figure,
with the machine's facts, to ``benchmarks/results/<date>-<host>.json`` (benchmarks/tables.py turns those files
into BENCHMARKS.md's tables).

Top-level imports stay light (standard library only): numpy, Pillow and pandas load inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))  # the orchestration package: flows._prefect_server
from goals import goal_for  # noqa: E402
from project_copy import (  # noqa: E402,F401  (re-exported)
    BIN,
    TINY_PARAMS,
    committed_project,
    copy_project,
    merge,
    project_env,
    run,
    stages_run,
)

CORPUS_VERSION = 2  # bump when the generated corpus changes, so cached copies are not reused
CLI_FOLDER = "isic-download"  # `isic image download OUT` writes OUT/<isic_id>.jpg + OUT/metadata.csv
CLI_ZIP = f"{CLI_FOLDER}.zip"


PREVIOUS_SPLIT = "ca937e2"  # the last commit whose split grouped by one column: the split benchmarks' baseline


def plan_split_at(rev: str):
    """The split module's plan_split as committed at `rev` (before the library had a folder per stage, when it
    was src/skincancer/split.py), loaded from git into a module of its own, its imports pointed at where
    each module it names lives now."""
    import re
    import types

    source = subprocess.run(["git", "show", f"{rev}:src/skincancer/split.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    now = {path.stem: ".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
           for path in (ROOT / "src" / "skincancer").glob("*/*.py") if path.stem != "__init__"}
    source = re.sub(r"\bskincancer\.(\w+)", lambda match: now.get(match.group(1), match.group(0)), source)
    module = types.ModuleType(f"split_at_{rev}")
    exec(compile(source, f"{rev}:src/skincancer/split.py", "exec"), module.__dict__)  # noqa: S102
    return module.plan_split


# ---------------------------------------------------------------- arguments, timing, figures


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small corpus (seconds, not minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    return parser.parse_args(argv)


REAL_DATA_ENV = "SKINCANCER_REAL_DATA"  # the real-data folder (docs/model-quality.md, "Real data")


def add_real_data_option(parser: argparse.ArgumentParser) -> None:
    """``--real DIR``, defaulting to $SKINCANCER_REAL_DATA: the real data lives outside the project, where the
    user put it, so no default path is guessed."""
    parser.add_argument("--real", type=Path, metavar="DIR", default=os.environ.get(REAL_DATA_ENV) or None,
                        help=f"the folder holding the real-data files (docs/model-quality.md, 'Real data'); "
                             f"default: ${REAL_DATA_ENV}")


def real_data_args(description: str, files: Iterable[str]) -> argparse.Namespace | None:
    """The options of a benchmark measured on the real data alone (``--real DIR``, ``--keep``, and ``--quick``,
    which changes nothing: the real data has one size); None, with the reason said, when ``files`` are not there."""
    parser = argparse.ArgumentParser(description=description)
    add_real_data_option(parser)
    parser.add_argument("--quick", action="store_true", help="no effect: the real data has one size")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = parser.parse_args()
    if problem := real_data_problem(args.real, files):
        say(problem)
        return None
    return args


def real_data_problem(folder: Path | None, files: Iterable[str]) -> str | None:
    """Why ``folder`` cannot be measured on (no folder given, or files missing from it), as a line that says what
    to pass; None when it holds every one of ``files``."""
    files = list(files)
    if folder is None:
        return (f"no real-data folder: pass --real DIR or set {REAL_DATA_ENV} to the folder holding "
                f"{', '.join(files)} (docs/model-quality.md, 'Real data'); nothing measured")
    if missing := [name for name in files if not (folder / name).is_file()]:
        return (f"{folder} (from --real or {REAL_DATA_ENV}) lacks {', '.join(missing)} "
                f"(docs/model-quality.md, 'Real data'); nothing measured")
    return None


def say(message: str) -> None:
    """A human line (figures come last, as JSON)."""
    print(message, flush=True)


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, on the monotonic high-resolution clock."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def best_of(repeats: int, function: Callable[[], object]) -> float:
    """The fastest of ``repeats`` calls: the least disturbed by the rest of the machine."""
    return min(timed(function)[0] for _ in range(repeats))


def _rounded(value):
    """Floats to 4 decimals, inside lists and dicts too (raw passes)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def _check_better(better: str) -> None:
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")


def figure(name: str, ours: float, baseline: float, unit: str, *, better: str = "lower", quick: bool = False,
           **detail) -> dict:
    """Ours against a baseline doing the same work on the same inputs in the same run, with the same threads and
    timed passes. ratio = how many times better ours is: baseline / ours where lower is better (seconds, bytes),
    ours / baseline where higher is (rates). ``detail`` keeps the raw passes and whatever else explains it.
    Timed sides go through ``paired_figure`` instead: this is for a single value each (a share, a count)."""
    _check_better(better)
    record = {"benchmark": name, "ours": _rounded(ours), "baseline": _rounded(baseline), "unit": unit,
              "better": better, "ratio": _ratio(ours, baseline, better)}
    return _finish(record, quick, detail)


def _ratio(ours: float, baseline: float, better: str) -> float | None:
    if not ours or not baseline:
        return None
    return round(baseline / ours if better == "lower" else ours / baseline, 3)


def paired_figure(name: str, ours: list[float], baseline: list[float], unit: str, *, better: str = "lower",
                  quick: bool = False, **detail) -> dict:
    """Ours against a baseline from passes timed in turn (``alternate``): pass i of each side ran back to back, so
    pass i's ratio compares the two under the same machine conditions. The figure is the median of the passes'
    ratios, with their min and max (``ratio_range``); ``ours`` and ``baseline`` are each side's median pass."""
    _check_better(better)
    if len(ours) != len(baseline) or not ours:
        raise ValueError(f"{name}: {len(ours)} passes of ours against {len(baseline)} of the baseline")
    ratios = [_ratio(o, b, better) for o, b in zip(ours, baseline, strict=True)]
    record = {"benchmark": name, "ours": _rounded(statistics.median(ours)),
              "baseline": _rounded(statistics.median(baseline)), "unit": unit, "better": better,
              "ratio": round(statistics.median(ratios), 3), "ratio_range": [min(ratios), max(ratios)],
              "passes": {"ours": _rounded(list(ours)), "baseline": _rounded(list(baseline))}}
    return _finish(record, quick, detail)


def alternate(repeats: int, sides: dict[str, Callable[[], object]],
              prepare: dict[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Seconds of each side's ``repeats`` timed calls, the sides taking turns pass by pass (A B, then B A, ...),
    so neither always runs first, on a warmer cache or a quieter machine. Every side gets the same passes.
    ``prepare`` names an untimed step to run before a side's every timed call (clearing its last output)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for index in range(repeats):
        for name in order if index % 2 == 0 else reversed(order):
            if prepare and name in prepare:
                prepare[name]()
            times[name].append(timed(sides[name])[0])
    return times


LOG_CLOCK = re.compile(r"(\d\d):(\d\d):(\d\d\.\d+) \|")  # a Prefect log line's time of day


def log_second(line: str) -> float | None:
    """The second of the day a Prefect log line was written at; None for a line without one."""
    if (match := LOG_CLOCK.match(line)) is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def target_figure(name: str, ours: float, target: float, unit: str, *, better: str = "lower", quick: bool = False,
                  **detail) -> dict:
    """An absolute figure against its goal, where no second way of doing the same work exists to compare with.
    The goal is benchmarks/goals.py's: ``target`` and ``better`` restate it, and must agree with it."""
    _check_better(better)
    goal = goal_for(name)
    if goal is None or goal.on != "ours" or (goal.value, goal.better) != (target, better):
        raise ValueError(f"{name}: target {better} {target} is not its goal in benchmarks/goals.py ({goal}); "
                         f"state it there, where BENCHMARKS.md's table reads it")
    record = {"benchmark": name, "ours": _rounded(ours), "target": _rounded(target), "unit": unit,
              "better": better}
    return _finish(record, quick, detail)


def measurement(name: str, ours: float, unit: str, *, quick: bool = False, **detail) -> dict:
    """A cost measured to explain a choice, with neither a baseline doing the same work nor a goal: no verdict."""
    return _finish({"benchmark": name, "ours": _rounded(ours), "unit": unit}, quick, detail)


def _finish(record: dict, quick: bool, detail: dict) -> dict:
    """The record with its goal (benchmarks/goals.py) and verdict, when it has one, and the quick flag and detail."""
    if (goal := goal_for(record["benchmark"])) is not None:
        record["goal"] = goal.as_record()
        record["met"] = goal.met(record)
    if quick:
        record["quick"] = True
    if detail:
        record["detail"] = _rounded(detail)
    return record


def print_figures(figures: Iterable[dict]) -> None:
    """The script's last lines: one JSON object per figure."""
    for record in figures:
        print(json.dumps(record), flush=True)


def machine() -> dict:
    """nproc, CPU model and RAM: what a figure needs beside it to be read."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kb / 1024**2, 1)}


MEASURED_PACKAGES = ("tensorflow", "keras", "pillow", "numpy", "pandas", "pyarrow", "scikit-learn", "dvc", "prefect")


def machine_facts() -> dict:
    """machine() plus what else moves a figure: kernel, Python, package versions, the temp folder's filesystem,
    the load average when the run began (a busy machine reads slower), whether a GPU is visible, and the code."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        **machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: version(name) for name in MEASURED_PACKAGES},
        "tmp_filesystem": _filesystem_of(Path(os.environ.get("SKINCANCER_BENCH_TMP") or tempfile.gettempdir())),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "gpu": shutil.which("nvidia-smi") is not None,
        "code": code_version(),
    }


def code_version() -> dict:
    """The commit measured, and whether the working tree differed from it (figures of uncommitted code)."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    measured = ("src", "flows", "benchmarks", "dvc.yaml", "params.yaml", ":!benchmarks/results")
    dirty = bool(git("status", "--porcelain", "--", *measured))
    version = {"commit": git("rev-parse", "HEAD") or None, "dirty": dirty}
    if dirty:  # which uncommitted code: the hash of the diff and of the untracked files' names
        diff = git("diff", "HEAD", "--", *measured) + git("ls-files", "--others", "--exclude-standard", "--", *measured)
        version["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return version


def _filesystem_of(path: Path) -> str:
    """The type and device of the mount holding ``path`` (from /proc/mounts), e.g. "ext4 on /dev/vda"."""
    best = ("", "unknown", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, kind, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


def say_machine() -> None:
    """The machine line every benchmark prints first, so a pasted log says where it ran."""
    info = machine()
    say(f"machine: {info['nproc']} cores, {info['cpu']}, {info['ram_gib']} GiB RAM; python {sys.version.split()[0]}")


def start_work(work: Path) -> tuple[dict[str, str], Path, list[dict]]:
    """A long real-data run's folder: the machine line said, the environment of its projects, its results file
    and the entries an earlier, interrupted run left there (so a rerun goes on where it stopped)."""
    say_machine()
    work.mkdir(parents=True, exist_ok=True)
    out = work / "results.json"
    return project_env(work), out, json.loads(out.read_text()) if out.exists() else []


@contextlib.contextmanager
def bench_tmp(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary folder for one benchmark run (SKINCANCER_BENCH_TMP or the system temp dir),
    removed afterwards unless ``keep`` (--keep) asks to look at it."""
    base = os.environ.get("SKINCANCER_BENCH_TMP") or tempfile.gettempdir()
    Path(base).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"skincancer-bench-{prefix}-", dir=base))
    try:
        yield tmp
    finally:
        if keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def cache_dir() -> Path:
    """Generated corpora are kept here between runs (SKINCANCER_BENCH_CACHE to move it)."""
    default = Path(tempfile.gettempdir()) / "skincancer-bench-cache"
    return Path(os.environ.get("SKINCANCER_BENCH_CACHE") or default)


# ---------------------------------------------------------------- a timed `dvc repro`

# dvc's line as it starts a stage, and as it passes one by (unchanged, or restored from its run cache)
STAGE_EVENT = re.compile(r"^(?:Running stage '(?P<ran>[^']+)'|Stage '(?P<passed>[^']+)' (?:didn't change|is cached))")


@dataclass(frozen=True)
class TimedRepro:
    """One `dvc repro`: its wall time, each stage it ran timed, the stages it passed by, and every output line
    (dvc's, the stages' stdout and stderr, in the order they came) with its second since the start."""

    seconds: float
    stage_seconds: dict[str, float]
    passed: list[str]
    lines: list[tuple[float, str]]

    def lines_of(self, stage: str) -> list[tuple[float, str]]:
        """The output lines of one stage it ran, from its 'Running stage' line to the next stage's."""
        start = next(index for index, (_, line) in enumerate(self.lines)
                     if (event := STAGE_EVENT.match(line)) and event["ran"] == stage)
        end = next((index for index in range(start + 1, len(self.lines)) if STAGE_EVENT.match(self.lines[index][1])),
                   len(self.lines))
        return self.lines[start:end]


def timed_repro(project: Path, env: dict[str, str], log: Path) -> TimedRepro:
    """`dvc repro` in ``project``, its output read line by line as it comes (unbuffered, stderr merged), so each
    stage's time runs from its 'Running stage' line to the next stage's line or dvc's exit (its lock-file update
    and caching included). Every line goes to ``log`` with its second since the start; the stage lines are said
    as they come, for a run of hours. AssertionError with the output's tail when dvc fails, as ``run``."""
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as written, subprocess.Popen(
            ["dvc", "repro"], cwd=project, env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            moment, line = round(time.perf_counter() - start, 1), line.rstrip("\n")
            lines.append((moment, line))
            written.write(f"{moment:9.1f} {line}\n")
            if STAGE_EVENT.match(line):
                say(f"  {moment:9.1f} s  {line}")
    seconds = round(time.perf_counter() - start, 1)
    if process.returncode:
        tail = "\n".join(line for _, line in lines[-80:])
        raise AssertionError(f"dvc repro failed ({process.returncode}) in {project} (whole log: {log}):\n{tail}")
    events = [(moment, STAGE_EVENT.match(line)) for moment, line in lines if STAGE_EVENT.match(line)]
    ends = [moment for moment, _ in events[1:]] + [seconds]
    stage_seconds = {event["ran"]: round(end - moment, 1) for (moment, event), end in zip(events, ends, strict=True)
                     if event["ran"]}
    return TimedRepro(seconds, stage_seconds, [event["passed"] for _, event in events if event["passed"]], lines)


# ---------------------------------------------------------------- disk usage


def unique_bytes(*roots: Path, skip: set[tuple[int, int]] = frozenset()) -> int:
    """Bytes on disk under ``roots``, each inode once: hardlinks to the same file count one time."""
    seen: set[tuple[int, int]] = set(skip)
    total = 0
    for key, size in _inodes(roots):
        if key not in seen:
            seen.add(key)
            total += size
    return total


def inodes(*roots: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every regular file under ``roots``."""
    return {key for key, _ in _inodes(roots)}


def _inodes(roots: Iterable[Path]) -> Iterable[tuple[tuple[int, int], int]]:
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                stat = os.lstat(os.path.join(folder, name))
                if not os.path.islink(os.path.join(folder, name)):
                    yield (stat.st_dev, stat.st_ino), stat.st_size


# ---------------------------------------------------------------- generated ISIC-like corpus

WIDTH, HEIGHT = 400, 300
# (diagnosis as the ISIC archive spells it in isic-cli's flat `diagnosis` field, benign_malignant, weight)
DIAGNOSES = (
    ("nevus", "benign", 0.62),
    ("seborrheic keratosis", "benign", 0.12),
    ("solar lentigo", "benign", 0.06),
    ("melanoma", "malignant", 0.14),
    ("basal cell carcinoma", "malignant", 0.06),
)
SITES = ("anterior torso", "posterior torso", "head/neck", "upper extremity", "lower extremity", "")
METADATA_COLUMNS = ("isic_id", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general",
                    "benign_malignant", "diagnosis")


def _lesion_picture(rng, yy, xx):
    """One smooth skin-and-lesion picture with its own skin tone, texture, lesion place, size and colour:
    every corpus image gets one, so no two are near-duplicates that the split would rightly drop."""
    import numpy as np

    skin = rng.uniform([170, 120, 100], [230, 180, 160])
    wave = np.sin(xx / rng.uniform(20, 60) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(20, 60))
    image = skin[None, None, :] + 20 * wave[..., None]
    for _ in range(int(rng.integers(2, 5))):  # a lesion of a few overlapping lobes, each its own colour
        cy, cx, radius = rng.uniform(40, HEIGHT - 40), rng.uniform(60, WIDTH - 60), rng.uniform(25, 90)
        stretch = rng.uniform(0.6, 1.6)
        distance = np.sqrt(((yy - cy) * stretch) ** 2 + ((xx - cx) / stretch) ** 2)
        lobe = np.clip(1.2 - distance / radius, 0, 1)[..., None]
        image = image * (1 - 0.6 * lobe) + lobe * rng.uniform([40, 20, 10], [140, 90, 70])
    return image


def _jpegs(n: int, seed: int) -> Iterable[bytes]:
    """``n`` distinct 400x300 JPEGs at quality 90, ~40-80 KB each: a picture of its own + per-image noise."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    margin = 64
    noise = rng.normal(0, 1, (HEIGHT + margin, WIDTH + margin, 3)).astype(np.float32)
    for _ in range(n):
        dy, dx = (int(v) for v in rng.integers(0, margin, 2))
        image = _lesion_picture(rng, yy, xx) + float(rng.uniform(12, 30)) * noise[dy:dy + HEIGHT, dx:dx + WIDTH]
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        yield buffer.getvalue()


def _metadata_rows(n: int, seed: int) -> list[tuple[str, ...]]:
    """isic-cli metadata: ~20% malignant, ~5 images per patient (1-9), one lesion per 1-3 images."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    weights = np.array([w for _, _, w in DIAGNOSES])
    diagnoses = rng.choice(len(DIAGNOSES), size=n, p=weights / weights.sum())
    rows, patient, lesion, left_patient, left_lesion = [], 0, 0, 0, 0
    sex = age = ""
    for i in range(n):
        if left_patient == 0:
            patient += 1
            left_patient = int(rng.integers(1, 10))
            sex = str(rng.choice(["female", "male", ""], p=[0.48, 0.48, 0.04]))
            age = "" if rng.random() < 0.05 else str(int(rng.integers(4, 18)) * 5)
            left_lesion = 0
        if left_lesion == 0:
            lesion += 1
            left_lesion = int(rng.integers(1, 4))
        diagnosis, verdict, _ = DIAGNOSES[diagnoses[i]]
        site = SITES[int(rng.integers(0, len(SITES)))]
        rows.append((f"ISIC_{i + 1:07d}", f"IP_{patient:07d}", f"IL_{lesion:07d}", sex, age, site, verdict, diagnosis))
        left_patient -= 1
        left_lesion -= 1
    return rows


def _csv_bytes(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> bytes:
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def isic_cli_corpus(n: int, seed: int = 0) -> Path:
    """A folder holding ``isic-download.zip`` (stored, as ISIC's archives are): ``isic-download/<id>.jpg``
    for ``n`` images plus ``isic-download/metadata.csv``, as ``isic image download OUT`` writes and zips.

    Generated once per (n, seed) under cache_dir(), then reused; returns the folder (a `file://` source).
    """
    import zipfile

    folder = cache_dir() / f"isic-cli-{n}-seed{seed}-v{CORPUS_VERSION}"
    done = folder.with_name(f"{folder.name}.complete")  # beside the folder: a source takes every file in it
    if done.is_file() and (folder / CLI_ZIP).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = _metadata_rows(n, seed)
    partial = folder.with_name(f"{folder.name}.{CLI_ZIP}.partial")
    start = time.perf_counter()
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for row, data in zip(rows, _jpegs(n, seed), strict=True):
            archive.writestr(f"{CLI_FOLDER}/{row[0]}.jpg", data)
        archive.writestr(f"{CLI_FOLDER}/metadata.csv", _csv_bytes(METADATA_COLUMNS, rows))
    os.replace(partial, folder / CLI_ZIP)
    done.write_text(f"{n} images, seed {seed}\n")
    say(f"generated {n} images in {time.perf_counter() - start:.1f} s -> {folder / CLI_ZIP} "
        f"({(folder / CLI_ZIP).stat().st_size / 1e6:.0f} MB)")
    return folder


# ---------------------------------------------------------------- `make bench`: run every benchmark


def _figure_line(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "benchmark" in record else None


def results_path(folder: Path, when: datetime.datetime | None = None) -> Path:
    """``<folder>/<date>-<host>.json``; a later run on the same day and host gets ``-2``, ``-3``, ..."""
    stem = f"{(when or datetime.datetime.now()).date().isoformat()}-{socket.gethostname()}"
    path, count = folder / f"{stem}.json", 1
    while path.exists():
        count += 1
        path = folder / f"{stem}-{count}.json"
    return path


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children and theirs (a benchmark script's whole tree)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_all(scripts: list[str], output: Path, extra: list[str], command: str) -> int:
    """Run each script in turn (its output passed through), then write every figure it printed, with the
    machine's facts and each script's wall time and exit code: the raw results BENCHMARKS.md's tables come from."""
    started = datetime.datetime.now().astimezone()
    facts = machine_facts()  # before any script: the load average is the machine's, not ours
    figures: list[dict] = []
    runs = []
    for script in scripts:
        say(f"== {script} {' '.join(extra)}".rstrip())
        script_command = " ".join([".venv/bin/python", script, *extra])
        start, machine_cpu, own_cpu = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
        process = subprocess.Popen([sys.executable, script, *extra], stdout=subprocess.PIPE, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if (record := _figure_line(line)) is not None:
                figures.append({**record, "script": script, "command": script_command})
        returncode = process.wait()
        # what else ran meanwhile: a figure measured beside another job (a test suite, a build) reads slower
        others = (busy_cpu_seconds() - machine_cpu) - (children_cpu_seconds() - own_cpu)
        runs.append({"script": script, "command": script_command, "returncode": returncode,
                     "seconds": round(time.perf_counter() - start, 1), "other_cpu_s": round(others, 1)})
    failed = [entry["script"] for entry in runs if entry["returncode"] != 0]
    document = {"date": started.date().isoformat(), "started": started.isoformat(timespec="seconds"),
                "host": socket.gethostname(), "command": command, "machine": facts, "runs": runs,
                "failed": failed, "figures": figures}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    say(f"{len(figures)} figure(s) -> {output}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run benchmark scripts and keep their raw figures")
    parser.add_argument("scripts", nargs="+")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/<date>-<host>.json")
    parser.add_argument("--quick", action="store_true", help="passed on to every script")
    parser.add_argument("--args", default="", help="more arguments for every script, e.g. '--sizes 2000 8000'")
    parser.add_argument("--command", default="make bench", help="what ran this, as the results file records it")
    args = parser.parse_args(argv)
    extra = (["--quick"] if args.quick else []) + shlex.split(args.args)
    output = args.output or results_path(ROOT / "benchmarks" / "results")
    return run_all(args.scripts, output, extra, args.command)


if __name__ == "__main__":
    raise SystemExit(main())

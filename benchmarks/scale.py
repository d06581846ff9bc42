"""The whole pipeline at ISIC 2020 scale: `scale_*` figures (issue 20 item 3).

    .venv/bin/python benchmarks/scale.py [--sizes 2000 8000 33126] [--quick] [--keep]

`make bench` runs the 2,000-image size; `make bench-scale` runs 2,000, 8,000 and 33,126 (ISIC 2020's count).

The corpus: benchmarks/corpora/isic2020.py, the three files ISIC 2020 publishes (stored JPEG zip, ground truth
v2, duplicates list) generated in the archive's own layout, ~16 images per patient, 1.8% malignant, a camera size
mix; generated once and cached, each size the first images of the next.

Each size runs in a fresh copy of the project committed to a fresh git repository, with the shipped params.yaml
except: the corpus folder as the one `file://` source (layout isic2020), one training epoch. A `prefect server
start` on 127.0.0.1 is up before any clock starts and every stage reports to it (PREFECT_API_URL), as on the GPU
box. Every stage runs as `dvc repro --single-item <stage>`, in dvc.yaml's order, and is measured as a whole:

wall time       of the command (DVC's own work, hashing outputs into its cache, included).
peak RSS        the largest sum of resident memory over the command's process tree (DVC, the stage script and
                whatever it starts), sampled every SAMPLE_S; and the largest peak (VmHWM) of one process in it.
disk            bytes the stage added to the project folder (workspace and .dvc/cache, each inode once).

Then `dvc repro` with nothing changed, best of NOOP_PASSES (it must run no stage).

Figures, absolute against the issue's goals (there is no second way of running the pipeline to compare with):
scale_data_path_<n>          fetch + split + shard seconds at n images; at 33,126 against the goal (< 15 min on 2
                             cores); at a smaller n a measurement with no verdict (the goal is for ISIC 2020's count,
                             and a small run's fixed costs, imports and DVC, would skew any share of it).
scale_noop_repro_<n>         the no-op `dvc repro` at n images; goal < 3 s.
scale_time_exponent_<stage>  (two sizes or more) b in seconds ~ n^b between the two largest sizes, where fixed costs
                             (imports, DVC) weigh least; goal <= 1.1. The least-squares fit over every size is in
                             the detail: it reads lower, because those fixed costs flatten the small sizes.
scale_memory_growth_<stage>  (two sizes or more) peak RSS at the largest n / at the smallest; goal <= 1.2.
The bottleneck (the stage taking the largest share of the run at the largest n) is named in each figure's detail.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    BIN,
    ROOT,
    bench_tmp,
    committed_project,
    measurement,
    print_figures,
    project_env,
    run,
    say,
    say_machine,
    stages_run,
    target_figure,
    unique_bytes,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpora"))
from goals import goal_for  # noqa: E402
from isic2020 import ISIC2020_IMAGES, describe, isic2020_corpus, rows  # noqa: E402

from flows._prefect_server import prefect_server_start, running_server  # noqa: E402  (flows/ is on the path: common)
from skincancer.ops.lifetime import descendants  # noqa: E402

DEFAULT_SIZES = (2_000,)
QUICK_SIZES = (1_000,)  # fewer would leave a split without a malignant image
DATA_PATH = ("fetch", "split", "shard")
DATA_PATH_LIMIT_S = goal_for(f"scale_data_path_{ISIC2020_IMAGES}").value
NOOP_LIMIT_S = goal_for("scale_noop_repro_*").value
TIME_EXPONENT_LIMIT = goal_for("scale_time_exponent_*").value
# what each stage script imports before it reads an image (flows/<stage>.py and the library it calls)
STAGE_IMPORTS = {
    "resolve": ["flows.resolve"],
    "fetch": ["flows.fetch"],
    "split": ["flows.split"],
    "shard": ["flows.shard", "skincancer.shard.tfrecords"],
    "train": ["flows.train", "skincancer.train.train", "skincancer.train.cross_validation"],
    "evaluate": ["flows.evaluate", "skincancer.evaluate.evaluate"],
}
NOOP_PASSES = 3
SAMPLE_S = 0.1


def params_change(corpus: Path) -> dict:
    """The shipped params.yaml but for the source and one epoch."""
    return {
        "fetch": {"datasets": [], "sources": [{"name": "isic2020", "url": corpus.as_uri(), "layout": "isic2020"}]},
        "train": {"epochs": 1},
    }


# ---------------------------------------------------------------- one command, measured as a process tree


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_tree_mb: float
    stage_process_mb: float
    returncode: int


def _memory(pid: int) -> tuple[int, int]:
    """(resident now, resident peak) in bytes of one process: VmRSS and VmHWM. Not wait4's ru_maxrss, which a
    forked child starts at its parent's resident size; VmHWM starts afresh at exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # exited meanwhile, or a zombie with no memory left
        return 0, 0


def _is_stage_script(pid: int, stage: str) -> bool:
    try:
        return f"flows.{stage}" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def measured(command: list[str], cwd: Path, env: dict[str, str], log: Path, stage: str) -> Measured:
    """Run ``command`` (output to ``log``), sampling its process tree's resident memory until it exits: the largest
    sum over the tree, and the peak (VmHWM) of the stage's own script, `python -m flows.<stage>`."""
    with log.open("w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        tree_peak = stage_peak = 0
        while process.poll() is None:
            pids = (process.pid, *descendants(process.pid))
            memory = {pid: _memory(pid) for pid in pids}
            tree_peak = max(tree_peak, sum(now for now, _ in memory.values()))
            stage_peak = max(stage_peak, *(peak for pid, (_, peak) in memory.items() if _is_stage_script(pid, stage)),
                             0)
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - start
    return Measured(seconds, tree_peak / 1e6, stage_peak / 1e6, process.returncode)


def imports_mb(stage: str, env: dict[str, str]) -> float:
    """The stage script's resident peak after its imports alone (STAGE_IMPORTS), in a fresh process: the baseline
    its peak is measured above, so what the images cost is not hidden under TensorFlow's import."""
    code = (f"import {', '.join(STAGE_IMPORTS[stage])}\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    return int(run([str(BIN / "python"), "-c", code], ROOT, env).stdout.split()[-1]) * 1024 / 1e6


# ---------------------------------------------------------------- one size


@dataclass(frozen=True)
class StageRun:
    stage: str
    seconds: float
    peak_tree_mb: float
    stage_process_mb: float
    imports_mb: float
    above_imports_mb: float
    disk_added_bytes: int


def dvc_stages() -> list[str]:
    import yaml

    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def measure_stage(stage: str, n: int, project: Path, env: dict[str, str], log: Path, baseline_mb: float) -> StageRun:
    """`dvc repro --single-item <stage>`, measured; the disk it added is the project's growth meanwhile."""
    disk_before = unique_bytes(project)
    result = measured([str(BIN / "dvc"), "repro", "--single-item", stage], project, env, log, stage)
    if result.returncode != 0:
        raise AssertionError(f"`dvc repro --single-item {stage}` failed ({result.returncode}) at {n} images:\n"
                             + log.read_text()[-4000:])
    above = max(result.stage_process_mb - baseline_mb, 0.0)
    done = StageRun(stage, round(result.seconds, 2), round(result.peak_tree_mb, 1), round(result.stage_process_mb, 1),
                    round(baseline_mb, 1), round(above, 1), unique_bytes(project) - disk_before)
    say(f"{n} images, {stage}: {done.seconds:.1f} s, peak RSS {done.peak_tree_mb:.0f} MB (tree), stage script "
        f"{done.stage_process_mb:.0f} MB, {done.above_imports_mb:.0f} MB above its imports' {baseline_mb:.0f} MB; "
        f"disk +{done.disk_added_bytes / 1e6:.0f} MB")
    return done


def archive_bytes(corpus: Path) -> int:
    return sum(path.stat().st_size for path in corpus.iterdir() if path.is_file())


def run_size(n: int, tmp: Path, env: dict[str, str], baselines: dict[str, float], until: str | None = None) -> dict:
    """Every stage of a fresh project on the first n images (up to ``until`` and no further, then nothing else),
    then the project's disk and the no-op repro: one size's raw results."""
    corpus = isic2020_corpus(n)
    about = describe(rows(n), corpus)
    say(f"corpus: {about}")
    project = committed_project(tmp / f"project-{n}", env, params_change(corpus))
    stages = dvc_stages()
    stages = [measure_stage(stage, n, project, env, tmp / f"{n}-{stage}.log", baselines[stage])
              for stage in (stages[:stages.index(until) + 1] if until else stages)]
    if until:
        shutil.rmtree(project, ignore_errors=True)
        return {"images": n, "corpus": about, "stages": [asdict(s) for s in stages], "until": until}
    disk = {"workspace_and_cache_bytes": unique_bytes(project), "archives_bytes": archive_bytes(corpus),
            "by_folder_bytes": {folder: unique_bytes(project / folder)
                                for folder in ("data/raw", "data/split", "data/shards", "models", ".dvc/cache")}}
    say(f"{n} images: workspace + .dvc/cache {disk['workspace_and_cache_bytes'] / 1e9:.2f} GB for "
        f"{disk['archives_bytes'] / 1e9:.2f} GB of archives; by folder (a file hardlinked into the cache counts "
        f"in both) {disk['by_folder_bytes']}")
    noops = []
    for _ in range(NOOP_PASSES):
        start = time.perf_counter()
        output = run([str(BIN / "dvc"), "repro"], project, env).stdout
        noops.append(round(time.perf_counter() - start, 3))
        assert stages_run(output) == [], output[-2000:]
    summary = json.loads((project / "reports/split.json").read_text())
    split = {"images": summary["images"], "removed": summary["removed"], "spanning_splits": summary["spanning_splits"]}
    say(f"{n} images: no-op `dvc repro` {', '.join(f'{s:.2f}' for s in noops)} s; split {split}")
    shutil.rmtree(project, ignore_errors=True)
    return {"images": n, "corpus": about, "split": split, "stages": [asdict(s) for s in stages], "noop_repro_s": noops,
            "disk": disk}


# ---------------------------------------------------------------- figures


def marginal_exponent(sizes: list[int], values: list[float]) -> float:
    """b of values ~ sizes^b between the two largest sizes."""
    return math.log(values[-1] / values[-2]) / math.log(sizes[-1] / sizes[-2])


def growth_exponent(sizes: list[int], values: list[float]) -> float:
    """b of values ~ a * sizes^b, least squares on log-log."""
    xs, ys = [math.log(s) for s in sizes], [math.log(v) for v in values]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def bottleneck(result: dict) -> str:
    """The stage with the largest share of a size's wall time, with that share."""
    total = sum(stage["seconds"] for stage in result["stages"])
    worst = max(result["stages"], key=lambda stage: stage["seconds"])
    return f"{worst['stage']} ({worst['seconds'] / total:.0%} of {total:.0f} s at {result['images']} images)"


def size_figures(result: dict, quick: bool) -> list[dict]:
    n = result["images"]
    by_stage = {stage["stage"]: stage for stage in result["stages"]}
    data_path_s = sum(by_stage[stage]["seconds"] for stage in DATA_PATH)
    detail = {"stages": result["stages"], "corpus": result["corpus"], "split": result["split"],
              "bottleneck": bottleneck(result)}
    if n >= ISIC2020_IMAGES:
        data_path = target_figure(f"scale_data_path_{n}", data_path_s, DATA_PATH_LIMIT_S, "s", quick=quick, **detail)
    else:  # the goal is for ISIC 2020's count; a smaller run's fixed costs (imports, DVC) would skew any share of it
        data_path = measurement(f"scale_data_path_{n}", data_path_s, "s", quick=quick, **detail)
    noop = target_figure(f"scale_noop_repro_{n}", statistics.median(result["noop_repro_s"]), NOOP_LIMIT_S, "s",
                         quick=quick, passes=result["noop_repro_s"])
    disk = result["disk"]
    share = round(disk["workspace_and_cache_bytes"] / disk["archives_bytes"], 3)
    if n >= ISIC2020_IMAGES:
        on_disk = target_figure(f"scale_disk_{n}", share, goal_for(f"scale_disk_{ISIC2020_IMAGES}").value,
                                "x the archives", quick=quick, **disk)
    else:
        on_disk = measurement(f"scale_disk_{n}", share, "x the archives", quick=quick, **disk)
    return [data_path, noop, on_disk]


def stage_value(result: dict, stage: str, key: str) -> float:
    """A stage's seconds, or a peak (MB); "data_path" sums the data path's seconds and takes its largest peak."""
    picked = [s[key] for s in result["stages"] if s["stage"] in (DATA_PATH if stage == "data_path" else (stage,))]
    return sum(picked) if key == "seconds" else max(picked)


def growth_figures(results: list[dict], quick: bool) -> list[dict]:
    sizes = [result["images"] for result in results]
    # resolve, a params lookup that reads no image, takes the same time whatever n
    measured_stages = [s["stage"] for s in results[0]["stages"] if s["stage"] != "resolve"]
    figures = []
    for stage in [*measured_stages, *(["data_path"] if set(DATA_PATH) <= set(measured_stages) else [])]:
        seconds = [stage_value(result, stage, "seconds") for result in results]
        above = [stage_value(result, stage, "above_imports_mb") for result in results]
        detail = {"sizes": sizes, "seconds": seconds, "above_imports_mb": above,
                  "peak_tree_mb": [stage_value(result, stage, "peak_tree_mb") for result in results],
                  "bottleneck": bottleneck(results[-1]), "fitted_exponent": round(growth_exponent(sizes, seconds), 3)}
        between = f"{sizes[-2]} to {sizes[-1]} images"
        figures.append(target_figure(f"scale_time_exponent_{stage}", round(marginal_exponent(sizes, seconds), 3),
                                     TIME_EXPONENT_LIMIT, f"exponent ({between})", quick=quick, **detail))
        name = f"scale_memory_growth_{stage}"
        figures.append(target_figure(name, round(above[-1] / max(above[-2], 1.0), 3), goal_for(name).value,
                                     f"x above imports ({between})", quick=quick, **detail))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help=f"images per run (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"one small size, {QUICK_SIZES}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    parser.add_argument("--only", choices=dvc_stages(), help="run up to this stage and report its memory growth alone")
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    say_machine()
    for n in sizes:  # generated (or found cached) before any clock starts
        isic2020_corpus(n)
    results = []
    with bench_tmp("scale", args.keep) as tmp:
        (tmp / "server").mkdir()
        with running_server(prefect_server_start, project_env(tmp / "server"), tmp / "server/server.log") as api:
            env = project_env(tmp) | {"PREFECT_API_URL": api}
            run([str(BIN / "python"), "-c", "import tensorflow, dvc.repo, prefect"], ROOT, env)  # warm page cache
            baselines = {stage: imports_mb(stage, env) for stage in dvc_stages()}
            say(f"each stage script's resident peak after its imports alone (MB): {baselines}")
            for n in sizes:
                results.append(run_size(n, tmp, env, baselines, args.only))
    figures = [] if args.only else [figure for result in results for figure in size_figures(result, args.quick)]
    if len(results) > 1:
        # --only: that stage's memory alone; its time shares the machine with whatever runs beside a partial run
        figures += [figure for figure in growth_figures(results, args.quick)
                    if not args.only or figure["benchmark"] == f"scale_memory_growth_{args.only}"]
    say(f"bottleneck: {bottleneck(results[-1])}")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""BENCHMARKS.md's generated tables, from the raw results `make bench` keeps in benchmarks/results/.

    .venv/bin/python benchmarks/tables.py [--check]

Every results file that `benchmarks/common.py` wrote (``<date>-<host>.json``: machine facts, the scripts' runs and
their figures) is read; for each figure name the latest full (not ``--quick``) figure of a script that finished
is the one shown. The real-data recipe's own results file adds its whole-pipeline timing. Each table lives in
BENCHMARKS.md between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` and is rewritten in place; with
--check nothing is written and the exit code says whether BENCHMARKS.md matches (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from goals import GOALS, Goal, goal_for

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENT = ROOT / "BENCHMARKS.md"
RECIPE_TIMING = "*-real-recipe-timing.json"
RECIPE_COMMAND = '.venv/bin/python benchmarks/real_recipe.py --real "$SKINCANCER_REAL_DATA" --skip-ablations'


def load_runs(folder: Path = RESULTS) -> list[dict]:
    """Every results file the runner wrote, oldest first (by start time, then name)."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        document = json.loads(path.read_text())
        if isinstance(document, dict) and {"machine", "figures", "runs"} <= document.keys():
            runs.append({**document, "file": path.name})
    return sorted(runs, key=lambda run: (run["started"], run["file"]))


def latest_figures(runs: list[dict]) -> dict[str, dict]:
    """Figure name -> the latest full figure of a script that exited 0, with its run's file, date and machine."""
    latest: dict[str, dict] = {}
    for run in runs:
        finished = {entry["script"] for entry in run["runs"] if entry["returncode"] == 0}
        for record in run["figures"]:
            if record.get("quick") or record.get("script") not in finished:
                continue
            latest.pop(record["benchmark"], None)  # re-inserted last: in the order of the latest runs
            latest[record["benchmark"]] = {**record, "file": run["file"], "date": run["date"], "machine": run["machine"]}
    return latest


def recipe_figure(folder: Path = RESULTS) -> dict | None:
    """The real-data recipe's whole-pipeline time, from benchmarks/real_recipe.py's own results file."""
    files = sorted(folder.glob(RECIPE_TIMING))
    if not files:
        return None
    entry = next(e for e in json.loads(files[-1].read_text()) if e.get("kind") == "pipeline" and e["name"] == "recipe")
    record = {"benchmark": "real_recipe_repro", "ours": entry["seconds"], "unit": "s", "command": RECIPE_COMMAND,
              "file": files[-1].name, "date": files[-1].name[:10], "machine": entry.get("machine")}
    if "stage_seconds" in entry:
        record["detail"] = {"stage_seconds": entry["stage_seconds"], "other_cpu_s": entry.get("other_cpu_s")}
    return record


# ---------------------------------------------------------------- cells


def number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1e5:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return f"{value:.4g}"


def ratio_cell(record: dict) -> str:
    """How many times better ours is: the median of the passes' ratios with their min-max, or (results written
    before passes were paired) the one ratio recorded, said to be of the best passes."""
    if record.get("ratio") is None:
        return "-"
    if "ratio_range" in record:
        low, high = record["ratio_range"]
        return f"{record['ratio']:.2f}x ({low:.2f}-{high:.2f})"
    return f"{record['ratio']:.2f}x (best passes)"


def goal_of(record: dict) -> Goal | None:
    """The goal the results file recorded with the figure; for results written before goals were recorded, the
    target it was measured against, else benchmarks/goals.py's goal of that name."""
    if "goal" in record:
        return Goal(**record["goal"])
    if "target" in record:
        return Goal(record["target"], record["better"], record["unit"], "its results file")
    return goal_for(record["benchmark"])


def goal_cells(record: dict) -> tuple[str, str]:
    """(goal, verdict): met, **missed**, or no goal."""
    goal = goal_of(record)
    if goal is None:
        return "-", "no goal"
    met = goal.met(record)
    return goal.cell(), "not measured" if met is None else "met" if met else "**missed**"


def machine_cell(machine: dict | None) -> str:
    if machine is None:
        return "not recorded"
    cpu = re.sub(r"\((R|TM)\)|Processor|CPU|@.*", "", machine["cpu"]).split()
    gpu = ", GPU" if machine.get("gpu") else ""
    return f"{machine['nproc']} cores ({' '.join(cpu)}), {machine['ram_gib']} GiB{gpu}, load {machine['load_average_1m']}"


def code_cell(machine: dict | None) -> str:
    """The commit measured, marked when the working tree held changes to it (the code of a later commit)."""
    code = (machine or {}).get("code") or {}
    if not code.get("commit"):
        return "commit not recorded"
    if not code.get("dirty"):
        return f"`{code['commit'][:7]}`"
    changes = f" (diff `{code['diff_sha256'][:7]}`)" if code.get("diff_sha256") else ""
    return f"`{code['commit'][:7]}` + uncommitted changes{changes}"


def figure_row(record: dict) -> str:
    baseline = number(record["baseline"]) if "baseline" in record else "-"
    goal, verdict = goal_cells(record)
    date = f"[{record['date']}](benchmarks/results/{record['file']}), {code_cell(record['machine'])}"
    return (f"| `{record['benchmark']}` | {number(record['ours'])} | {baseline} | {record['unit']} | {ratio_cell(record)} | "
            f"{goal} | {verdict} | {machine_cell(record['machine'])} | {date} | `{record['command']}` |")


FIGURES_HEADER = ("| figure | ours | baseline | unit | x better: median (min-max of passes) | goal | verdict | machine | "
                  "date (raw results), code | command |\n|---|---:|---:|---|---|---|---|---|---|---|")


def unmeasured_row(name: str, goal: Goal) -> str:
    """A goal no results file has a figure for yet: shown all the same, so no goal goes unseen."""
    return f"| `{name}` | - | - | {goal.unit} | - | {goal.cell()} | not measured yet | - | - | - |"


def figures_table(runs: list[dict], folder: Path = RESULTS) -> str:
    records = sorted(latest_figures(runs).values(), key=lambda record: record["script"])  # stable: run order within
    if (recipe := recipe_figure(folder)) is not None:
        records.append(recipe)
    measured = {record["benchmark"] for record in records}
    unmeasured = [unmeasured_row(name, goal) for name, goal in GOALS.items()
                  if not any(char in name for char in "*?[") and name not in measured]
    return "\n".join([FIGURES_HEADER, *(figure_row(record) for record in records), *unmeasured])


def scale_table(runs: list[dict], folder: Path = RESULTS) -> str:
    """Per size and stage: wall time, peak RSS of the process tree, the stage script's peak above its imports
    (runs before those were measured show "-") and disk added; then the project's whole disk after the run."""
    latest = latest_figures(runs)
    sizes = sorted((r for name, r in latest.items() if name.startswith("scale_data_path_")),
                   key=lambda r: int(r["benchmark"].rsplit("_", 1)[1]))
    lines = ["| images | stage | wall s | peak RSS, process tree (MB) | stage script above its imports (MB) | "
             "disk added (GB) |", "|---:|---|---:|---:|---:|---:|"]
    for record in sizes:
        images = int(record["benchmark"].rsplit("_", 1)[1])
        for stage in record["detail"]["stages"]:
            above = f"{stage['above_imports_mb']:.0f}" if "above_imports_mb" in stage else "-"
            lines.append(f"| {images:,} | {stage['stage']} | {stage['seconds']:.1f} | {stage['peak_tree_mb']:.0f} | "
                         f"{above} | {stage['disk_added_bytes'] / 1e9:.2f} |")
        if (disk := latest.get(f"scale_disk_{images}")) is not None:
            detail = disk["detail"]
            lines.append(f"| {images:,} | all: workspace + .dvc/cache, {disk['ours']:.2f}x the "
                         f"{detail['archives_bytes'] / 1e9:.2f} GB of archives | | | | "
                         f"{detail['workspace_and_cache_bytes'] / 1e9:.2f} |")
    return "\n".join(lines)


def recipe_stages_table(runs: list[dict], folder: Path = RESULTS) -> str:
    """The real-data recipe's cold `dvc repro`, stage by stage, with the machine and commit it ran on."""
    lines = ["| stage | wall s | machine | code |", "|---|---:|---|---|"]
    recipe = recipe_figure(folder)
    if recipe is None or "detail" not in recipe:
        return "\n".join([*lines, "| (no per-stage timing recorded yet) | | | |"])
    machine, code = machine_cell(recipe["machine"]), code_cell(recipe["machine"])
    for stage, seconds in recipe["detail"]["stage_seconds"].items():
        lines.append(f"| {stage} | {seconds:.1f} | {machine} | {code} |")
    lines.append(f"| whole `dvc repro` | {recipe['ours']:.1f} | {machine} | {code} |")
    if (others := recipe["detail"].get("other_cpu_s")) is not None:
        lines.append(f"| (CPU seconds other processes used meanwhile: {others:,.0f}) | | | |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[list[dict], Path], str]] = {"figures": figures_table, "scale": scale_table,
                                                        "recipe_stages": recipe_stages_table}


def rewritten(text: str, runs: list[dict], folder: Path = RESULTS) -> str:
    """``text`` with every generated block replaced by its table, built from ``runs``."""
    for name, build in TABLES.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{DOCUMENT.name}: no `<!-- generated: {name} -->` ... `<!-- end: {name} -->` block")
        table = build(runs, folder)
        text = pattern.sub(lambda match: match.group(1) + table + "\n" + match.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when BENCHMARKS.md differs")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = args.document.read_text()
    new = rewritten(text, load_runs(args.results), args.results)
    if args.check:
        if new != text:
            print(f"{args.document}: its tables differ from benchmarks/results/; run `make bench-tables`", file=sys.stderr)
            return 1
        return 0
    args.document.write_text(new)
    print(f"{args.document}: tables rewritten from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

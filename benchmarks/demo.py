"""What a new user feels first (issue 32): `make demo` on a fresh clone, and one demo training epoch against the
code of two weeks before.

    .venv/bin/python benchmarks/demo.py [--quick] [--keep]

demo_make_s        target: `git clone` of the committed HEAD, then `make install` (a fresh .venv from the lock; the
                   package cache as this machine has it, so no download is timed) and `make demo`, wall seconds of
                   the two together. The detail keeps each part, the stages' own times, and whether the demo left
                   the committed dvc.lock unchanged (it must: the sample's bytes are the same on every CPU).
demo_test_roc_auc  target: the test ROC AUC that run reports in metrics.json.
demo_epoch_vs_ca937e2
                   ratio: one demo training epoch, HEAD against commit ca937e2 (2026-11-23, when the demo took
                   3 min 11 s), each in a worktree of its own with its own data stages run first, on the same
                   venv. An epoch is (train stage at 6 epochs - train stage at 1 epoch) / 5, so start-up, the
                   first epoch's tracing and the model's saving cancel out. The two take turns, pass by pass.
                   --quick and --skip-epoch skip it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from common import (
    BIN,
    ROOT,
    alternate,
    bench_tmp,
    log_second,
    paired_figure,
    print_figures,
    say,
    say_machine,
    target_figure,
)

EARLIER = "ca937e2"  # the demo's 3 min 11 s (2026-11-23, an Intel VM)
EPOCH_PASSES = 2
FEW, MANY = 1, 6  # epochs of the two train runs whose difference is five epochs


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, log: Path | None = None) -> float:
    """Wall seconds of a command that must succeed; its output goes to ``log``."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}) in {cwd}; log: {log}")
    return time.perf_counter() - start


def stage_seconds(log: Path) -> dict[str, float]:
    """Each stage's seconds from the pipeline's log: its 'Running stage' line to the next (the last to the end)."""
    moments, last = [], 0.0
    for line in log.read_text().splitlines():
        if (second := log_second(line)) is None:
            continue
        last = second
        if match := re.search(r"\| INFO .* Running stage '(\w+)'", line):
            moments.append((match[1], second))
    ends = [moment for _, moment in moments[1:]] + [last]
    return {stage: round(end - start, 1) for (stage, start), end in zip(moments, ends, strict=True)}


def bench_fresh_clone(tmp: Path, quick: bool) -> list[dict]:
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    install_s = _run(["make", "install"], clone, env, tmp / "install.log")
    demo_s = _run(["make", "demo"], clone, env, tmp / "demo.log")
    auc = json.loads((clone / "metrics.json").read_text())["test"]["roc_auc"]
    lock_unchanged = subprocess.run(["git", "diff", "--quiet", "--", "dvc.lock"], cwd=clone).returncode == 0
    stages = stage_seconds(tmp / "demo.log")
    say(f"fresh clone: make install {install_s:.1f} s, make demo {demo_s:.1f} s ({stages}); test ROC AUC "
        f"{auc:.4f}; dvc.lock {'unchanged' if lock_unchanged else 'REWRITTEN'}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    detail = {"install_s": round(install_s, 1), "demo_s": round(demo_s, 1), "stages_s": stages,
              "lock_unchanged": lock_unchanged, "commit": commit}
    return [target_figure("demo_make_s", round(install_s + demo_s, 1), 240.0, "s", quick=quick, **detail),
            target_figure("demo_test_roc_auc", auc, 0.90, "ROC AUC", better="higher", quick=quick)]


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(where), rev], cwd=ROOT, check=True)
    return where


def _train_command(tree: Path) -> list[str]:
    """The train stage's command, as that commit's dvc.yaml gives it."""
    import yaml

    return shlex.split(yaml.safe_load((tree / "dvc.yaml").read_text())["stages"]["train"]["cmd"])


def _with_epochs(tree: Path, epochs: int) -> None:
    """params.yaml at ``epochs``, resume off, and no state an earlier run left to resume from."""
    params = tree / "params.yaml"
    text = re.sub(r"(?m)^  epochs: \d+", f"  epochs: {epochs}", params.read_text())
    params.write_text(re.sub(r"(?m)^  resume: true", "  resume: false", text))
    for state in ("models/.train-state", "models/.fold-state"):
        shutil.rmtree(tree / state, ignore_errors=True)


def bench_epoch(tmp: Path, quick: bool) -> dict:
    trees = {"head": _worktree("HEAD", tmp / "head"), EARLIER: _worktree(EARLIER, tmp / EARLIER)}
    try:
        envs = {}
        for name, tree in trees.items():
            envs[name] = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(tree / "src"),
                          "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
            data_s = _run([str(BIN / "dvc"), "repro", "shard"], tree, envs[name], tmp / f"{name}-data.log")
            say(f"{name}: data stages in {data_s:.1f} s")

        def epoch(name: str):
            def side() -> None:
                tree, seconds = trees[name], {}
                for epochs in (FEW, MANY):
                    _with_epochs(tree, epochs)
                    seconds[epochs] = _run(_train_command(tree), tree, envs[name], tmp / f"{name}-train.log")
                epochs_s[name].append((seconds[MANY] - seconds[FEW]) / (MANY - FEW))
            return side

        epochs_s: dict[str, list[float]] = {name: [] for name in trees}
        alternate(EPOCH_PASSES, {name: epoch(name) for name in trees})
        say(f"one demo epoch: HEAD {epochs_s['head']} s, {EARLIER} {epochs_s[EARLIER]} s")
        return paired_figure(f"demo_epoch_vs_{EARLIER}", epochs_s["head"], epochs_s[EARLIER], "s/epoch", quick=quick,
                             method=f"(train at {MANY} epochs - train at {FEW}) / {MANY - FEW}")
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fresh clone's demo only")
    parser.add_argument("--skip-epoch", action="store_true", help="the fresh clone's demo only (a full figure)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = parser.parse_args(argv)
    say_machine()
    with bench_tmp("demo", args.keep) as tmp:
        figures = bench_fresh_clone(tmp, args.quick)
        if not (args.quick or args.skip_epoch):
            figures.append(bench_epoch(tmp, args.quick))
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

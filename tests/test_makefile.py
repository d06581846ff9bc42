"""The Makefile's promises: `make clean` removes the pipeline's outputs, never a tracked file; `make test` runs all."""

from __future__ import annotations

import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
from project_copy import ROOT, committed_project, project_env, run

CLONE_FILES = (".gitignore", ".dvc/.gitignore", "Makefile")  # beside project_copy's files: what `make clean` reads
TRACKED_OUTPUTS = ("dvc.lock", "metrics.json", "models/card.json", "models/dvclive/metrics.json", "models/train_card.json",
                   "reports/split.json", "reports/plots/roc_test.csv")  # committed, as in the project
IGNORED_OUTPUTS = ("data/resolved.json", "data/raw/index.parquet", "data/split/train/benign/a.jpg",
                   "data/shards/train-00000.tfrecord", "models/model.keras", "models/.train-state/phase1.weights.h5",
                   "reports/report.md", "reports/report.html", "reports/predictions.csv", "reports/figures/roc.png",
                   "logs/train/events.out.tfevents.1", "diff-report/report.md", "exports/model.tflite")
KEPT = (".venv/bin/python", ".dvc/cache/files/md5/00/11", "src/skincancer/__pycache__/cli.cpython-311.pyc",
        "models/notes.md")  # ignored outside the output folders, or the user's own untracked file
SELECTING = ("-m", "-k", "--deselect", "--ignore")  # pytest options that leave tests out (prefixes)


def write(root: Path, names: tuple[str, ...], text: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def clone(tmp_path) -> tuple[Path, dict[str, str]]:
    """A user's clone after a pipeline run: tracked outputs as committed, ignored ones beside them."""
    env = project_env(tmp_path)
    root = committed_project(tmp_path / "project", env, {})
    for name in CLONE_FILES:
        shutil.copy2(ROOT / name, root / name)
    write(root, TRACKED_OUTPUTS, "committed\n")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "outputs"], root, env)
    write(root, IGNORED_OUTPUTS + KEPT, "written\n")
    return root, env


def test_make_clean_removes_the_ignored_outputs_and_leaves_tracked_files_as_committed(clone):
    root, env = clone
    run(["make", "clean"], root, env)
    assert [name for name in IGNORED_OUTPUTS if (root / name).exists()] == []
    assert sorted(path.name for path in (root / "data").iterdir()) == [".gitignore"]  # the stage folders too
    assert [name for name in KEPT if not (root / name).is_file()] == []
    status = run(["git", "status", "--porcelain"], root, env).stdout
    assert status.splitlines() == ["?? models/notes.md"]  # every tracked file as committed


def pytest_arguments(command: str) -> list[str]:
    return shlex.split(command.split("-m pytest", 1)[1].split("#", 1)[0])


def test_make_test_leaves_no_test_out(tmp_path):
    """Tests marked `slow` run too: `make test` and pyproject's addopts select nothing away."""
    dry_run = run(["make", "--dry-run", "test"], ROOT, project_env(tmp_path)).stdout
    command = next(line for line in dry_run.splitlines() if "-m pytest" in line)
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    for argument in pytest_arguments(command) + shlex.split(addopts):
        assert not argument.startswith(SELECTING), argument

"""A throwaway copy of the project, for real `dvc repro` runs in tests and benchmarks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: stage commands say `python`, so it goes first on PATH
PROJECT_FILES = ("dvc.yaml", "params.yaml", "prefect.yaml", "flows", "src", ".dvc/config", ".dvcignore",
                 "data/.gitignore", "models/.gitignore", "reports/.gitignore")


TINY_PARAMS = {  # small enough for CI, big enough that every split holds both classes
    "fetch": {"sample": {"n_images": 240}},
    "shard": {"image_size": 32},
    "train": {"epochs": 2, "batch_size": 32},
    "evaluate": {"bootstrap": 50},
}


def project_env(tmp: Path) -> dict[str, str]:
    """Subprocess environment: the venv first on PATH, Prefect state under tmp, no telemetry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="skincancer", GIT_AUTHOR_EMAIL="skincancer@example.invalid",
        GIT_COMMITTER_NAME="skincancer", GIT_COMMITTER_EMAIL="skincancer@example.invalid",
    )
    return env


def copy_project(target: Path) -> Path:
    """The files a user's clone has, minus data: what `dvc repro` needs to run for real."""
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def merge(base: dict, change: dict) -> dict:
    return {key: merge(base[key], change[key]) if isinstance(change.get(key), dict) else change.get(key, base.get(key))
            for key in base.keys() | change.keys()}


def set_params(project: Path, change: dict) -> None:
    """Apply ``change`` (nested sections) to the project's params.yaml."""
    import yaml

    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), change), sort_keys=False))


def committed_project(target: Path, env: dict[str, str], change: dict) -> Path:
    """The project with ``change`` applied to params.yaml, committed to a new git repository: a user's clone."""
    project = copy_project(target)
    set_params(project, change)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        run(command, project, env)
    return project


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def stages_run(dvc_output: str) -> list[str]:
    """Stages `dvc repro` ran, in order, from its output."""
    return re.findall(r"Running stage '(\w+)'", dvc_output)

"""Shared fixtures: a real Prefect API server on loopback, and a throwaway copy of the project."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ("dvc.yaml", "params.yaml", "flows", "src", "data/.gitignore", ".dvc/config", ".dvcignore")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp: Path) -> dict[str, str]:
    """Subprocess environment: the venv first on PATH (stage commands say `python`), no telemetry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    return env


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1; stage subprocesses report to it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=base_env(home), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


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


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """fetch -> split -> shard through the library (no Prefect): 32 px shards of 120 images."""
    import pandas as pd  # noqa: F401  (pyarrow engine for parquet)

    from skincancer.fetch import fetch
    from skincancer.params import FetchParams, LabelParams, SampleParams, ShardParams, SplitParams
    from skincancer.shard import write_shards
    from skincancer.split import build_manifest, materialise

    root = tmp_path_factory.mktemp("tiny")
    index = fetch(FetchParams(sample=SampleParams(n_images=120, seed=1)), root / "raw")
    manifest = build_manifest(index, SplitParams(), LabelParams())
    materialise(manifest, root / "raw", root / "split")
    write_shards(manifest, root / "split", root / "shards", ShardParams(image_size=32, workers=1))
    return root / "shards"

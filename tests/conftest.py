"""Shared fixtures: a real Prefect API server on loopback, and a throwaway copy of the project."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from project_copy import BIN, project_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1; stage subprocesses report to it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=project_env(home), stdout=log, stderr=subprocess.STDOUT,
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

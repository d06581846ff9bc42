"""Shared fixtures: a real Prefect API server on loopback, and a throwaway copy of the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from project_copy import project_env
from skincancer.prefect_server import prefect_server_start, running_server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1; stage subprocesses report to it."""
    home = tmp_path_factory.mktemp("prefect-server")
    with running_server(prefect_server_start, project_env(home), home / "server.log") as url:
        yield url


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

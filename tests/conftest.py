"""Shared fixtures: a real Prefect API server on loopback, and a throwaway copy of the project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from project_copy import project_env

from flows._prefect_server import prefect_server_start, running_server


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1; stage subprocesses report to it."""
    home = tmp_path_factory.mktemp("prefect-server")
    with running_server(prefect_server_start, project_env(home), home / "server.log") as url:
        yield url


def split_sample(root: Path, n_images: int, seed: int):
    """fetch -> split through the library (no Prefect): the sample's split manifest, images under root/split."""
    from skincancer.core.params import FetchParams, LabelParams, SampleParams, SplitParams
    from skincancer.ingest.fetch import fetch
    from skincancer.split.split import materialise, plan_split

    index = fetch(FetchParams(sample=SampleParams(n_images=n_images, seed=seed)), root / "raw")
    plan = plan_split(index, SplitParams(), LabelParams())
    materialise(plan.manifest, root / "raw", root / "split", plan.removed)
    return plan.manifest


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """fetch -> split -> shard through the library (no Prefect): 32 px shards of 120 images."""
    import pandas as pd  # noqa: F401  (pyarrow engine for parquet)

    from skincancer.core.params import ShardParams
    from skincancer.shard.shard import write_shards

    root = tmp_path_factory.mktemp("tiny")
    manifest = split_sample(root, 120, seed=1)
    write_shards(manifest, root / "split", root / "shards", ShardParams(image_size=32, workers=1))
    return root / "shards"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path: two folders equal byte for byte, listing included."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}

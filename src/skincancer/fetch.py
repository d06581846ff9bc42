"""fetch stage: obtain each dataset's files under data/raw/ and index them in one table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from skincancer.atomic import atomic_dir
from skincancer.catalog import CATALOG
from skincancer.layouts import read_layout
from skincancer.params import FetchParams
from skincancer.sample import write_sample

log = logging.getLogger(__name__)

# dataset name -> writes the dataset's files under the given folder, returns {layout: folder}
Obtainer = Callable[[Path, FetchParams], dict[str, Path]]


def _obtain_sample(folder: Path, params: FetchParams) -> dict[str, Path]:
    return write_sample(folder, n_images=params.sample.n_images, seed=params.sample.seed)


OBTAINERS: dict[str, Obtainer] = {"sample": _obtain_sample}


def index_dataset(name: str, layout_roots: dict[str, Path], raw_root: Path) -> pd.DataFrame:
    """One index frame for a dataset; source = '<dataset>/<layout>' keeps layouts apart."""
    expected = set(CATALOG[name].layouts)
    if set(layout_roots) != expected:
        raise ValueError(f"dataset {name!r} produced layouts {sorted(layout_roots)}, expected {sorted(expected)}")
    frames = [
        read_layout(layout, root, source=f"{name}/{layout}", raw_root=raw_root)
        for layout, root in sorted(layout_roots.items())
    ]
    return pd.concat(frames, ignore_index=True)


def fetch(params: FetchParams, raw_root: Path) -> pd.DataFrame:
    """Write every dataset and index.parquet into raw_root as one atomic folder swap."""
    with atomic_dir(raw_root) as staging:
        frames = []
        for name in params.datasets:
            layout_roots = OBTAINERS[name](staging / name, params)
            frames.append(index_dataset(name, layout_roots, staging))
            log.info("%s: %d images indexed", name, len(frames[-1]))
        index = pd.concat(frames, ignore_index=True)
        index.to_parquet(staging / "index.parquet", index=False)
    return index

"""Leak-free, deduplicated, seeded, stratified split into train/val/test benign/malignant folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from skincancer.archives import read_uris, sha256_hex
from skincancer.atomic import atomic_dir
from skincancer.labels import CLASS_NAMES, label_of
from skincancer.params import LabelParams, SplitParams
from skincancer.paths import SPLITS

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The index cannot be split as asked (too few images of a class, unknown labels)."""


def assign_labels(index: pd.DataFrame, labels: LabelParams) -> pd.DataFrame:
    """Label 1 = malignant; a published benign_malignant wins over the diagnosis mapping."""
    malignant = frozenset(labels.malignant)
    unlabelled = (index["diagnosis"] == "unknown") & index["benign_malignant"].isna()
    if unlabelled.any():
        ids = index.loc[unlabelled, "image_id"].tolist()
        if labels.unknown == "error":
            raise SplitError(
                f"{len(ids)} image(s) have diagnosis 'unknown' and no published benign_malignant "
                f"(first: {ids[:5]}); set `labels.unknown: drop` in params.yaml to leave them out"
            )
        log.warning("dropping %d image(s) with unknown label (labels.unknown: drop)", len(ids))
        index = index.loc[~unlabelled]
    label = [
        label_of(diagnosis, malignant, published)
        for diagnosis, published in zip(index["diagnosis"], index["benign_malignant"], strict=True)
    ]
    return index.assign(label=np.asarray(label, dtype="int64"))


def drop_duplicates(index: pd.DataFrame) -> pd.DataFrame:
    """Same image bytes published twice (across sources too) would leak between splits."""
    ordered = index.sort_values(["source", "image_id"], kind="stable")
    kept = ordered.drop_duplicates("sha256", keep="first")
    if len(kept) < len(index):
        log.info("removed %d duplicate image(s) by sha256", len(index) - len(kept))
    clashes = kept["image_id"][kept["image_id"].duplicated()]
    if not clashes.empty:
        raise SplitError(
            f"image id(s) {sorted(set(clashes))[:5]} appear in several sources with different bytes; "
            "drop one of the sources from fetch.datasets"
        )
    return kept


def _group_keys(index: pd.DataFrame, group_by: str | None) -> pd.Series:
    """One key per image group; images with no group value stand alone."""
    if group_by is None:
        return index["image_id"]
    return index[group_by].astype("string").fillna("image:" + index["image_id"].astype("string"))


def assign_splits(index: pd.DataFrame, params: SplitParams) -> pd.Series:
    """Place whole groups, stratified by the group's label, at seeded random positions.

    Within each stratum the groups are shuffled and laid end to end; a group goes to the split
    whose fraction interval holds its midpoint. Same inputs and seed => same assignment.
    """
    groups = _group_keys(index, params.group_by)
    group_frame = pd.DataFrame({"group": groups.to_numpy(), "label": index["label"].to_numpy()})
    per_group = group_frame.groupby("group", sort=True)["label"].agg(["max", "size"])
    edges = np.cumsum(params.fractions)[:-1]
    split_of_group: dict[str, str] = {}
    for stratum, members in per_group.groupby("max", sort=True):
        rng = np.random.default_rng([params.seed, int(stratum)])
        order = members.iloc[rng.permutation(len(members))]
        sizes = order["size"].to_numpy()
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        for key, position in zip(order.index, np.searchsorted(edges, midpoints, side="right"), strict=True):
            split_of_group[key] = SPLITS[position]
    return pd.Series([split_of_group[key] for key in groups], index=index.index, name="split")


def check_every_split_has_both_classes(manifest: pd.DataFrame) -> None:
    counts = manifest.groupby(["split", "label"]).size()
    for split in SPLITS:
        for label, name in enumerate(CLASS_NAMES):
            if counts.get((split, label), 0) == 0:
                total = int((manifest["label"] == label).sum())
                raise SplitError(
                    f"the {split} split would hold no {name} images ({total} {name} in total); "
                    "add data (fetch.datasets), or change split.fractions / split.group_by"
                )


def build_manifest(index: pd.DataFrame, split: SplitParams, labels: LabelParams) -> pd.DataFrame:
    """index.parquet rows -> manifest rows with split, label and the path under data/split."""
    manifest = drop_duplicates(assign_labels(index, labels))
    manifest = manifest.assign(split=assign_splits(manifest, split))
    check_every_split_has_both_classes(manifest)
    class_name = np.asarray(CLASS_NAMES)[manifest["label"].to_numpy()]
    manifest = manifest.assign(path=manifest["split"] + "/" + class_name + "/" + manifest["image_id"] + ".jpg")
    return manifest.sort_values(["split", "label", "image_id"], kind="stable").reset_index(drop=True)


def _place(source_path: Path, data: bytes, target: Path) -> None:
    """Hardlink loose source files (no second copy on disk); write archive members out."""
    if source_path.is_file():
        try:
            os.link(source_path, target)
            return
        except OSError:
            pass
    target.write_bytes(data)


def materialise(manifest: pd.DataFrame, raw_root: Path, split_root: Path) -> None:
    """Write data/split/<split>/<class>/<id>.jpg and manifest.parquet, atomically as one folder."""
    by_uri = manifest.set_index("uri")
    with atomic_dir(split_root) as staging:
        for split in SPLITS:
            for name in CLASS_NAMES:
                (staging / split / name).mkdir(parents=True)
        for uri, data in read_uris(raw_root, sorted(by_uri.index)):
            row = by_uri.loc[uri]
            if sha256_hex(data) != row["sha256"]:
                raise SplitError(
                    f"{uri}: bytes changed since fetch (sha256 mismatch); rerun the fetch stage (`dvc repro fetch -f`)"
                )
            _place(raw_root / uri, data, staging / row["path"])
        manifest.to_parquet(staging / "manifest.parquet", index=False)


def split_counts(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {benign: n, malignant: n}} for logs and reports."""
    counts = manifest.groupby(["split", "label"]).size()
    return {
        split: {name: int(counts.get((split, label), 0)) for label, name in enumerate(CLASS_NAMES)}
        for split in SPLITS
    }

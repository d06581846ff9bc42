"""Leak-free, deduplicated, seeded, stratified split into train/val/test benign/malignant folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skincancer.archives import read_uris, sha256_hex
from skincancer.atomic import atomic_dir
from skincancer.labels import CLASS_NAMES, is_labellable, label_of
from skincancer.params import LabelParams, SplitParams
from skincancer.paths import SPLITS

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The index cannot be split as asked (too few images of a class, unknown labels)."""


REMOVED_COLUMNS = ("image_id", "source", "diagnosis", "reason", "kept_image_id")


@dataclass(frozen=True)
class SplitPlan:
    """The manifest, and every image left out of it with the reason (and which copy was kept)."""

    manifest: pd.DataFrame
    removed: pd.DataFrame


def _removed(rows: pd.DataFrame, reason: str, kept: pd.Series | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": rows["image_id"].to_numpy(),
        "source": rows["source"].to_numpy(),
        "diagnosis": rows["diagnosis"].to_numpy(),
        "reason": reason,
        "kept_image_id": None if kept is None else kept.to_numpy(),
    })


def assign_labels(index: pd.DataFrame, labels: LabelParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label 1 = malignant; a published benign_malignant wins. Unlabellable images: error or dropped."""
    malignant = frozenset(labels.malignant)
    diagnoses, published = index["diagnosis"].tolist(), index["benign_malignant"].tolist()
    labellable = np.array([is_labellable(d, malignant, p) for d, p in zip(diagnoses, published, strict=True)], dtype=bool)
    unlabelled = index.loc[~labellable]
    if not unlabelled.empty:
        counts = ", ".join(f"{name!r} ({n})" for name, n in unlabelled["diagnosis"].value_counts().sort_index().items())
        message = f"{len(unlabelled)} image(s) cannot be labelled benign/malignant: diagnosis {counts} with no published benign_malignant"
        if labels.unknown == "error":
            raise SplitError(
                f"{message}; list malignant diagnoses in labels.malignant, map spellings in "
                "skincancer.labels.SPELLINGS, or set `labels.unknown: drop` in params.yaml"
            )
        log.warning("%s: dropped (labels.unknown: drop)", message)
    kept = index.loc[labellable]
    label = [label_of(d, malignant, p) for d, p in zip(kept["diagnosis"], kept["benign_malignant"], strict=True)]
    return kept.assign(label=np.asarray(label, dtype="int64")), _removed(unlabelled, "unlabelled")


def duplicate_components(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]] = ()) -> np.ndarray:
    """Component id per row: rows are linked by equal bytes, equal image id, or an official duplicate pair."""
    parent = np.arange(len(frame))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(a: int, b: int) -> None:
        parent[root(a)] = root(b)

    for column in ("sha256", "image_id"):
        for members in frame.groupby(column, sort=False).indices.values():
            for other in members[1:]:
                link(members[0], other)
    first_row_of = {image_id: rows[0] for image_id, rows in frame.groupby("image_id", sort=False).indices.items()}
    for a, b in pairs:
        if a in first_row_of and b in first_row_of:
            link(first_row_of[a], first_row_of[b])
    return np.array([root(i) for i in range(len(frame))])


def drop_duplicates(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one image per duplicate group (first by source, id); groups whose labels disagree go entirely."""
    ordered = frame.sort_values(["source", "image_id"], kind="stable").reset_index(drop=True)
    component = pd.Series(duplicate_components(ordered, pairs), index=ordered.index)
    conflict = ordered.groupby(component)["label"].transform("nunique") > 1
    first_id = ordered.groupby(component)["image_id"].transform("first")
    repeat = component.duplicated() & ~conflict
    removed = pd.concat(
        [_removed(ordered[repeat], "duplicate", first_id[repeat]), _removed(ordered[conflict], "label_conflict")],
        ignore_index=True,
    )
    if repeat.any() or conflict.any():
        log.info("removed %d duplicate image(s); %d image(s) excluded for conflicting labels", repeat.sum(), conflict.sum())
    return ordered[~repeat & ~conflict], removed


def _group_keys(index: pd.DataFrame, group_by: str | None) -> pd.Series:
    """One key per image group; images with no group value stand alone."""
    if group_by in (None, "none"):
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


def plan_split(
    index: pd.DataFrame, split: SplitParams, labels: LabelParams, duplicate_pairs: Iterable[tuple[str, str]] = ()
) -> SplitPlan:
    """index.parquet rows -> manifest rows (split, label, path under data/split) and the removed rows."""
    labelled, unlabelled = assign_labels(index, labels)
    unique, duplicates = drop_duplicates(labelled, duplicate_pairs)
    manifest = unique.assign(split=assign_splits(unique, split))
    check_every_split_has_both_classes(manifest)
    class_name = np.asarray(CLASS_NAMES)[manifest["label"].to_numpy()]
    manifest = manifest.assign(path=manifest["split"] + "/" + class_name + "/" + manifest["image_id"] + ".jpg")
    manifest = manifest.sort_values(["split", "label", "image_id"], kind="stable").reset_index(drop=True)
    removed = pd.concat([unlabelled, duplicates], ignore_index=True).sort_values(["reason", "image_id"], kind="stable")
    return SplitPlan(manifest, removed.reset_index(drop=True))


def build_manifest(index: pd.DataFrame, split: SplitParams, labels: LabelParams) -> pd.DataFrame:
    """The manifest alone, for callers that need no account of removed images."""
    return plan_split(index, split, labels).manifest


def _place(source_path: Path, data: bytes, target: Path) -> None:
    """Hardlink loose source files (no second copy on disk); write archive members out."""
    if source_path.is_file():
        try:
            os.link(source_path, target)
            return
        except OSError:
            pass
    target.write_bytes(data)


def materialise(manifest: pd.DataFrame, raw_root: Path, split_root: Path, removed: pd.DataFrame | None = None) -> None:
    """Write data/split/<split>/<class>/<id>.jpg, manifest.parquet and removed.csv as one atomic folder."""
    target = dict(zip(manifest["uri"], zip(manifest["path"], manifest["sha256"], strict=True), strict=True))
    with atomic_dir(split_root) as staging:
        for split in SPLITS:
            for name in CLASS_NAMES:
                (staging / split / name).mkdir(parents=True)
        for uri, data in read_uris(raw_root, sorted(target)):
            path, expected = target[uri]
            if sha256_hex(data) != expected:
                raise SplitError(
                    f"{uri}: bytes changed since fetch (sha256 mismatch); rerun the fetch stage (`dvc repro fetch -f`)"
                )
            _place(raw_root / uri, data, staging / path)
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        removed = removed if removed is not None else pd.DataFrame(columns=list(REMOVED_COLUMNS))
        removed.to_csv(staging / "removed.csv", index=False)


def summary(plan: SplitPlan, group_by: str | None) -> dict:
    """Numbers only, so `dvc metrics show` can display and diff them: per split x class x diagnosis."""
    manifest = plan.manifest
    groups = _group_keys(manifest, group_by)
    removed = plan.removed["reason"].value_counts()
    result: dict = {
        "images": len(manifest),
        "groups": int(groups.nunique()),
        "removed": {reason: int(removed.get(reason, 0)) for reason in ("duplicate", "label_conflict", "unlabelled")},
    }
    for split in SPLITS:
        part = manifest["split"] == split
        labels = manifest.loc[part, "label"]
        result[split] = {
            "images": int(part.sum()),
            "groups": int(groups[part].nunique()),
            **{name: int((labels == index).sum()) for index, name in enumerate(CLASS_NAMES)},
            "malignant_share": round(float(labels.mean()), 4),
            "diagnosis": {str(k): int(v) for k, v in manifest.loc[part, "diagnosis"].value_counts().sort_index().items()},
        }
    return result


def split_counts(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {benign: n, malignant: n}} for logs and reports."""
    counts = manifest.groupby(["split", "label"]).size()
    return {
        split: {name: int(counts.get((split, label), 0)) for label, name in enumerate(CLASS_NAMES)}
        for split in SPLITS
    }

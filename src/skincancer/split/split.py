"""Leak-free, deduplicated, seeded, stratified split into train/val/test (or K folds and test) benign/malignant folders."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skincancer.core.atomic import atomic_dir, atomic_write_text
from skincancer.core.labels import CLASS_NAMES, is_labellable, label_of
from skincancer.core.params import LabelParams, SplitParams
from skincancer.core.paths import SPLITS, TEST, fold_part, parts_named, split_parts
from skincancer.ingest.archives import read_uris, sha256_hex
from skincancer.ingest.image_ids import canonical_image_ids
from skincancer.ingest.near_duplicates import near_duplicate_pairs
from skincancer.split.union_find import DisjointSet, equal_value_pairs

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """The index cannot be split as asked (too few images of a class, unknown labels)."""


REMOVED_COLUMNS = ("image_id", "source", "diagnosis", "reason", "kept_image_id", "linked_by")


@dataclass(frozen=True)
class SplitPlan:
    """The manifest, and every image left out of it with the reason (and which copy was kept)."""

    manifest: pd.DataFrame
    removed: pd.DataFrame


def _removed(
    rows: pd.DataFrame, reason: str, kept: pd.Series | None = None, linked_by: pd.Series | None = None
) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": rows["image_id"].to_numpy(),
        "source": rows["source"].to_numpy(),
        "diagnosis": rows["diagnosis"].to_numpy(),
        "reason": reason,
        "kept_image_id": None if kept is None else kept.to_numpy(),
        "linked_by": None if linked_by is None else linked_by.to_numpy(),
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
                "skincancer.core.labels.SPELLINGS, or set `labels.unknown: drop` in params.yaml"
            )
        log.warning("%s: dropped (labels.unknown: drop)", message)
    kept = index.loc[labellable]
    label = [label_of(d, malignant, p) for d, p in zip(kept["diagnosis"], kept["benign_malignant"], strict=True)]
    return kept.assign(label=np.asarray(label, dtype="int64")), _removed(unlabelled, "unlabelled")


# The rules that make two index rows one image; removed.csv names the ones that linked each duplicate.
DUPLICATE_RULES = ("same_bytes", "same_id", "official_pair", "near_duplicate")


def _official_pairs(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]]) -> np.ndarray:
    """Published pairs of image ids as row positions (each id's first row; same_id links its other rows)."""
    rows_of = frame.groupby("image_id", sort=False).indices
    linked = [(rows_of[a][0], rows_of[b][0]) for a, b in pairs if a in rows_of and b in rows_of]
    return np.asarray(linked, dtype=np.int64).reshape(-1, 2)


def duplicate_links(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
    """Row-position pairs showing one image twice, per rule: equal bytes, equal id once copy suffixes are
    stripped (`_downsampled`), an official duplicate pair, or a near-identical perceptual hash."""
    return {
        "same_bytes": equal_value_pairs(frame["sha256"]),
        "same_id": equal_value_pairs(canonical_image_ids(frame["image_id"])),
        "official_pair": _official_pairs(frame, pairs),
        "near_duplicate": near_duplicate_pairs(frame["image_hash"]),
    }


def _rules_by_component(component: np.ndarray, links: dict[str, np.ndarray]) -> pd.Series:
    """'+'-joined names of the rules whose links fall in each row's component ('' when alone)."""
    found: dict[int, list[str]] = {}
    for rule in DUPLICATE_RULES:
        for root in np.unique(component[links[rule][:, 0]]).tolist():
            found.setdefault(root, []).append(rule)
    return pd.Series(["+".join(found.get(root, [])) for root in component.tolist()])


def drop_duplicates(ordered: pd.DataFrame, links: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one image per duplicate component (the first row: by source, id); a component whose labels
    disagree goes entirely, never kept with one label at random."""
    duplicates = DisjointSet(len(ordered))
    for pairs in links.values():
        duplicates.link_pairs(pairs)
    component = pd.Series(duplicates.components(), index=ordered.index)
    conflict = ordered.groupby(component)["label"].transform("nunique") > 1
    first_id = ordered.groupby(component)["image_id"].transform("first")
    repeat = component.duplicated() & ~conflict
    linked_by = _rules_by_component(component.to_numpy(), links)
    removed = pd.concat(
        [
            _removed(ordered[repeat], "duplicate", first_id[repeat], linked_by[repeat]),
            _removed(ordered[conflict], "label_conflict", None, linked_by[conflict]),
        ],
        ignore_index=True,
    )
    if repeat.any() or conflict.any():
        by_rule = removed["linked_by"].str.split("+").explode().value_counts().sort_index()
        log.info(
            "removed %d duplicate image(s); %d image(s) excluded for conflicting labels; linked by %s",
            repeat.sum(), conflict.sum(), ", ".join(f"{rule} ({n})" for rule, n in by_rule.items()),
        )
    return ordered[~repeat & ~conflict], removed


def group_names(ordered: pd.DataFrame, group_by: Iterable[str], links: dict[str, np.ndarray]) -> pd.Series:
    """Connected components of images sharing any `group_by` id or a duplicate link, each named by its first
    image id (rows ordered by source, id). Built before duplicates go, so a removed copy still joins the
    kept one's group to the groups of its own ids (an ISIC 2019 lesion id reaching an ISIC 2020 patient)."""
    groups = DisjointSet(len(ordered))
    for pairs in links.values():
        groups.link_pairs(pairs)
    for column in group_by:
        groups.link_pairs(equal_value_pairs(ordered[column]))
    names = ordered["image_id"].to_numpy()[groups.components()]
    return pd.Series(names, index=ordered.index, name="group", dtype="string")


def _placement_order(sizes: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Groups with the most malignant images first (the scarce class is placed while every split can take
    it); otherwise in seeded random order, so each seed draws another split."""
    shuffled = sizes.iloc[np.random.default_rng(seed).permutation(len(sizes))]
    return shuffled.sort_values("malignant", ascending=False, kind="stable")


def _check_group_sizes(sizes: pd.DataFrame, targets: np.ndarray) -> None:
    """A group larger than a split's share can only go elsewhere; larger than every share, nowhere."""
    largest = sizes["images"].idxmax()
    size = int(sizes.loc[largest, "images"])
    if size > targets.max():
        raise SplitError(
            f"group {largest!r} holds {size} of {int(sizes['images'].sum())} images, more than any split's share "
            f"(largest {targets.max():.0f}): list fewer keys in split.group_by, or check the ids that join it"
        )
    if size > targets.min():
        log.warning(
            "group %r holds %d images, more than the smallest split's share (%.0f): it goes to a larger split",
            largest, size, targets.min(),
        )


def _fill_cost_increase(placed: np.ndarray, group: np.ndarray, targets: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Per split, how much adding `group` raises sum_class sum_split placed^2 / (target * class total).

    That sum is smallest when each split holds its fraction of each class, and the increase is twice the
    split's fill ratio (placed / target) plus the group's share of its target: so each group goes to the
    split that is least filled, relative to its own target, unless the group would overshoot it. Splits
    thus fill at the same pace throughout, and each receives a like mix of early and late groups.
    """
    return ((group / totals) * (2 * placed + group) / targets).sum(axis=1)


def assign_splits(groups: pd.Series, labels: pd.Series, params: SplitParams) -> pd.Series:
    """Train, val and test by `assign_parts` at split.fractions."""
    return assign_parts(groups, labels, SPLITS, params.fractions, params.seed)


def assign_folds(groups: pd.Series, labels: pd.Series, params: SplitParams) -> pd.Series:
    """K folds of equal share by `assign_parts`, whole groups each, the classes balanced as between splits."""
    names = tuple(fold_part(fold) for fold in range(params.folds))
    return assign_parts(groups, labels, names, (1 / params.folds,) * params.folds, params.seed)


def assign_parts(
    groups: pd.Series, labels: pd.Series, names: Sequence[str], fractions: Sequence[float], seed: int
) -> pd.Series:
    """Place whole groups so each part holds its fraction of the benign and of the malignant images.

    Groups are placed one by one, those holding malignant images first (most first; ties, and the benign
    groups, in seeded order), each where it raises the fill cost least (`_fill_cost_increase`), each class
    weighed by its own total so the scarce class counts as much as the common one (ISIC 2020 is 1.8%
    malignant: a one-point tolerance would mean nothing). Same groups, labels and seed => same assignment,
    whatever the row order.
    """
    frame = pd.DataFrame({"group": groups.to_numpy(), "malignant": labels.to_numpy()})
    sizes = frame.groupby("group", sort=True)["malignant"].agg(images="size", malignant="sum")
    fractions = np.asarray(fractions)
    _check_group_sizes(sizes, fractions * len(frame))
    totals = np.maximum([len(frame) - sizes["malignant"].sum(), sizes["malignant"].sum()], 1).astype(np.float64)
    targets = fractions[:, None] * totals  # (split, [benign, malignant])
    placed = np.zeros_like(targets)
    split_of_group: dict[str, str] = {}
    for name, images, malignant in _placement_order(sizes, seed).itertuples(name=None):
        group = np.array([images - malignant, malignant], dtype=np.float64)
        best = int(np.argmin(_fill_cost_increase(placed, group, targets, totals)))
        placed[best] += group
        split_of_group[name] = names[best]
    return pd.Series([split_of_group[name] for name in groups], index=groups.index, name="split")


def with_folds(planned: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Test as without folds (the same images, so a single model and an ensemble meet the same test set);
    train and val together divided into K folds by `assign_folds`. `fold` numbers each (<NA>: test)."""
    rest = planned["split"] != TEST
    folds = assign_folds(planned.loc[rest, "group"], planned.loc[rest, "label"], params)
    split = planned["split"].where(~rest, folds.reindex(planned.index))
    number = {fold_part(fold): fold for fold in range(params.folds)}
    fold = pd.array([number.get(name) for name in split], dtype="Int64")
    return planned.assign(split=split, fold=fold)


def check_every_split_has_both_classes(manifest: pd.DataFrame) -> None:
    counts = manifest.groupby(["split", "label"]).size()
    for split in parts_named(manifest["split"]):
        for label, name in enumerate(CLASS_NAMES):
            if counts.get((split, label), 0) == 0:
                total = int((manifest["label"] == label).sum())
                raise SplitError(
                    f"the {split} split would hold no {name} images ({total} {name} in total); "
                    "add data (fetch.datasets), or change split.fractions / split.group_by / split.folds"
                )


def _planning_columns(split: SplitParams) -> list[str]:
    """What labelling, deduplication and grouping read; the index's other columns ride along untouched."""
    wanted = ("image_id", "source", "diagnosis", "benign_malignant", "sha256", "image_hash", *split.group_by)
    return list(dict.fromkeys(wanted))


def _planned_rows(
    work: pd.DataFrame, split: SplitParams, labels: LabelParams, duplicate_pairs: Iterable[tuple[str, str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kept rows of `work` in manifest order with label, group, split and path; the removed rows."""
    labelled, unlabelled = assign_labels(work, labels)
    ordered = labelled.sort_values(["source", "image_id"], kind="stable").reset_index(drop=True)
    links = duplicate_links(ordered, duplicate_pairs)
    ordered = ordered.assign(group=group_names(ordered, split.group_by, links))
    unique, duplicates = drop_duplicates(ordered, links)
    planned = unique.assign(split=assign_splits(unique["group"], unique["label"], split))
    if split.folds is not None:
        planned = with_folds(planned, split)
    check_every_split_has_both_classes(planned)
    class_name = np.asarray(CLASS_NAMES)[planned["label"].to_numpy()]
    planned = planned.assign(path=planned["split"] + "/" + class_name + "/" + planned["image_id"] + ".jpg")
    removed = pd.concat([unlabelled, duplicates], ignore_index=True).sort_values(["reason", "image_id"], kind="stable")
    return planned.sort_values(["split", "label", "image_id"], kind="stable"), removed.reset_index(drop=True)


def plan_split(
    index: pd.DataFrame, split: SplitParams, labels: LabelParams, duplicate_pairs: Iterable[tuple[str, str]] = ()
) -> SplitPlan:
    """index.parquet rows -> manifest rows (split, label, group, path under data/split) and the removed rows.

    The plan works on the columns it reads, its intermediate copies gone before the index's rows are taken
    into the manifest, once: at ISIC 2020's size each whole-index copy alive at once raises the stage's peak."""
    work = index[_planning_columns(split)].assign(index_row=np.arange(len(index)))
    planned, removed = _planned_rows(work, split, labels, duplicate_pairs)
    added = {column: planned[column].array for column in ("label", "group", "split", "fold", "path") if column in planned}
    manifest = index.take(planned["index_row"].to_numpy()).reset_index(drop=True).assign(**added)
    return SplitPlan(manifest, removed)


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
    uris, targets, hashes = (manifest[column].array for column in ("uri", "path", "sha256"))
    in_archive_order = manifest["uri"].argsort(kind="stable").to_numpy()  # each row's strings made as it is read
    with atomic_dir(split_root) as staging:
        for split in parts_named(manifest["split"]):
            for name in CLASS_NAMES:
                (staging / split / name).mkdir(parents=True)
        read = read_uris(raw_root, (uris[row] for row in in_archive_order))
        for row, (uri, data) in zip(in_archive_order, read, strict=True):
            path, expected = targets[row], hashes[row]
            if sha256_hex(data) != expected:
                raise SplitError(
                    f"{uri}: bytes changed since fetch (sha256 mismatch); rerun the fetch stage (`dvc repro fetch -f`)"
                )
            _place(raw_root / uri, data, staging / path)
        manifest.to_parquet(staging / "manifest.parquet", index=False)
        removed = removed if removed is not None else pd.DataFrame(columns=list(REMOVED_COLUMNS))
        removed.to_csv(staging / "removed.csv", index=False)


def ids_spanning_splits(manifest: pd.DataFrame, column: str) -> int:
    """How many patients (or lesions) have images in more than one split: 0 unless grouping was off."""
    known = manifest[[column, "split"]].dropna()
    return int((known.groupby(column)["split"].nunique() > 1).sum())


def summary(plan: SplitPlan) -> dict:
    """Numbers only, so `dvc metrics show` can display and diff them: per split x class x diagnosis."""
    manifest = plan.manifest
    groups = manifest["group"]
    removed = plan.removed["reason"].value_counts()
    result: dict = {
        "images": len(manifest),
        "groups": int(groups.nunique()),
        "removed": {reason: int(removed.get(reason, 0)) for reason in ("duplicate", "label_conflict", "unlabelled")},
        "spanning_splits": {column: ids_spanning_splits(manifest, column) for column in ("patient_id", "lesion_id")},
    }
    parts = parts_named(manifest["split"])
    if parts != SPLITS:
        result["folds"] = len(parts) - 1
    for split in parts:
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


def write_summary(plan: SplitPlan, path: Path) -> dict:
    """reports/split.json (git-tracked, a DVC metric): the summary, whole or not at all."""
    result = summary(plan)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def describe_summary(result: dict) -> str:
    """The split in one line, for the terminal and the Prefect run log."""
    counts = {name: result[name]["images"] for name in split_parts(result.get("folds"))} | result["removed"]
    return f"split: {counts}; {result['groups']} groups; ids in two splits: {result['spanning_splits']}"


def official_duplicate_pairs(path: Path) -> list[tuple[str, str]]:
    """The published duplicate pairs fetch recorded (data/raw/duplicates.parquet); none without the file."""
    if not path.is_file():
        return []
    pairs = pd.read_parquet(path)
    return list(zip(pairs["image_id_1"], pairs["image_id_2"], strict=True))

"""tf.data input pipelines over the TFRecord shards: read, decode, shuffle, batch, prefetch."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from skincancer.core.model_card import file_sha256
from skincancer.core.params import AugmentParams
from skincancer.core.paths import fold_part
from skincancer.core.patient_context import encode_context
from skincancer.shard.tfrecords import FEATURE_SPEC, IMAGE_TABLE, SPEC_VERSION, parse_example
from skincancer.train.augment import augmenter
from skincancer.train.diagnosis_classes import DiagnosisClasses
from skincancer.train.models import CONTEXT_INPUT, IMAGE_INPUT, on_image

AUTOTUNE = tf.data.AUTOTUNE


class ShardSpecMismatch(ValueError):
    """The shards were written under another feature spec than this code parses."""


class ShardDamaged(ValueError):
    """A shard file (or the manifest) is not what the shard stage wrote: flipped bytes, cut short, gone."""


def _restore(shards_dir: Path) -> str:
    """What to do about a damaged shard: the DVC cache may hold good bytes (unless hard-linked to the same damage)."""
    return (f"restore it with `dvc checkout {shards_dir}` if DVC's cache copy is good, or rewrite the shards "
            "with `dvc repro shard`")


def read_shard_manifest(shards_dir: Path) -> dict:
    """The shard manifest, refused when its spec_version is not the one parse_example reads: old shards
    would otherwise fail deep inside tf.data, or parse into wrong features without failing at all."""
    path = Path(shards_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as error:  # JSON and UTF-8 errors name a line, never the file
        raise ShardDamaged(f"{path}: not a readable shard manifest ({error}); {_restore(shards_dir)}") from None
    found = manifest.get("spec_version")
    if found != SPEC_VERSION:
        raise ShardSpecMismatch(
            f"{path}: shards written with feature spec_version {found}, but this code reads spec_version "
            f"{SPEC_VERSION}; rerun `dvc repro shard` to rewrite them"
        )
    return manifest


Parts = str | Sequence[str]  # one part of data/shards (train, val, test, fold0...), or several read as one


def as_parts(parts: Parts) -> tuple[str, ...]:
    return (parts,) if isinstance(parts, str) else tuple(parts)


@dataclass(frozen=True)
class Roles:
    """Which parts of the shards a model trains on and which it is stopped (early stopping, the kept epoch) on."""

    train: tuple[str, ...] = ("train",)
    val: tuple[str, ...] = ("val",)

    @classmethod
    def for_fold(cls, fold: int, folds: int) -> Roles:
        """Cross-validation: fold `fold`'s model trains on every other fold and is stopped on its own."""
        return cls(tuple(fold_part(other) for other in range(folds) if other != fold), (fold_part(fold),))


def shard_paths(shards_dir: Path, parts: Parts) -> list[str]:
    """The parts' shard files in manifest order (the order evaluation reports rows in), each checked against
    the size and sha256 the manifest records (`check_shard`) before tf.data reads a record of it."""
    manifest = read_shard_manifest(shards_dir)
    for part in as_parts(parts):
        if part not in manifest["splits"]:
            raise FileNotFoundError(f"{shards_dir}/manifest.json lists no shards for split {part!r} (it has "
                                    f"{', '.join(manifest['splits'])}); rerun `dvc repro shard`")
    shards = [shard for shard in manifest["shards"] if shard["split"] in as_parts(parts)]
    for shard in shards:
        check_shard(shards_dir, shard)
    return [str(Path(shards_dir) / shard["file"]) for shard in shards]


# (path, size, mtime_ns, sha256) of the shard files this process has hashed and found whole
_CHECKED: set[tuple[str, int, int, str]] = set()


def check_shard(shards_dir: Path, shard: dict) -> None:
    """Refuse, naming it, a shard file that is not the bytes its manifest entry records. tf.data's record CRCs
    fail mid-epoch with an error that names no file, and pass a file cut at a record boundary; the size and one
    hash pass catch both before a record is read. A run builds several datasets over the same shards (features,
    fine-tuning, validation, each split scored): a file is hashed again only when its size or mtime moved."""
    path = Path(shards_dir) / shard["file"]
    if not path.is_file():
        problem = "missing"
    elif (stat := path.stat()).st_size != shard["bytes"]:
        problem = f"{stat.st_size} bytes where the shard stage wrote {shard['bytes']} (cut short or grown)"
    elif (seen := (str(path.absolute()), stat.st_size, stat.st_mtime_ns, shard["sha256"])) in _CHECKED:
        return
    elif file_sha256(path) != shard["sha256"]:
        problem = f"its sha256 is not the {shard['sha256']} the shard stage recorded (bytes changed)"
    else:
        _CHECKED.add(seen)
        return
    raise ShardDamaged(f"{path}: shard file damaged: {problem}; {_restore(shards_dir)}")


def part_count(manifest: dict, parts: Parts, key: str = "count") -> int:
    """Images in the parts (or, key benign/malignant, of one class), from the shard manifest."""
    return sum(manifest["splits"][part][key] for part in as_parts(parts))


def check_image_size(shards_dir: Path, expected: int) -> dict:
    """The manifest, refused when its images are not the size the model is built for."""
    manifest = read_shard_manifest(shards_dir)
    if manifest["image_size"] != expected:
        raise ShardSpecMismatch(
            f"{Path(shards_dir) / 'manifest.json'}: shards hold {manifest['image_size']} px images but train "
            f"expects {expected} px (shard.image_size, 'auto' = the backbone's size); rerun `dvc repro shard`"
        )
    return manifest


Target = Callable[[dict[str, tf.Tensor]], tf.Tensor]


def binary_target(features: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.cast(features["image/label"], tf.float32)


def class_target(classes: DiagnosisClasses) -> Target:
    """Parsed features -> the index of the image's diagnosis class (its label's `other` class when train
    did not hold the diagnosis often enough)."""
    keys = list(classes.keys)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(keys), dtype=tf.int64)), default_value=-1
    )
    other = tf.constant([classes.other(0), classes.other(1)], dtype=tf.int64)

    def target(features: dict[str, tf.Tensor]) -> tf.Tensor:
        label = features["image/label"]
        found = table.lookup(tf.strings.join([tf.strings.as_string(label), features["image/diagnosis"]], "/"))
        return tf.where(found >= 0, found, tf.gather(other, label))

    return target


def target_of(classes: DiagnosisClasses | None) -> Target:
    """What the model learns to output: P(malignant) (binary head), or the diagnosis class."""
    return binary_target if classes is None else class_target(classes)


Inputs = tf.Tensor | dict[str, tf.Tensor]  # uint8 images, or {"image": ..., "context": ...} (train.metadata)
Context = Callable[[tf.Tensor], tf.Tensor]  # image id -> the image's patient context vector


def context_vectors(shards_dir: Path, parts: Parts, fields: Sequence[str]) -> np.ndarray | None:
    """The parts' patient context (encode_context of the image table's age_approx, sex, anatom_site), one row per
    image in `eval_dataset` order; None without fields."""
    return encode_context(split_records(shards_dir, parts), fields) if fields else None


def context_lookup(shards_dir: Path, parts: Parts, fields: Sequence[str]) -> Context | None:
    """Image id -> its context vector, looked up in-graph for each record (`by_image_id`). None without fields."""
    if not fields:
        return None
    records = split_records(shards_dir, parts)
    return by_image_id(shards_dir, records, encode_context(records, fields))


def by_image_id(shards_dir: Path, records: pd.DataFrame, values: np.ndarray) -> Callable[[tf.Tensor], tf.Tensor]:
    """Image id -> its row of `values` (aligned with `records`, split_records of the shards), looked up in-graph
    for each record: a value travels with its record through every shuffle, interleave and resampling, whatever
    order they leave."""
    ids = records["image_id"].astype(str).tolist()
    rows = tf.constant(values)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.range(len(ids), dtype=tf.int64)), default_value=-1
    )
    unlisted = f"{Path(shards_dir) / IMAGE_TABLE} lacks an image of the shards: rerun `dvc repro shard`"

    def lookup(image_id: tf.Tensor) -> tf.Tensor:
        row = table.lookup(image_id)
        with tf.control_dependencies([tf.debugging.assert_non_negative(row, message=unlisted)]):
            return tf.gather(rows, row)

    return lookup


def strata_columns(imbalance: str, balance: str) -> list[str]:
    """The image table's columns whose values name a cell of the training draw: the balanced column
    (train.balance) and the label (train.imbalance oversample); none for the natural mix."""
    return ([] if balance == "none" else [balance]) + (["label"] if imbalance == "oversample" else [])


def sampling_strata(records: pd.DataFrame, imbalance: str, balance: str) -> np.ndarray | None:
    """Each image's cell of the training draw (0..k-1 in the sorted order of its `strata_columns` values), which
    `balanced` draws equally often; None when the draw keeps the natural mix. By label alone the cells are the
    labels themselves: 0 benign, 1 malignant."""
    columns = strata_columns(imbalance, balance)
    if not columns:
        return None
    cells, _ = pd.factorize(pd.MultiIndex.from_frame(records[columns]), sort=True)
    return cells.astype(np.int64)


def _image_and_label(image_size: int, target: Target = binary_target, context: Context | None = None):
    """A serialized record -> (the model's inputs, its target)."""

    def decode(serialized: tf.Tensor) -> tuple[Inputs, tf.Tensor]:
        features = parse_example(serialized)
        image = tf.io.decode_jpeg(features["image/encoded"], channels=3)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        if context is None:
            return image, target(features)
        return {IMAGE_INPUT: image, CONTEXT_INPUT: context(features["image/id"])}, target(features)

    return decode


def _serialized_id(serialized: tf.Tensor) -> tf.Tensor:
    return tf.io.parse_single_example(serialized, {"image/id": FEATURE_SPEC["image/id"]})["image/id"]


def balanced(examples: tf.data.Dataset, count: int, seed: int, cell_of: Callable[..., tf.Tensor],
             cells: int) -> tf.data.Dataset:
    """`count` examples drawn equally often from each of the `cells` strata (`sampling_strata`; a rare stratum's
    examples repeat): balanced batches."""
    streams = [examples.filter(lambda *e, c=c: tf.equal(tf.cast(cell_of(*e), tf.int64), c)).repeat()
               for c in range(cells)]
    mixed = tf.data.Dataset.sample_from_datasets(streams, [1 / cells] * cells, seed=seed, rerandomize_each_iteration=True)
    return mixed.take(count)


def split_by_element(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Under MultiWorkerMirroredStrategy each worker takes its part of every global batch (tf.data's DATA
    policy), so the workers together train on the batches one process would draw. The default (FILE) needs
    more shard files than workers and gives each worker batches of its own files."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def training_dataset(
    shards_dir: Path,
    batch_size: int,
    seed: int,
    augment: AugmentParams | None = None,
    imbalance: str = "class_weight",
    balance: str = "none",
    classes: DiagnosisClasses | None = None,
    parts: Parts = "train",
    fields: Sequence[str] = (),
) -> tf.data.Dataset:
    """The parts' shards interleaved, records shuffled, decoded and augmented in parallel: the same seed gives
    the same batches (every random draw is keyed by the seed, none depends on thread timing). Full batches
    only: a last batch of a few images would give BatchNorm noisy statistics, or a replica nothing.
    imbalance oversample and `balance` (band, source) draw each cell of `sampling_strata` equally often.
    With patient context `fields`, each image comes as {"image", "context"}."""
    manifest = read_shard_manifest(shards_dir)
    files = shard_paths(shards_dir, parts)
    count = part_count(manifest, parts)
    records = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE, deterministic=True)
        .shuffle(min(count, 4096), seed=seed + 1, reshuffle_each_iteration=True)
    )
    table = split_records(shards_dir, parts)
    strata = sampling_strata(table, imbalance, balance)
    if strata is not None:
        cell = by_image_id(shards_dir, table, strata)
        records = balanced(records, count, seed + 2, lambda serialized: cell(_serialized_id(serialized)), int(strata.max()) + 1)
    records = records.apply(tf.data.experimental.assert_cardinality(count))  # lets Keras count steps per epoch
    decode = _image_and_label(manifest["image_size"], target_of(classes), context_lookup(shards_dir, parts, fields))
    if augment is not None and augment.active:
        augment_image = augmenter(augment)
        image_seeds = tf.data.Dataset.random(seed + 3, rerandomize_each_iteration=True).batch(2)
        examples = tf.data.Dataset.zip(records, image_seeds).map(
            lambda serialized, image_seed: _augmented(decode(serialized), image_seed, augment_image),
            num_parallel_calls=AUTOTUNE, deterministic=True,
        )
    else:
        examples = records.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    return split_by_element(examples.batch(batch_size, drop_remainder=count > batch_size).prefetch(AUTOTUNE))


def _augmented(example: tuple[Inputs, tf.Tensor], image_seed: tf.Tensor, augment_image) -> tuple[Inputs, tf.Tensor]:
    inputs, label = example
    return on_image(inputs, lambda image: augment_image(image, image_seed)), label


def feature_dataset(
    features: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    seed: int | None = None,
    strata: np.ndarray | None = None,
    context: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Cached backbone features as a dataset (with each image's `context` row beside them as {"features",
    "context"}); with a seed, shuffled (and with `strata`, each image's cell from `sampling_strata`, balanced)
    like the image pipeline."""
    count = len(targets)
    cells = np.zeros(count, np.int64) if strata is None else strata
    inputs = features if context is None else {"features": features, CONTEXT_INPUT: context}
    examples = tf.data.Dataset.from_tensor_slices((inputs, targets, cells))
    training = seed is not None
    if training:
        examples = examples.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        if strata is not None:
            examples = balanced(examples, count, seed + 2, lambda _, __, cell: cell, int(strata.max()) + 1)
    examples = examples.map(lambda feature, target, _: (feature, target))
    examples = examples.apply(tf.data.experimental.assert_cardinality(count))
    return split_by_element(examples.batch(batch_size, drop_remainder=training and count > batch_size).prefetch(AUTOTUNE))


def eval_dataset(
    shards_dir: Path, parts: Parts, batch_size: int, classes: DiagnosisClasses | None = None,
    fields: Sequence[str] = (),
) -> tf.data.Dataset:
    """(image, target) batches of the parts in manifest order, aligned with `split_records`; with patient
    context `fields`, ({"image", "context"}, target)."""
    manifest = read_shard_manifest(shards_dir)
    decode = _image_and_label(manifest["image_size"], target_of(classes), context_lookup(shards_dir, parts, fields))
    return split_by_element(
        tf.data.TFRecordDataset(shard_paths(shards_dir, parts))
        .apply(tf.data.experimental.assert_cardinality(part_count(manifest, parts)))
        .map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )


def split_labels(shards_dir: Path, parts: Parts) -> np.ndarray:
    """Labels in `eval_dataset` order, without reading a single record."""
    return split_records(shards_dir, parts)["label"].to_numpy(np.int64)


def split_targets(shards_dir: Path, parts: Parts, classes: DiagnosisClasses | None) -> np.ndarray:
    """Targets in `eval_dataset` order (labels, or class indices), without reading a single record."""
    if classes is None:
        return split_labels(shards_dir, parts)
    records = split_records(shards_dir, parts)
    return np.array([
        classes.index(diagnosis, label) for label, diagnosis in zip(records["label"], records["diagnosis"], strict=True)
    ], dtype=np.int64)


def split_records(shards_dir: Path, parts: Parts) -> pd.DataFrame:
    """Per-image facts (ids, labels, diagnoses, the parts' groups, which evaluation resamples, and the shard
    holding each) in `eval_dataset` order (the table's own: the shards'), from the table the shard stage
    wrote beside the shards."""
    path = Path(shards_dir) / IMAGE_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: shards written without their image table; rerun `dvc repro shard`")
    table = pd.read_parquet(path)
    return table[table["split"].isin(as_parts(parts))].reset_index(drop=True)

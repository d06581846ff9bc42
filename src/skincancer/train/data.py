"""tf.data input pipelines over the TFRecord shards: read, decode, shuffle, batch, prefetch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from skincancer.core.params import AugmentParams
from skincancer.shard.tfrecords import FEATURE_SPEC, IMAGE_TABLE, SPEC_VERSION, parse_example
from skincancer.train.augment import augmenter
from skincancer.train.diagnosis_classes import DiagnosisClasses

AUTOTUNE = tf.data.AUTOTUNE


class ShardSpecMismatch(ValueError):
    """The shards were written under another feature spec than this code parses."""


def read_shard_manifest(shards_dir: Path) -> dict:
    """The shard manifest, refused when its spec_version is not the one parse_example reads: old shards
    would otherwise fail deep inside tf.data, or parse into wrong features without failing at all."""
    path = Path(shards_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    found = manifest.get("spec_version")
    if found != SPEC_VERSION:
        raise ShardSpecMismatch(
            f"{path}: shards written with feature spec_version {found}, but this code reads spec_version "
            f"{SPEC_VERSION}; rerun `dvc repro shard` to rewrite them"
        )
    return manifest


def shard_paths(shards_dir: Path, split: str) -> list[str]:
    """The split's shard files in manifest order (the order evaluation reports rows in)."""
    manifest = read_shard_manifest(shards_dir)
    paths = [str(Path(shards_dir) / shard["file"]) for shard in manifest["shards"] if shard["split"] == split]
    if not paths:
        raise FileNotFoundError(f"{shards_dir}/manifest.json lists no shards for split {split!r}; rerun `dvc repro shard`")
    return paths


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


def _image_and_label(image_size: int, target: Target = binary_target):
    def decode(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = parse_example(serialized)
        image = tf.io.decode_jpeg(features["image/encoded"], channels=3)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return image, target(features)

    return decode


def _serialized_label(serialized: tf.Tensor) -> tf.Tensor:
    return tf.io.parse_single_example(serialized, {"image/label": FEATURE_SPEC["image/label"]})["image/label"]


def oversampled(examples: tf.data.Dataset, count: int, seed: int, label_of: Callable[..., tf.Tensor]) -> tf.data.Dataset:
    """`count` examples drawn half benign, half malignant (the rare class repeats): balanced batches."""
    streams = [examples.filter(lambda *e, c=c: tf.equal(tf.cast(label_of(*e), tf.int64), c)).repeat() for c in (0, 1)]
    mixed = tf.data.Dataset.sample_from_datasets(streams, [0.5, 0.5], seed=seed, rerandomize_each_iteration=True)
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
    classes: DiagnosisClasses | None = None,
) -> tf.data.Dataset:
    """Shards interleaved, records shuffled, decoded and augmented in parallel: the same seed gives the
    same batches (every random draw is keyed by the seed, none depends on thread timing). Full batches
    only: a last batch of a few images would give BatchNorm noisy statistics, or a replica nothing."""
    manifest = read_shard_manifest(shards_dir)
    files = shard_paths(shards_dir, "train")
    count = manifest["splits"]["train"]["count"]
    records = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE, deterministic=True)
        .shuffle(min(count, 4096), seed=seed + 1, reshuffle_each_iteration=True)
    )
    if imbalance == "oversample":
        records = oversampled(records, count, seed + 2, _serialized_label)
    records = records.apply(tf.data.experimental.assert_cardinality(count))  # lets Keras count steps per epoch
    decode = _image_and_label(manifest["image_size"], target_of(classes))
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


def _augmented(example: tuple[tf.Tensor, tf.Tensor], image_seed: tf.Tensor, augment_image) -> tuple[tf.Tensor, tf.Tensor]:
    image, label = example
    return augment_image(image, image_seed), label


def feature_dataset(
    features: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    seed: int | None = None,
    imbalance: str = "none",
    labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Cached backbone features as a dataset; with a seed, shuffled (and balanced by `labels`, the binary
    labels, which default to the targets) like the image pipeline."""
    count = len(targets)
    labels = targets if labels is None else labels
    examples = tf.data.Dataset.from_tensor_slices((features, targets, labels))
    if seed is not None:
        examples = examples.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if imbalance == "oversample":
        examples = oversampled(examples, count, seed + 2, lambda _, __, label: label)
    examples = examples.map(lambda feature, target, _: (feature, target))
    training = seed is not None
    examples = examples.apply(tf.data.experimental.assert_cardinality(count))
    return split_by_element(examples.batch(batch_size, drop_remainder=training and count > batch_size).prefetch(AUTOTUNE))


def eval_dataset(
    shards_dir: Path, split: str, batch_size: int, classes: DiagnosisClasses | None = None
) -> tf.data.Dataset:
    """(image, target) batches in manifest order, aligned with `split_records`."""
    manifest = read_shard_manifest(shards_dir)
    return split_by_element(
        tf.data.TFRecordDataset(shard_paths(shards_dir, split))
        .apply(tf.data.experimental.assert_cardinality(manifest["splits"][split]["count"]))
        .map(_image_and_label(manifest["image_size"], target_of(classes)), num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )


def split_labels(shards_dir: Path, split: str) -> np.ndarray:
    """Labels in `eval_dataset` order, without reading a single record."""
    return split_records(shards_dir, split)["label"].to_numpy(np.int64)


def split_targets(shards_dir: Path, split: str, classes: DiagnosisClasses | None) -> np.ndarray:
    """Targets in `eval_dataset` order (labels, or class indices), without reading a single record."""
    if classes is None:
        return split_labels(shards_dir, split)
    records = split_records(shards_dir, split)
    return np.array([
        classes.index(diagnosis, label) for label, diagnosis in zip(records["label"], records["diagnosis"], strict=True)
    ], dtype=np.int64)


def split_records(shards_dir: Path, split: str) -> pd.DataFrame:
    """Per-image facts (ids, labels, diagnoses, the split's groups, which evaluation resamples, and the shard
    holding each) in `eval_dataset` order, from the table the shard stage wrote beside the shards."""
    path = Path(shards_dir) / IMAGE_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: shards written without their image table; rerun `dvc repro shard`")
    table = pd.read_parquet(path)
    return table[table["split"] == split].reset_index(drop=True)

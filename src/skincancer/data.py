"""tf.data input pipelines over the TFRecord shards: read, decode, shuffle, batch, prefetch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import tensorflow as tf

from skincancer.tfrecords import SPEC_VERSION, parse_example, read_examples

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


def _image_and_label(image_size: int):
    def decode(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = parse_example(serialized)
        image = tf.io.decode_jpeg(features["image/encoded"], channels=3)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return image, tf.cast(features["image/label"], tf.float32)

    return decode


def training_dataset(shards_dir: Path, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shards interleaved and records shuffled with a fixed seed: same seed, same batches."""
    manifest = read_shard_manifest(shards_dir)
    files = shard_paths(shards_dir, "train")
    count = manifest["splits"]["train"]["count"]
    return (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE, deterministic=True)
        .apply(tf.data.experimental.assert_cardinality(count))  # lets Keras count steps per epoch
        .shuffle(min(count, 4096), seed=seed + 1, reshuffle_each_iteration=True)
        .map(_image_and_label(manifest["image_size"]), num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )


def eval_dataset(shards_dir: Path, split: str, batch_size: int) -> tf.data.Dataset:
    """(image, label) batches in manifest order, aligned with `split_records`."""
    manifest = read_shard_manifest(shards_dir)
    return (
        tf.data.TFRecordDataset(shard_paths(shards_dir, split))
        .apply(tf.data.experimental.assert_cardinality(manifest["splits"][split]["count"]))
        .map(_image_and_label(manifest["image_size"]), num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )


def split_records(shards_dir: Path, split: str) -> pd.DataFrame:
    """Per-image metadata in the same order as `eval_dataset` yields images."""
    rows = [
        {
            "image_id": example["image/id"],
            "source": example["image/source"],
            "diagnosis": example["image/diagnosis"],
            "label": example["image/label"],
        }
        for example in read_examples(shard_paths(shards_dir, split))
    ]
    return pd.DataFrame(rows, columns=["image_id", "source", "diagnosis", "label"])

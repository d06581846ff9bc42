"""train.balance: each resolution band (or source) drawn equally often, alone or crossed with the labels
(imbalance oversample), in the image pipeline and on cached features; seeded; the natural mix and label-only
oversampling draw the very stream they drew before. Real shards whose `full_size` band is the rare one."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from test_train import FAST, pretrained_weights

from skincancer.core.params import ShardParams
from skincancer.shard.shard import write_shards
from skincancer.shard.tfrecords import parse_example
from skincancer.train.data import (
    eval_dataset,
    feature_dataset,
    sampling_strata,
    shard_paths,
    split_records,
    training_dataset,
)
from skincancer.train.train import log_balance, train

EPOCHS = 5  # draws enough for a share's tolerance of about four standard deviations
RARE_FROM = 620  # px: the longer side from which an original is `full_size` here, a quarter of the tiny sample


@pytest.fixture(scope="module")
def shards(tiny_shards, tmp_path_factory) -> Path:
    """The tiny sample's shards, banded so that `full_size` is rare and every (band, label) cell holds images."""
    split_root = tiny_shards.parent / "split"
    out = tmp_path_factory.mktemp("balance-shards") / "shards"
    write_shards(pd.read_parquet(split_root / "manifest.parquet"), split_root, out,
                 ShardParams(image_size=32, workers=1, bands={"small": 0, "full_size": RARE_FROM}))
    train_table = split_records(out, "train")
    assert (train_table["band"] == "full_size").mean() < 0.3
    assert train_table.groupby(["band", "label"]).size().size == 4
    return out


def image_key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def drawn_rows(shards: Path, seed: int, epochs: int = EPOCHS, **options) -> np.ndarray:
    """The train table's row of each image the training pipeline yields over `epochs` passes of one dataset."""
    images = np.concatenate([x for x, _ in eval_dataset(shards, "train", 64)])
    row_of = {image_key(image): row for row, image in enumerate(images)}
    assert len(row_of) == len(images)  # every image told apart by its pixels
    dataset = training_dataset(shards, 16, seed, **options)
    return np.array([row_of[image_key(image)] for _ in range(epochs) for x, _ in dataset for image in x.numpy()])


def shares(cells: pd.Series) -> dict:
    return (cells.value_counts() / len(cells)).to_dict()


def test_strata_name_each_images_cell_of_the_draw():
    records = pd.DataFrame({"label": [1, 0, 0, 1, 0], "band": ["small", "full_size", "small", "small", "full_size"],
                            "source": ["b", "a", "b", "b", "b"]})
    assert sampling_strata(records, "class_weight", "none") is None and sampling_strata(records, "none", "none") is None
    oversample = sampling_strata(records, "oversample", "none")
    assert oversample.dtype == np.int64
    np.testing.assert_array_equal(oversample, records["label"])
    np.testing.assert_array_equal(sampling_strata(records, "none", "band"), [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(sampling_strata(records, "class_weight", "source"), [1, 0, 1, 1, 1])
    # (full_size, 0), (small, 0), (small, 1): cells that hold no image are no cells
    np.testing.assert_array_equal(sampling_strata(records, "oversample", "band"), [2, 0, 1, 2, 0])


def test_band_balance_draws_each_band_equally_often_and_the_same_seed_the_same_stream(shards):
    bands = split_records(shards, "train")["band"]
    natural = bands.iloc[drawn_rows(shards, 3)]
    balanced = drawn_rows(shards, 3, balance="band")
    assert shares(natural)["full_size"] < 0.3 and len(balanced) == len(natural)
    assert shares(bands.iloc[balanced])["full_size"] == pytest.approx(0.5, abs=0.1)
    np.testing.assert_array_equal(balanced, drawn_rows(shards, 3, balance="band"))
    assert not np.array_equal(balanced, drawn_rows(shards, 4, balance="band"))


def test_oversample_with_band_balance_draws_each_band_and_label_cell_equally_often(shards):
    table = split_records(shards, "train")
    cells = table["band"] + "/" + table["label"].astype(str)
    drawn = shares(cells.iloc[drawn_rows(shards, 3, imbalance="oversample", balance="band")])
    assert len(drawn) == 4 and all(share == pytest.approx(0.25, abs=0.08) for share in drawn.values()), drawn


def test_source_balance_draws_each_source_equally_often(shards):
    sources = split_records(shards, "train")["source"]
    assert min(shares(sources).values()) < 0.4
    drawn = shares(sources.iloc[drawn_rows(shards, 3, balance="source")])
    assert len(drawn) == 2 and all(share == pytest.approx(0.5, abs=0.1) for share in drawn.values()), drawn


def old_oversampled(examples: tf.data.Dataset, count: int, seed: int, label_of) -> tf.data.Dataset:
    """Oversampling as it was before train.balance: half benign, half malignant, by each example's label."""
    streams = [examples.filter(lambda *e, c=c: tf.equal(tf.cast(label_of(*e), tf.int64), c)).repeat() for c in (0, 1)]
    return tf.data.Dataset.sample_from_datasets(streams, [0.5, 0.5], seed=seed, rerandomize_each_iteration=True).take(count)


def old_stream(shards: Path, seed: int, oversample: bool) -> tf.data.Dataset:
    """The training images as the pipeline drew them before train.balance: oversampling filtered on the
    label parsed from each record."""
    files, count = shard_paths(shards, "train"), len(split_records(shards, "train"))
    records = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        .interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        .shuffle(min(count, 4096), seed=seed + 1, reshuffle_each_iteration=True)
    )
    if oversample:
        records = old_oversampled(records, count, seed + 2, lambda serialized: parse_example(serialized)["image/label"])
    return records.map(lambda serialized: tf.io.decode_jpeg(parse_example(serialized)["image/encoded"], channels=3))


@pytest.mark.parametrize("imbalance", ["oversample", "class_weight"])
def test_without_balance_the_stream_is_the_one_drawn_before(tiny_shards, imbalance):
    dataset = training_dataset(tiny_shards, 16, 5, imbalance=imbalance)
    before = old_stream(tiny_shards, 5, oversample=imbalance == "oversample")
    for _ in range(2):  # the second epoch too: each draws anew, both alike
        drawn = np.concatenate([x for x, _ in dataset])
        np.testing.assert_array_equal(drawn, np.stack(list(before.as_numpy_iterator()))[:len(drawn)])


def features_drawn(count: int, strata: np.ndarray | None) -> np.ndarray:
    """Rows drawn from cached features that are their own row numbers, over EPOCHS passes of one dataset."""
    rows = np.arange(count, dtype=np.float32)[:, None]
    dataset = feature_dataset(rows, np.zeros(count, np.float32), 16, 1, strata)
    return np.concatenate([x.numpy()[:, 0] for _ in range(EPOCHS) for x, _ in dataset]).astype(int)


def test_strata_balance_cached_features_as_they_do_images(shards):
    table = split_records(shards, "train")
    natural = features_drawn(len(table), None)
    assert shares(table["band"].iloc[natural])["full_size"] < 0.3
    by_band = features_drawn(len(table), sampling_strata(table, "none", "band"))
    assert shares(table["band"].iloc[by_band])["full_size"] == pytest.approx(0.5, abs=0.1) and len(by_band) == len(natural)
    np.testing.assert_array_equal(by_band, features_drawn(len(table), sampling_strata(table, "none", "band")))
    cells = table["band"] + "/" + table["label"].astype(str)
    drawn = shares(cells.iloc[features_drawn(len(table), sampling_strata(table, "oversample", "band"))])
    assert len(drawn) == 4 and all(share == pytest.approx(0.25, abs=0.08) for share in drawn.values()), drawn


def test_a_run_says_what_balance_draws_and_trains_on_cached_features_and_images_balanced(shards, tmp_path, caplog):
    params = FAST.model_copy(update={"weights": pretrained_weights(tmp_path), "epochs": 1, "fine_tune_epochs": 1,
                                     "imbalance": "oversample", "balance": "band"})
    with caplog.at_level(logging.INFO, logger="skincancer"):
        history = train(params, shards, tmp_path / "model.keras", tmp_path / "dvclive")
    assert history["phase"].tolist() == [1, 2] and np.isfinite(history["loss"]).all()
    counts = Counter(split_records(shards, "train")[["band", "label"]].itertuples(index=False))
    expected = ", ".join(f"{band}/{['benign', 'malignant'][label]} {counts[band, label]}" for band, label in sorted(counts))
    assert (f"train.balance band with train.imbalance oversample: each of 4 band/label cells drawn equally often "
            f"(training images: {expected})") in caplog.text
    assert "cached features" in caplog.text


def test_the_natural_mix_says_nothing(shards, caplog):
    with caplog.at_level(logging.INFO, logger="skincancer"):
        log_balance(split_records(shards, "train"), "oversample", "none")
        log_balance(split_records(shards, "train"), "class_weight", "band")
    assert caplog.text.count("train.balance") == 1 and "each of 2 bands drawn equally often" in caplog.text

"""data: the training input is seeded end to end (shuffle, augmentation, oversampling) and eval order is stable."""

import numpy as np
import pytest
from test_cross_validation import write_fold_shards

from skincancer.core.params import AugmentParams
from skincancer.train.data import (
    Roles,
    eval_dataset,
    feature_dataset,
    split_labels,
    split_records,
    training_dataset,
)


def batches(shards, seed, **options) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in training_dataset(shards, 16, seed, **options)]


@pytest.mark.parametrize("options", [{}, {"augment": AugmentParams()}, {"augment": AugmentParams(), "imbalance": "oversample"}])
def test_same_seed_same_batches_other_seed_other_batches(tiny_shards, options):
    first, again, other = batches(tiny_shards, 3, **options), batches(tiny_shards, 3, **options), batches(tiny_shards, 4, **options)
    assert len(first) == len(again) and all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again)
    )
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert all(x.shape == (16, 32, 32, 3) and x.dtype == np.uint8 for x, _ in first)  # full batches only


def test_augmentation_changes_images_and_keeps_labels(tiny_shards):
    plain = batches(tiny_shards, 3)
    augmented = batches(tiny_shards, 3, augment=AugmentParams())
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(plain, augmented))  # same order, same labels
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(plain, augmented))


def test_oversampling_balances_the_classes(tiny_shards):
    natural = np.concatenate([y for _, y in batches(tiny_shards, 3)])
    balanced = np.concatenate([y for _, y in batches(tiny_shards, 3, imbalance="oversample")])
    assert natural.mean() < 0.3 and 0.35 < balanced.mean() < 0.65 and len(balanced) == len(natural)


def test_split_labels_follow_eval_order(tiny_shards):
    labels = split_labels(tiny_shards, "val")
    from_images = np.concatenate([y.numpy() for _, y in eval_dataset(tiny_shards, "val", 5)])
    np.testing.assert_array_equal(labels, from_images)
    np.testing.assert_array_equal(labels, split_records(tiny_shards, "val")["label"].to_numpy())


def test_feature_dataset_shuffles_only_with_a_seed():
    features, labels = np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20) % 2
    ordered = np.concatenate([x.numpy() for x, _ in feature_dataset(features, labels, 8)])
    np.testing.assert_array_equal(ordered, features)  # evaluation: every row, in order, last batch kept
    shuffled = np.concatenate([x.numpy() for x, _ in feature_dataset(features, labels, 8, seed=0)])
    assert len(shuffled) == 16 and not np.array_equal(shuffled, features[:16])  # training: full batches


def test_a_fold_trains_on_the_other_folds_and_is_stopped_on_its_own():
    assert Roles() == Roles(("train",), ("val",))
    assert Roles.for_fold(1, 4) == Roles(("fold0", "fold2", "fold3"), ("fold1",))


def test_parts_read_as_one_in_the_manifest_order_whatever_order_they_are_named_in(tiny_shards, tmp_path):
    shards = write_fold_shards(tiny_shards.parent / "split", tmp_path / "shards")
    both = split_records(shards, ("fold2", "fold0"))
    assert both["image_id"].tolist() == (split_records(shards, "fold0")["image_id"].tolist()
                                         + split_records(shards, "fold2")["image_id"].tolist())
    evaluated = [(x.numpy(), y.numpy()) for x, y in eval_dataset(shards, ["fold2", "fold0"], 5)]
    np.testing.assert_array_equal(np.concatenate([y for _, y in evaluated]), split_labels(shards, ("fold0", "fold2")))
    (trained, _), = [(x.numpy(), y) for x, y in training_dataset(shards, len(both), 0, parts=("fold0", "fold2"))]
    assert sorted(image.tobytes() for image in trained) == sorted(
        image.tobytes() for images, _ in evaluated for image in images)  # every image of both parts, once
    with pytest.raises(FileNotFoundError, match=r"no shards for split 'train' \(it has fold0, fold1, fold2, test\)"):
        eval_dataset(shards, "train", 5)

"""train: deterministic on CPU, keeps the best-val-AUC model, writes the history, fine-tunes in phase 2."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from skincancer.data import eval_dataset, training_dataset
from skincancer.params import AugmentParams, TrainParams
from skincancer.train import class_weights, train

FAST = TrainParams(epochs=3, batch_size=16, early_stopping_patience=3, augment=AugmentParams(rotation=0.1))


def test_training_is_deterministic_and_writes_outputs(tiny_shards, tmp_path):
    first = train(FAST, tiny_shards, tmp_path / "a/model.keras", tmp_path / "a/history.csv")
    second = train(FAST, tiny_shards, tmp_path / "b/model.keras", tmp_path / "b/history.csv")
    pd.testing.assert_frame_equal(first, second)
    assert (tmp_path / "a/history.csv").read_bytes() == (tmp_path / "b/history.csv").read_bytes()
    assert list(first.columns[:2]) == ["epoch", "phase"] and {"auc", "val_auc", "loss"} <= set(first.columns)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["history.csv", "model.keras"]  # no checkpoint left
    images = np.concatenate([x for x, _ in eval_dataset(tiny_shards, "val", 64)])
    a = keras.saving.load_model(tmp_path / "a/model.keras").predict(images, verbose=0)
    b = keras.saving.load_model(tmp_path / "b/model.keras").predict(images, verbose=0)
    np.testing.assert_array_equal(a, b)


def test_saved_model_is_the_best_validation_epoch(tiny_shards, tmp_path):
    history = train(FAST, tiny_shards, tmp_path / "model.keras", tmp_path / "history.csv")
    model = keras.saving.load_model(tmp_path / "model.keras")
    model.compile(metrics=[keras.metrics.AUC(name="auc")])
    auc = model.evaluate(eval_dataset(tiny_shards, "val", 64), return_dict=True, verbose=0)["auc"]
    assert auc == pytest.approx(history["val_auc"].max(), abs=1e-3)


def test_fine_tuning_phase_follows_a_pretrained_backbone(tiny_shards, tmp_path):
    from skincancer.backbones import BACKBONES
    from skincancer.models import build_backbone

    weights = tmp_path / "backbone.weights.h5"
    build_backbone(BACKBONES["small_cnn"], 32, None).save_weights(weights)
    params = FAST.model_copy(update={"weights": str(weights), "epochs": 2, "fine_tune_epochs": 2, "fine_tune_layers": 4})
    history = train(params, tiny_shards, tmp_path / "model.keras", tmp_path / "history.csv")
    assert history["phase"].tolist()[:2] == [1, 1] and 2 in history["phase"].tolist()
    assert history["epoch"].tolist() == list(range(len(history)))


def test_balanced_class_weights(tiny_shards):
    counts = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["train"]
    weights = class_weights(tiny_shards, "balanced")
    assert weights[0] * counts["benign"] == pytest.approx(weights[1] * counts["malignant"])
    assert class_weights(tiny_shards, "none") is None


def test_training_batches_are_seeded(tiny_shards):
    def labels(seed):
        return np.concatenate([y.numpy() for _, y in training_dataset(tiny_shards, 16, seed)])

    assert (labels(3) == labels(3)).all()
    first_ids = [x.numpy().tobytes() for x, _ in training_dataset(tiny_shards, 200, 3)]
    other_ids = [x.numpy().tobytes() for x, _ in training_dataset(tiny_shards, 200, 4)]
    assert first_ids != other_ids

"""train stage: phase 1 (head, or whole net from scratch), optional phase 2 fine-tuning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from skincancer.atomic import atomic_write_text
from skincancer.data import read_shard_manifest, training_dataset, eval_dataset
from skincancer.models import build_model, unfreeze_top
from skincancer.params import TrainParams

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """No epoch produced a finite validation AUC (NaN loss, or a learning rate far too high)."""


def make_deterministic(seed: int) -> None:
    """Same seed => same weights and metrics on CPU (GPU kernels may still differ slightly)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(shards_dir: Path, policy: str) -> dict[int, float] | None:
    """'balanced': weight each class by n / (2 n_c), so the rare malignant class counts as much."""
    if policy == "none":
        return None
    train = read_shard_manifest(shards_dir)["splits"]["train"]
    counts = {0: train["benign"], 1: train["malignant"]}
    total = sum(counts.values())
    return {label: total / (2 * count) for label, count in counts.items()}


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def _callbacks(checkpoint: Path, patience: int, best_so_far: float | None) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_auc", mode="max", save_best_only=True, initial_value_threshold=best_so_far
        ),
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience, restore_best_weights=True),
    ]


def _history_frame(history: keras.callbacks.History, phase: int, first_epoch: int) -> pd.DataFrame:
    frame = pd.DataFrame(history.history)
    frame.insert(0, "phase", phase)
    frame.insert(0, "epoch", range(first_epoch, first_epoch + len(frame)))
    return frame


def train(params: TrainParams, shards_dir: Path, model_path: Path, history_path: Path) -> pd.DataFrame:
    """Fit, keep the best-validation-AUC model at model_path, write the per-epoch history CSV."""
    make_deterministic(params.seed)
    image_size = read_shard_manifest(shards_dir)["image_size"]
    model, backbone = build_model(params, image_size)
    train_ds = training_dataset(shards_dir, params.batch_size, params.seed)
    val_ds = eval_dataset(shards_dir, "val", params.batch_size)
    weights = class_weights(shards_dir, params.class_weight)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = model_path.with_name(f".{model_path.stem}.checkpoint-{os.getpid()}.keras")
    try:
        _compile(model, params.learning_rate)
        phase1 = model.fit(
            train_ds, validation_data=val_ds, epochs=params.epochs, class_weight=weights, shuffle=False,
            callbacks=_callbacks(checkpoint, params.early_stopping_patience, None), verbose=2,
        )
        history = [_history_frame(phase1, 1, 0)]
        if params.fine_tune_epochs and params.weights is not None:
            unfreeze_top(backbone, params.fine_tune_layers)
            _compile(model, params.fine_tune_learning_rate)
            best = max((v for v in phase1.history["val_auc"] if v == v), default=None)
            phase2 = model.fit(
                train_ds, validation_data=val_ds, epochs=params.fine_tune_epochs, class_weight=weights, shuffle=False,
                callbacks=_callbacks(checkpoint, params.early_stopping_patience, best), verbose=2,
            )
            history.append(_history_frame(phase2, 2, len(history[0])))
        if not checkpoint.exists():
            raise TrainingDiverged(
                "no epoch reached a finite validation AUC (NaN loss?); lower train.learning_rate in params.yaml"
            )
        os.replace(checkpoint, model_path)
    finally:
        checkpoint.unlink(missing_ok=True)
    frame = pd.concat(history, ignore_index=True)
    atomic_write_text(history_path, frame.to_csv(index=False, float_format="%.6g"))
    return frame

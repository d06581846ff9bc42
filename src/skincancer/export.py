"""Serving exports of the trained classifier: uint8 RGB images in, its raw malignant score out (the uncalibrated
P(malignant); metrics.json's `calibration` maps it to a probability), no Python needed.

The preprocessing is inside the model, so an export takes the same raw pixels `skincancer predict`
feeds it (shard-sized, as the model's input shape says).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from skincancer.atomic import atomic_dir, atomic_write_bytes


def export_savedmodel(model: keras.Model, out: Path) -> Path:
    """A TensorFlow SavedModel with a `serve` signature (TF Serving, tf.saved_model.load)."""
    with atomic_dir(out) as partial:
        model.export(str(partial), format="tf_saved_model", verbose=False)
    return out


def export_tflite(model: keras.Model, out: Path) -> Path:
    """A TFLite flatbuffer (mobile, edge), converted from a SavedModel of the same model."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        atomic_write_bytes(out, tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    return out


EXPORTERS: dict[str, tuple[Callable[[keras.Model, Path], Path], str]] = {
    "savedmodel": (export_savedmodel, "model_savedmodel"),
    "tflite": (export_tflite, "model.tflite"),
}

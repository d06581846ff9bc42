"""Serving exports of the evaluated classifier, in float32 whatever precision trained it, no Python needed.

A SavedModel has two signatures, both returning the model's raw score (the uncalibrated P(malignant),
averaged over the card's evaluated views; the card's `evaluation.calibration` maps it to a probability):
  serve        uint8 RGB images at the card's size, prepared as the shard stage prepares them;
  serve_bytes  encoded JPEG/PNG/GIF/BMP files, prepared in-graph (skincancer.serve.serving_graph).
The export carries the model card beside it (card.json). TFLite is converted from the uint8 signature.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_bytes
from skincancer.core.model_card import ModelCard
from skincancer.evaluate.inference import score_in_graph
from skincancer.serve.serving_graph import prepare_bytes


def _archive(model: keras.Model, card: ModelCard) -> keras.export.ExportArchive:
    how = card.preparation
    size = how.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images: tf.Tensor) -> tf.Tensor:
        return score_in_graph(model, images, card.tta, card.tta_scales)

    def serve_bytes(files: tf.Tensor) -> tf.Tensor:
        images = tf.map_fn(
            lambda contents: prepare_bytes(contents, size, how.resize, how.jpeg_quality, how.color_constancy),
            files, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )
        return serve(images)

    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")])
    archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return archive


def export_savedmodel(model: keras.Model, card: ModelCard, out: Path) -> Path:
    """A TensorFlow SavedModel (TF Serving, tf.saved_model.load) with card.json in it."""
    with atomic_dir(out) as partial:
        _archive(model, card).write_out(str(partial), verbose=False)
        shutil.copyfile(card.path, partial / "card.json")
    return out


def export_tflite(model: keras.Model, card: ModelCard, out: Path) -> Path:
    """A TFLite flatbuffer (mobile, edge) of the uint8 signature, converted from the same SavedModel; its
    card beside it as <name>.card.json."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        _archive(model, card).write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
        flatbuffer = converter.convert()
    with atomic_path(out.with_name(out.name + ".card.json")) as partial:
        shutil.copyfile(card.path, partial)
    atomic_write_bytes(out, flatbuffer)
    return out


EXPORTERS: dict[str, tuple[Callable[[keras.Model, ModelCard, Path], Path], str]] = {
    "savedmodel": (export_savedmodel, "model_savedmodel"),
    "tflite": (export_tflite, "model.tflite"),
}

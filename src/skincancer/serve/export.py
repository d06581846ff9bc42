"""Serving exports of the evaluated classifier, in float32 whatever precision trained it, no Python needed.

A SavedModel has two signatures, both returning the model's raw score (the uncalibrated P(malignant),
averaged over the card's evaluated views; the card's `evaluation.calibration` maps it to a probability):
  serve        uint8 RGB images at the card's size, prepared as the shard stage prepares them;
  serve_bytes  encoded JPEG/PNG/GIF/BMP files, prepared in-graph (skincancer.serve.serving_graph).
The export carries the model card beside it (card.json). TFLite is converted from the uint8 signature.

A model trained with patient context (the card's `context`) takes, in both signatures beside the image, one
named (batch,) input per field the card records, encoded in-graph as `skincancer predict` encodes its CSV
(serving_graph.ContextEncoder): `age` float32 in years (NaN: missing), `sex` and `site` strings in any of the
card's spellings ("" or an unknown spelling: missing). TFLite's built-in ops cannot strip or lower-case
strings, so its uint8 signature takes instead `context`: the encoded float32 vector, (batch, columns), built as
the card's `context` record says (its columns, each field's spellings and the missing indicators).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import tensorflow as tf

from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_bytes
from skincancer.core.model_card import ModelCard
from skincancer.evaluate.inference import score_in_graph
from skincancer.serve.context import check_context
from skincancer.serve.serving_graph import ContextEncoder, prepare_bytes
from skincancer.train.models import CONTEXT_INPUT, IMAGE_INPUT

ToVector = Callable[[Sequence[tf.Tensor]], tf.Tensor]


def _context_inputs(encoding: dict | None, encoded: bool, archive: keras.export.ExportArchive,
                    ) -> tuple[list[tf.TensorSpec], ToVector | None]:
    """The signatures' inputs after the image, and how they become the model's context vector: none for an
    image-only model; the fields, encoded in-graph; or (`encoded`, for TFLite) the vector itself."""
    if encoding is None:
        return [], None
    if encoded:
        return [tf.TensorSpec([None, len(encoding["columns"])], tf.float32, name=CONTEXT_INPUT)], lambda values: values[0]
    encoder = ContextEncoder(encoding)
    archive.track(encoder)  # its lookup tables
    return encoder.input_specs(), encoder


def _archive(model: keras.Model, card: ModelCard, encoded_context: bool = False) -> keras.export.ExportArchive:
    how = card.preparation
    size = how.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    context_specs, to_vector = _context_inputs(check_context(model, card), encoded_context, archive)

    def score(images: tf.Tensor, context: Sequence[tf.Tensor]) -> tf.Tensor:
        inputs = images if to_vector is None else {IMAGE_INPUT: images, CONTEXT_INPUT: to_vector(context)}
        return score_in_graph(model, inputs, card.tta, card.tta_scales)

    def serve(images: tf.Tensor, *context: tf.Tensor) -> tf.Tensor:
        return score(images, context)

    def serve_bytes(files: tf.Tensor, *context: tf.Tensor) -> tf.Tensor:
        images = tf.map_fn(
            lambda contents: prepare_bytes(contents, size, how.resize, how.jpeg_quality, how.color_constancy),
            files, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )
        return score(images, context)

    image_spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")
    archive.add_endpoint("serve", serve, input_signature=[image_spec, *context_specs])
    archive.add_endpoint("serve_bytes", serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"), *context_specs])
    return archive


def export_savedmodel(model: keras.Model, card: ModelCard, out: Path) -> Path:
    """A TensorFlow SavedModel (TF Serving, tf.saved_model.load) with card.json in it."""
    with atomic_dir(out) as partial:
        _archive(model, card).write_out(str(partial), verbose=False)
        shutil.copyfile(card.path, partial / "card.json")
    return out


def export_tflite(model: keras.Model, card: ModelCard, out: Path) -> Path:
    """A TFLite flatbuffer (mobile, edge) of the uint8 signature, converted from the same SavedModel (a context
    model's taking the encoded vector); its card beside it as <name>.card.json."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        _archive(model, card, encoded_context=True).write_out(str(saved), verbose=False)
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

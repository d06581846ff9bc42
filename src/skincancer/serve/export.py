"""Serving exports of the evaluated classifier, in float32 whatever precision trained it, no Python needed.

A SavedModel has two signatures, both returning the model's raw score (the uncalibrated P(malignant),
averaged over the card's evaluated views; the card's `evaluation.calibration` maps it to a probability):
  serve        uint8 RGB images at the card's size, prepared as the shard stage prepares them;
  serve_bytes  encoded JPEG/PNG/GIF/BMP files, prepared in-graph (skincancer.serve.serving_graph).
Where the card records an out-of-distribution fit (skincancer.evaluate.ood), two more take the same inputs and
return {score, ood_score, in_distribution}: the score as above, the image's out-of-distribution score and whether it
is within the card's cut-off (false: unlike the training images, its score is not to be trusted):
  serve_ood, serve_bytes_ood.
The export carries the model card beside it (card.json, with the fit's ood.npz). TFLite is converted from the
uint8 signature.

A model trained with patient context (the card's `context`) takes, in both signatures beside the image, one
named (batch,) input per field the card records, encoded in-graph as `skincancer predict` encodes its CSV
(serving_graph.ContextEncoder): `age` float32 in years (NaN: missing), `sex` and `site` strings in any of the
card's spellings ("" or an unknown spelling: missing). TFLite's built-in ops cannot strip or lower-case
strings, so its uint8 signature takes instead `context`: the encoded float32 vector, (batch, columns), built as
the card's `context` record says (its columns, each field's spellings and the missing indicators).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import tensorflow as tf

from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_bytes
from skincancer.core.model_card import ModelCard
from skincancer.evaluate.inference import Inputs, score_in_graph
from skincancer.evaluate.ood import feature_scorer, read_flag, scores_and_features_in_graph
from skincancer.serve.context import check_context
from skincancer.serve.serving_graph import ContextEncoder, prepare_bytes
from skincancer.train.models import CONTEXT_INPUT, IMAGE_INPUT

ToVector = Callable[[Sequence[tf.Tensor]], tf.Tensor]
log = logging.getLogger(__name__)


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
    flag = read_flag(card, "the export has no serve_ood signatures (export again once evaluate has rerun)")
    scorer = None if flag is None else feature_scorer(model)

    def inputs_of(images: tf.Tensor, context: Sequence[tf.Tensor]) -> Inputs:
        return images if to_vector is None else {IMAGE_INPUT: images, CONTEXT_INPUT: to_vector(context)}

    def score(images: tf.Tensor, context: Sequence[tf.Tensor]) -> tf.Tensor:
        return score_in_graph(model, inputs_of(images, context), card.tta, card.tta_scales)

    def checked(images: tf.Tensor, context: Sequence[tf.Tensor]) -> dict[str, tf.Tensor]:
        scores, features = scores_and_features_in_graph(scorer, inputs_of(images, context), card.tta, card.tta_scales)
        ood_score = flag.fit.score_in_graph(features)
        return {"score": scores, "ood_score": ood_score, "in_distribution": ood_score <= flag.cutoff}

    def prepared(files: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(
            lambda contents: prepare_bytes(contents, size, how.resize, how.jpeg_quality, how.color_constancy),
            files, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )

    def serve(images: tf.Tensor, *context: tf.Tensor) -> tf.Tensor:
        return score(images, context)

    def serve_bytes(files: tf.Tensor, *context: tf.Tensor) -> tf.Tensor:
        return score(prepared(files), context)

    def serve_ood(images: tf.Tensor, *context: tf.Tensor) -> dict[str, tf.Tensor]:
        return checked(images, context)

    def serve_bytes_ood(files: tf.Tensor, *context: tf.Tensor) -> dict[str, tf.Tensor]:
        return checked(prepared(files), context)

    image_spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    archive.add_endpoint("serve", serve, input_signature=[image_spec, *context_specs])
    archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[bytes_spec, *context_specs])
    if flag is not None:
        archive.track(scorer)
        archive.add_endpoint("serve_ood", serve_ood, input_signature=[image_spec, *context_specs])
        archive.add_endpoint("serve_bytes_ood", serve_bytes_ood, input_signature=[bytes_spec, *context_specs])
    return archive


def export_savedmodel(model: keras.Model, card: ModelCard, out: Path) -> Path:
    """A TensorFlow SavedModel (TF Serving, tf.saved_model.load) with card.json in it."""
    with atomic_dir(out) as partial:
        _archive(model, card).write_out(str(partial), verbose=False)
        shutil.copyfile(card.path, partial / "card.json")
        if card.ood is not None:  # the card names its fit's file beside it
            shutil.copyfile(card.ood_path, partial / card.ood_path.name)
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

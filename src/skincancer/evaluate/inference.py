"""The one way a trained model scores images: load it for inference, prepare each file as the shard stage
did, decode, and average over the evaluated views. evaluate, `skincancer predict`, the exports and
Grad-CAM all call these, so they cannot drift apart.

A model trained with patient context (train.metadata) takes two named inputs, `image` (uint8) and `context`
(float32, skincancer.core.patient_context's vector), and is scored on {"image": ..., "context": ...}; a model
without takes the image alone, as before.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from skincancer.core.preparation import Preparation
from skincancer.shard.prepare import EncodeJob, encode_file
from skincancer.train.augment import lose_resolution
from skincancer.train.models import CONTEXT_INPUT, on_image  # also registers the saved models' layers

View = Callable[[tf.Tensor], tf.Tensor]
Inputs = tf.Tensor | Mapping[str, tf.Tensor]  # uint8 images, or {"image": images, "context": vectors}
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


class ModelUnreadable(ValueError):
    """The model file cannot be loaded here (another Keras version, a damaged file)."""


def _transpose(images: tf.Tensor) -> tf.Tensor:
    return tf.transpose(images, [0, 2, 1, 3])


# The dihedral group of the square, ordered so the first n are the natural choice for evaluate.tta = n:
# 2 = a mirror, 4 = all flips, 8 = flips and quarter turns. Lesions have no up or left.
DIHEDRAL: tuple[View, ...] = (
    lambda x: x,
    lambda x: x[:, :, ::-1],
    lambda x: x[:, ::-1],
    lambda x: x[:, ::-1, ::-1],
    _transpose,
    lambda x: _transpose(x)[:, :, ::-1],
    lambda x: _transpose(x)[:, ::-1],
    lambda x: _transpose(x)[:, ::-1, ::-1],
)


def at_scale(images: tf.Tensor, scale: float) -> tf.Tensor:
    """uint8 images as they would look photographed at `scale` of their side and upsampled back."""
    if scale == 1.0:
        return images
    smaller = lose_resolution(tf.cast(images, tf.float32), scale)
    return tf.cast(tf.round(tf.clip_by_value(smaller, 0.0, 255.0)), tf.uint8)


def views(tta: int = 1, scales: Sequence[float] = (1.0,)) -> list[View]:
    """The first `tta` dihedral views, each at every scale: what a score averages over (evaluate.tta)."""
    return [lambda x, view=view, scale=scale: at_scale(view(x), scale) for view in DIHEDRAL[:tta] for scale in scales]


def predict_images(
    model: keras.Model, images: tf.data.Dataset, tta: int = 1, scales: Sequence[float] = (1.0,)
) -> np.ndarray:
    """The model's score for batches of uint8 images (or of {"image", "context"} for a context model), averaged
    over `views`: a model that sees each image also at half its detail answers alike for a half-size copy."""
    scores = [model.predict(images.map(lambda inputs, view=view: on_image(inputs, view)), verbose=0).reshape(-1) for view in views(tta, scales)]
    return np.mean(scores, axis=0, dtype=np.float64)


def score_in_graph(model: keras.Model, images: Inputs, tta: int = 1, scales: Sequence[float] = (1.0,)) -> tf.Tensor:
    """predict_images as one TensorFlow function of a uint8 batch (or {"image", "context"}; the exports'
    signatures): (batch,) scores."""
    scores = [tf.reshape(tf.cast(model(on_image(images, view), training=False), tf.float32), [-1])
              for view in views(tta, scales)]
    return tf.add_n(scores) / len(scores)


def context_width(model: keras.Model) -> int | None:
    """The length of the patient context vector the model takes beside the image; None for an image-only model."""
    widths = [int(tensor.shape[-1]) for tensor in model.inputs if tensor.name == CONTEXT_INPUT]
    return widths[0] if widths else None


@dataclass(frozen=True)
class Prepared:
    """One file as the model takes it: the shard stage's JPEG bytes, or why it could not be read."""

    path: Path
    jpeg: bytes | None
    error: str | None


def prepare(path: Path, preparation: Preparation) -> Prepared:
    """The shard stage's own encoding; an unreadable file becomes an error, not a crash."""
    try:
        encoded = encode_file(EncodeJob(str(path), preparation))
    except OSError as error:
        return Prepared(path, None, f"unreadable: {error.strerror or error}")
    return Prepared(path, None, encoded) if isinstance(encoded, str) else Prepared(path, encoded.data, None)


def decode(jpeg: tf.Tensor | bytes) -> tf.Tensor:
    """A prepared image's pixels, decoded as the training input pipeline decodes its shards."""
    return tf.io.decode_jpeg(jpeg, channels=3)


def _saved_keras_version(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("metadata.json")).get("keras_version", "unknown"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return "unknown (not a .keras archive)"


def _float32_config(config: object) -> object:
    """A model config with every mixed-precision dtype policy made float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") in MIXED_POLICIES:
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def float32_copy(model: keras.Model) -> keras.Model:
    """The model computing in float32, whatever precision trained it: float16 on a CPU is slow and no
    more accurate, and serving runtimes expect float32. The same model where it already is."""
    config = keras.saving.serialize_keras_object(model)
    converted = _float32_config(config)
    if converted == config:
        return model
    copy = keras.saving.deserialize_keras_object(converted)
    copy.set_weights(model.get_weights())
    return copy


def load_for_inference(path: Path) -> keras.Model:
    """The trained model in float32; a file this Keras cannot load is refused naming both versions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro train` (or pass --model)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises anything from TypeError to its own errors for a foreign file
        saved = _saved_keras_version(path)
        raise ModelUnreadable(
            f"{path} cannot be loaded (saved by Keras {saved}, this is Keras {keras.__version__}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); retrain it here "
            f"(`dvc repro train`) or load it with Keras {saved}"
        ) from None
    return float32_copy(model)

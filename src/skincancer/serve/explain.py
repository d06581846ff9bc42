"""Grad-CAM: where in the image the malignancy score came from (Selvaraju et al., 2017).

The classifier is preprocess -> backbone -> pool -> head (a sigmoid, or a diagnosis softmax summed over the
malignant classes; a context model's head also reads the patient context); the backbone's output, the pool's
input, is its last convolutional feature map, which Grad-CAM weighs by the saved model's score's mean gradient
per channel.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from skincancer.evaluate.figures import plt, png_bytes
from skincancer.train.ensemble import MEAN_LAYER
from skincancer.train.models import CONTEXT_INPUT, IMAGE_INPUT


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The fold models nested in a cross-validated ensemble (skincancer.train.ensemble); none for one network."""
    if MEAN_LAYER not in {layer.name for layer in model.layers}:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def grad_cam(model: keras.Model, image: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
    """A [0, 1] heat map at the image's size for one uint8 image (and, for a context model, its context
    vector); higher = pushed the score up. An ensemble's is the mean of its members' maps: each member has its
    own feature maps, and the ensemble's score is their scores' mean."""
    if members := ensemble_members(model):
        return np.mean([grad_cam(member, image, context) for member in members], axis=0)
    probe = keras.Model(model.inputs, [model.get_layer("pool").input, model.output])
    inputs = tf.constant(image[np.newaxis])
    if context is not None:
        inputs = {IMAGE_INPUT: inputs, CONTEXT_INPUT: tf.constant(context[np.newaxis], tf.float32)}
    with tf.GradientTape() as tape:
        maps, score = probe(inputs, training=False)
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(maps, tf.float32), axis=-1))[0]
    cam = cam / (tf.reduce_max(cam) + 1e-8)
    return tf.image.resize(cam[..., tf.newaxis], image.shape[:2], method="bilinear")[..., 0].numpy()


def overlay_png(image: np.ndarray, heat: np.ndarray, title: str) -> bytes:
    """The image with the heat map over it (jet, half transparent), as PNG bytes."""
    figure, axes = plt.subplots(figsize=(3.2, 3.4))
    axes.imshow(image)
    axes.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes.set_title(title, fontsize=8)
    axes.axis("off")
    return png_bytes(figure)

"""Grad-CAM: where in the image the malignancy score came from (Selvaraju et al., 2017).

The classifier is preprocess -> backbone -> pool -> dropout -> head (a sigmoid, or a diagnosis softmax
summed over the malignant classes); the backbone's output is its last convolutional feature map, which
Grad-CAM weighs by the malignant score's mean gradient per channel.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from skincancer.evaluate.figures import plt, png_bytes
from skincancer.train.models import malignant_score


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model (the one layer that is itself a model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def grad_cam(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """A [0, 1] heat map at the image's size for one uint8 image; higher = pushed the score up."""
    backbone = backbone_of(model)
    x = model.get_layer("preprocess")(tf.constant(image[np.newaxis]))
    with tf.GradientTape() as tape:
        maps = backbone(x, training=False)
        tape.watch(maps)
        pooled = model.get_layer("pool")(maps)
        score = malignant_score(model, pooled)
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

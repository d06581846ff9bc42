"""On-the-fly dermoscopy augmentation inside tf.data, kept out of the saved model.

Every random draw is a stateless op keyed by a per-image seed, so a training seed gives the same
augmented batches whatever the tf.data parallelism; the work runs on the input pipeline's CPU
threads while the accelerator trains. Lesions have no canonical orientation: flips on both axes,
any rotation, a little zoom and colour jitter (dermatoscopes differ in lighting) keep the label.
Resolution loss (down and back up) stands for the smaller photos of other cameras and of downsized
copies: the shard stage upsamples those to the model's size, so their detail is gone.
"""

from __future__ import annotations

import math

import tensorflow as tf

from skincancer.core.params import AugmentParams


def _rotate_and_zoom(image: tf.Tensor, angle: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """One projective transform about the centre (one interpolation for both), edges reflected."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    # maps each output pixel to the input pixel it samples: scale * R(angle) about the centre
    transform = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    )[tf.newaxis]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )[0]


def lose_resolution(image: tf.Tensor, fraction: tf.Tensor | float) -> tf.Tensor:
    """Down to `fraction` of each side (antialiased, as a photo taken smaller) and back up to the same shape;
    float images or batches of them (evaluate's multi-scale TTA shares it)."""
    size = tf.shape(image)[-3:-1]
    smaller = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * fraction), tf.int32), 1)
    return tf.image.resize(tf.image.resize(image, smaller, antialias=True), size)


def augmenter(params: AugmentParams):
    """(uint8 image, int64[2] seed) -> augmented uint8 image of the same shape."""

    def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        flip_lr, flip_ud, turn, zoom, bright, contrast, saturate = tf.unstack(
            tf.random.experimental.stateless_split(seed, num=7)
        )
        x = tf.cast(image, tf.float32) / 255.0
        if params.resolution:  # its own stream, so the other draws stay what they were without it
            detail = tf.random.experimental.stateless_fold_in(seed, 7)
            x = lose_resolution(x, tf.random.stateless_uniform([], detail, 1 - params.resolution, 1.0))
        if params.flip:
            x = tf.image.stateless_random_flip_left_right(x, flip_lr)
            x = tf.image.stateless_random_flip_up_down(x, flip_ud)
        if params.rotation or params.zoom:
            limit = params.rotation * 2 * math.pi
            angle = tf.random.stateless_uniform([], turn, -limit, limit)
            scale = tf.random.stateless_uniform([], zoom, 1 - params.zoom, 1 + params.zoom)
            x = _rotate_and_zoom(x, angle, scale)
        if params.color:
            x = tf.image.stateless_random_brightness(x, params.color, bright)
            x = tf.image.stateless_random_contrast(x, 1 - params.color, 1 + params.color, contrast)
            x = tf.image.stateless_random_saturation(
                tf.clip_by_value(x, 0.0, 1.0), 1 - params.color, 1 + params.color, saturate
            )
        return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)

    return augment

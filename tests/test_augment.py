"""augment: stateless, seeded, label-preserving transforms that keep uint8 images their shape; resolution loss
takes out the detail a smaller photo lacks, and nothing else."""

import math

import numpy as np
import pytest
import tensorflow as tf

from skincancer.core.params import AugmentParams
from skincancer.train.augment import _rotate_and_zoom, augmenter

IMAGE = np.random.default_rng(0).integers(0, 256, size=(9, 9, 3), dtype=np.uint8)
OFF = AugmentParams(flip=False, rotation=0, zoom=0, color=0)


def augmented(params: AugmentParams, seed: tuple[int, int]) -> np.ndarray:
    return augmenter(params)(tf.constant(IMAGE), tf.constant(seed, tf.int64)).numpy()


def test_all_off_is_the_identity():
    assert not OFF.active
    np.testing.assert_array_equal(augmented(OFF, (1, 2)), IMAGE)


def test_quarter_turn_is_an_exact_rotation():
    turned = _rotate_and_zoom(tf.constant(IMAGE, tf.float32), tf.constant(math.pi / 2), tf.constant(1.0)).numpy()
    assert any(np.allclose(turned, np.rot90(IMAGE, k, axes=(0, 1)), atol=1e-3) for k in (1, 3))


def test_flips_only_give_one_of_the_four_mirror_images():
    mirrors = [IMAGE, IMAGE[::-1], IMAGE[:, ::-1], IMAGE[::-1, ::-1]]
    seen = set()
    for seed in range(16):
        out = augmented(OFF.model_copy(update={"flip": True}), (seed, 0))
        index = next(i for i, m in enumerate(mirrors) if np.array_equal(out, m))
        seen.add(index)
    assert seen == {0, 1, 2, 3}  # flips on both axes, each seen


@pytest.mark.parametrize("params", [AugmentParams(), OFF.model_copy(update={"color": 0.3})])
def test_same_seed_same_image_other_seed_other_image(params):
    a, b, c = augmented(params, (3, 4)), augmented(params, (3, 4)), augmented(params, (3, 5))
    assert a.dtype == np.uint8 and a.shape == IMAGE.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_colour_jitter_stays_near_the_original():
    out = augmented(OFF.model_copy(update={"color": 0.1}), (7, 7)).astype(int)
    assert np.abs(out - IMAGE.astype(int)).mean() < 0.2 * 255


def fine_detail(image: np.ndarray) -> float:
    """Mean step between neighbouring pixels: high for sharp texture, low once it is blurred."""
    pixels = image.astype(np.float64)
    return float(np.abs(np.diff(pixels, axis=0)).mean() + np.abs(np.diff(pixels, axis=1)).mean())


def textured_image(size: int = 64) -> np.ndarray:
    """A smooth lesion-like blob under pixel-scale texture, as dermoscopy shows pigment network."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    blob = 200 - 120 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size**2 / 8))
    texture = rng.integers(-30, 30, (size, size))
    return np.clip(blob + texture, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def augmented_texture(params: AugmentParams, seed: int) -> np.ndarray:
    return augmenter(params)(tf.constant(textured_image()), tf.constant([seed, 1], tf.int64)).numpy()


def test_resolution_loss_blurs_fine_detail_and_keeps_the_picture():
    image = textured_image()
    lost = [augmented_texture(OFF.model_copy(update={"resolution": 0.5}), seed) for seed in range(8)]
    for copy in lost:
        assert copy.shape == image.shape and copy.dtype == np.uint8
        assert fine_detail(copy) < 0.8 * fine_detail(image)  # the texture a half-size photo lacks is gone
        assert abs(copy.astype(float).mean() - image.mean()) < 2  # the blob, its colour and place stay
    assert len({fine_detail(copy) for copy in lost}) > 1  # the fraction kept is drawn per image
    assert OFF.model_copy(update={"resolution": 0.5}).active


def test_resolution_loss_is_seeded_and_leaves_the_other_draws_alone():
    with_loss = AugmentParams(resolution=0.5)
    np.testing.assert_array_equal(augmented_texture(with_loss, 3), augmented_texture(with_loss, 3))
    # flips, rotation, zoom and colour draw as they do without it: the same frame, only its detail differs
    plain, lossy = augmented_texture(AugmentParams(), 3), augmented_texture(with_loss, 3)
    assert not np.array_equal(plain, lossy)
    assert np.abs(plain.astype(float) - lossy.astype(float)).mean() < 20
    other_draw = augmented_texture(AugmentParams(), 4)
    assert np.abs(plain.astype(float) - other_draw.astype(float)).mean() > np.abs(plain.astype(float) - lossy.astype(float)).mean()

"""augment: stateless, seeded, label-preserving transforms that keep uint8 images their shape."""

import math

import numpy as np
import pytest
import tensorflow as tf

from skincancer.augment import _rotate_and_zoom, augmenter
from skincancer.params import AugmentParams

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

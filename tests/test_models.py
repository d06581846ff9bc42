"""models: every registered backbone builds; the saved model takes raw uint8 RGB."""

import keras
import numpy as np
import pytest

from skincancer.backbones import BACKBONES
from skincancer.models import PixelPreprocessing, build_backbone, build_model
from skincancer.params import TrainParams


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_builds_without_downloads(name):
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    model, _ = build_model(TrainParams(backbone=name, weights=None), size)
    assert model.inputs[0].dtype == "uint8"
    assert model.outputs[0].shape == (None, 1)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.inception_v3.preprocess_input),
        ("raw", keras.applications.efficientnet.preprocess_input),
    ],
)
def test_preprocessing_matches_keras_applications(mode, reference):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    ours = keras.ops.convert_to_numpy(PixelPreprocessing(mode)(images))
    np.testing.assert_allclose(ours, reference(images.astype("float32")), rtol=1e-5, atol=1e-4)


def test_saved_model_round_trips_on_uint8(tmp_path):
    model, _ = build_model(TrainParams(), 32)
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    before = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    after = keras.saving.load_model(tmp_path / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(before, after, rtol=1e-6)
    assert ((after > 0) & (after < 1)).all()


def test_local_weights_file_is_loaded(tmp_path):
    spec = BACKBONES["small_cnn"]
    source = build_backbone(spec, 32, None)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(spec, 32, str(path))
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pretrained_backbone_starts_frozen(tmp_path):
    spec = BACKBONES["small_cnn"]
    path = tmp_path / "backbone.weights.h5"
    build_backbone(spec, 32, None).save_weights(path)
    _, backbone = build_model(TrainParams(weights=str(path)), 32)
    assert not backbone.trainable

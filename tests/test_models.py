"""models: every registered backbone builds; the saved model takes raw uint8 RGB."""

import keras
import numpy as np
import pandas as pd
import pytest

from skincancer.core.backbones import BACKBONES
from skincancer.core.params import Params, TrainParams
from skincancer.core.patient_context import context_columns
from skincancer.train.diagnosis_classes import MIN_CLASS_IMAGES, diagnosis_classes
from skincancer.train.hardware import set_precision
from skincancer.train.models import WITH_CONTEXT, PixelPreprocessing, build_backbone, build_classifier


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_builds_without_downloads(name):
    spec = BACKBONES[name]
    assert spec.default_size >= spec.min_size
    classifier = build_classifier(TrainParams(backbone=name, weights=None), max(spec.min_size, 32))
    assert classifier.model.inputs[0].dtype == "uint8"
    assert classifier.model.outputs[0].shape == (None, 1)


@pytest.mark.parametrize(("backbone", "size"), [("small_cnn", 96), ("efficientnet_b3", 300), ("inception_v3", 299)])
def test_auto_image_size_is_the_backbones_own(backbone, size):
    params = Params.model_validate({"shard": {"image_size": "auto"}, "train": {"backbone": backbone}})
    assert params.shard.image_size == size


def test_head_and_features_share_the_classifiers_layers():
    classifier = build_classifier(TrainParams(), 32)
    images = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    whole = classifier.model.predict(images, verbose=0)
    in_parts = classifier.head.predict(classifier.features.predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(whole, in_parts, rtol=1e-6)


def test_mixed_precision_keeps_a_float32_output():
    try:
        assert set_precision("mixed_float16") == "mixed_float16"
        model = build_classifier(TrainParams(backbone="mobilenet_v3_small"), 32).model
        assert model.get_layer("preprocess").compute_dtype == "float16"
        assert model.get_layer("malignant").compute_dtype == "float32"
        images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
        assert model.predict(images, verbose=0).dtype == np.float32
    finally:
        set_precision("float32")


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
    model = build_classifier(TrainParams(), 32).model
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    before = model.predict(images, verbose=0)
    model.save(tmp_path / "model.keras")
    after = keras.saving.load_model(tmp_path / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(before, after, rtol=1e-6)
    assert ((after > 0) & (after < 1)).all()


def test_local_weights_file_is_loaded(tmp_path):
    source = build_backbone("small_cnn", 32, None)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = build_backbone("small_cnn", 32, str(path))
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pretrained_backbone_starts_frozen(tmp_path):
    path = tmp_path / "backbone.weights.h5"
    build_backbone("small_cnn", 32, None).save_weights(path)
    assert not build_classifier(TrainParams(weights=str(path)), 32).backbone.trainable


def test_without_metadata_the_model_takes_the_image_alone():
    classifier = build_classifier(TrainParams(), 32)
    assert [tensor.name for tensor in classifier.model.inputs] == ["image"]
    assert [tensor.name for tensor in classifier.head.inputs] == ["features"]
    assert WITH_CONTEXT not in [layer.name for layer in classifier.model.layers]


@pytest.mark.parametrize(("fields", "head"), [(["sex"], "binary"), (["site", "age"], "binary"),
                                              (["age", "sex", "site"], "diagnosis")])
def test_with_metadata_the_context_sits_beside_the_pooled_features_in_model_and_head(fields, head):
    """The model takes {"image", "context"}; the head, which the frozen phase trains on cached features, takes
    {"features", "context"} and computes the same thing from the same layers."""
    records = pd.DataFrame({"label": [0, 1] * MIN_CLASS_IMAGES, "diagnosis": ["nevus", "melanoma"] * MIN_CLASS_IMAGES})
    classes = diagnosis_classes(records) if head == "diagnosis" else None
    classifier = build_classifier(TrainParams(metadata=fields, head=head), 32, classes)
    width = len(context_columns(fields))
    for model in (classifier.model, classifier.serving):
        assert [(tensor.name, tensor.shape) for tensor in model.inputs] == [("image", (None, 32, 32, 3)),
                                                                           ("context", (None, width))]
    assert classifier.serving.outputs[0].shape == (None, 1)
    assert [tensor.name for tensor in classifier.head.inputs] == ["features", "context"]
    assert classifier.model.get_layer("pool").output.shape == classifier.features.outputs[0].shape  # Grad-CAM's
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    context = rng.random((4, width)).astype(np.float32)
    whole = classifier.model.predict({"image": images, "context": context}, verbose=0)
    features = classifier.features.predict(images, verbose=0)
    in_parts = classifier.head.predict({"features": features, "context": context}, verbose=0)
    np.testing.assert_allclose(whole, in_parts, rtol=1e-6)
    other = classifier.model.predict({"image": images, "context": context[::-1]}, verbose=0)
    assert not np.allclose(whole, other)  # the context reaches the output

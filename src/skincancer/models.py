"""Model factory: raw uint8 RGB in, P(malignant) out; backbone chosen from the registry."""

from __future__ import annotations

import keras
from keras import layers

from skincancer.backbones import BACKBONES, BackboneSpec
from skincancer.params import AugmentParams, TrainParams


@keras.saving.register_keras_serializable(package="skincancer")
class PixelPreprocessing(layers.Layer):
    """Each backbone's own input convention, inside the model so callers always pass uint8 RGB."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            bgr = keras.ops.flip(x, axis=-1)
            return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68])
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def augmentation(params: AugmentParams, seed: int) -> list[layers.Layer]:
    """Label-preserving dermoscopy augmentations; active in training only."""
    pipeline: list[layers.Layer] = []
    if params.flip:
        pipeline.append(layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if params.rotation:
        pipeline.append(layers.RandomRotation(params.rotation, fill_mode="reflect", seed=seed + 1))
    if params.zoom:
        pipeline.append(layers.RandomZoom(params.zoom, fill_mode="reflect", seed=seed + 2))
    if params.color:
        pipeline.append(
            layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=params.color,
                contrast_factor=params.color,
                saturation_factor=params.color,
                seed=seed + 3,
            )
        )
    return pipeline


def _conv_bn_relu(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # short runs: moving statistics must settle fast
    return layers.ReLU()(x)


def small_cnn(input_shape: tuple[int, int, int]) -> keras.Model:
    """A few conv blocks: trains from scratch on a CPU in minutes (demo, tests)."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (16, 32, 64, 128):
        x = _conv_bn_relu(_conv_bn_relu(x, filters), filters)
        x = layers.MaxPooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def build_backbone(spec: BackboneSpec, image_size: int, weights: str | None) -> keras.Model:
    """keras.applications model without its top; weights 'imagenet', None, or a local file."""
    shape = (image_size, image_size, 3)
    if spec.application == "small_cnn":
        backbone = small_cnn(shape)
    else:
        constructor = getattr(keras.applications, spec.application)
        backbone = constructor(include_top=False, weights="imagenet" if weights == "imagenet" else None, input_shape=shape)
    if weights not in (None, "imagenet"):
        backbone.load_weights(weights)
    return backbone


def build_model(params: TrainParams, image_size: int) -> tuple[keras.Model, keras.Model]:
    """(classifier, backbone). A pretrained backbone starts frozen (phase 1 trains the head)."""
    spec = BACKBONES[params.backbone]
    backbone = build_backbone(spec, image_size, params.weights)
    pretrained = params.weights is not None
    backbone.trainable = not pretrained
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = PixelPreprocessing("none", name="to_float")(inputs)
    for layer in augmentation(params.augment, params.seed):
        x = layer(x)
    x = PixelPreprocessing(spec.preprocessing, name="preprocess")(x)
    # a pretrained backbone runs BatchNorm in inference mode, also once unfrozen (keras-io recipe)
    x = backbone(x, training=False if pretrained else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(params.dropout, seed=params.seed, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="malignant")(x)
    return keras.Model(inputs, outputs, name=f"skincancer_{params.backbone}"), backbone


def unfreeze_top(backbone: keras.Model, n_layers: int) -> None:
    """Phase 2: fine-tune the top layers; BatchNorm stays frozen so its statistics survive."""
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        in_top = index >= len(backbone.layers) - n_layers
        layer.trainable = in_top and not isinstance(layer, layers.BatchNormalization)

"""Model factory: raw uint8 RGB in (and, with train.metadata, the patient context beside the pooled image
features), P(malignant) out; backbone chosen from the registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import keras
from keras import layers

from skincancer.core.backbones import BACKBONES
from skincancer.core.params import TrainParams
from skincancer.core.patient_context import context_columns
from skincancer.train.diagnosis_classes import DiagnosisClasses
from skincancer.train.weights import WeightsError, imagenet_backbone, load_weights_file

# the model's named inputs: uint8 pixels, and (train.metadata) the patient context vector beside them
IMAGE_INPUT, CONTEXT_INPUT = "image", "context"


def on_image(inputs, change):
    """`change` applied to a model's pixels, whether it takes images alone or {"image", "context"}: the patient
    context is the image's whatever is done to the pixels (augmentation, test-time views)."""
    if isinstance(inputs, Mapping):
        return {**inputs, IMAGE_INPUT: change(inputs[IMAGE_INPUT])}
    return change(inputs)
WITH_CONTEXT = "with_context"  # the layer joining the image features and the context before the output layer


@keras.saving.register_keras_serializable(package="skincancer")
class PixelPreprocessing(layers.Layer):
    """Each backbone's own input convention, inside the model so callers always pass uint8 RGB."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            bgr = keras.ops.flip(x, axis=-1)
            return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def malignant_probability(probabilities, malignant_mask, keepdims: bool = False):
    """Diagnosis probabilities (..., classes) -> P(malignant): what the saved model and the training metrics sum."""
    return keras.ops.sum(probabilities * malignant_mask, axis=-1, keepdims=keepdims)


@keras.saving.register_keras_serializable(package="skincancer")
class MalignantProbability(layers.Layer):
    """Diagnosis probabilities -> P(malignant): the sum over the malignant classes, so the saved model of a
    diagnosis head answers what a binary one does. The class names travel in its config."""

    def __init__(self, class_names: list[str], malignant: list[float], **kwargs):
        super().__init__(**kwargs)
        self.class_names, self.malignant = list(class_names), list(malignant)

    def call(self, probabilities):
        mask = keras.ops.convert_to_tensor(self.malignant, dtype=probabilities.dtype)
        return malignant_probability(probabilities, mask, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_names": self.class_names, "malignant": self.malignant}


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


def build_backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    """The registry's backbone without its top; weights 'imagenet', None (random), or a local file."""
    spec = BACKBONES[name]
    shape = (image_size, image_size, 3)
    if weights == "imagenet" and spec.application != "small_cnn":
        return imagenet_backbone(name, spec.application, shape)
    if weights == "imagenet":
        raise WeightsError(f"train.weights: imagenet, but {name} has no ImageNet weights; use null or a weights file")
    if spec.application == "small_cnn":
        backbone = small_cnn(shape)
    else:
        backbone = getattr(keras.applications, spec.application)(include_top=False, weights=None, input_shape=shape)
    if weights is not None:
        load_weights_file(backbone, weights, name)
    return backbone


@dataclass(frozen=True)
class Classifier:
    """The trained model, the saved one, and the parts training addresses on their own (layers are shared,
    not copied).

    model: uint8 images (and, with train.metadata, the patient context) -> what the head learns (P(malignant),
        or diagnosis probabilities);
    serving: the same inputs -> P(malignant), what is saved (the model itself for a binary head);
    features: uint8 images -> pooled backbone features (what the frozen phase caches);
    head: pooled features (and the context) -> the model's output (what the frozen phase trains on the cache).
    """

    model: keras.Model
    serving: keras.Model
    backbone: keras.Model
    features: keras.Model
    head: keras.Model
    pretrained: bool


def _output_layer(classes: DiagnosisClasses | None) -> layers.Layer:
    # float32 output: under mixed precision a float16 sigmoid saturates and its loss loses precision
    if classes is None:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="malignant")
    return layers.Dense(len(classes.names), activation="softmax", dtype="float32", name="diagnosis")


def _context_input(fields: Sequence[str]) -> keras.KerasTensor | None:
    """The named float32 input of the patient context vector (patient_context.encode_context's), or None."""
    return keras.Input((len(context_columns(fields)),), dtype="float32", name=CONTEXT_INPUT) if fields else None


def _head(features, context: keras.KerasTensor | None, dropout: layers.Layer, classify: layers.Layer):
    """Dropout on the image features, the context beside them (unchanged: a missing flag is an input, not
    noise), then the output layer."""
    x = dropout(features)
    return classify(x if context is None else layers.Concatenate(name=WITH_CONTEXT)([x, context]))


def _inputs(image: keras.KerasTensor, context: keras.KerasTensor | None):
    return image if context is None else [image, context]


def build_classifier(params: TrainParams, image_size: int, classes: DiagnosisClasses | None = None) -> Classifier:
    """Raw uint8 RGB in (and, with train.metadata, the `context` vector beside it), P(malignant) out
    (`classes`: through a diagnosis head). A pretrained backbone starts frozen (phase 1 trains the head)."""
    spec = BACKBONES[params.backbone]
    backbone = build_backbone(params.backbone, image_size, params.weights)
    pretrained = params.weights is not None
    backbone.trainable = not pretrained
    image = keras.Input((image_size, image_size, 3), dtype="uint8", name=IMAGE_INPUT)
    x = PixelPreprocessing(spec.preprocessing, name="preprocess")(image)
    # a pretrained backbone runs BatchNorm in inference mode, also once unfrozen (keras-io recipe)
    x = backbone(x, training=False if pretrained else None)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    dropout = layers.Dropout(params.dropout, seed=params.seed, name="dropout")
    classify = _output_layer(classes)
    context = _context_input(params.metadata)
    inputs = _inputs(image, context)
    outputs = _head(pooled, context, dropout, classify)
    name = f"skincancer_{params.backbone}"
    model = keras.Model(inputs, outputs, name=name)
    serving = model
    if classes is not None:
        malignant = MalignantProbability(list(classes.names), classes.malignant_mask, name="malignant")
        serving = keras.Model(inputs, malignant(outputs), name=name)
    features = keras.Input((pooled.shape[-1],), name="features")
    head_context = _context_input(params.metadata)
    head = keras.Model(_inputs(features, head_context), _head(features, head_context, dropout, classify), name="head")
    return Classifier(model, serving, backbone, keras.Model(image, pooled, name="features"), head, pretrained)


def unfreeze_top(backbone: keras.Model, n_layers: int) -> None:
    """Phase 2: fine-tune the top layers; BatchNorm stays frozen so its statistics survive."""
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        in_top = index >= len(backbone.layers) - n_layers
        layer.trainable = in_top and not isinstance(layer, layers.BatchNormalization)

"""Backbone registry as data: name -> how to build it and how it wants its pixels.

Kept free of TensorFlow imports so params validation can list the valid names cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a backbone expects its input, applied inside the model so it always takes raw uint8 RGB.
#   "raw":   the application rescales internally (EfficientNet*, MobileNetV3): pass 0..255.
#   "tf":    scale to [-1, 1] (Inception, Xception, NASNet, MobileNetV2).
#   "caffe": RGB->BGR and ImageNet mean subtraction (ResNet50).
#   "unit":  scale to [0, 1] (our small CNN).
Preprocessing = Literal["raw", "tf", "caffe", "unit"]


@dataclass(frozen=True)
class BackboneSpec:
    application: str  # attribute of keras.applications, or "small_cnn" for the built-in CPU net
    preprocessing: Preprocessing
    default_size: int = 224  # the size its ImageNet weights were trained at (shard.image_size: auto)
    min_size: int = 32


BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec("small_cnn", "unit", 96, 16),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "raw"),
    "efficientnet_b1": BackboneSpec("EfficientNetB1", "raw", 240),
    "efficientnet_b2": BackboneSpec("EfficientNetB2", "raw", 260),
    "efficientnet_b3": BackboneSpec("EfficientNetB3", "raw", 300),
    "efficientnet_v2_b0": BackboneSpec("EfficientNetV2B0", "raw"),
    "resnet50": BackboneSpec("ResNet50", "caffe"),
    "inception_v3": BackboneSpec("InceptionV3", "tf", 299, 75),
    "xception": BackboneSpec("Xception", "tf", 299, 71),
    "nasnet_mobile": BackboneSpec("NASNetMobile", "tf"),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf"),
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small", "raw"),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large", "raw"),
}

"""The shard stage's image preparation (skincancer.core.images) as TensorFlow ops, for a serving signature that
takes encoded image bytes: decode at the JPEG DCT scale Pillow's draft picks, EXIF orientation, centre
crop or pad with Lanczos resampling, optional Shades of Gray, and the JPEG round trip at the shard quality.

Lanczos as Pillow computes it (separable, horizontal first, 8-bit between the passes, from the exact
crop box); where it still differs (no box pre-reduction for images over ~48x the model's side, PNG's
16-bit RGB taken as its high byte, the pad mode's fitted resize in one float pass) the export's test and
benchmarks/serving.py measure the gap against `skincancer predict`.

ContextEncoder is skincancer.core.patient_context.encode_context as TensorFlow ops, for a model trained with
patient context: its signatures take the fields as named inputs, not the encoded vector.
"""

from __future__ import annotations

import pandas as pd
import tensorflow as tf

from skincancer.core.images import SHADES_OF_GRAY_POWER
from skincancer.core.patient_context import SOURCE_COLUMNS, encode_context

EXIF_SEARCH_BYTES = 1 << 16  # an APP1 segment is at most 64 KiB and comes first
MAX_IFD_ENTRIES = 64
ORIENTATION_TAG = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# EXIF orientation -> the transform that makes the image upright (Pillow's ImageOps.exif_transpose)
UPRIGHT = (
    lambda x: x,
    lambda x: x[:, ::-1],
    lambda x: x[::-1, ::-1],
    lambda x: x[::-1],
    lambda x: tf.transpose(x, [1, 0, 2]),
    lambda x: tf.image.rot90(x, k=3),
    lambda x: tf.transpose(x, [1, 0, 2])[::-1, ::-1],
    lambda x: tf.image.rot90(x, k=1),
)


def _find(head: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Index of the first occurrence of `pattern` in a uint8 vector, -1 if none."""
    n = tf.size(head) - len(pattern) + 1
    if_short = tf.constant(-1, tf.int32)

    def search() -> tf.Tensor:
        hit = tf.ones([n], tf.bool)
        for k, byte in enumerate(pattern):
            hit &= tf.equal(head[k:k + n], byte)
        where = tf.where(hit)
        return tf.cond(tf.size(where) > 0, lambda: tf.cast(where[0, 0], tf.int32), lambda: if_short)

    return tf.cond(n > 0, search, lambda: if_short)


def exif_orientation(contents: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1..8) of a JPEG's APP1 or a PNG's eXIf chunk; 1 where there is none."""
    head = tf.io.decode_raw(tf.strings.substr(contents, 0, EXIF_SEARCH_BYTES), tf.uint8)
    head = tf.cast(tf.concat([head, tf.zeros([16], tf.uint8)], 0), tf.int32)
    last = tf.size(head) - 1
    jpeg, png = _find(head, b"Exif\x00\x00"), _find(head, b"eXIf")
    tiff = tf.where(jpeg >= 0, jpeg + 6, tf.where(png >= 0, png + 4, -1))

    def read(offsets: tf.Tensor, width: int, little: tf.Tensor) -> tf.Tensor:
        parts = [tf.gather(head, tf.clip_by_value(offsets + k, 0, last)) for k in range(width)]
        value_le = sum(part * (256 ** k) for k, part in enumerate(parts))
        value_be = sum(part * (256 ** (width - 1 - k)) for k, part in enumerate(parts))
        return tf.where(little, value_le, value_be)

    def orientation() -> tf.Tensor:
        little = tf.equal(head[tiff], ord("I"))
        ifd = tiff + read(tiff + 4, 4, little)
        count = read(ifd, 2, little)
        entries = ifd + 2 + 12 * tf.range(MAX_IFD_ENTRIES)
        found = (tf.range(MAX_IFD_ENTRIES) < count) & tf.equal(read(entries, 2, little), ORIENTATION_TAG)
        where = tf.where(found)
        value = tf.cond(tf.size(where) > 0, lambda: read(entries[where[0, 0]] + 8, 2, little), lambda: 1)
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(tiff >= 0, orientation, lambda: tf.constant(1, tf.int32))


def _draft_ratio(height: tf.Tensor, width: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    """Pillow's draft: the largest of 8, 4, 2, 1 that keeps both sides >= the request, as a branch index."""
    if resize == "crop":
        request_h = request_w = tf.constant(size, tf.int32)
    else:
        scale = size / tf.cast(tf.maximum(height, width), tf.float64)
        request_h = tf.maximum(1, tf.cast(tf.math.ceil(tf.cast(height, tf.float64) * scale), tf.int32))
        request_w = tf.maximum(1, tf.cast(tf.math.ceil(tf.cast(width, tf.float64) * scale), tf.int32))
    reduction = tf.minimum(width // request_w, height // request_h)
    return tf.cast(reduction >= 2, tf.int32) + tf.cast(reduction >= 4, tf.int32) + tf.cast(reduction >= 8, tf.int32)


def _decode_jpeg(contents: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    shape = tf.io.extract_jpeg_shape(contents)
    branch = _draft_ratio(shape[0], shape[1], size, resize)
    return tf.switch_case(branch, [
        lambda ratio=ratio: tf.io.decode_jpeg(contents, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")
        for ratio in (1, 2, 4, 8)
    ])


def _decode_png(contents: tf.Tensor) -> tf.Tensor:
    """RGBA flattened on black, as skincancer.core.images.to_rgb does."""
    rgba = tf.cast(tf.io.decode_png(contents, channels=4), tf.float32)
    rgb = rgba[..., :3] * rgba[..., 3:] / 255.0
    return tf.cast(tf.round(rgb), tf.uint8)


def decode_upright(contents: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    """8-bit RGB pixels of JPEG, PNG, GIF or BMP bytes, decoded as Pillow would for this size, upright."""
    signature = tf.strings.substr(contents, 0, 8)
    image = tf.case([
        (tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8"), lambda: _decode_jpeg(contents, size, resize)),
        (tf.equal(signature, PNG_SIGNATURE), lambda: _decode_png(contents)),
    ], default=lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    return tf.switch_case(exif_orientation(contents) - 1, [lambda f=f: f(image) for f in UPRIGHT])


def _lanczos(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(tf.cast(image, tf.float32), tf.stack([height, width]), method="lanczos3", antialias=True)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def shades_of_gray(image: tf.Tensor) -> tf.Tensor:
    """skincancer.core.images.shades_of_gray on a uint8 image."""
    pixels = tf.cast(image, tf.float64)
    illuminant = tf.reduce_mean(tf.reshape(pixels, [-1, 3]) ** SHADES_OF_GRAY_POWER, 0) ** (1 / SHADES_OF_GRAY_POWER)
    gains = tf.reduce_mean(illuminant) / tf.maximum(illuminant, 1.0)
    return tf.cast(tf.clip_by_value(tf.math.rint(pixels * gains), 0, 255), tf.uint8)


def _lanczos_box(image: tf.Tensor, size: int, top: tf.Tensor, left: tf.Tensor, side: tf.Tensor) -> tf.Tensor:
    """Pillow's resize of a (float) box: separable Lanczos, horizontal first, rounded to 8 bits between the
    passes, reading the pixels around the box as its kernel reaches them."""
    scale = size / tf.cast(side, tf.float32)

    def one_pass(x: tf.Tensor, axis: int, offset: tf.Tensor) -> tf.Tensor:
        shape = tf.unstack(tf.shape(x)[1:3])
        shape[axis] = tf.constant(size)
        scales, shifts = [1.0, 1.0], [0.0, 0.0]
        scales[axis], shifts[axis] = scale, -offset * scale
        resized = tf.raw_ops.ScaleAndTranslate(images=x, size=tf.stack(shape), scale=tf.stack(scales),
                                               translation=tf.stack(shifts), kernel_type="lanczos3", antialias=True)
        return tf.round(tf.clip_by_value(resized, 0.0, 255.0))

    batch = tf.cast(image, tf.float32)[tf.newaxis]
    return tf.cast(one_pass(one_pass(batch, 1, left), 0, top)[0], tf.uint8)


def _crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centre square, resampled to size x size from its exact (half-pixel) box."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    top, left = tf.cast(height - side, tf.float32) / 2, tf.cast(width - side, tf.float32) / 2
    return _lanczos_box(image, size, top, left, side)


def _fit(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.maximum(height, width), tf.float64)
    fitted_h = tf.minimum(size, tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32)))
    fitted_w = tf.minimum(size, tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32)))
    return _to_uint8(_lanczos(image, fitted_h, fitted_w)), fitted_h, fitted_w


def prepare_bytes(contents: tf.Tensor, size: int, resize: str, quality: int, color_constancy: str) -> tf.Tensor:
    """One encoded image -> the size x size uint8 RGB image the model takes, as the shard stage makes it."""
    image = decode_upright(contents, size, resize)
    correct = shades_of_gray if color_constancy == "shades_of_gray" else (lambda x: x)
    if resize == "crop":
        out = correct(_crop(image, size))
    else:
        fitted, height, width = _fit(image, size)
        out = tf.image.pad_to_bounding_box(correct(fitted), (size - height) // 2, (size - width) // 2, size, size)
    encoded = tf.io.encode_jpeg(out, quality=quality, chroma_downsampling=False, optimize_size=False, progressive=False)
    return tf.io.decode_jpeg(encoded, channels=3)


def _spelling_table(field: str, record: dict) -> tf.lookup.StaticHashTable:
    """The card's spellings of a field (its record's `spellings`, stripped and lower-cased) -> the index of the
    value column encode_context sets for each; anything else looks up -1, missing."""
    spellings = sorted({spelling.strip().casefold() for names in record["spellings"].values() for spelling in names})
    encoded = encode_context(pd.DataFrame({SOURCE_COLUMNS[field]: spellings}), [field])
    known = encoded[:, -1] == 0  # a spelling this version does not map stays missing, as encode_context has it
    keys = tf.constant([spelling for spelling, kept in zip(spellings, known, strict=True) if kept], tf.string)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, encoded[known, :-1].argmax(1)), -1)


class ContextEncoder(tf.Module):
    """The context vector from named inputs, as encode_context builds it from the card's record (`context`):
    age float32 in years (NaN: missing) over the record's scale; sex and site strings ("" or unknown: missing)
    looked up stripped and lower-cased (Python's casefold and Unicode whitespace differ only for characters
    none of the spellings hold)."""

    def __init__(self, encoding: dict):
        super().__init__(name="patient_context")
        self.fields = list(encoding["fields"])
        self.age_scale = float(encoding["age"]["scale"]) if "age" in self.fields else None
        self.tables = {field: _spelling_table(field, encoding[field]) for field in self.fields if field != "age"}
        self.depths = {field: len(encoding[field]["columns"]) - 1 for field in self.tables}

    def input_specs(self) -> list[tf.TensorSpec]:
        """One (batch,) input per field, named after it, in the vector's order."""
        return [tf.TensorSpec([None], tf.float32 if field == "age" else tf.string, name=field) for field in self.fields]

    def _age(self, age: tf.Tensor) -> tf.Tensor:
        missing = tf.math.is_nan(age)
        value = tf.cast(tf.cast(age, tf.float64) / self.age_scale, tf.float32)  # encode_context divides in float64
        return tf.stack([tf.where(missing, 0.0, value), tf.cast(missing, tf.float32)], axis=1)

    def _one_hot(self, field: str, text: tf.Tensor) -> tf.Tensor:
        index = self.tables[field].lookup(tf.strings.lower(tf.strings.strip(text), encoding="utf-8"))
        return tf.concat([tf.one_hot(index, self.depths[field]), tf.cast(index < 0, tf.float32)[:, tf.newaxis]], 1)

    def __call__(self, values: list[tf.Tensor]) -> tf.Tensor:
        """(batch, columns) float32 from one tensor per field, in `input_specs` order."""
        parts = [self._age(value) if field == "age" else self._one_hot(field, value)
                 for field, value in zip(self.fields, values, strict=True)]
        return tf.concat(parts, axis=1)

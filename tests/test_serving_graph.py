"""serving_graph: the shard stage's image preparation as TensorFlow ops, pixel for pixel near Pillow's."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skincancer.core.images import resize_jpeg
from skincancer.serve.serving_graph import exif_orientation, prepare_bytes

# mean |difference| in grey levels against the shard stage's pixels: a wrong orientation, crop or colour
# would be tens of levels off; resampling and JPEG rounding are about one
MEAN_LEVELS = 2.0


def _lesion(width: int = 300, height: int = 200) -> Image.Image:
    """An asymmetric picture: any flip or turn moves its bright corner and its gradient."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 17.0) * np.cos(y / 11.0)], axis=-1)
    pixels[: height // 4, : width // 5] = (250, 240, 30)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _encoded(image: Image.Image, fmt: str, orientation: int | None = None, **save) -> bytes:
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _gap(data: bytes, size: int = 64, mode: str = "crop", quality: int = 92, colour: str = "none") -> float:
    reference = tf.io.decode_jpeg(resize_jpeg(data, size, mode, quality, color_constancy=colour).data, channels=3)
    ours = prepare_bytes(tf.constant(data), size, mode, quality, colour)
    assert ours.shape == (size, size, 3) and ours.dtype == tf.uint8
    return float(np.abs(reference.numpy().astype(int) - ours.numpy().astype(int)).mean())


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_is_made_upright_as_pillow_does(fmt, orientation):
    data = _encoded(_lesion(), fmt, orientation, **({"quality": 95} if fmt == "JPEG" else {}))
    assert int(exif_orientation(tf.constant(data))) == orientation
    for mode in ("crop", "pad"):
        assert _gap(data, mode=mode) < MEAN_LEVELS, (fmt, orientation, mode)


def test_without_exif_the_orientation_is_one():
    assert int(exif_orientation(tf.constant(_encoded(_lesion(), "JPEG")))) == 1
    assert int(exif_orientation(tf.constant(b"\xff\xd8 too short"))) == 1


@pytest.mark.parametrize("source", ["large_jpeg", "rgba_png", "grey_png", "shades_of_gray", "quality_75"])
def test_decode_scale_transparency_grey_and_colour_constancy_follow_the_shard_stage(source):
    """A JPEG eight times the model's side is decoded at a DCT scale (Pillow's draft), transparency is
    flattened on black, grey becomes RGB, and Shades of Gray and the JPEG quality come from the card."""
    picture = _lesion()
    transparent = picture.convert("RGBA")
    transparent.putalpha(Image.linear_gradient("L").resize(picture.size))
    data, kwargs = {
        "large_jpeg": (_encoded(_lesion(1200, 800), "JPEG", quality=95), {}),
        "rgba_png": (_encoded(transparent, "PNG"), {}),
        "grey_png": (_encoded(picture.convert("L"), "PNG"), {}),
        "shades_of_gray": (_encoded(picture, "JPEG", quality=95), {"colour": "shades_of_gray"}),
        "quality_75": (_encoded(picture, "JPEG", quality=95), {"quality": 75}),
    }[source]
    assert _gap(data, **kwargs) < MEAN_LEVELS

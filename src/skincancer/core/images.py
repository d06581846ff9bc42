"""Fast decode/resize: one decode at reduced DCT scale, one resample, one deterministic re-encode.

Kept free of TensorFlow so shard workers start in a fraction of a second. Pillow releases the GIL
while it decodes, resamples and encodes, so several threads running `resize_jpeg` use several cores.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skincancer.core.preparation import PILLOW_MAX_PIXELS, ColorConstancy, ResizeMode

# Minkowski norm of Shades of Gray: 6 is what Finlayson & Trezzi found best and what the ISIC 2018/2019
# winners used; 1 would be grey world, infinity max-RGB.
SHADES_OF_GRAY_POWER = 6

# 4:4:4 keeps the chroma detail that small lesion crops would otherwise lose; fixed so output is reproducible.
_SUBSAMPLING = "4:4:4"
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


class CorruptImage(ValueError):
    """PIL cannot (or must not) fully decode the image; the shard stage skips it instead of failing the run."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name or '<bytes>'}: corrupt or unreadable image ({reason})")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (CorruptImage, (self.name, self.reason))


@dataclass(frozen=True)
class Resized:
    """A re-encoded JPEG and its pixel size (what the TFRecord stores next to it)."""

    data: bytes
    height: int
    width: int


def resize_jpeg(
    data: bytes,
    size: int,
    resize: ResizeMode,
    quality: int,
    *,
    name: str = "",
    max_pixels: int = PILLOW_MAX_PIXELS,
    color_constancy: ColorConstancy = "none",
) -> Resized:
    """Decode ``data`` (JPEG, PNG or any format Pillow reads), upright it by EXIF, resize to ``size`` x ``size``
    (colour-corrected by ``color_constancy``) and encode as an RGB JPEG. Raises CorruptImage for unreadable
    input and for more than ``max_pixels`` pixels."""
    img = _decode(data, size, resize, name, max_pixels)
    correct = shades_of_gray if color_constancy == "shades_of_gray" else None
    out = _crop(img, size, correct) if resize == "crop" else _pad(img, size, correct)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=quality, subsampling=_SUBSAMPLING, optimize=False, progressive=False)
    return Resized(buffer.getvalue(), out.height, out.width)


def stored_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, before any EXIF turn, without decoding a pixel; None
    when the bytes are not a readable image. Never raises: fetch records every file it indexes, and the
    shard stage is where bad images are reported."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed headers; all mean "no size"
        return None


def _decode(data: bytes, size: int, resize: ResizeMode, name: str, max_pixels: int) -> Image.Image:
    """Fully decode (so truncation surfaces here, not later) at the smallest DCT scale that suffices."""
    if not data:
        raise CorruptImage(name, "empty file (0 bytes)")
    with _unreadable_as_corrupt(name):
        img = Image.open(io.BytesIO(data))
    _refuse_bombs(img, name, max_pixels)
    with _unreadable_as_corrupt(name):
        img.draft("RGB", _draft_request(img.width, img.height, size, resize))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img)


@contextlib.contextmanager
def _unreadable_as_corrupt(name: str) -> Iterator[None]:
    """Pillow's many failure types become one CorruptImage whose reason is stable across runs."""
    try:
        yield
    except UnidentifiedImageError:
        # PIL's own message embeds a memory address, which would make manifests differ between runs.
        raise CorruptImage(name, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise CorruptImage(name, f"decompression bomb: {error}") from None
    except _DECODE_ERRORS as error:
        raise CorruptImage(name, f"{type(error).__name__}: {error}") from None


def _refuse_bombs(img: Image.Image, name: str, max_pixels: int) -> None:
    """Judge by the header's size alone: a bomb is refused before a single pixel is decoded."""
    if img.width * img.height > max_pixels:
        raise CorruptImage(name, f"decompression bomb: {img.width} x {img.height} pixels > {max_pixels}")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit greyscale scaled (a plain convert clips it), transparency flattened on black."""
    if img.mode in _SIXTEEN_BIT:
        img = _sixteen_bit_to_l(img)
    if img.mode in _ALPHA or "transparency" in img.info:
        # Black, like the pad bands: transparent areas hold no skin, and the colour under them is arbitrary.
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """0..65535 -> 0..255, rounded (v / 257 maps the ends onto the ends); 32-bit "I" samples are read as 16-bit."""
    samples = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    return Image.fromarray(((samples + 128) // 257).astype(np.uint8))  # 2-D uint8: mode L


def _draft_request(width: int, height: int, size: int, resize: ResizeMode) -> tuple[int, int]:
    """The size PIL's draft must not go below: short side >= size (crop), or the fitted size (pad).

    Draft picks the largest power-of-two reduction keeping both sides >= the request, and the
    request is symmetric in width/height, so an EXIF rotation applied afterwards is harmless.
    """
    if resize == "crop":
        return size, size
    scale = size / max(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


Correction = Callable[[Image.Image], Image.Image] | None


def shades_of_gray(img: Image.Image, power: int = SHADES_OF_GRAY_POWER) -> Image.Image:
    """Shades of Gray colour constancy: estimate the illuminant per channel as the Minkowski p-mean of its
    pixels and scale each channel so the estimate turns grey, keeping the mean brightness. Dermatoscopes
    and lighting differ between clinics; the lesion's own colours are what carry the diagnosis."""
    pixels = np.asarray(img, dtype=np.float64)
    illuminant = np.power(np.mean(np.power(pixels.reshape(-1, 3), power), axis=0), 1 / power)
    gains = illuminant.mean() / np.maximum(illuminant, 1.0)
    return Image.fromarray(np.clip(np.rint(pixels * gains), 0, 255).astype(np.uint8))


def _crop(img: Image.Image, size: int, correct: Correction = None) -> Image.Image:
    """Centre square crop, resampled straight from the source box (no intermediate copy)."""
    side = min(img.width, img.height)
    left, top = (img.width - side) / 2, (img.height - side) / 2
    box = (left, top, left + side, top + side)
    out = img.resize((size, size), _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
    return correct(out) if correct else out


def _pad(img: Image.Image, size: int, correct: Correction = None) -> Image.Image:
    """Fit inside ``size`` x ``size`` keeping aspect, centred on black, so no lesion edge is cut. The colour
    correction sees the picture alone, not the black bands."""
    scale = size / max(img.width, img.height)
    width = min(size, max(1, round(img.width * scale)))
    height = min(size, max(1, round(img.height * scale)))
    fitted = img.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    fitted = correct(fitted) if correct else fitted
    canvas = Image.new("RGB", (size, size))
    canvas.paste(fitted, ((size - width) // 2, (size - height) // 2))
    return canvas

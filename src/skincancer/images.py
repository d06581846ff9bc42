"""Fast decode/resize: one decode at reduced DCT scale, one resample, one deterministic re-encode.

Kept free of TensorFlow so shard workers start in a fraction of a second.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

ResizeMode = Literal["crop", "pad"]

# 4:4:4 keeps the chroma detail that small lesion crops would otherwise lose; fixed so output is reproducible.
_SUBSAMPLING = "4:4:4"
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class CorruptImage(ValueError):
    """PIL cannot fully decode the image; the shard stage skips it instead of failing the run."""

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


def resize_jpeg(data: bytes, size: int, mode: ResizeMode, quality: int, *, name: str = "") -> Resized:
    """Decode ``data``, upright it by EXIF, resize to ``size`` x ``size`` and encode as JPEG."""
    img = _decode(data, size, mode, name)
    out = _crop(img, size) if mode == "crop" else _pad(img, size)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=quality, subsampling=_SUBSAMPLING, optimize=False, progressive=False)
    return Resized(buffer.getvalue(), out.height, out.width)


def _decode(data: bytes, size: int, mode: ResizeMode, name: str) -> Image.Image:
    """Fully decode (so truncation surfaces here, not later) at the smallest DCT scale that suffices."""
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", _draft_request(img.width, img.height, size, mode))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img if img.mode == "RGB" else img.convert("RGB")
    except UnidentifiedImageError:
        # PIL's own message embeds a memory address, which would make manifests differ between runs.
        raise CorruptImage(name, "not a recognised image format") from None
    except _DECODE_ERRORS as error:
        raise CorruptImage(name, f"{type(error).__name__}: {error}") from None


def _draft_request(width: int, height: int, size: int, mode: ResizeMode) -> tuple[int, int]:
    """The size PIL's draft must not go below: short side >= size (crop), or the fitted size (pad).

    Draft picks the largest power-of-two reduction keeping both sides >= the request, and the
    request is symmetric in width/height, so an EXIF rotation applied afterwards is harmless.
    """
    if mode == "crop":
        return size, size
    scale = size / max(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _crop(img: Image.Image, size: int) -> Image.Image:
    """Centre square crop, resampled straight from the source box (no intermediate copy)."""
    side = min(img.width, img.height)
    left, top = (img.width - side) / 2, (img.height - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)


def _pad(img: Image.Image, size: int) -> Image.Image:
    """Fit inside ``size`` x ``size`` keeping aspect, centred on black, so no lesion edge is cut."""
    scale = size / max(img.width, img.height)
    width = min(size, max(1, round(img.width * scale)))
    height = min(size, max(1, round(img.height * scale)))
    fitted = img.resize((width, height), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(fitted, ((size - width) // 2, (size - height) // 2))
    return canvas

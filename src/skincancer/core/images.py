"""Fast decode/resize: one decode at reduced DCT scale, one resample, one deterministic re-encode.

Kept free of TensorFlow so shard workers start in a fraction of a second. Pillow releases the GIL
while it decodes, resamples and encodes, so several threads running `resize_jpeg` use several cores.
Every decode (the shard stage's, `skincancer predict`'s and fetch's near-duplicate hash) goes through
`decode_reduced`: at most one full-size buffer per image, and DECODE_BUDGET bounds how many bytes of them
the threads of a process hold at once.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from collections import deque
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
_SIXTEEN_BIT_STORED = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT = ("I", *_SIXTEEN_BIT_STORED)
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# Modes Image.reduce averages as stored (not palette indices, 1-bit or 16-bit samples).
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")


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


class DecodeBudget:
    """Bytes of full-size decoded images the threads of one process may hold at once: fetch hashes on 8
    threads and shard encodes on `shard.workers`, so without it a few images near the pixel cap decoding
    together would need gigabytes. Turns are first come, first served, so a large image is not starved by a
    stream of small ones; one larger than the whole budget still runs, alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reserved = 0
        self._queue: deque[object] = deque()
        self._turn = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of the budget for the block, waiting until they fit beside the decodes in flight."""
        ticket = object()
        with self._turn:
            self._queue.append(ticket)
            self._turn.wait_for(lambda: self._queue[0] is ticket and self._fits(size))
            self._queue.popleft()
            self._reserved += size
            self._turn.notify_all()  # the next in line may fit beside this one
        try:
            yield
        finally:
            with self._turn:
                self._reserved -= size
                self._turn.notify_all()

    def _fits(self, size: int) -> bool:
        return self._reserved == 0 or self._reserved + size <= self.limit


# ISIC images are JPEGs of at most 6000x4000, decoded at reduced DCT scale: at most 3000x2000x3 = 18 MB each
# even for a 1024 px model (750x500x3 = 1.1 MB for the hash), so 16 threads of them (288 MB) never wait; even
# full-size 6000x4000 PNGs (72 MB) decode 7 at once. An image near Pillow's cap (13000x13000x3 = 507 MB) decodes
# with only small ones beside it.
DECODE_BUDGET = DecodeBudget(512 * 2**20)

# Pillow allocates a large image in blocks, 16 MiB by default. glibc keeps a block that size, once freed, in the
# freeing thread's own arena, so threads taking turns through DECODE_BUDGET would each end up holding a full-size
# image anyway. Blocks over glibc's largest mmap threshold (32 MiB) are mapped alone and given back when freed.
if "PILLOW_BLOCK_SIZE" not in os.environ:  # Pillow's own setting, where someone made it, wins
    Image.core.set_block_size(64 * 2**20)


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
    """Fully decode (so truncation surfaces here, not later) at the smallest scale that suffices."""
    img = open_image(data, name, max_pixels)
    with _unreadable_as_corrupt(name):
        return to_rgb(decode_reduced(img, "RGB", _draft_request(img.width, img.height, size, resize)))


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image, its header read and no pixel decoded; CorruptImage when unreadable or over ``max_pixels``."""
    if not data:
        raise CorruptImage(name, "empty file (0 bytes)")
    with _unreadable_as_corrupt(name):
        img = Image.open(io.BytesIO(data))
    _refuse_bombs(img, name, max_pixels)
    return img


def decode_reduced(img: Image.Image, mode: str, request: tuple[int, int]) -> Image.Image:
    """``img`` decoded, upright by EXIF, at about the smallest scale whose sides still reach ``request``, with
    at most one full-size buffer alive: a JPEG decodes at reduced DCT scale in ``mode`` (draft); any other
    format is box-reduced right after decoding, before a mode conversion or the resample copies it. The
    decode waits its turn in DECODE_BUDGET, reserving the width x height x bands it is about to decode."""
    drafted = img.draft(mode, request)  # None where the format has no reduced decoding
    with DECODE_BUDGET.reserve(img.width * img.height * len(img.getbands())):
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img if drafted else _reduced(img, request)


def _reduced(img: Image.Image, request: tuple[int, int]) -> Image.Image:
    """Box-averaged by the largest whole factor keeping both sides >= _REDUCING_GAP x ``request``: the step
    the resample's reducing_gap takes anyway, taken first. Palettes, 1-bit, 16-bit and colour-keyed images
    are widened first (one copy), as averaging what they store would be wrong."""
    factor = min(int(img.width / (request[0] * _REDUCING_GAP)), int(img.height / (request[1] * _REDUCING_GAP)))
    if factor < 2:
        return img
    if img.mode in _SIXTEEN_BIT_STORED:
        img = img.convert("I")  # reduce averages 32-bit samples; to_rgb scales them to 8 bits after, as before
    elif img.mode not in _REDUCIBLE or "transparency" in img.info:
        img = to_rgb(img)  # palette indices, 1-bit and colour keys: flattened first
    return img.reduce(factor)


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

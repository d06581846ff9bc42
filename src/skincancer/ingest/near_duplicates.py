"""Perceptual near-duplicate hashes: the same photograph republished under another id, size or encoding.

ISIC releases republish each other's images resized, re-encoded and sometimes slightly cropped, so equal
bytes and equal ids miss them. The hash keeps the signs of the lowest-frequency DCT coefficients of a 32x32
YCbCr thumbnail: 128 luma and 64 per chroma channel, 256 bits. Signs survive resampling, JPEG noise and small
crops; colour is what tells apart two dermoscopy images that are both a brown blob centred on skin.
Figures on real images (recall per transform, false links, cost): BENCHMARKS.md, "Near-duplicate hash".
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft
from PIL import Image

from skincancer.core.images import PILLOW_MAX_PIXELS, decode_reduced, open_image, to_rgb

HASH_BITS = 256
HEX_CHARS = HASH_BITS // 4
# Largest Hamming distance that still links two hashes. On real ISIC images (BENCHMARKS.md) resized or re-encoded
# copies stay within 35 bits and 96% of 0-5%-a-side crops within 50; the closest two distinct lesions are 56 apart.
THRESHOLD = 50
_GRID = 32  # thumbnail side: the 256 coefficients kept all lie below frequency 16
_DRAFT = 2 * _GRID  # the decode is reduced (JPEG: 1/2..1/8 DCT scale) keeping both sides >= this
_BITS_PER_CHANNEL = (128, 64, 64)  # Y, Cb, Cr
_WORDS = HASH_BITS // 64
_LUMA_WORDS = 2  # the first 128 bits: alone they rule out almost every pair
# A block of rows x columns compared at once: its temporaries (11 bytes a pair) stay in cache, memory stays flat.
_ROWS, _COLUMNS = 64, 2048


def _zigzag(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` AC coefficients in JPEG zigzag order: lowest frequencies first."""
    cells = [(u, v) for u in range(_GRID) for v in range(_GRID) if (u, v) != (0, 0)]
    cells.sort(key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    rows, cols = zip(*cells[:count], strict=True)
    return np.array(rows), np.array(cols)


_COEFFICIENTS = [_zigzag(count) for count in _BITS_PER_CHANNEL]


def _thumbnail(data: bytes, max_pixels: int) -> np.ndarray:
    """32x32x3 YCbCr floats, decoded at reduced scale and turned upright as the shard stage sees the image."""
    img = decode_reduced(open_image(data, "", max_pixels), "YCbCr", (_DRAFT, _DRAFT))
    if img.mode != "YCbCr":
        img = to_rgb(img).convert("YCbCr")
    return np.asarray(img.resize((_GRID, _GRID), Image.Resampling.BOX), dtype=np.float32)


def image_hash(data: bytes, max_pixels: int = PILLOW_MAX_PIXELS) -> str | None:
    """The 256-bit hash of an encoded image as 64 hex digits; None when the bytes are not a readable image
    or hold more than ``max_pixels`` (shard.max_pixels: the shard stage then skips the image, undecoded).

    Never raises: fetch hashes every file it indexes, and the shard stage is where bad images are reported.
    """
    try:
        pixels = _thumbnail(data, max_pixels)
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed files; all mean "no hash"
        return None
    coefficients = scipy.fft.dctn(pixels, axes=(0, 1), norm="ortho")
    bits = [coefficients[rows, cols, channel] > 0 for channel, (rows, cols) in enumerate(_COEFFICIENTS)]
    return np.packbits(np.concatenate(bits)).tobytes().hex()


def hash_words(hashes: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Hex hashes (None or NA for none) -> (n, 4) uint64 words and a bool mask of the rows that have a hash."""
    values = [h if isinstance(h, str) and len(h) == HEX_CHARS else None for h in hashes]
    valid = np.array([h is not None for h in values], dtype=bool)
    raw = b"".join(bytes.fromhex(h) if h is not None else bytes(HASH_BITS // 8) for h in values)
    words = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), _WORDS)
    return words, valid


def near_duplicate_pairs(hashes: Iterable[str | None], threshold: int = THRESHOLD, workers: int = 2) -> np.ndarray:
    """(k, 2) int64 row pairs i < j, sorted, whose hashes are at most ``threshold`` bits apart.

    ``hashes`` is the index's ``image_hash`` column; rows with no hash (None/NA) never link. Exact: every pair
    is compared, in blocks small enough to stay in cache, on ``workers`` threads (numpy releases the GIL).
    """
    words, valid = hash_words(hashes)
    rows = np.flatnonzero(valid)
    columns = np.ascontiguousarray(words[rows].T)  # (4, n): one contiguous row per word
    found = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for pairs in pool.map(lambda start: _block_pairs(columns, start, threshold), range(0, len(rows), _ROWS)):
            found += pairs
    pairs = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
    return rows[pairs].reshape(-1, 2)


def _block_pairs(columns: np.ndarray, start: int, threshold: int) -> list[np.ndarray]:
    """Pairs (i, j), start <= i < i + _ROWS, i < j, within ``threshold``: the luma words first, for all
    candidates; the chroma words only for the few the luma distance alone has not already ruled out."""
    n = columns.shape[1]
    block = columns[:, start : start + _ROWS, None]
    xor = np.empty((block.shape[1], _COLUMNS), dtype=np.uint64)
    count = np.empty(xor.shape, dtype=np.uint8)
    distance = np.empty(xor.shape, dtype=np.uint16)
    found = []
    for first in range(start, n, _COLUMNS):
        width = min(_COLUMNS, n - first)
        x, c, d = xor[:, :width], count[:, :width], distance[:, :width]
        for word in range(_LUMA_WORDS):
            np.bitwise_xor(block[word], columns[word, None, first : first + width], out=x)
            np.bitwise_count(x, out=c)
            if word:
                np.add(d, c, out=d)
            else:
                np.copyto(d, c)
        i, j = np.nonzero(d <= threshold)
        upper = j + first > i + start
        total = d[i[upper], j[upper]]
        i, j = i[upper] + start, j[upper] + first
        for word in range(_LUMA_WORDS, _WORDS):
            total = total + np.bitwise_count(columns[word, i] ^ columns[word, j])
        close = total <= threshold
        if close.any():
            found.append(np.stack([i[close], j[close]], axis=1).astype(np.int64))
    return found

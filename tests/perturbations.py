"""Copies of an image as other clinics and pipelines produce them: half the size, re-encoded at JPEG
quality 75, turned a quarter. A robust classifier scores each copy as it scores the original."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized_50": lambda image: image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS),
    "jpeg_q75": lambda image: Image.open(io.BytesIO(_jpeg(image, 75))),
    "rotated_90": lambda image: image.transpose(Image.Transpose.ROTATE_90),
}
MAX_MEDIAN_DELTA = 0.05  # the bar: median |p(copy) - p(original)|


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_perturbed_copies(originals: list[Path], out_dir: Path) -> dict[str, list[Path]]:
    """Each perturbation's copies of `originals` (PNG, so only the perturbation itself changes pixels), in order."""
    copies: dict[str, list[Path]] = {}
    for name, perturb in PERTURBATIONS.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        copies[name] = []
        for path in originals:
            target = folder / f"{path.stem}.png"
            with Image.open(path) as image:
                perturb(image.convert("RGB")).save(target)
            copies[name].append(target)
    return copies


def median_abs_delta(original: np.ndarray, copy: np.ndarray) -> float:
    return float(np.median(np.abs(np.asarray(copy) - np.asarray(original))))

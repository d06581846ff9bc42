"""How one image file becomes the model's input: the shard stage's encoding, which `skincancer predict`
applies alike, so a new image is prepared exactly as the training and test images were.

Kept free of TensorFlow (Pillow only), like skincancer.core.images: shard workers import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skincancer.core.images import ColorConstancy, CorruptImage, Resized, ResizeMode, resize_jpeg

if TYPE_CHECKING:
    from skincancer.core.params import ShardParams


@dataclass(frozen=True)
class EncodeJob:
    """One image to encode: small and picklable; the worker reads the file itself."""

    path: str
    size: int
    mode: ResizeMode
    quality: int
    max_pixels: int
    color_constancy: ColorConstancy = "none"


Encoded = Resized | str  # the re-encoded image, or why it was skipped


def encode_job(path: str, params: ShardParams, size: int | None = None) -> EncodeJob:
    """How one image is encoded under `params` (at `size`, else shard.image_size): the one place shard and
    predict take it from, so they never prepare an image differently."""
    return EncodeJob(
        path, size or params.image_size, params.resize, params.jpeg_quality, params.max_pixels, params.color_constancy
    )


def encode_file(job: EncodeJob) -> Encoded:
    """The resized image, or why it was skipped (returned, so one bad file never stops its chunk)."""
    data = Path(job.path).read_bytes()
    try:
        return resize_jpeg(
            data, job.size, job.mode, job.quality,
            name=job.path, max_pixels=job.max_pixels, color_constancy=job.color_constancy,
        )
    except CorruptImage as error:
        return error.reason

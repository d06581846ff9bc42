"""How one image file becomes the model's input: the shard stage's encoding, which `skincancer predict`
applies alike, so a new image is prepared exactly as the training and test images were.

Kept free of TensorFlow (Pillow only), like skincancer.core.images: shard workers import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skincancer.core.images import CorruptImage, Resized, resize_jpeg
from skincancer.core.preparation import Preparation


@dataclass(frozen=True)
class EncodeJob:
    """One image to encode: small and picklable; the worker reads the file itself."""

    path: str
    preparation: Preparation


Encoded = Resized | str  # the re-encoded image, or why it was skipped


def encode_file(job: EncodeJob) -> Encoded:
    """The image prepared as `job.preparation` says, or why it was skipped (returned, so one bad file never
    stops its chunk)."""
    data = Path(job.path).read_bytes()
    how = job.preparation
    try:
        return resize_jpeg(data, how.image_size, how.resize, how.jpeg_quality, name=job.path,
                           max_pixels=how.max_pixels, color_constancy=how.color_constancy)
    except CorruptImage as error:
        return error.reason

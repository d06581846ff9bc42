"""How an image is prepared for the model, as one value: the shard stage prepares every training and test
image with it, writes it into the shards' manifest, train copies it onto the model card, and predict, the
serving graph and the exports read it back from the card. Adding a preparation option means a field here
and the code that applies it (skincancer.core.images, skincancer.serve.serving_graph), nothing between.

Plain data without Pillow: params builds it from shard.* and the card is read before any image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal

ResizeMode = Literal["crop", "pad"]
ColorConstancy = Literal["none", "shades_of_gray"]

# Pillow's own hard limit (twice Image.MAX_IMAGE_PIXELS): Image.open refuses more by itself, so a higher
# max_pixels could not take effect.
PILLOW_MAX_PIXELS = 2 * 89_478_485


class PreparationMissing(ValueError):
    """A manifest or card written before it recorded every preparation field; the message names the file."""


@dataclass(frozen=True)
class Preparation:
    """An image decoded, made upright and RGB, cropped or padded to `image_size` square, colour-corrected
    by `color_constancy` and encoded once as a JPEG at `jpeg_quality`; more than `max_pixels` is refused."""

    image_size: int
    resize: ResizeMode = "crop"
    color_constancy: ColorConstancy = "none"
    jpeg_quality: int = 92
    max_pixels: int = PILLOW_MAX_PIXELS

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: Mapping[str, object], where: object) -> Preparation:
        """The preparation `where` (a manifest or card file) records, refused naming it when a field is missing."""
        if missing := [field.name for field in fields(cls) if field.name not in document]:
            raise PreparationMissing(f"{where} does not record {missing} of how an image is prepared (written by "
                                     "an older version); rerun `dvc repro shard` and the stages after it")
        return cls(**{field.name: document[field.name] for field in fields(cls)})

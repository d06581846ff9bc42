"""One id per ISIC image, whatever release or copy names it, so equal-id duplicates and table joins line up."""

from __future__ import annotations

import re

import pandas as pd

# ISIC 2019 republishes older archive images as `ISIC_0000123_downsampled`; class-folder copies add ` (1)`.
_COPY_SUFFIX = re.compile(r"^(ISIC_\d{7})(?:_downsampled| ?\(\d+\))$", re.IGNORECASE)


def canonical_image_id(image_id: str) -> str:
    """`ISIC_0000123_downsampled` and `ISIC_0000123 (1)` -> `ISIC_0000123`; any other id unchanged."""
    match = _COPY_SUFFIX.match(image_id.strip())
    return match.group(1).upper() if match else image_id.strip()


def canonical_image_ids(image_ids: pd.Series) -> pd.Series:
    mapping = {value: canonical_image_id(value) for value in image_ids.dropna().unique()}
    return image_ids.map(mapping)

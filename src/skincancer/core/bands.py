"""Resolution bands: each image named by how large its original was (issue 31).

The archives hold full-size originals (HAM10000's 600x450 and up) and others resized copies (the Kaggle
9-class folders are 180 px); a model scores the two differently, so a figure or a threshold pooled over
both hides what either gets. ``shard.bands`` names the bands by the original's longer side, as fetch read
it from the file's header.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from skincancer.core.params import UNKNOWN_BAND


def band_names(widths: ArrayLike, heights: ArrayLike, bands: Mapping[str, int]) -> np.ndarray:
    """Each image's band (an object array of str): the band with the largest minimum at or below the longer
    side of its original; ``unknown`` where its width or height is missing (None, NaN or <NA>) or the side is
    below every minimum (never with validated ``shard.bands``: one of them starts at 0)."""
    names = sorted(bands, key=bands.__getitem__)
    minimums = np.array([bands[name] for name in names], dtype=np.float64)
    longer = np.maximum(_pixels(widths), _pixels(heights))  # NaN where either is missing
    band = np.searchsorted(minimums, longer, side="right") - 1
    known = ~np.isnan(longer) & (band >= 0)
    return np.where(known, np.array(names, dtype=object)[np.clip(band, 0, None)], UNKNOWN_BAND)


def _pixels(values: ArrayLike) -> np.ndarray:
    """Pixel counts as float64, NaN for every kind of missing, whatever the input's dtype."""
    return pd.array(values, dtype="Float64").to_numpy(dtype=np.float64, na_value=np.nan)

"""Resolution bands: each image's band from its original's longer side, and the `shard.bands` params check."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from skincancer.core.bands import band_names
from skincancer.core.params import ParamsError, ShardParams, parse_params

ROOT = Path(__file__).resolve().parents[1]
BANDS = {"small": 0, "medium": 256, "full_size": 512}


def test_the_band_is_the_one_with_the_largest_minimum_at_or_below_the_longer_side():
    widths = [0, 180, 255, 256, 100, 511, 512, 600, 6000]
    heights = [0, 180, 100, 10, 256, 300, 512, 450, 4000]
    assert band_names(widths, heights, BANDS).tolist() == [
        "small", "small", "small", "medium", "medium", "medium", "full_size", "full_size", "full_size"]


def test_the_bands_may_be_listed_in_any_order():
    shuffled = {"full_size": 512, "small": 0, "medium": 256}
    assert band_names([600, 300, 20], [450, 200, 10], shuffled).tolist() == ["full_size", "medium", "small"]


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA])
def test_an_image_without_a_recorded_size_is_unknown(missing):
    widths = pd.Series([600, missing, 180, missing], dtype="Int64")
    heights = pd.Series([450, 450, missing, missing], dtype="Int64")
    names = band_names(widths, heights, BANDS)
    assert names.dtype == object and names.tolist() == ["full_size", "unknown", "unknown", "unknown"]
    assert band_names([missing, 600], [10, 450], BANDS).tolist() == ["unknown", "full_size"]


def test_the_shipped_default_splits_resized_copies_from_archive_originals():
    """The Kaggle 9-class folders' 180 px copies and HAM10000's 600x450 originals."""
    assert ShardParams().bands == {"small": 0, "full_size": 512}
    assert band_names([180, 600], [180, 450], ShardParams().bands).tolist() == ["small", "full_size"]


def with_bands(bands: object) -> dict:
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    document["shard"]["bands"] = bands
    return document


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ({}, r"no band; name at least one"),
        ({"Full Size": 0}, r"\['Full Size'\] are not lower-case words"),
        ({"2x": 0, "small": 10}, r"\['2x'\] are not lower-case words"),
        ({"small": 0, "unknown": 512}, r"'unknown' is the band of images without a recorded size; name this band"),
        ({"small": 0, "big": -1}, r"\['big'\] start below 0 px"),
        ({"small": 100, "full_size": 512}, r"no band starts at 0 \(minimums \[100, 512\]\): an image under 100 px"),
        ({"small": 0, "large": 512, "full_size": 512}, r"several bands start at \[512\] px; give each band its own"),
        ({"small": 0, "full_size": "512"}, r"shard\.bands\.full_size: Input should be a valid integer"),
        ({"small": 0, "full_size": True}, r"shard\.bands\.full_size: true is yes/no, not a number"),
        ([0, 512], r"Input should be a valid dictionary"),
    ],
)
def test_bands_that_cannot_name_every_image_are_refused_naming_the_key(bands, message):
    with pytest.raises(ParamsError, match=message) as refused:
        parse_params(with_bands(bands))
    assert "  shard.bands" in str(refused.value)


def test_any_band_names_and_minimums_that_cover_every_size_are_accepted():
    params = parse_params(with_bands({"thumb": 0, "mid_2": 300, "full_size": 1024}))
    assert params.shard.bands == {"thumb": 0, "mid_2": 300, "full_size": 1024}
    assert parse_params(with_bands({"any": 0})).shard.bands == {"any": 0}

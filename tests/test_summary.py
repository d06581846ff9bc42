"""evaluate.summary: every metric shown as text, undefined ones included, in one format."""

import math

import numpy as np

from skincancer.evaluate.summary import UNDEFINED, band_summary, number, split_summary, with_interval

SPLIT = {"roc_auc": 0.81234, "roc_auc_ci_low": 0.70001, "roc_auc_ci_high": 0.90049, "sensitivity": 0.8125,
         "specificity": 0.7, "n": 24, "n_malignant": 8}


def test_numbers_at_their_digits_whole_numbers_as_they_are_and_undefined_as_one_mark():
    assert [number(0.81234, 4), number(0.81234, 3), number(24, 4), number(np.int64(24), 4)] == ["0.8123", "0.812", "24", "24"]
    assert [number(0.05, 4, signed=True), number(-2, 4, signed=True), number(0.0, 4, signed=True)] == ["+0.0500", "-2", "+0.0000"]
    assert number(None, 4) == number(math.nan, 4) == number(np.float64("nan"), 3) == number(None, 4, signed=True) == UNDEFINED


def test_the_split_line_with_every_number_defined():
    metrics = {"threshold": 0.31, "test": SPLIT}
    assert split_summary(metrics, "test") == ("test: ROC AUC 0.8123 (95% CI 0.7000-0.9005), sensitivity 0.812, "
                                              "specificity 0.700 at threshold 0.3100, 24 images (8 malignant)")


def test_the_split_line_without_intervals_as_evaluate_bootstrap_0_writes_them():
    undefined_intervals = {key: None for key in SPLIT if key.endswith(("_ci_low", "_ci_high"))}
    metrics = {"threshold": 0.31, "test": SPLIT | undefined_intervals}
    assert split_summary(metrics, "test") == ("test: ROC AUC 0.8123 (95% CI -), sensitivity 0.812, "
                                              "specificity 0.700 at threshold 0.3100, 24 images (8 malignant)")


def test_the_split_line_of_a_split_without_malignant_images():
    benign_only = SPLIT | {"roc_auc": None, "roc_auc_ci_low": None, "roc_auc_ci_high": None, "sensitivity": None,
                           "n_malignant": 0}
    assert split_summary({"threshold": 0.31, "val": benign_only}, "val") == (
        "val: ROC AUC - (95% CI -), sensitivity -, specificity 0.700 at threshold 0.3100, 24 images (0 malignant)")


def test_a_cell_with_its_interval_drops_an_undefined_interval():
    assert with_interval(SPLIT, "roc_auc", 3) == "0.812 (0.700-0.900)"
    assert with_interval(SPLIT | {"roc_auc_ci_high": None}, "roc_auc", 3) == "0.812"
    assert with_interval({"brier": 0.12}, "brier", 4) == "0.1200"  # a metric without interval keys
    assert with_interval({}, "sensitivity", 4) == UNDEFINED  # a key an older metrics.json lacks


def test_the_band_line_gives_each_bands_auc_and_sensitivity_with_intervals():
    full = SPLIT | {"sensitivity_ci_low": 0.5, "sensitivity_ci_high": 0.9, "n": 41, "n_malignant": 10}
    metrics = {"threshold": 0.31, "test": SPLIT | {"by_band": {"full_size": full, "small": SPLIT | {"roc_auc": None}}}}
    assert band_summary(metrics, "test") == (
        "test by resolution band: full_size ROC AUC 0.812 (0.700-0.900), sensitivity 0.812 (0.500-0.900), 41 images "
        "(10 malignant); small ROC AUC - (0.700-0.900), sensitivity 0.812 (-), 24 images (8 malignant)")
    assert band_summary({"test": SPLIT}, "test") == "test by resolution band: -"  # a metrics.json from before bands

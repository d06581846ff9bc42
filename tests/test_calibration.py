"""Platt scaling fitted on val: a class-weighted model's over-called scores become probabilities that match
the observed malignant frequency, and a stated prevalence moves them by Bayes' rule; order never changes."""

import logging

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from skincancer.core.calibration import Calibration, fit_calibration
from skincancer.core.params import CalibrationParams


def overcalled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """20% malignant, scored by a model trained with balanced class weights: it calls malignant far too often."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    logit = 1.5 * (labels - 0.5) * 2 + rng.normal(0, 1.5, n) + 1.4  # shifted up: the class-weight bias
    return labels, 1 / (1 + np.exp(-logit))


def test_platt_fitted_on_val_lowers_brier_on_held_out_data_and_keeps_the_order():
    val_y, val_p = overcalled(2000, 0)
    test_y, test_p = overcalled(2000, 1)
    calibration = fit_calibration(val_y, val_p, CalibrationParams(), decimals=6)
    calibrated = calibration.apply(test_p)
    assert brier_score_loss(test_y, calibrated) < 0.8 * brier_score_loss(test_y, test_p)
    assert calibrated.mean() == pytest.approx(test_y.mean(), abs=0.02)  # probabilities mean what they say
    assert roc_auc_score(test_y, calibrated) == pytest.approx(roc_auc_score(test_y, test_p), abs=1e-12)
    assert np.all(np.diff(calibration.apply(np.linspace(0.01, 0.99, 50))) > 0)


def test_a_stated_prevalence_shifts_the_prior_odds():
    val_y, val_p = overcalled(2000, 0)
    at_val = fit_calibration(val_y, val_p, CalibrationParams(), decimals=6)
    at_two_percent = fit_calibration(val_y, val_p, CalibrationParams(prevalence=0.02), decimals=6)
    assert at_val.prevalence == at_val.fitted_prevalence == pytest.approx(val_y.mean())
    p, q = at_val.apply(val_p), at_two_percent.apply(val_p)
    odds_ratio = (q / (1 - q)) / (p / (1 - p))
    expected = (0.02 / 0.98) / (at_val.fitted_prevalence / (1 - at_val.fitted_prevalence))
    np.testing.assert_allclose(odds_ratio, expected, rtol=1e-9)
    assert "2.0%" in at_two_percent.in_words() and "val's own" in at_val.in_words()


def test_what_metrics_json_keeps_applies_exactly_and_none_or_one_class_passes_scores_through():
    val_y, val_p = overcalled(500, 2)
    calibration = fit_calibration(val_y, val_p, CalibrationParams(), decimals=6)
    assert Calibration.from_json(calibration.as_json(6)) == calibration  # already rounded as stored
    scores = np.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(fit_calibration(val_y, val_p, CalibrationParams(method="none"), 6).apply(scores), scores)
    np.testing.assert_array_equal(fit_calibration(np.zeros(10), np.linspace(0, 1, 10), CalibrationParams(), 6).apply(scores), scores)
    assert Calibration.from_json(None).method == "none"  # a metrics.json from before calibration


def test_a_fit_that_would_reverse_the_ranking_leaves_raw_scores_and_says_so(caplog):
    """Scores that rank val's malignant images below its benign ones would get a negative slope, and every AUC
    computed on the probabilities would flip: the scores stay as they are, with a warning naming the slope."""
    labels = np.tile([0, 1], 50)
    scores = np.where(labels == 1, 0.2, 0.7) + np.linspace(0, 0.05, 100)
    with caplog.at_level(logging.WARNING, logger="skincancer"):
        calibration = fit_calibration(labels, scores, CalibrationParams(), 6)
    assert calibration.method == "none"
    np.testing.assert_array_equal(calibration.apply(scores), scores)
    assert "slope is -" in caplog.text and "left as raw scores" in caplog.text

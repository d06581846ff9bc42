"""Probabilities that mean what they say: Platt scaling fitted on val, shifted to a stated prevalence.

A model trained with class weights (or oversampling) over-calls the rare class on purpose, so its raw
output is a score, not a probability. Platt scaling (a logistic regression on the score's logit) fitted on
the validation split maps it to the malignant frequency val shows; a stated `evaluate.calibration.prevalence`
then moves it to another population's share of malignant lesions by Bayes' rule (the prior-odds shift).
The map is monotone, so AUC and every thresholded decision are unchanged; Brier score and the calibration
plot change, which is the point.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from skincancer.core.params import CalibrationParams

log = logging.getLogger(__name__)
_EPSILON = 1e-6  # scores of exactly 0 or 1 have an infinite logit


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibration:
    """calibrated = sigmoid(slope * logit(score) + intercept + logit(prevalence) - logit(fitted_prevalence))."""

    method: str
    slope: float = 1.0
    intercept: float = 0.0
    fitted_prevalence: float | None = None  # the malignant share of the split it was fitted on
    prevalence: float | None = None  # the share it is calibrated to

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return np.asarray(scores, dtype=np.float64)
        shift = float(_logit(self.prevalence) - _logit(self.fitted_prevalence))
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(scores) + self.intercept + shift)))

    def as_json(self, decimals: int) -> dict:
        return {key: round(value, decimals) if isinstance(value, float) else value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, document: dict | None) -> Calibration:
        """metrics.json's `calibration`; absent (a metrics.json from before calibration): scores pass through."""
        return cls(**document) if document else cls("none")

    def in_words(self) -> str:
        if self.method == "none":
            return "uncalibrated scores (evaluate.calibration.method: none)"
        return (f"probabilities calibrated on val (Platt) to a malignant prevalence of {self.prevalence:.1%}"
                + (" (val's own)" if self.prevalence == self.fitted_prevalence else f" (val's: {self.fitted_prevalence:.1%})"))


def fit_calibration(labels: np.ndarray, scores: np.ndarray, params: CalibrationParams, decimals: int) -> Calibration:
    """Platt scaling on val's (labels, scores), rounded to `decimals` as metrics.json keeps it (so what
    `skincancer predict` reads back applies exactly); a val split of one class leaves scores as they are, and so
    does a fit whose slope is not positive (scores that rank val's malignant images no better than chance): its
    map would reverse the ranking, turning every AUC computed on the probabilities upside down."""
    labels = np.asarray(labels, dtype=np.int64)
    if params.method == "none" or len(np.unique(labels)) < 2:
        return Calibration("none")
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores).reshape(-1, 1), labels)
    if round(float(fit.coef_[0, 0]), decimals) <= 0:
        log.warning("calibration: the Platt fit's slope is %.4g (scores rank the malignant images no better than "
                    "chance where it was fitted); probabilities are left as raw scores", float(fit.coef_[0, 0]))
        return Calibration("none")
    fitted = float(labels.mean())
    calibration = Calibration(
        "platt", float(fit.coef_[0, 0]), float(fit.intercept_[0]), fitted,
        fitted if params.prevalence is None else params.prevalence,
    )
    return Calibration.from_json(calibration.as_json(decimals))

"""Binary metrics at a frozen operating point, with the threshold chosen on validation only."""

from __future__ import annotations

import logging

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from skincancer.params import EvaluateParams, ThresholdParams

log = logging.getLogger(__name__)

DECIMALS = 6
METRIC_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "sensitivity", "specificity",
    "precision", "f1", "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity",
    "pauc_above_80_tpr", "brier", "n", "n_malignant",
)


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, policy: ThresholdParams) -> float:
    """Operating point from validation predictions; test data never reaches this function."""
    if policy.policy == "fixed":
        return float(policy.value)
    if len(np.unique(y_val)) < 2:
        log.warning(
            "val split holds one class only: policy %r cannot place a threshold; using evaluate.threshold.value %s",
            policy.policy, policy.value,
        )
        return float(policy.value)
    fpr, tpr, thresholds = skm.roc_curve(y_val, p_val)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if policy.policy == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    # highest threshold (fewest false positives) whose validation sensitivity reaches the target
    return float(thresholds[np.argmax(tpr >= policy.target - 1e-12)])


def specificity_at_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    fpr, tpr, _ = skm.roc_curve(y, p)
    return float(1.0 - fpr[tpr >= sensitivity - 1e-12].min())


def partial_auc_above_tpr(y: np.ndarray, p: np.ndarray, min_tpr: float = 0.8) -> float:
    """ROC area in the region TPR >= min_tpr, as the ISIC 2024 challenge scores it (0..1-min_tpr).

    Swapping the classes and negating scores turns "TPR >= min_tpr" into "FPR <= 1 - min_tpr",
    whose area is integrated with linear interpolation at the boundary.
    """
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = skm.roc_curve(1 - np.asarray(y), -np.asarray(p, dtype=np.float64))
    stop = np.searchsorted(fpr, max_fpr, "right")
    boundary_tpr = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    return float(skm.auc(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], boundary_tpr)))


def _auc_from_ranks(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC for each row of (resamples, n) arrays; ties count one half."""
    ranks = rankdata(p, axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Percentile bootstrap CI of ROC AUC; resamples holding one class only are left out."""
    if resamples == 0:
        return None, None
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), size=(resamples, len(y)))
    aucs = _auc_from_ranks(y[rows], p[rows])
    aucs = aucs[np.isfinite(aucs)]
    low, high = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def binary_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, *, resamples: int = 1000, seed: int = 0, split: str = "split"
) -> dict[str, float | int | None]:
    """Every key of METRIC_KEYS; a malignant call is p >= threshold. A metric the data cannot define
    (no malignant images: no sensitivity, no AUC; no malignant calls: no precision) is None, never a
    made-up 0 or 0.5, and a warning names it."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    predicted = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    both = bool(tp + fn and tn + fp)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    low, high = bootstrap_auc_ci(y, p, resamples, seed) if both else (None, None)
    values = {
        "roc_auc": skm.roc_auc_score(y, p) if both else None,
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "pr_auc": skm.average_precision_score(y, p) if both else None,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, len(y)),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both else None,
        "specificity_at_95_sensitivity": specificity_at_sensitivity(y, p, 0.95) if both else None,
        "pauc_above_80_tpr": partial_auc_above_tpr(y, p, 0.8) if both else None,
        "brier": skm.brier_score_loss(y, p, labels=[0, 1]) if len(y) else None,
        "n": len(y),
        "n_malignant": int(y.sum()),
    }
    undefined = [key for key, value in values.items() if value is None and not (key.startswith("roc_auc_ci") and resamples == 0)]
    if undefined:
        log.warning(
            "%s split (%d benign, %d malignant, %d called malignant): %s undefined, written as null",
            split, tn + fp, tp + fn, tp + fp, ", ".join(undefined),
        )
    return {key: _rounded(key, value) for key, value in values.items()}


def _rounded(key: str, value: float | int | None) -> float | int | None:
    """Plain JSON numbers at a fixed precision, so `dvc metrics diff` shows changes, not float noise."""
    if value is None:
        return None
    return int(value) if key in ("n", "n_malignant") else round(float(value), DECIMALS)


def evaluation_metrics(
    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], params: EvaluateParams
) -> dict:
    """metrics.json: the threshold is frozen from (labels, probabilities) of val, then applied to test."""
    threshold = choose_threshold(*val, params.threshold)
    return {
        "threshold": round(threshold, DECIMALS),
        "val": binary_metrics(*val, threshold, resamples=params.bootstrap, seed=params.seed, split="val"),
        "test": binary_metrics(*test, threshold, resamples=params.bootstrap, seed=params.seed, split="test"),
    }

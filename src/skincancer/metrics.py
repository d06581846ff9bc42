"""Binary metrics at a frozen operating point, with the threshold chosen on validation only."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from skincancer.params import EvaluateParams, ThresholdParams

METRIC_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "sensitivity", "specificity",
    "precision", "f1", "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity",
    "pauc_above_80_tpr", "brier", "n", "n_malignant",
)


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, policy: ThresholdParams) -> float:
    """Operating point from validation predictions; test data never reaches this function."""
    if policy.policy == "fixed":
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


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ROC AUC; resamples holding one class only are left out."""
    if resamples == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), size=(resamples, len(y)))
    aucs = _auc_from_ranks(y[rows], p[rows])
    aucs = aucs[np.isfinite(aucs)]
    low, high = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float, *, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Every key of METRIC_KEYS; a malignant call is p >= threshold."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("metrics need both benign and malignant images in the split")
    predicted = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    sensitivity = tp / (tp + fn)
    specificity = tn / (tn + fp)
    low, high = bootstrap_auc_ci(y, p, resamples, seed)
    values = {
        "roc_auc": skm.roc_auc_score(y, p),
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "pr_auc": skm.average_precision_score(y, p),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": skm.precision_score(y, predicted, zero_division=0.0),
        "f1": skm.f1_score(y, predicted, zero_division=0.0),
        "accuracy": skm.accuracy_score(y, predicted),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "specificity_at_95_sensitivity": specificity_at_sensitivity(y, p, 0.95),
        "pauc_above_80_tpr": partial_auc_above_tpr(y, p, 0.8),
        "brier": skm.brier_score_loss(y, p),
        "n": len(y),
        "n_malignant": int(y.sum()),
    }
    return {key: (int(value) if key in ("n", "n_malignant") else round(float(value), 6)) for key, value in values.items()}


def evaluation_metrics(
    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], params: EvaluateParams
) -> dict:
    """metrics.json: the threshold is frozen from (labels, probabilities) of val, then applied to test."""
    threshold = choose_threshold(*val, params.threshold)

    def score(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return binary_metrics(y, p, threshold, resamples=params.bootstrap, seed=params.seed)

    return {"threshold": round(threshold, 6), "val": score(*val), "test": score(*test)}

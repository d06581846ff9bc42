"""Binary metrics at a frozen operating point, with the threshold chosen on validation only."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from scipy.stats import norm
from sklearn import metrics as skm

from skincancer.core.params import EvaluateParams, ThresholdParams

log = logging.getLogger(__name__)

DECIMALS = 6
METRIC_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "precision", "precision_ci_low", "precision_ci_high",
    "f1", "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity",
    "pauc_above_80_tpr", "brier", "n", "n_malignant",
)
LEVEL = 0.95


class Scores(NamedTuple):
    """One split's labels and probabilities, the split's group of each image (None: one group per image), and
    each image's kind in the grouping its threshold must hold on (evaluate.threshold.holds_on; None: pooled)."""

    labels: np.ndarray
    probabilities: np.ndarray
    groups: np.ndarray | None = None
    strata: np.ndarray | None = None


class PairedDifference(NamedTuple):
    """head - base of a metric on the same images, with its paired bootstrap interval."""

    difference: float
    low: float
    high: float


def _reaching(y: np.ndarray, p: np.ndarray, policy: ThresholdParams) -> float:
    """The policy's threshold on images holding both classes."""
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if policy.policy == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    # highest threshold (fewest false positives) whose validation sensitivity reaches the target
    return float(thresholds[np.argmax(tpr >= policy.target - 1e-12)])


def can_hold(n: int, n_malignant: int, policy: ThresholdParams) -> bool:
    """Whether a group has the malignant images (evaluate.threshold.min_malignant) and a benign one a
    threshold needs to be chosen on it: on three malignant images a 90% target means nothing."""
    return n_malignant >= policy.min_malignant and n > n_malignant


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, policy: ThresholdParams,
                     strata: np.ndarray | None = None) -> float:
    """Operating point from validation predictions; test data never reaches this function. With
    `policy.holds_on` a grouping and `strata` each image's group in it, the target is reached on every group
    that can hold it as well as on all images pooled: the lowest of those thresholds."""
    if policy.policy == "fixed":
        return float(policy.value)
    if len(np.unique(y_val)) < 2:
        log.warning(
            "val split holds one class only: policy %r cannot place a threshold; using evaluate.threshold.value %s",
            policy.policy, policy.value,
        )
        return float(policy.value)
    y_val, p_val = np.asarray(y_val), np.asarray(p_val)
    pooled = _reaching(y_val, p_val, policy)
    if policy.holds_on == "pooled" or strata is None:
        return pooled
    strata = np.asarray(strata)
    held = [name for name in np.unique(strata)
            if can_hold(int((strata == name).sum()), int(y_val[strata == name].sum()), policy)]
    return min([pooled, *(_reaching(y_val[strata == name], p_val[strata == name], policy) for name in held)])


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


def weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC for each row of (resamples, n) image weights: an image drawn k times counts k
    times, ties count one half. The scores are sorted once for every resample; a row holding one class is NaN."""
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    tied_runs = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    w = np.atleast_2d(weights)[:, order].astype(np.float64)
    malignant = y[order] == 1
    positive = np.add.reduceat(w * malignant, tied_runs, axis=-1)
    negative = np.add.reduceat(w * ~malignant, tied_runs, axis=-1)
    negatives_below = np.cumsum(negative, axis=-1) - negative
    with np.errstate(invalid="ignore", divide="ignore"):
        return (positive * (negatives_below + negative / 2)).sum(axis=-1) / (positive.sum(axis=-1) * negative.sum(axis=-1))


def group_bootstrap_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) times each image is drawn: groups are drawn with replacement and a drawn group brings
    all its images (cluster bootstrap). Images of one patient are correlated, so drawing them one by one
    would pretend the test split holds more independent evidence than it does. Groups are numbered in order
    of first appearance, so one image per group draws exactly what the image bootstrap draws."""
    _, first_image, group_of = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    group_of = np.argsort(np.argsort(first_image))[group_of]
    n_groups = len(first_image)
    drawn = np.random.default_rng(seed).integers(0, n_groups, size=(resamples, n_groups))
    offsets = (np.arange(resamples) * n_groups)[:, None]
    times_drawn = np.bincount((drawn + offsets).ravel(), minlength=resamples * n_groups).reshape(resamples, n_groups)
    return times_drawn[:, group_of]


def _one_group_per_image(y: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    return np.arange(len(y)) if groups is None else np.asarray(groups)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap values; resamples holding one class only (NaN) are left out."""
    low, high = np.quantile(values[np.isfinite(values)], [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def bootstrap_auc_ci(
    y: np.ndarray, p: np.ndarray, resamples: int, seed: int, level: float = LEVEL, groups: np.ndarray | None = None
) -> tuple[float, float] | tuple[None, None]:
    """Percentile cluster-bootstrap CI of ROC AUC over `groups` (None: one group per image, the image bootstrap)."""
    if resamples == 0:
        return None, None
    weights = group_bootstrap_weights(_one_group_per_image(y, groups), resamples, seed)
    return _percentile_interval(weighted_auc(y, p, weights), level)


def paired_auc_difference(
    y: np.ndarray, p_base: np.ndarray, p_head: np.ndarray, groups: np.ndarray, resamples: int, seed: int,
    level: float = LEVEL,
) -> PairedDifference:
    """ROC AUC of head - base on the same images, with a paired cluster-bootstrap interval: both models are
    scored on the same resampled groups, so what the images share cancels and only the models' difference is left."""
    y = np.asarray(y, dtype=np.int64)
    weights = group_bootstrap_weights(groups, resamples, seed)
    differences = weighted_auc(y, p_head, weights) - weighted_auc(y, p_base, weights)
    ones = np.ones(len(y))
    observed = float((weighted_auc(y, p_head, ones) - weighted_auc(y, p_base, ones))[0])
    return PairedDifference(observed, *_percentile_interval(differences, level))


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of a proportion: unlike the normal approximation it stays inside 0..1 and is
    honest at 0 or n successes, which a handful of malignant test images makes common. Counts images as
    independent trials."""
    if not trials:
        return None, None
    z = float(norm.ppf(1 - (1 - level) / 2))
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _proportion(name: str, successes: int, trials: int) -> dict[str, float | None]:
    """A share counted in images, with its Wilson interval: `name`, `name_ci_low`, `name_ci_high`."""
    low, high = wilson_interval(successes, trials)
    return {name: _ratio(successes, trials), f"{name}_ci_low": low, f"{name}_ci_high": high}


def _is_interval(key: str) -> bool:
    return key.endswith(("_ci_low", "_ci_high"))


def binary_metrics(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    *,
    groups: np.ndarray | None = None,
    resamples: int = 1000,
    seed: int = 0,
    split: str = "split",
    warn_undefined: bool = True,
) -> dict[str, float | int | None]:
    """Every key of METRIC_KEYS; a malignant call is p >= threshold. A metric the data cannot define
    (no malignant images: no sensitivity, no AUC; no malignant calls: no precision) is None, never a
    made-up 0 or 0.5, and a warning names it (unless `warn_undefined` is off: per-group figures, where a group
    without malignant images is common); so is its interval. The AUC interval resamples `groups`
    (None: one group per image); the Wilson intervals of sensitivity, specificity and precision count images."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    predicted = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    both = bool(tp + fn and tn + fp)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    low, high = bootstrap_auc_ci(y, p, resamples, seed, groups=groups) if both else (None, None)
    values = {
        "roc_auc": skm.roc_auc_score(y, p) if both else None,
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "pr_auc": skm.average_precision_score(y, p) if both else None,
        **_proportion("sensitivity", tp, tp + fn),
        **_proportion("specificity", tn, tn + fp),
        **_proportion("precision", tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, len(y)),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both else None,
        "specificity_at_95_sensitivity": specificity_at_sensitivity(y, p, 0.95) if both else None,
        "pauc_above_80_tpr": partial_auc_above_tpr(y, p, 0.8) if both else None,
        "brier": skm.brier_score_loss(y, p, labels=[0, 1]) if len(y) else None,
        "n": len(y),
        "n_malignant": int(y.sum()),
    }
    undefined = [key for key, value in values.items() if value is None and not _is_interval(key)]
    if undefined and warn_undefined:
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


def _split_metrics(scores: Scores, threshold: float, params: EvaluateParams, split: str) -> dict[str, float | int | None]:
    return binary_metrics(
        scores.labels, scores.probabilities, threshold,
        groups=scores.groups, resamples=params.bootstrap, seed=params.seed, split=split,
    )


def evaluation_metrics(val: Scores | tuple, test: Scores | tuple, params: EvaluateParams, chosen_on: str = "val") -> dict:
    """metrics.json: the threshold is frozen from val's (labels, probabilities), then applied to test.
    Each split is `Scores` or a plain (labels, probabilities[, groups]) tuple. `chosen_on` names the scores
    the threshold comes from: "val", or "oof" for the out-of-fold predictions of a cross-validated run."""
    val, test = Scores(*val), Scores(*test)
    threshold = choose_threshold(val.labels, val.probabilities, params.threshold, val.strata)
    return {
        "threshold": round(threshold, DECIMALS),
        chosen_on: _split_metrics(val, threshold, params, chosen_on),
        "test": _split_metrics(test, threshold, params, "test"),
    }


FOLD_KEYS = ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "n", "n_malignant")


def _fold_auc(scores: Scores, params: EvaluateParams) -> dict[str, float | int | None]:
    """One fold's ROC AUC, its interval resampling the fold's groups, and the images it rests on."""
    y = np.asarray(scores.labels, dtype=np.int64)
    both = 0 < y.sum() < len(y)
    low, high = bootstrap_auc_ci(y, scores.probabilities, params.bootstrap, params.seed, groups=scores.groups) if both else (None, None)
    values = {"roc_auc": skm.roc_auc_score(y, scores.probabilities) if both else None,
              "roc_auc_ci_low": low, "roc_auc_ci_high": high, "n": len(y), "n_malignant": int(y.sum())}
    return {key: _rounded(key, value) for key, value in values.items()}


def fold_metrics(folds: dict[str, Scores], params: EvaluateParams) -> dict:
    """Per fold, its model's AUC on the fold it never trained on; their mean and sample standard deviation say
    how much one model's quality depends on which images it was given (null with fewer than two defined)."""
    per_fold = {name: _fold_auc(scores, params) for name, scores in folds.items()}
    aucs = [values["roc_auc"] for values in per_fold.values() if values["roc_auc"] is not None]
    return {
        "folds": per_fold,
        "fold_roc_auc_mean": _rounded("mean", float(np.mean(aucs))) if len(aucs) > 1 else None,
        "fold_roc_auc_sd": _rounded("sd", float(np.std(aucs, ddof=1))) if len(aucs) > 1 else None,
    }

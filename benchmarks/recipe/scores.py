"""How every real-data recipe figure is scored: ROC AUC with its lesion-grouped bootstrap interval, the
specificity at 95% sensitivity, and the full-size source's images on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd

FULL_SIZE_SOURCE = "isic-uda1"  # the `isic image download` archive: full-resolution images of another collection
RESAMPLES = 1000


def _auc(records: pd.DataFrame, probability: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    from skincancer.evaluate.metrics import bootstrap_auc_ci, specificity_at_sensitivity

    y = records["label"].to_numpy()
    p = np.asarray(probability, dtype=np.float64)
    if len(set(y)) < 2:
        return {"roc_auc": None, "n": len(y), "n_malignant": int(y.sum())}
    low, high = bootstrap_auc_ci(y, p, RESAMPLES, 0, groups=records["group"].to_numpy())
    return {
        "roc_auc": round(float(roc_auc_score(y, p)), 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
        "specificity_at_95_sensitivity": round(specificity_at_sensitivity(y, p, 0.95), 4),
        "n": len(y), "n_malignant": int(y.sum()),
    }


def split_scores(records: pd.DataFrame, probability: np.ndarray) -> dict:
    """The split as a whole, and its full-size-source images alone."""
    records = records.reset_index(drop=True)
    full_size = (records["source"] == FULL_SIZE_SOURCE).to_numpy()
    probability = np.asarray(probability)
    return {"all": _auc(records, probability), "full_size": _auc(records[full_size], probability[full_size])}


def in_words(scores: dict) -> str:
    whole, full = scores["all"], scores["full_size"]
    text = f"AUC {whole['roc_auc']:.3f} ({whole['ci_low']:.3f}-{whole['ci_high']:.3f}), spec@95 {whole['specificity_at_95_sensitivity']:.3f}"
    if full.get("roc_auc") is not None:
        text += f"; full-size {full['roc_auc']:.3f} ({full['ci_low']:.3f}-{full['ci_high']:.3f}, n={full['n']})"
    return text


# metrics.json's figures of a split that a cross-validation comparison reads: AUC with its grouped interval, the
# operating point's sensitivity and specificity with their Wilson intervals
OPERATING_POINT_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "specificity_at_95_sensitivity", "n", "n_malignant",
)


def operating_point(metrics: dict) -> dict:
    """A metrics.json split's OPERATING_POINT_KEYS, and the width of its AUC interval."""
    picked = {key: metrics.get(key) for key in OPERATING_POINT_KEYS}
    low, high = picked["roc_auc_ci_low"], picked["roc_auc_ci_high"]
    return {**picked, "roc_auc_ci_width": round(high - low, 4) if low is not None and high is not None else None}


def scores_at_threshold(records: pd.DataFrame, threshold: float) -> dict:
    """predictions.csv rows (any subset of a split: the full-size source's images alone) scored as metrics.json
    scores a split: AUC with the interval resampling their `group`s, sensitivity and specificity at the run's
    threshold with Wilson intervals. {n: 0} for no rows."""
    from skincancer.evaluate.metrics import binary_metrics

    if records.empty:
        return {"n": 0, "n_malignant": 0}
    return operating_point(binary_metrics(records["label"].to_numpy(), records["probability"].to_numpy(), threshold,
                                          groups=records["group"].to_numpy(), resamples=RESAMPLES, seed=0))


def paired_test_difference(base: pd.DataFrame, head: pd.DataFrame) -> dict:
    """ROC AUC of head - base on the same images (predictions.csv rows matched by image_id), with the paired
    cluster-bootstrap interval over the images' groups: what the two runs' test images share cancels. ValueError
    when the two do not hold the same images (then they are not the same test split)."""
    from skincancer.evaluate.metrics import paired_auc_difference

    pairs = base[["image_id", "label", "group", "probability"]].merge(
        head[["image_id", "probability"]], on="image_id", suffixes=("_base", "_head"), validate="one_to_one")
    if not len(pairs) == len(base) == len(head):
        raise ValueError(f"not the same images: {len(base)} and {len(head)} rows, {len(pairs)} of them shared by "
                         "image_id; a paired difference needs one split of test images (same split params and seed)")
    y = pairs["label"].to_numpy()
    if len(set(y)) < 2:
        return {"difference": None, "n": len(pairs), "n_malignant": int(y.sum())}
    paired = paired_auc_difference(y, pairs["probability_base"].to_numpy(), pairs["probability_head"].to_numpy(),
                                   pairs["group"].to_numpy(), RESAMPLES, 0)
    return {"difference": round(paired.difference, 4), "ci_low": round(paired.low, 4), "ci_high": round(paired.high, 4),
            "n": len(pairs), "n_malignant": int(y.sum()), "n_groups": int(pairs["group"].nunique())}

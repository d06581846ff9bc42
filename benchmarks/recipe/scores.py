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

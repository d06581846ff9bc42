"""A linear probe on frozen backbone features: the baseline every real-data recipe figure is measured against.

The features are the pooled output of the same pretrained backbone the recipe fine-tunes, computed once on
the same shards; a logistic regression (its C chosen on val ROC AUC) is fitted on train alone, either on
the binary label or on the diagnosis (P(malignant) = the summed probability of the malignant diagnoses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class SplitFeatures:
    features: np.ndarray
    records: pd.DataFrame  # image_id, source, diagnosis, label, group: eval_dataset order


def frozen_features(shards_dir: Path, backbone: str, weights: str, batch_size: int = 64) -> dict[str, SplitFeatures]:
    """Pooled features of the pretrained backbone for every split, in manifest order: the train stage's own
    frozen-phase cache (`build_classifier(...).features`, `cached_features`)."""
    from skincancer.core.params import TrainParams
    from skincancer.train.data import read_shard_manifest, split_records
    from skincancer.train.models import build_classifier
    from skincancer.train.train import cached_features

    size = read_shard_manifest(shards_dir)["image_size"]
    classifier = build_classifier(TrainParams(backbone=backbone, weights=weights), size)
    return {
        split: SplitFeatures(cached_features(classifier, shards_dir, split, batch_size), split_records(shards_dir, split))
        for split in ("train", "val", "test")
    }


def _malignant_probability(model, x: np.ndarray, malignant_classes: set[str]) -> np.ndarray:
    columns = [index for index, name in enumerate(model.classes_) if name in malignant_classes]
    return model.predict_proba(x)[:, columns].sum(axis=1)


def probe_probabilities(splits: dict[str, SplitFeatures], target: str = "label", seed: int = 0) -> dict[str, np.ndarray]:
    """P(malignant) for val and test from the probe whose C scored best on val. target: 'label' (binary)
    or 'diagnosis' (multinomial over the diagnoses in train)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(splits["train"].features)
    x = {split: scaler.transform(data.features) for split, data in splits.items()}
    train = splits["train"].records
    y = train["label"].astype(str) if target == "label" else train["diagnosis"].astype(str)
    malignant = {"1"} if target == "label" else set(train.loc[train["label"] == 1, "diagnosis"].astype(str))
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed).fit(x["train"], y)
        val_auc = roc_auc_score(splits["val"].records["label"], _malignant_probability(model, x["val"], malignant))
        if best is None or val_auc > best[0]:
            best = (val_auc, model)
    model = best[1]
    return {split: _malignant_probability(model, x[split], malignant) for split in ("val", "test")}

"""evaluate stage: predict val and test, freeze the threshold on val, score test, write the report."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import skincancer.models  # noqa: F401  (registers the custom layers load_model needs)
from skincancer.atomic import atomic_write_text
from skincancer.data import eval_dataset, split_records
from skincancer.metrics import evaluation_metrics
from skincancer.params import EvaluateParams
from skincancer.report import write_report


def predict_split(model: keras.Model, shards_dir: Path, split: str, batch_size: int = 64) -> pd.DataFrame:
    records = split_records(shards_dir, split)
    probability = model.predict(eval_dataset(shards_dir, split, batch_size), verbose=0).reshape(-1)
    return records.assign(split=split, probability=probability.astype(np.float64))


def evaluate(params: EvaluateParams, model_path: Path, shards_dir: Path, metrics_path: Path, reports_dir: Path) -> dict:
    model = keras.saving.load_model(model_path)
    val = predict_split(model, shards_dir, "val")
    test = predict_split(model, shards_dir, "test")
    metrics = evaluation_metrics(
        (val["label"].to_numpy(), val["probability"].to_numpy()),
        (test["label"].to_numpy(), test["probability"].to_numpy()),
        params,
    )
    predictions = pd.concat([val, test], ignore_index=True)
    predictions["predicted"] = (predictions["probability"] >= metrics["threshold"]).astype(int)
    write_report(reports_dir, metrics, params.threshold.policy, predictions)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    return metrics

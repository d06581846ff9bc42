"""evaluate stage: predict val and test, freeze the threshold on val, score test, write the report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from skincancer.core.atomic import atomic_write_text
from skincancer.core.calibration import Calibration, fit_calibration
from skincancer.core.model_card import card_path_for, evaluated_card, read_card, train_card_path_for, write_card
from skincancer.core.params import EvaluateParams
from skincancer.evaluate.inference import load_for_inference, predict_images
from skincancer.evaluate.metrics import DECIMALS, evaluation_metrics
from skincancer.evaluate.report import confident_mistakes, split_scores, write_report
from skincancer.evaluate.summary import split_summary
from skincancer.shard.tfrecords import read_examples
from skincancer.train.data import ShardSpecMismatch, eval_dataset, read_shard_manifest, split_records

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["image_id", "split", "label", "diagnosis", "probability", "prediction", "source", "group", "score"]


def check_model_fits_shards(model: keras.Model, shards_dir: Path, model_path: Path) -> None:
    """A model built for another image size would fail deep in predict, or (fully convolutional) score
    images at a size it never saw."""
    expected = tuple(model.inputs[0].shape[1:3])
    found = read_shard_manifest(shards_dir)["image_size"]
    if expected != (found, found):
        raise ShardSpecMismatch(
            f"{model_path} takes {expected[0]}x{expected[1]} images but the shards in {shards_dir} hold "
            f"{found}x{found}; rerun `dvc repro train` (or `dvc repro` for the whole pipeline)"
        )


def predict_split(
    model: keras.Model, shards_dir: Path, split: str, tta: int = 1, scales: Sequence[float] = (1.0,), batch_size: int = 64
) -> np.ndarray:
    """P(malignant) per image of a split, in manifest order."""
    return predict_images(model, eval_dataset(shards_dir, split, batch_size).map(lambda x, _: x), tta, scales)


def _predictions(model: keras.Model, shards_dir: Path, params: EvaluateParams) -> tuple[pd.DataFrame, Calibration]:
    """The model's scores, and probabilities calibrated on val, both at metrics.json's precision: the
    threshold is one of the probabilities, so predictions.csv reproduces every decision exactly."""
    frames = []
    for split in ("val", "test"):
        score = predict_split(model, shards_dir, split, params.tta, params.tta_scales).round(DECIMALS)
        frames.append(split_records(shards_dir, split).assign(split=split, score=score))
    predictions = pd.concat(frames, ignore_index=True)
    val = predictions[predictions["split"] == "val"]
    calibration = fit_calibration(val["label"], val["score"], params.calibration, DECIMALS)
    return predictions.assign(probability=calibration.apply(predictions["score"]).round(DECIMALS)), calibration


def _encoded_images(shards_dir: Path, shown: pd.DataFrame) -> dict[str, bytes]:
    """The shards' own JPEG bytes of the `shown` images (with their `shard` column), exactly what the model
    saw, read from the shards that hold them alone."""
    wanted = set(shown["image_id"])
    return {
        example["image/id"]: example["image/encoded"]
        for example in read_examples([Path(shards_dir) / file for file in sorted(set(shown["shard"]))])
        if example["image/id"] in wanted
    }


def evaluate(
    params: EvaluateParams,
    model_path: Path,
    shards_dir: Path,
    metrics_path: Path,
    reports_dir: Path,
    history_path: Path | None = None,
    shown_params: dict | None = None,
    train_card_path: Path | None = None,
    card_path: Path | None = None,
) -> dict:
    """metrics.json, reports/ and the model card (`card_path`, default card.json beside the model): the
    training card (default train_card.json beside it) with this evaluation added. `shown_params` are
    printed in the report (the params that produced it)."""
    training = read_card(train_card_path or train_card_path_for(model_path), model_path, written_by="train")
    model = load_for_inference(model_path)
    check_model_fits_shards(model, shards_dir, model_path)
    predictions, calibration = _predictions(model, shards_dir, params)
    metrics = evaluation_metrics(split_scores(predictions, "val"), split_scores(predictions, "test"), params)
    metrics["calibration"] = calibration.as_json(DECIMALS)
    predictions["prediction"] = (predictions["probability"] >= metrics["threshold"]).astype(int)
    facts, predictions = predictions, predictions[PREDICTION_COLUMNS]
    mistakes = confident_mistakes(predictions, params.gallery)
    history = pd.read_csv(history_path) if history_path is not None and Path(history_path).exists() else None
    write_report(
        reports_dir, metrics, predictions,
        policy=params.threshold, params=shown_params or {"evaluate": params.model_dump(mode="json")},
        history=history, images=_encoded_images(shards_dir, facts[facts["image_id"].isin(mistakes.image_ids)]), mistakes=mistakes,
    )
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    write_card(evaluated_card(training.document, metrics, params), card_path or card_path_for(model_path))
    _log_summary(metrics)
    return metrics


def _log_summary(metrics: dict) -> None:
    """The evaluation in two lines, for the terminal and the Prefect run log."""
    for split in ("val", "test"):
        log.info("%s", split_summary(metrics, split))

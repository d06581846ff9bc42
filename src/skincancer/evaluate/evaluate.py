"""evaluate stage: predict val and test, freeze the threshold on val, score test, write the report.

A cross-validated run (split.folds) has no val split: each fold's model scores the fold it never trained on
(out-of-fold, `oof`), the threshold and the calibration come from those scores, and the ensemble, the model
users get, scores test.

Every image also gets an out-of-distribution score (skincancer.evaluate.ood), fitted on the pooled features of the
images the model trained on and cut at a percentile of val's (or the out-of-fold images') scores."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from skincancer.core.atomic import atomic_write_bytes, atomic_write_text
from skincancer.core.calibration import Calibration, fit_calibration
from skincancer.core.model_card import (
    ModelCard,
    card_path_for,
    check_members,
    evaluated_card,
    ood_path_for,
    read_card,
    train_card_path_for,
    write_card,
)
from skincancer.core.params import EvaluateParams, ThresholdParams
from skincancer.core.paths import TEST, fold_part
from skincancer.core.patient_context import context_columns
from skincancer.evaluate.groups import group_metrics, operating_point, sensitivity_shortfalls
from skincancer.evaluate.inference import context_width, load_for_inference, predict_images
from skincancer.evaluate.metrics import DECIMALS, evaluation_metrics, fold_metrics
from skincancer.evaluate.ood import (
    OodFit,
    card_record,
    cutoff_at,
    feature_layers,
    feature_scorer,
    fit_ood,
    ood_metrics,
    scores_and_features,
)
from skincancer.evaluate.report import confident_mistakes, split_scores, write_report
from skincancer.evaluate.summary import band_summary, fold_summary, ood_summary, split_summary
from skincancer.shard.tfrecords import read_examples
from skincancer.train.data import ShardSpecMismatch, eval_dataset, read_shard_manifest, split_records
from skincancer.train.live import read_history

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["image_id", "split", "label", "diagnosis", "probability", "prediction", "source", "band", "group",
                      "score", "ood_score", "in_distribution"]
OOF = "oof"  # the split name of out-of-fold predictions, in predictions.csv and metrics.json


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


class ContextMismatch(ValueError):
    """The model takes another patient context than its card records: scored without it, or with a vector of
    another layout, every score would be wrong without failing."""


def _check_context(model: keras.Model, fields: Sequence[str]) -> None:
    recorded = len(context_columns(fields)) if fields else None
    if (width := context_width(model)) != recorded:
        taken = "the image alone" if width is None else f"a patient context of {width} columns"
        given = "no patient context" if recorded is None else f"{list(fields)} ({recorded} columns)"
        raise ContextMismatch(f"the model takes {taken} but its card records {given}: rerun `dvc repro train` so "
                              "that model and card come from one run")


def predict_split(
    model: keras.Model, shards_dir: Path, split: str, tta: int = 1, scales: Sequence[float] = (1.0,),
    batch_size: int = 64, fields: Sequence[str] = (),
) -> np.ndarray:
    """P(malignant) per image of a split, in manifest order; a model trained with patient context `fields` (its
    card's) is fed each image's context from the shards' image table."""
    return predict_images(model, _split_inputs(model, shards_dir, split, fields, batch_size), tta, scales)


def _split_inputs(model: keras.Model, shards_dir: Path, split: str, fields: Sequence[str],
                  batch_size: int = 64) -> tf.data.Dataset:
    """A split's images as the model takes them (with each image's context where its card records `fields`)."""
    _check_context(model, fields)
    return eval_dataset(shards_dir, split, batch_size, fields=fields).map(lambda inputs, _: inputs)


def _scored(model: keras.Model, shards_dir: Path, part: str, params: EvaluateParams, fields: Sequence[str],
            **columns: object) -> pd.DataFrame:
    """A shard part's images with the model's score, at metrics.json's precision, and `columns` added."""
    score = predict_split(model, shards_dir, part, params.tta, params.tta_scales, fields=fields).round(DECIMALS)
    return split_records(shards_dir, part).assign(score=score, **columns)


def split_features(scorer: keras.Model, shards_dir: Path, part: str, fields: Sequence[str]) -> np.ndarray:
    """The pooled features of a part's images as prepared, in manifest order (what the out-of-distribution measure
    reads; `scorer`: skincancer.evaluate.ood.feature_scorer's)."""
    return scores_and_features(scorer, _split_inputs(scorer, shards_dir, part, fields))[1]


def _scored_and_measured(scorer: keras.Model, shards_dir: Path, part: str, params: EvaluateParams,
                         fields: Sequence[str], fit: OodFit, **columns: object) -> pd.DataFrame:
    """_scored from the same pass that reads the features, with each image's out-of-distribution score."""
    scores, features = scores_and_features(scorer, _split_inputs(scorer, shards_dir, part, fields), params.tta,
                                           params.tta_scales)
    return split_records(shards_dir, part).assign(score=scores.round(DECIMALS),
                                                  ood_score=fit.score(features).round(DECIMALS), **columns)


def _out_of_fold(members: list[Path], shards_dir: Path, params: EvaluateParams,
                 fields: Sequence[str]) -> list[pd.DataFrame]:
    """Every non-test image scored once, by the fold model that never saw it (one model in memory at a time)."""
    return [_scored(load_for_inference(path), shards_dir, fold_part(fold), params, fields, split=OOF, fold=fold)
            for fold, path in enumerate(members)]


def _calibrated(frames: list[pd.DataFrame], chosen_on: str, params: EvaluateParams) -> tuple[pd.DataFrame, Calibration]:
    """Probabilities calibrated on the `chosen_on` scores: the threshold is one of them, so predictions.csv
    reproduces every decision exactly."""
    predictions = pd.concat(frames, ignore_index=True)
    chosen = predictions[predictions["split"] == chosen_on]
    calibration = fit_calibration(chosen["label"], chosen["score"], params.calibration, DECIMALS)
    return predictions.assign(probability=calibration.apply(predictions["score"]).round(DECIMALS)), calibration


def _trained_on(members: list[Path]) -> list[str]:
    """The shard parts the model trained on: train, or (with fold `members`) every fold."""
    return [fold_part(fold) for fold in range(len(members))] if members else ["train"]


def _predictions(
    model: keras.Model, shards_dir: Path, params: EvaluateParams, members: list[Path], fields: Sequence[str]
) -> tuple[pd.DataFrame, Calibration, str, OodFit]:
    """Scores, calibrated probabilities and out-of-distribution scores, the split the decisions are fitted on:
    val, or (with fold `members`) the out-of-fold scores, beside the model's (the ensemble's) own test scores, and
    the out-of-distribution fit, on the features of the images the model trained on (with folds: every fold's,
    which are also the out-of-fold images); `fields`: the patient context the card records."""
    scorer = feature_scorer(model)
    features = {part: split_features(scorer, shards_dir, part, fields) for part in _trained_on(members)}
    fit = fit_ood(np.concatenate(list(features.values())))
    test = _scored_and_measured(scorer, shards_dir, TEST, params, fields, fit, split=TEST)
    if not members:
        frames = [_scored_and_measured(scorer, shards_dir, "val", params, fields, fit, split="val"), test]
        return (*_calibrated(frames, "val", params), "val", fit)
    frames = [frame.assign(ood_score=fit.score(features[fold_part(fold)]).round(DECIMALS))
              for fold, frame in enumerate(_out_of_fold(members, shards_dir, params, fields))]
    predictions, calibration = _calibrated([*frames, test], OOF, params)
    return predictions.astype({"fold": "Int64"}), calibration, OOF, fit  # test rows have none


def metrics_document(predictions: pd.DataFrame, chosen_on: str, params: EvaluateParams) -> dict:
    """metrics.json but its calibration, from predictions.csv's rows (probabilities calibrated): each split
    pooled, then (with folds) each fold's AUC, then per source and band."""
    holds_on = params.threshold.holds_on
    strata = None if holds_on == "pooled" else holds_on
    metrics = evaluation_metrics(split_scores(predictions, chosen_on, strata), split_scores(predictions, TEST), params,
                                 chosen_on)
    if chosen_on == OOF:
        oof = predictions[predictions["split"] == OOF]
        folds = {fold_part(fold): split_scores(rows, OOF) for fold, rows in oof.groupby("fold", sort=True)}
        metrics[OOF] |= fold_metrics(folds, params)
    for split in (chosen_on, TEST):
        metrics[split] |= group_metrics(predictions[predictions["split"] == split], metrics["threshold"], params)
    return metrics


def warn_of_shortfalls(metrics: dict, chosen_on: str, policy: ThresholdParams) -> list[str]:
    """Each source or band whose sensitivity misses the policy's target beyond chance, in words, logged as a
    warning (the report says the same at its top)."""
    shortfalls = [shortfall.in_words() for shortfall in sensitivity_shortfalls(metrics, (chosen_on, TEST), policy)]
    for words in shortfalls:
        log.warning("%s", words)
    return shortfalls


def ensemble_members(training: ModelCard, model_path: Path) -> list[Path]:
    """The fold models a cross-validated card lists, each checked against its hash; none for a single model."""
    return check_members(training, Path(model_path).parent) if training.document.get("members") else []


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
    live_dir: Path | None = None,
    shown_params: dict | None = None,
    train_card_path: Path | None = None,
    card_path: Path | None = None,
) -> dict:
    """metrics.json, reports/ and the model card (`card_path`, default card.json beside the model): the
    training card (default train_card.json beside it) with this evaluation added. `shown_params` are
    printed in the report (the params that produced it); live_dir is training's DVCLive record, drawn in it."""
    training = read_card(train_card_path or train_card_path_for(model_path), model_path, written_by="train")
    members = ensemble_members(training, model_path)
    model = load_for_inference(model_path)
    check_model_fits_shards(model, shards_dir, model_path)
    predictions, calibration, chosen_on, fit = _predictions(model, shards_dir, params, members, training.context_fields)
    cutoff = cutoff_at(predictions.loc[predictions["split"] == chosen_on, "ood_score"], params.ood.percentile)
    predictions["in_distribution"] = predictions["ood_score"] <= cutoff
    metrics = metrics_document(predictions, chosen_on, params)
    metrics["calibration"] = calibration.as_json(DECIMALS)
    metrics["ood"] = ood_metrics(predictions, (chosen_on, TEST), params.ood.percentile, cutoff)
    warn_of_shortfalls(metrics, chosen_on, params.threshold)
    predictions["prediction"] = (predictions["probability"] >= metrics["threshold"]).astype(int)
    facts, predictions = predictions, predictions[PREDICTION_COLUMNS + (["fold"] if members else [])]
    mistakes = confident_mistakes(predictions, params.gallery)
    history = read_history(live_dir) if live_dir is not None and Path(live_dir).is_dir() else None
    write_report(
        reports_dir, metrics, predictions,
        policy=params.threshold, params=shown_params or {"evaluate": params.model_dump(mode="json")},
        history=history, images=_encoded_images(shards_dir, facts[facts["image_id"].isin(mistakes.image_ids)]), mistakes=mistakes,
    )
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    point = operating_point(metrics, chosen_on, params.threshold)
    card_path = card_path or card_path_for(model_path)
    atomic_write_bytes(ood_path := ood_path_for(card_path), fit.npz_bytes())
    ood = card_record(fit, feature_layers(model), _trained_on(members), chosen_on, params.ood.percentile, cutoff,
                      ood_path)
    write_card(evaluated_card(training.document, metrics, params, point, ood), card_path)
    _log_summary(metrics, chosen_on)
    return metrics


def _log_summary(metrics: dict, chosen_on: str) -> None:
    """The evaluation in three lines (four with folds), for the terminal and the Prefect run log: the threshold's
    split and test, then test per resolution band."""
    for split in (chosen_on, TEST):
        log.info("%s", split_summary(metrics, split))
    log.info("%s", band_summary(metrics, TEST))
    log.info("%s", ood_summary(metrics))
    if chosen_on == OOF:
        log.info("%s", fold_summary(metrics[OOF]))

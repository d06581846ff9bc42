"""evaluate: every output, honest shapes (null for the undefined), TTA, and refusing a model of another size."""

import base64
import json
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from skincancer.core.params import EvaluateParams, TrainParams
from skincancer.evaluate.evaluate import PREDICTION_COLUMNS, evaluate, predict_split
from skincancer.evaluate.groups import GROUP_KEYS
from skincancer.evaluate.inference import DIHEDRAL, at_scale
from skincancer.evaluate.metrics import METRIC_KEYS
from skincancer.train.data import ShardSpecMismatch, eval_dataset
from skincancer.train.live import open_live, replay
from skincancer.train.models import build_classifier

PLOTS = ["calibration", "confusion", "pr_test", "pr_val", "roc_test", "roc_val"]
FIGURES = ["calibration.png", "confusion.png", "false_negatives.png", "false_positives.png", "history.png", "pr.png", "roc.png"]


def save_with_card(model: keras.Model, path, shards_dir, params: TrainParams) -> None:
    """A model saved as training saves one: with its training card, which evaluate checks it against."""
    from skincancer.core.model_card import card_input, train_card_path_for, training_card, write_card
    from skincancer.train.data import read_shard_manifest, split_records

    model.save(path)
    manifest_path = shards_dir / "manifest.json"
    prepared_as = card_input(read_shard_manifest(shards_dir), manifest_path)
    card = training_card(params, prepared_as, manifest_path, split_records(shards_dir, "train"), path, "float32")
    write_card(card, train_card_path_for(path))


@pytest.fixture(scope="module")
def model_path(tiny_shards, tmp_path_factory):
    """An untrained small_cnn: scores vary from image to image, which is all evaluate needs. Built from its own
    seed stream, so its weights (here: ranking val right, so Platt's slope is positive) never depend on what
    the worker built before."""
    return untrained_small_cnn(tiny_shards, tmp_path_factory.mktemp("model"))


def untrained_small_cnn(shards_dir: Path, folder: Path) -> Path:
    """``folder/model.keras``: a small_cnn built from seed 3's own stream, untrained, with its training card."""
    from skincancer.train.hardware import seeded_construction

    path = folder / "model.keras"
    keras.utils.clear_session()
    with seeded_construction(3):
        model = build_classifier(TrainParams(seed=3), 32).model
    save_with_card(model, path, shards_dir, TrainParams(seed=3))
    return path


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A DVCLive record of four epochs over two phases, as training writes it."""
    path = tmp_path_factory.mktemp("history") / "dvclive"
    frame = pd.DataFrame({"epoch": range(4), "phase": [1, 1, 2, 2], "auc": [0.6, 0.7, 0.8, 0.85], "val_auc": [0.6, 0.65, 0.7, 0.72],
                          "loss": [0.7, 0.6, 0.5, 0.45], "val_loss": [0.7, 0.65, 0.6, 0.58]})
    with open_live(path) as live:
        replay(live, frame)
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_shards, model_path, history, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    params = EvaluateParams(bootstrap=50, gallery=3)
    metrics = evaluate(params, model_path, tiny_shards, out / "metrics.json", out / "reports", live_dir=history,
                       shown_params={"evaluate": params.model_dump(mode="json"), "train": {"epochs": 2}})
    return out, metrics


def test_every_output_is_written(evaluated):
    out, metrics = evaluated
    reports = out / "reports"
    assert sorted(p.stem for p in (reports / "plots").iterdir()) == PLOTS
    assert sorted(p.name for p in (reports / "figures").iterdir()) == FIGURES
    assert all((reports / name).is_file() for name in ("report.md", "report.html", "predictions.csv"))
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_metrics_json_has_exactly_the_stable_keys_as_plain_rounded_numbers(evaluated):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "val", "test", "calibration", "ood"]
    for split in ("val", "test"):
        assert list(metrics[split]) == [*METRIC_KEYS, "by_source", "by_band"]
        groups = [figures for grouping in ("by_source", "by_band") for figures in metrics[split][grouping].values()]
        assert groups and all(list(figures) == list(GROUP_KEYS) for figures in groups)
        for figures in [{key: metrics[split][key] for key in METRIC_KEYS}, *groups]:
            for key, value in figures.items():
                assert value is None or type(value) in (int, float), (split, key)
                assert value is None or isinstance(value, int) or round(value, 6) == value


def test_predictions_csv_rows_and_columns(evaluated, tiny_shards):
    out, metrics = evaluated
    predictions = pd.read_csv(out / "reports/predictions.csv")
    assert list(predictions.columns) == PREDICTION_COLUMNS
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert len(predictions) == manifest["splits"]["val"]["count"] + manifest["splits"]["test"]["count"]
    assert ((predictions["probability"] >= metrics["threshold"]).astype(int) == predictions["prediction"]).all()


def test_probabilities_are_scores_calibrated_on_val_and_the_brier_score_is_theirs(evaluated):
    from sklearn.metrics import brier_score_loss

    from skincancer.core.calibration import Calibration

    out, metrics = evaluated
    predictions = pd.read_csv(out / "reports/predictions.csv")
    calibration = Calibration.from_json(metrics["calibration"])
    assert calibration.method == "platt" and calibration.prevalence == calibration.fitted_prevalence
    val = predictions[predictions["split"] == "val"]
    assert calibration.fitted_prevalence == pytest.approx(val["label"].mean(), abs=1e-6)
    np.testing.assert_allclose(predictions["probability"], calibration.apply(predictions["score"]).round(6), atol=1e-9)
    test = predictions[predictions["split"] == "test"]
    assert metrics["test"]["brier"] == pytest.approx(brier_score_loss(test["label"], test["probability"]), abs=1e-6)
    assert "calibrated on val (Platt)" in (out / "reports/report.md").read_text()


def test_predictions_carry_the_split_group_from_the_shards(evaluated, tiny_shards):
    """The group travels split manifest -> shard record -> predictions.csv, where the bootstrap reads it."""
    from skincancer.shard.tfrecords import read_examples

    out, _ = evaluated
    predictions = pd.read_csv(out / "reports/predictions.csv", dtype=str).set_index("image_id")
    records = read_examples(sorted(tiny_shards.glob("*.tfrecord")))
    shard_groups = {record["image/id"]: record["image/group"] for record in records}
    assert predictions["group"].notna().all()
    assert predictions["group"].to_dict() == {image_id: shard_groups[image_id] for image_id in predictions.index}


def test_report_html_is_self_contained_and_carries_the_report(evaluated):
    out, _ = evaluated
    html = (out / "reports/report.html").read_text()
    assert 'src="figures/' not in html
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(FIGURES)
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in embedded)
    for heading in ("Evaluation report", "Per diagnosis (test)", "Most confident mistakes (test)", "All metrics", "Params"):
        assert heading in html
    assert "<table>" in html and "epochs: 2" in html  # tables rendered; the params that produced it


def test_model_for_another_image_size_is_refused(tiny_shards, tmp_path):
    path = tmp_path / "model.keras"
    save_with_card(build_classifier(TrainParams(), 48).model, path, tiny_shards, TrainParams())
    with pytest.raises(ShardSpecMismatch, match=r"48x48 images but the shards .* hold 32x32"):
        evaluate(EvaluateParams(), path, tiny_shards, tmp_path / "metrics.json", tmp_path / "reports")
    assert not (tmp_path / "metrics.json").exists()


def test_tta_averages_the_dihedral_views(tiny_shards, model_path):
    model = keras.saving.load_model(model_path)
    images = np.concatenate([x.numpy() for x, _ in eval_dataset(tiny_shards, "val", 64)])
    views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    expected = np.mean([model.predict(v, verbose=0).reshape(-1) for v in views], axis=0)
    np.testing.assert_allclose(predict_split(model, tiny_shards, "val", tta=4), expected, rtol=1e-5)
    square = tf.reshape(tf.range(9), (1, 3, 3, 1))
    assert len({view(square).numpy().tobytes() for view in DIHEDRAL}) == 8  # eight distinct views
    assert not np.allclose(predict_split(model, tiny_shards, "val", tta=8), predict_split(model, tiny_shards, "val"))


def test_tta_scales_average_each_view_with_its_lower_resolution_copy(tiny_shards, model_path):
    model = keras.saving.load_model(model_path)
    images = np.concatenate([x.numpy() for x, _ in eval_dataset(tiny_shards, "val", 64)])
    mirrored = images[:, :, ::-1]
    halved = [tf.image.resize(tf.image.resize(v.astype(np.float32), (16, 16), antialias=True), (32, 32)) for v in (images, mirrored)]
    views = [images, mirrored, *(np.round(np.clip(v.numpy(), 0, 255)).astype(np.uint8) for v in halved)]
    expected = np.mean([model.predict(v, verbose=0).reshape(-1) for v in views], axis=0)
    np.testing.assert_allclose(predict_split(model, tiny_shards, "val", tta=2, scales=[1.0, 0.5]), expected, rtol=1e-5)
    assert not np.allclose(expected, predict_split(model, tiny_shards, "val", tta=2))
    np.testing.assert_array_equal(at_scale(tf.constant(images), 1.0).numpy(), images)  # 1.0 is the image as sharded

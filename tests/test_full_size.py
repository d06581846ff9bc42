"""Full-size originals beside resized copies, end to end: real shards of two resolution bands, a model that scores
the full-size malignant images lower (as one trained mostly on small copies does), evaluate's per-band figures, the
warning where the sensitivity promise breaks, a threshold that holds on each band, and predict saying which (issue 31)."""

import io
import json
import logging

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from skincancer.cli import app
from skincancer.core.model_card import card_path_for, read_card
from skincancer.core.params import EvaluateParams, ShardParams, ThresholdParams, TrainParams
from skincancer.evaluate.evaluate import evaluate
from skincancer.shard.shard import write_shards

SIZE = 32
# (split, band) -> (benign, malignant) images; full-size originals are a third of the malignant images
COUNTS = {("train", "small"): (4, 4), ("train", "full_size"): (4, 4),
          ("val", "small"): (60, 40), ("val", "full_size"): (40, 20),
          ("test", "small"): (60, 40), ("test", "full_size"): (40, 20)}
STORED = {"small": (180, 180), "full_size": (800, 600)}  # the Kaggle copies' size; an archive original's
# grey level of each kind of image: the model's score rises with it, and full-size malignant images sit lower
GREY = {(0, "small"): (60, 20), (0, "full_size"): (60, 20), (1, "small"): (200, 15), (1, "full_size"): (105, 25)}


def _grey_jpeg(level: float, size: tuple[int, int]) -> bytes:
    pixels = np.full((size[1], size[0], 3), np.clip(level, 0, 255), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A split tree and its shards: flat grey images whose level says the label, lower for full-size malignant ones."""
    root = tmp_path_factory.mktemp("two-bands")
    rng = np.random.default_rng(0)
    rows = []
    for (split, band), counts in COUNTS.items():
        for label, count in enumerate(counts):
            for _ in range(count):
                number = len(rows)
                path = f"{split}/{'malignant' if label else 'benign'}/ISIC_{number:07d}.jpg"
                (root / "split" / path).parent.mkdir(parents=True, exist_ok=True)
                (root / "split" / path).write_bytes(_grey_jpeg(rng.normal(*GREY[label, band]), STORED[band]))
                rows.append({"image_id": f"ISIC_{number:07d}", "source": "uda1" if band == "full_size" else "kaggle",
                             "diagnosis": "melanoma" if label else "nevus", "patient_id": None, "sex": None,
                             "age_approx": np.nan, "anatom_site": None, "width": STORED[band][0],
                             "height": STORED[band][1], "split": split, "label": label, "path": path,
                             "group": f"G{number}"})
    manifest = pd.DataFrame(rows).astype({"width": "Int64", "height": "Int64", "patient_id": "string", "sex": "string",
                                          "anatom_site": "string"})
    write_shards(manifest, root / "split", root / "shards", ShardParams(image_size=SIZE, workers=1))
    return root / "shards"


@pytest.fixture(scope="module")
def model_path(shards, tmp_path_factory):
    """A model whose score is the image's mean grey level through a fixed sigmoid, saved with its training card."""
    from test_evaluate import save_with_card

    keras.utils.clear_session()
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    grey = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    output = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(8 / 3),
                                bias_initializer=keras.initializers.Constant(-2.5))(grey)
    path = tmp_path_factory.mktemp("grey-model") / "model.keras"
    save_with_card(keras.Model(inputs, output), path, shards, TrainParams(seed=0))
    return path


def _evaluate(shards, model_path, out, threshold: ThresholdParams) -> dict:
    params = EvaluateParams(bootstrap=200, gallery=2, threshold=threshold)
    return evaluate(params, model_path, shards, out / "metrics.json", out / "reports", card_path=out / "card.json")


def test_the_full_size_band_is_scored_apart_and_its_broken_promise_is_said_at_the_top_and_logged(
    shards, model_path, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING):
        metrics = _evaluate(shards, model_path, tmp_path, ThresholdParams(target=0.9))
    assert metrics["val"]["sensitivity"] >= 0.9  # pooled, the promise holds on val
    full, small = metrics["test"]["by_band"]["full_size"], metrics["test"]["by_band"]["small"]
    assert full["sensitivity_ci_high"] < 0.9 <= small["sensitivity"]
    assert full["roc_auc"] < small["roc_auc"]
    assert metrics["test"]["by_source"]["uda1"] == full  # here one source is one band
    predictions = pd.read_csv(tmp_path / "reports/predictions.csv")
    assert set(predictions["band"]) == {"small", "full_size"}
    report = (tmp_path / "reports/report.md").read_text()
    head = report[:report.index("At threshold")]
    assert "**Warning: the threshold's sensitivity target does not hold on every kind of image**" in head
    assert "sensitivity falls short on full_size (resolution band) in test:" in head
    assert "sensitivity falls short on full_size (resolution band) in test:" in caplog.text
    assert "### Per resolution band" in report and "| full_size | test | 60 (20) |" in report


def test_a_threshold_held_on_each_band_keeps_its_promise_on_full_size_images_and_predict_says_so(
    shards, model_path, tmp_path
):
    held = _evaluate(shards, model_path, tmp_path / "held", ThresholdParams(target=0.9, holds_on="band"))
    pooled = _evaluate(shards, model_path, tmp_path / "pooled", ThresholdParams(target=0.9))
    assert held["val"]["by_band"]["full_size"]["sensitivity"] >= 0.9 > pooled["val"]["by_band"]["full_size"]["sensitivity"]
    assert held["test"]["by_band"]["full_size"]["sensitivity_ci_high"] >= 0.9  # no shortfall on test either
    assert held["val"]["specificity"] <= pooled["val"]["specificity"]  # what the promise costs
    card = json.loads((tmp_path / "held/card.json").read_text())["evaluation"]
    assert card["operating_point"]["holds_on"] == "band"
    assert {name: group["held"] for name, group in card["operating_point"]["groups"].items()} == {
        "full_size": True, "small": True}
    assert card["metrics"]["test"]["by_band"]["full_size"]["sensitivity"] == held["test"]["by_band"]["full_size"]["sensitivity"]
    assert "pooled over every source and resolution band" in card["calibrated_on"]
    report = (tmp_path / "held/reports/report.md").read_text()
    assert "does not hold on every kind of image" not in report
    image = next((shards.parent / "split/test/malignant").glob("*.jpg"))
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(model_path), "--card",
                                      str(tmp_path / "held/card.json")])
    assert result.exit_code == 0, result.output
    words = read_card(tmp_path / "held/card.json", model_path).threshold_in_words
    assert words == ("chosen on the validation split to catch 90% of its malignant images, pooled and in each "
                     "resolution band with at least 10 malignant images there (full_size, small)")
    assert f"malignant at p >= {held['threshold']:.4f} ({words})" in result.output
    assert card_path_for(model_path).name == "card.json"

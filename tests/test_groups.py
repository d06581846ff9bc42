"""Per source and resolution band: every headline figure on each kind of image, a threshold that holds on each,
and a report and log that say where the sensitivity promise breaks (issue 31)."""

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from skincancer.core.model_card import threshold_in_words
from skincancer.core.params import EvaluateParams, ThresholdParams
from skincancer.evaluate.evaluate import metrics_document, warn_of_shortfalls
from skincancer.evaluate.groups import GROUP_KEYS, operating_point
from skincancer.review.metrics_diff import flatten


def two_domains(seed: int = 0, n: int = 1200, shift: float = 0.3) -> pd.DataFrame:
    """val and test predictions of two resolution bands (and two sources across them): full-size malignant
    images score `shift` lower than small ones, as a model trained mostly on small copies scores them."""
    rng = np.random.default_rng(seed)
    band = np.where(rng.random(n) < 0.3, "full_size", "small")
    label = (rng.random(n) < 0.3).astype(int)
    probability = 0.4 * label - shift * label * (band == "full_size") + rng.normal(0.3, 0.12, n)
    return pd.DataFrame({
        "image_id": [f"ISIC_{i:07d}" for i in range(n)],
        "split": np.where(np.arange(n) % 2 == 0, "val", "test"),
        "label": label,
        "probability": np.clip(probability, 0, 1).round(6),
        "source": np.where(band == "full_size", "uda1", rng.choice(["kaggle", "ham"], n)),
        "band": band,
        "group": [f"patient{i // 2}" for i in range(n)],  # two images a patient, one in val, one in test
    })


def caught(frame: pd.DataFrame, split: str, threshold: float, band: str | None = None) -> float:
    rows = frame[(frame["split"] == split) & (frame["label"] == 1) & ((frame["band"] == band) if band else True)]
    return float((rows["probability"] >= threshold).mean())


def test_each_source_and_band_gets_the_headline_figures_on_its_own_images_under_stable_keys():
    frame = two_domains()
    metrics = metrics_document(frame, "val", EvaluateParams(bootstrap=50))
    threshold = metrics["threshold"]
    for split in ("val", "test"):
        assert list(metrics[split])[-2:] == ["by_source", "by_band"]
        assert sorted(metrics[split]["by_band"]) == ["full_size", "small"]
        assert sorted(metrics[split]["by_source"]) == ["ham", "kaggle", "uda1"]
        for band, figures in metrics[split]["by_band"].items():
            rows = frame[(frame["split"] == split) & (frame["band"] == band)]
            assert list(figures) == list(GROUP_KEYS)
            assert figures["roc_auc"] == pytest.approx(skm.roc_auc_score(rows["label"], rows["probability"]), abs=1e-6)
            assert figures["roc_auc_ci_low"] < figures["roc_auc"] < figures["roc_auc_ci_high"]
            assert figures["sensitivity"] == pytest.approx(caught(frame, split, threshold, band), abs=1e-6)
            assert figures["sensitivity_ci_low"] <= figures["sensitivity"] <= figures["sensitivity_ci_high"]
            assert figures["mean_probability"] == pytest.approx(rows["probability"].mean(), abs=1e-6)
            assert (figures["n"], figures["n_malignant"]) == (len(rows), int(rows["label"].sum()))
    assert "test.by_band.full_size.sensitivity" in flatten(metrics)  # its own line in `dvc metrics diff`


def test_a_pooled_threshold_breaks_its_promise_on_the_lower_scoring_band_and_says_so(caplog):
    frame = two_domains()
    metrics = metrics_document(frame, "val", EvaluateParams(bootstrap=20))
    assert caught(frame, "val", metrics["threshold"]) >= 0.9  # pooled, the promise holds
    assert metrics["test"]["by_band"]["full_size"]["sensitivity_ci_high"] < 0.9  # on full-size images it does not
    with caplog.at_level(logging.WARNING):
        shortfalls = warn_of_shortfalls(metrics, "val", ThresholdParams(target=0.9))
    assert any(words.startswith("sensitivity falls short on full_size (resolution band) in test:") for words in shortfalls)
    assert any(words.startswith("sensitivity falls short on uda1 (source) in val:") for words in shortfalls)
    assert not any("small" in words or "kaggle" in words for words in shortfalls)
    assert all(words in caplog.text for words in shortfalls)
    assert warn_of_shortfalls(metrics, "val", ThresholdParams(policy="youden")) == []  # promised no sensitivity


def test_a_threshold_holding_on_each_band_reaches_the_target_on_every_band_it_can_and_says_which():
    frame = two_domains()
    pooled = metrics_document(frame, "val", EvaluateParams(bootstrap=0))
    policy = ThresholdParams(target=0.9, holds_on="band", min_malignant=10)
    held = metrics_document(frame, "val", EvaluateParams(bootstrap=0, threshold=policy))
    assert held["threshold"] < pooled["threshold"]
    for band in ("small", "full_size", None):
        assert caught(frame, "val", held["threshold"], band) >= 0.9
    assert caught(frame, "val", pooled["threshold"], "full_size") < 0.9
    # the price of the promise, in specificity, shows beside it
    assert held["val"]["specificity"] < pooled["val"]["specificity"]
    point = operating_point(held, "val", policy)
    assert point["holds_on"] == "band" and point["min_malignant"] == 10
    assert {name: group["held"] for name, group in point["groups"].items()} == {"full_size": True, "small": True}
    assert point["groups"]["full_size"]["sensitivity"] == held["val"]["by_band"]["full_size"]["sensitivity"]


def test_a_band_with_too_few_malignant_images_cannot_pull_the_threshold_and_carries_no_promise():
    frame = two_domains()
    few = frame.index[(frame["band"] == "full_size") & (frame["label"] == 1) & (frame["split"] == "val")][9:]
    frame = frame.drop(few)  # 9 malignant full-size val images left
    policy = ThresholdParams(target=0.9, holds_on="band", min_malignant=10)
    held = metrics_document(frame, "val", EvaluateParams(bootstrap=0, threshold=policy))
    pooled = metrics_document(frame, "val", EvaluateParams(bootstrap=0))
    small_only = metrics_document(frame[frame["band"] == "small"], "val", EvaluateParams(bootstrap=0))
    assert held["threshold"] == min(pooled["threshold"], small_only["threshold"])
    point = operating_point(held, "val", policy)
    assert not point["groups"]["full_size"]["held"] and point["groups"]["full_size"]["n_malignant"] == 9
    words = threshold_in_words(policy.model_dump(mode="json"), point)
    assert words == ("chosen on the validation split to catch 90% of its malignant images, pooled and in each "
                     "resolution band with at least 10 malignant images there (small); no promise on full_size: 9 "
                     "malignant")


def test_the_promise_in_words_for_every_policy_and_a_card_from_before_operating_points():
    pooled = {"policy": "sensitivity", "target": 0.9, "value": 0.5}
    assert threshold_in_words(pooled, {}) == ("chosen on the validation split to catch 90% of its malignant images, "
                                              "pooled over every source and resolution band, with no promise per kind of image")
    assert threshold_in_words(pooled | {"policy": "fixed"}, {}).startswith("fixed in params.yaml")
    assert "out-of-fold" in threshold_in_words(pooled | {"policy": "youden"}, {"chosen_on": "oof", "holds_on": "pooled"})


def test_holding_on_a_grouping_needs_a_sensitivity_target():
    with pytest.raises(ValueError, match="evaluate.threshold.holds_on band holds a sensitivity target"):
        ThresholdParams(policy="youden", holds_on="band")

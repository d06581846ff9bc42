"""report: the operating point in words, per-source and per-diagnosis tables, the mistakes gallery."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from skincancer.metrics import evaluation_metrics
from skincancer.params import EvaluateParams, ThresholdParams
from skincancer.report import confident_mistakes, operating_point, per_source, render_markdown, write_report


def predictions_frame(sources=("isic2020",), seed=0, n=200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.25).astype(int)
    probability = np.clip(0.35 * label + rng.normal(0.35, 0.18, n), 0, 1).round(6)
    frame = pd.DataFrame({
        "image_id": [f"ISIC_{i:07d}" for i in range(n)],
        "split": np.where(np.arange(n) < n // 2, "val", "test"),
        "label": label,
        "diagnosis": np.where(label == 1, "melanoma", rng.choice(["nevus", "seborrheic_keratosis"], n)),
        "probability": probability,
        "source": rng.choice(list(sources), n),
    })
    return frame


def scored(frame: pd.DataFrame, params: EvaluateParams = EvaluateParams(bootstrap=20)) -> tuple[dict, pd.DataFrame]:
    val, test = frame[frame["split"] == "val"], frame[frame["split"] == "test"]
    metrics = evaluation_metrics((val["label"].to_numpy(), val["probability"].to_numpy()),
                                 (test["label"].to_numpy(), test["probability"].to_numpy()), params)
    return metrics, frame.assign(prediction=(frame["probability"] >= metrics["threshold"]).astype(int))


def test_operating_point_in_words_gives_the_counts_behind_each_share():
    metrics, frame = scored(predictions_frame())
    test = frame[frame["split"] == "test"]
    caught = int(test.loc[test["label"] == 1, "prediction"].sum())
    cleared = int((test.loc[test["label"] == 0, "prediction"] == 0).sum())
    malignant, benign = int(test["label"].sum()), int((test["label"] == 0).sum())
    text = operating_point(metrics, frame, ThresholdParams(target=0.9))
    assert f"At threshold **{metrics['threshold']:.4f}** (chosen on the validation split to catch 90% of malignant lesions)" in text
    assert f"**{caught / malignant:.0%}** of malignant lesions in the test split are caught ({caught} of {malignant})" in text
    assert f"**{cleared / benign:.0%}** of benign lesions are correctly cleared ({cleared} of {benign})" in text
    assert f"{caught / malignant:.0%}" == f"{metrics['test']['sensitivity']:.0%}"


def test_per_source_metrics_match_sklearn_and_appear_only_for_several_sources():
    metrics, frame = scored(predictions_frame(sources=("isic2019", "isic2020")))
    table = per_source(frame).set_index("source")
    for source, group in frame[frame["split"] == "test"].groupby("source"):
        assert table.loc[source, "roc_auc"] == pytest.approx(skm.roc_auc_score(group["label"], group["probability"]))
        assert table.loc[source, "sensitivity"] == pytest.approx(skm.recall_score(group["label"], group["prediction"]))
    assert "## Per source (test)" in render_markdown(metrics, frame, ThresholdParams(), {}, 4, with_history=False)
    single_metrics, single = scored(predictions_frame())
    assert "## Per source" not in render_markdown(single_metrics, single, ThresholdParams(), {}, 4, with_history=False)


def test_most_confident_mistakes_come_first():
    _, frame = scored(predictions_frame())
    missed, alarms = confident_mistakes(frame, 5)
    test = frame[frame["split"] == "test"]
    all_missed = test[(test["label"] == 1) & (test["prediction"] == 0)]
    all_alarms = test[(test["label"] == 0) & (test["prediction"] == 1)]
    assert missed["probability"].tolist() == sorted(all_missed["probability"])[:5]
    assert alarms["probability"].tolist() == sorted(all_alarms["probability"], reverse=True)[:5]


def test_a_single_class_test_split_reports_nulls_and_still_writes_the_report(tmp_path, caplog):
    frame = predictions_frame()
    frame = frame[(frame["split"] == "val") | (frame["label"] == 0)]  # no malignant image in test
    metrics, frame = scored(frame)
    assert metrics["test"]["roc_auc"] is None and metrics["test"]["sensitivity"] is None
    assert metrics["test"]["specificity"] is not None
    assert "test split" in caplog.text and "roc_auc" in caplog.text
    pixel = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(pixel, "JPEG")
    images = dict.fromkeys(frame["image_id"], pixel.getvalue())
    write_report(tmp_path, metrics, frame, policy=ThresholdParams(), params={}, history=None, images=images, mistakes=4)
    report = (tmp_path / "report.md").read_text()
    assert "ROC AUC (95% CI) |" in report and "n/a" in report
    assert pd.read_csv(tmp_path / "plots/roc_test.csv").empty  # undefined curve: headers, no points
    assert not (tmp_path / "figures/history.png").exists() and "history.png" not in report

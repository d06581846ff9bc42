"""report: the operating point in words, per-source and per-diagnosis tables, the mistakes gallery."""

import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from skincancer.core.params import EvaluateParams, ThresholdParams
from skincancer.evaluate.evaluate import metrics_document
from skincancer.evaluate.report import (
    confident_mistakes,
    intervals_note,
    operating_point,
    render_markdown,
    write_report,
)


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
        "band": rng.choice(["small", "full_size"], n),
        "group": [f"patient{i // 4}" for i in range(n)],  # four images per patient, never across splits
    })
    return frame


def scored(frame: pd.DataFrame, params: EvaluateParams = EvaluateParams(bootstrap=20)) -> tuple[dict, pd.DataFrame]:
    metrics = metrics_document(frame, "val", params)
    return metrics, frame.assign(prediction=(frame["probability"] >= metrics["threshold"]).astype(int))


def test_operating_point_in_words_gives_the_counts_behind_each_share():
    metrics, frame = scored(predictions_frame())
    test = frame[frame["split"] == "test"]
    caught = int(test.loc[test["label"] == 1, "prediction"].sum())
    cleared = int((test.loc[test["label"] == 0, "prediction"] == 0).sum())
    malignant, benign = int(test["label"].sum()), int((test["label"] == 0).sum())
    text = operating_point(metrics, frame, ThresholdParams(target=0.9))
    test_metrics = metrics["test"]
    sensitivity = f"{test_metrics['sensitivity_ci_low']:.0%}-{test_metrics['sensitivity_ci_high']:.0%}"
    specificity = f"{test_metrics['specificity_ci_low']:.0%}-{test_metrics['specificity_ci_high']:.0%}"
    chosen = ("chosen on the validation split to catch 90% of its malignant images, pooled over every source and "
              "resolution band, with no promise per kind of image")
    assert f"At threshold **{metrics['threshold']:.4f}** ({chosen})" in text
    assert (f"the model catches **{caught / malignant:.0%}** (95% CI {sensitivity}) of the malignant test images "
            f"({caught} of {malignant})") in text
    assert (f"clears **{cleared / benign:.0%}** (95% CI {specificity}) of the benign test images "
            f"({cleared} of {benign})") in text
    assert f"{caught / malignant:.0%}" == f"{test_metrics['sensitivity']:.0%}"
    assert "lesion" not in text  # it counts images, and says so


def test_headline_shows_intervals_and_says_what_they_resample():
    metrics, frame = scored(predictions_frame())
    report = render_markdown(metrics, frame, ThresholdParams(), {}, confident_mistakes(frame, 4), with_history=False)
    test = metrics["test"]
    for key, label in (("roc_auc", "ROC AUC (95% CI, groups resampled)"), ("sensitivity", "sensitivity (95% CI, images)"),
                       ("specificity", "specificity (95% CI, images)")):
        assert f"| {test[key]:.3f} ({test[key + '_ci_low']:.3f}-{test[key + '_ci_high']:.3f}) |" in report, key
        assert f"| {label} |" in report
    assert "| groups (patients, lesions, duplicates) | 25 | 25 |" in report  # 100 images per split, 4 per patient
    note = intervals_note(metrics, frame)
    assert "resample the split's groups" in note and "the test split holds 100 images in 25 groups" in note
    assert "Wilson score intervals that count images as independent" in note and note in report


def test_auc_interval_resamples_the_patients_of_the_predictions():
    """Four images per patient sharing the patient's score: the report's interval is the group one."""
    frame = predictions_frame()
    frame["probability"] = frame.groupby("group")["probability"].transform("first")
    frame["label"] = frame.groupby("group")["label"].transform("first")
    grouped, _ = scored(frame, EvaluateParams(bootstrap=500))
    by_image, _ = scored(frame.assign(group=frame["image_id"]), EvaluateParams(bootstrap=500))
    def width(metrics: dict) -> float:
        return metrics["test"]["roc_auc_ci_high"] - metrics["test"]["roc_auc_ci_low"]

    assert width(grouped) > 1.5 * width(by_image)


def test_every_source_and_band_gets_its_own_rows_with_intervals_on_both_splits():
    metrics, frame = scored(predictions_frame(sources=("isic2019", "isic2020")))
    report = render_markdown(metrics, frame, ThresholdParams(), {}, confident_mistakes(frame, 4), with_history=False)
    assert "## Per source and resolution band" in report
    for grouping, names in (("source", ("isic2019", "isic2020")), ("band", ("full_size", "small"))):
        for split in ("val", "test"):
            for name in names:
                figures = metrics[split][f"by_{grouping}"][name]
                auc = f"{figures['roc_auc']:.3f} ({figures['roc_auc_ci_low']:.3f}-{figures['roc_auc_ci_high']:.3f})"
                assert f"| {name} | {split} | {figures['n']} ({figures['n_malignant']}) | {auc} |" in report


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
    write_report(tmp_path, metrics, frame, policy=ThresholdParams(), params={}, history=None, images=images,
                 mistakes=confident_mistakes(frame, 4))
    report = (tmp_path / "report.md").read_text()
    for label in ("ROC AUC (95% CI, groups resampled)", "sensitivity (95% CI, images)"):  # val defined, test undefined
        assert re.search(rf"\| {re.escape(label)} \| [\d.]+ \([\d.]+-[\d.]+\) \| - \|", report), label
    assert "of the malignant test images (0 of 0)" in report and "catches **-**" in report
    assert pd.read_csv(tmp_path / "plots/roc_test.csv").empty  # undefined curve: headers, no points
    assert not (tmp_path / "figures/history.png").exists() and "history.png" not in report


def test_the_report_states_the_benign_malignant_mapping_in_force():
    metrics, frame = scored(predictions_frame())
    shown = {"labels": {"malignant": ["melanoma", "basal_cell_carcinoma"], "unknown": "error"}}
    report = render_markdown(metrics, frame, ThresholdParams(), shown, confident_mistakes(frame, 4), with_history=False)
    assert ("## Labels\n\nMalignant: basal cell carcinoma, melanoma (`labels.malignant`); every other diagnosis is "
            "benign, including actinic keratosis (AKIEC, which includes Bowen's disease) unless listed.") in report
    listed = {"labels": {"malignant": ["melanoma", "actinic_keratosis"], "unknown": "error"}}
    assert "Bowen" not in render_markdown(metrics, frame, ThresholdParams(), listed, confident_mistakes(frame, 4), with_history=False)


def fold_scored(params: EvaluateParams = EvaluateParams(bootstrap=20)) -> tuple[dict, pd.DataFrame]:
    """A cross-validated run's predictions: three folds scored out of fold, and test; decisions fitted on oof."""
    frame = predictions_frame(n=300)
    frame["split"] = np.where(np.arange(300) < 200, "oof", "test")
    frame["fold"] = pd.array([i // 4 % 3 if i < 200 else None for i in range(300)], dtype="Int64")
    metrics = metrics_document(frame, "oof", params)
    return metrics, frame.assign(prediction=(frame["probability"] >= metrics["threshold"]).astype(int))


def test_a_cross_validated_report_shows_the_folds_and_out_of_fold_beside_test():
    metrics, frame = fold_scored()
    assert list(metrics) == ["threshold", "oof", "test"] and "val" not in metrics
    folds = metrics["oof"]["folds"]
    assert list(folds) == ["fold0", "fold1", "fold2"] and sum(fold["n"] for fold in folds.values()) == 200
    oof = frame[frame["split"] == "oof"]
    for name, fold in folds.items():
        rows = oof[oof["fold"] == int(name[-1])]
        assert fold["roc_auc"] == pytest.approx(skm.roc_auc_score(rows["label"], rows["probability"]), abs=1e-6)
        assert fold["roc_auc_ci_low"] < fold["roc_auc"] < fold["roc_auc_ci_high"]
    aucs = [fold["roc_auc"] for fold in folds.values()]
    assert metrics["oof"]["fold_roc_auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert metrics["oof"]["fold_roc_auc_sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-6)

    report = render_markdown(metrics, frame, ThresholdParams(), {}, confident_mistakes(frame, 4), with_history=False)
    assert "chosen on the out-of-fold predictions" in report and "validation split" not in report
    assert "| | out-of-fold | test |" in report.replace("|  |", "| |")
    assert "## Folds" in report and "| fold0 |" in report and "Out-of-fold vs test" in report
    assert "out-of-fold: 200 images in 50 groups" in intervals_note(metrics, frame)


def test_a_single_model_report_has_no_folds_section():
    metrics, frame = scored(predictions_frame())
    report = render_markdown(metrics, frame, ThresholdParams(), {}, confident_mistakes(frame, 4), with_history=False)
    assert "## Folds" not in report and "out-of-fold" not in report


def test_cross_validated_plot_tables_draw_the_out_of_fold_curves(tmp_path):
    metrics, frame = fold_scored()
    write_report(tmp_path, metrics, frame, policy=ThresholdParams(), params={}, history=None, images={},
                 mistakes=confident_mistakes(frame, 0))
    plots = sorted(path.name for path in (tmp_path / "plots").iterdir())
    assert "roc_oof.csv" in plots and "pr_oof.csv" in plots and "roc_val.csv" not in plots

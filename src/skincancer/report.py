"""Evaluation outputs: dvc plot data (CSV), PNG figures for people, and report.md."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from skincancer.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from skincancer.labels import CLASS_NAMES as LABEL_NAMES  # noqa: E402

CLASS_NAMES = np.array(LABEL_NAMES)


def plot_tables(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, pd.DataFrame]:
    """The curves `dvc plots` draws (and diffs across commits), one table each."""
    fpr, tpr, roc_thresholds = skm.roc_curve(y, p)
    precision, recall, _ = skm.precision_recall_curve(y, p)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.clip(roc_thresholds, 0, 1)}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
        "confusion": pd.DataFrame({"actual": CLASS_NAMES[y], "predicted": CLASS_NAMES[(p >= threshold).astype(int)]}),
        "calibration": pd.DataFrame({"mean_predicted": predicted, "fraction_malignant": observed}),
    }


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _curve_figure(table: pd.DataFrame, x: str, y: str, title: str, diagonal: bool) -> bytes:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(table[x], table[y], marker="." if len(table) < 20 else None)
    if diagonal:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.02))
    return _png(figure)


def _confusion_figure(table: pd.DataFrame) -> bytes:
    counts = pd.crosstab(table["actual"], table["predicted"]).reindex(index=CLASS_NAMES, columns=CLASS_NAMES, fill_value=0)
    figure, axes = plt.subplots(figsize=(4, 3.5))
    axes.imshow(counts.to_numpy(), cmap="Blues")
    for (row, column), value in np.ndenumerate(counts.to_numpy()):
        axes.text(column, row, str(value), ha="center", va="center")
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    return _png(figure)


def figures(tables: dict[str, pd.DataFrame], roc_auc: float) -> dict[str, bytes]:
    return {
        "roc.png": _curve_figure(tables["roc"], "fpr", "tpr", f"ROC (test), AUC {roc_auc:.3f}", diagonal=True),
        "pr.png": _curve_figure(tables["pr"], "recall", "precision", "Precision-recall (test)", diagonal=False),
        "calibration.png": _curve_figure(tables["calibration"], "mean_predicted", "fraction_malignant", "Calibration (test)", diagonal=True),
        "confusion.png": _confusion_figure(tables["confusion"]),
    }


def per_diagnosis(predictions: pd.DataFrame) -> pd.DataFrame:
    """Share called malignant per diagnosis: sensitivity for malignant ones, FPR for benign ones."""
    test = predictions[predictions["split"] == "test"]
    return (
        test.groupby("diagnosis")
        .agg(n=("image_id", "size"), label=("label", "max"), called_malignant=("predicted", "mean"))
        .reset_index()
    )


def _metrics_table(metrics: dict) -> str:
    keys = list(metrics["test"])
    lines = ["| metric | val | test |", "|---|---:|---:|"]
    lines += [f"| {key} | {metrics['val'][key]:.4g} | {metrics['test'][key]:.4g} |" for key in keys]
    return "\n".join(lines)


def render_markdown(metrics: dict, policy: str, diagnoses: pd.DataFrame) -> str:
    rows = "\n".join(
        f"| {row.diagnosis} | {'malignant' if row.label else 'benign'} | {row.n} | {row.called_malignant:.3f} |"
        for row in diagnoses.itertuples()
    )
    test = metrics["test"]
    return f"""# Evaluation report

Operating point: threshold **{metrics['threshold']:.4f}**, chosen on the validation split
(policy `{policy}`) and applied unchanged to the test split.

Test: ROC AUC **{test['roc_auc']:.3f}** (95% bootstrap CI {test['roc_auc_ci_low']:.3f}-{test['roc_auc_ci_high']:.3f}),
sensitivity **{test['sensitivity']:.3f}**, specificity **{test['specificity']:.3f}**
on {test['n']} images ({test['n_malignant']} malignant).

## Metrics

{_metrics_table(metrics)}

## Per diagnosis (test)

Share of images called malignant: the sensitivity for malignant diagnoses, the false-positive rate for benign ones.

| diagnosis | class | n | called malignant |
|---|---|---:|---:|
{rows}

## Figures

![ROC](figures/roc.png) ![Precision-recall](figures/pr.png)
![Confusion matrix](figures/confusion.png) ![Calibration](figures/calibration.png)
"""


def write_report(reports_dir: Path, metrics: dict, policy: str, predictions: pd.DataFrame) -> None:
    """Every file under reports/, each written atomically."""
    test = predictions[predictions["split"] == "test"]
    y, p = test["label"].to_numpy(), test["probability"].to_numpy()
    tables = plot_tables(y, p, metrics["threshold"])
    for name, table in tables.items():
        atomic_write_text(reports_dir / "plots" / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
    for name, png in figures(tables, metrics["test"]["roc_auc"]).items():
        atomic_write_bytes(reports_dir / "figures" / name, png)
    atomic_write_text(reports_dir / "predictions.csv", predictions.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(reports_dir / "report.md", render_markdown(metrics, policy, per_diagnosis(predictions)))

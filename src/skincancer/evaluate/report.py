"""Evaluation outputs: dvc plot data (CSV), PNG figures, report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import NamedTuple

import markdown
import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from skincancer.core.atomic import atomic_write_bytes, atomic_write_text
from skincancer.core.labels import CLASS_NAMES as LABEL_NAMES
from skincancer.core.labels import mapping_in_words
from skincancer.core.model_card import GROUPING_NAMES, threshold_in_words
from skincancer.core.params import ThresholdParams
from skincancer.evaluate.figures import plt, png_bytes
from skincancer.evaluate.groups import GROUPINGS, section, sensitivity_shortfalls
from skincancer.evaluate.groups import operating_point as groups_operating_point
from skincancer.evaluate.metrics import METRIC_KEYS, Scores
from skincancer.evaluate.summary import UNDEFINED, flagged_in_words, number, with_interval

CLASS_NAMES = np.array(LABEL_NAMES)
OOF = "oof"  # out-of-fold predictions (split.folds): where a cross-validated run chooses, in val's place
SPLIT_NAMES = {"val": "val", OOF: "out-of-fold", "test": "test"}
WITH_INTERVAL = {  # headline rows shown with their 95% interval, and what the interval resamples or counts
    "roc_auc": "ROC AUC (95% CI, groups resampled)",
    "sensitivity": "sensitivity (95% CI, images)",
    "specificity": "specificity (95% CI, images)",
}
HEADLINE = {
    "specificity_at_95_sensitivity": "specificity at 95% sensitivity",
    "pauc_above_80_tpr": "partial AUC above 80% TPR (max 0.2)",
    "pr_auc": "PR AUC",
    "brier": "Brier score (lower is better)",
}


# ---------------------------------------------------------------- scores and groups


def split_scores(predictions: pd.DataFrame, split: str, strata: str | None = None) -> Scores:
    """One split's labels, probabilities and groups, as the metrics take them; `strata`: the column naming each
    image's kind for a threshold that must hold on every kind (evaluate.threshold.holds_on)."""
    rows = predictions[predictions["split"] == split]
    return Scores(rows["label"].to_numpy(), rows["probability"].to_numpy(), rows["group"].to_numpy(),
                  None if strata is None else rows[strata].to_numpy())


def curve_splits(predictions: pd.DataFrame) -> tuple[str, str]:
    """The split the threshold and calibration were fitted on (val, or the out-of-fold scores), and test."""
    return (OOF if (predictions["split"] == OOF).any() else "val", "test")


def group_counts(predictions: pd.DataFrame) -> dict[str, int]:
    """Groups per split: how many independent units the AUC intervals resample."""
    return {split: predictions.loc[predictions["split"] == split, "group"].nunique() for split in curve_splits(predictions)}


# ---------------------------------------------------------------- plot data (dvc plots)


def _curves(y: np.ndarray, p: np.ndarray) -> dict[str, pd.DataFrame]:
    """ROC and PR points; empty tables when one class is missing (the curves are undefined)."""
    if len(np.unique(y)) < 2:
        return {"roc": pd.DataFrame(columns=["fpr", "tpr", "threshold"]), "pr": pd.DataFrame(columns=["recall", "precision"])}
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    precision, recall, _ = skm.precision_recall_curve(y, p)
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.clip(thresholds, 0, 1)}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
    }


def plot_tables(predictions: pd.DataFrame, threshold: float) -> dict[str, pd.DataFrame]:
    """The tables `dvc plots` draws (and diffs across commits): ROC and PR per split, confusion and
    calibration on test."""
    tables: dict[str, pd.DataFrame] = {}
    for split in curve_splits(predictions):
        rows = predictions[predictions["split"] == split]
        for name, table in _curves(rows["label"].to_numpy(), rows["probability"].to_numpy()).items():
            tables[f"{name}_{split}"] = table
    test = predictions[predictions["split"] == "test"]
    y, p = test["label"].to_numpy(), test["probability"].to_numpy()
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile") if len(y) else ([], [])
    tables["confusion"] = pd.DataFrame({"actual": CLASS_NAMES[y], "predicted": CLASS_NAMES[(p >= threshold).astype(int)]})
    tables["calibration"] = pd.DataFrame({"mean_predicted": predicted, "fraction_malignant": observed})
    return tables


# ---------------------------------------------------------------- figures


def _auc_label(split: str, auc: float | None) -> str:
    return f"{split} (AUC {number(auc, 3)})"


def _curves_figure(tables: dict[str, pd.DataFrame], kind: str, x: str, y: str, title: str, metrics: dict) -> bytes:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    for split in _chosen_and_test(metrics):
        table = tables[f"{kind}_{split}"]
        key = "roc_auc" if kind == "roc" else "pr_auc"
        axes.plot(table[x], table[y], label=_auc_label(SPLIT_NAMES[split], metrics[split][key]))
    if kind == "roc":
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(loc="lower right" if kind == "roc" else "lower left")
    return png_bytes(figure)


def _calibration_figure(table: pd.DataFrame) -> bytes:
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(table["mean_predicted"], table["fraction_malignant"], marker=".")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set(xlabel="mean predicted probability", ylabel="fraction malignant", title="Calibration (test)", xlim=(0, 1), ylim=(0, 1.02))
    return png_bytes(figure)


def _confusion_figure(table: pd.DataFrame) -> bytes:
    counts = pd.crosstab(table["actual"], table["predicted"]).reindex(index=CLASS_NAMES, columns=CLASS_NAMES, fill_value=0)
    figure, axes = plt.subplots(figsize=(4, 3.5))
    axes.imshow(counts.to_numpy(), cmap="Blues")
    for (row, column), value in np.ndenumerate(counts.to_numpy()):
        axes.text(column, row, str(value), ha="center", va="center")
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    return png_bytes(figure)


def _history_figure(history: pd.DataFrame) -> bytes:
    """Train and val curves per epoch; a cross-validated run's history (a `fold` column) draws each fold's
    model, its val being the fold it early-stopped on."""
    figure, (auc_axes, loss_axes) = plt.subplots(1, 2, figsize=(9, 3.5))
    runs = history.groupby("fold", sort=True) if "fold" in history else [(None, history)]
    for fold, run in runs:
        named = "" if fold is None else f"fold {fold} "
        for axes, metric in ((auc_axes, "auc"), (loss_axes, "loss")):
            axes.plot(run["epoch"], run[metric], label=f"{named}train {metric}")
            axes.plot(run["epoch"], run[f"val_{metric}"], label=f"{named}val {metric}")
    for axes, metric in ((auc_axes, "auc"), (loss_axes, "loss")):
        for start in history.loc[history["phase"].diff() > 0, "epoch"]:
            axes.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)  # fine-tuning starts
        axes.set(xlabel="epoch", title=f"Training {metric}")
        axes.legend(fontsize="small")
    return png_bytes(figure)


def gallery_figure(rows: pd.DataFrame, images: dict[str, bytes], title: str) -> bytes:
    """Thumbnails with id, diagnosis and probability: what the model got most confidently wrong."""
    columns = max(1, min(4, len(rows)))
    lines = max(1, -(-len(rows) // columns))
    figure, grid = plt.subplots(lines, columns, figsize=(2.4 * columns, 2.7 * lines), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, row in zip(grid.flat, rows.itertuples()):
        axes.imshow(Image.open(io.BytesIO(images[row.image_id])).convert("RGB"))
        axes.set_title(f"{row.image_id}\n{row.diagnosis}, p={row.probability:.3f}", fontsize=8)
    if rows.empty:
        grid[0, 0].text(0.5, 0.5, "none", ha="center", va="center")
    figure.suptitle(title, fontsize=10)
    return png_bytes(figure)


# ---------------------------------------------------------------- tables and words


class ConfidentMistakes(NamedTuple):
    """The test images the report shows: chosen once, then drawn (gallery) and listed (tables)."""

    missed: pd.DataFrame  # false negatives, lowest probability first
    alarms: pd.DataFrame  # false positives, highest probability first

    @property
    def image_ids(self) -> set[str]:
        return set(self.missed["image_id"]) | set(self.alarms["image_id"])


def confident_mistakes(predictions: pd.DataFrame, count: int) -> ConfidentMistakes:
    """Test false negatives scored lowest and false positives scored highest (the ones to look at)."""
    test = predictions[predictions["split"] == "test"]
    missed = test[(test["label"] == 1) & (test["prediction"] == 0)].sort_values(["probability", "image_id"])
    alarms = test[(test["label"] == 0) & (test["prediction"] == 1)].sort_values(["probability", "image_id"], ascending=[False, True])
    return ConfidentMistakes(missed.head(count), alarms.head(count))


def per_diagnosis(predictions: pd.DataFrame) -> pd.DataFrame:
    """Share called malignant per diagnosis: sensitivity for malignant ones, FPR for benign ones."""
    test = predictions[predictions["split"] == "test"]
    return (
        test.groupby("diagnosis")
        .agg(n=("image_id", "size"), label=("label", "max"), called_malignant=("prediction", "mean"))
        .reset_index()
    )


def _share(figures: dict, key: str) -> str:
    """'67% (48%-82%)': a share with its Wilson interval, as the per-group table shows it."""
    shown, low, high = figures[key], figures[f"{key}_ci_low"], figures[f"{key}_ci_high"]
    if shown is None:
        return UNDEFINED
    return f"{shown:.0%}" if low is None else f"{shown:.0%} ({low:.0%}-{high:.0%})"


def _calibration_in_the_large(figures: dict) -> str:
    """Mean probability against the malignant share: whether the pooled calibration holds for this group."""
    return f"{figures['mean_probability']:.2f} / {figures['n_malignant'] / figures['n']:.2f}"


def groups_section(metrics: dict) -> str:
    """Every source and resolution band on its own, on the scores the threshold was chosen on and on test."""
    tables = []
    for grouping in GROUPINGS:
        rows = [
            [name, SPLIT_NAMES[split], f"{figures['n']} ({figures['n_malignant']})", with_interval(figures, "roc_auc", 3),
             _share(figures, "sensitivity"), _share(figures, "specificity"), _calibration_in_the_large(figures)]
            for split in _chosen_and_test(metrics)
            for name, figures in metrics[split][section(grouping)].items()
        ]
        tables.append(f"### Per {GROUPING_NAMES[grouping]}\n\n" + _table(
            [grouping, "split", "images (malignant)", "ROC AUC (95% CI)", "sensitivity (95% CI)",
             "specificity (95% CI)", "mean probability / malignant share"], rows, "llrrrrr"))
    return f"""
## Per source and resolution band

The same threshold on each kind of image: the archive it came from (source) and the original's size
(resolution band, shard.bands). Intervals as above; the last column compares the mean calibrated probability
with the malignant share, which the pooled calibration only matches on all images together.

{(chr(10) * 2).join(tables)}
"""


def shortfalls_section(metrics: dict, policy: ThresholdParams) -> str:
    """Where the threshold's sensitivity promise breaks on some kind of image, in words, for the report's top."""
    shortfalls = sensitivity_shortfalls(metrics, _chosen_and_test(metrics), policy)
    if not shortfalls:
        return ""
    lines = "\n".join(f"- {shortfall.in_words()}" for shortfall in shortfalls)
    return ("\n**Warning: the threshold's sensitivity target does not hold on every kind of image** (the interval "
            f"lies wholly below it):\n\n{lines}\n")


def promise_in_words(metrics: dict, policy: ThresholdParams) -> str:
    """What the threshold was chosen to promise, in the words the model card gives predict."""
    return threshold_in_words(policy.model_dump(mode="json"), groups_operating_point(metrics, _chosen_and_test(metrics)[0], policy))


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else UNDEFINED


def _percent_interval(metrics: dict, key: str) -> str:
    """' (95% CI 69%-96%)' after a share in words; nothing where the share is undefined."""
    low, high = metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]
    return "" if low is None else f" (95% CI {low:.0%}-{high:.0%})"


def _chosen_and_test(metrics: dict) -> tuple[str, str]:
    return (OOF if OOF in metrics else "val", "test")


def operating_point(metrics: dict, predictions: pd.DataFrame, policy: ThresholdParams) -> str:
    """The chosen operating point in words, with the counts and the interval behind each percentage."""
    test = predictions[predictions["split"] == "test"]
    malignant, benign = test[test["label"] == 1], test[test["label"] == 0]
    caught, cleared = int(malignant["prediction"].sum()), int((benign["prediction"] == 0).sum())
    called = int(test["prediction"].sum())
    return (
        f"At threshold **{metrics['threshold']:.4f}** ({promise_in_words(metrics, policy)}), "
        "the model catches "
        f"**{_percent(caught, len(malignant))}**{_percent_interval(metrics['test'], 'sensitivity')} of the "
        f"malignant test images ({caught} of {len(malignant)}) and correctly clears "
        f"**{_percent(cleared, len(benign))}**{_percent_interval(metrics['test'], 'specificity')} of the benign "
        f"test images ({cleared} of {len(benign)}); **{_percent(caught, called)}**"
        f"{_percent_interval(metrics['test'], 'precision')} of the {called} test images it calls malignant are malignant."
    )


def calibration_note(metrics: dict) -> str:
    """What the probabilities (and so the Brier score and calibration plot) mean."""
    from skincancer.core.calibration import Calibration

    calibration = Calibration.from_json(metrics.get("calibration"))
    where = "out-of-fold predictions" if OOF in metrics else "validation split"
    if calibration.method == "none":
        return ("Probabilities are the model's raw scores (evaluate.calibration.method: none, or a Platt fit whose "
                "slope was not positive, which would have reversed their ranking: evaluate's log says which).")
    return (
        f"Probabilities are the model's scores {calibration.in_words().removeprefix('probabilities ')}: "
        f"Platt scaling (slope {calibration.slope:.3f}, intercept {calibration.intercept:+.3f}) fitted on the "
        f"{where} only, all sources and resolution bands pooled (one fit: the per-group table below shows "
        "where a kind of image's mean probability departs from its malignant share); the Brier score and the "
        "calibration plot are of these probabilities, and `skincancer predict` prints them. AUC and the "
        "decisions are unchanged by it (the map is monotone)."
    )


def ood_section(metrics: dict) -> str:
    """The out-of-distribution flag: its cut-off and the share of val (or out-of-fold) and test images it flags,
    with their intervals; nothing for metrics from before evaluate fitted one."""
    if (ood := metrics.get("ood")) is None:
        return ""
    chosen, test = _chosen_and_test(metrics)
    seen = (" The fold models trained on the out-of-fold images, so the cut-off comes from images the model saw: "
            "expect more test images flagged than the percentile says." if chosen == OOF else "")
    return f"""
## Out-of-distribution flag

An image whose pooled backbone features lie further from the training images' than the cut-off (`ood_score` above
**{ood['cutoff']:.4f}**, percentile {ood['percentile']:g} of the {SPLIT_NAMES[chosen]} images' scores) is unlike
them: `skincancer predict` and the exports flag it (`in_distribution` false), and its probability is not to be
trusted. Images like the training ones are flagged at about {100 - ood['percentile']:g}% by construction:
{SPLIT_NAMES[chosen]} {flagged_in_words(ood[chosen])}, test {flagged_in_words(ood[test])} (Wilson intervals over
images). A test interval wholly above {100 - ood['percentile']:g}% says the test images differ from the ones the model
trained on.{seen}
"""


def intervals_note(metrics: dict, predictions: pd.DataFrame) -> str:
    """What each interval resamples or counts, and on how many independent units it rests."""
    groups = group_counts(predictions)
    chosen = _chosen_and_test(metrics)[0]
    held_out = (
        f"out-of-fold: {metrics[OOF]['n']} images in {groups[OOF]} groups, every non-test image once, each fold's "
        "interval resampling that fold's groups" if chosen == OOF
        else f"val: {metrics['val']['n']} images in {groups['val']} groups"
    )
    return (
        "Intervals are 95%. ROC AUC intervals are percentile bootstraps that resample the split's groups "
        "(patients, lesions and duplicate links, as the split placed them), each drawn group with all its "
        f"images: the test split holds {metrics['test']['n']} images in {groups['test']} groups ({held_out}). "
        "Sensitivity, specificity and precision "
        "intervals are Wilson score intervals that count images as independent: where a patient contributes "
        "several images, they are narrower than the evidence warrants."
    )


def _table(header: list[str], rows: list[list[str]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _headline(metrics: dict, groups: dict[str, int]) -> str:
    names = _chosen_and_test(metrics)
    splits = [metrics[split] for split in names]
    rows = [[label, *(with_interval(m, key, 3) for m in splits)] for key, label in WITH_INTERVAL.items()]
    rows += [[label, *(number(m[key], 3) for m in splits)] for key, label in HEADLINE.items()]
    rows.append(["images (malignant)", *(f"{m['n']} ({m['n_malignant']})" for m in splits)])
    rows.append(["groups (patients, lesions, duplicates)", *(str(groups[split]) for split in names)])
    return _table(["", *(SPLIT_NAMES[split] for split in names)], rows, "lrr")


def folds_section(metrics: dict) -> str:
    """A cross-validated run's folds: each fold model's AUC on the fold it never trained on, their spread, and
    the out-of-fold estimate beside the ensemble's test result; nothing for a single model."""
    if OOF not in metrics:
        return ""
    oof, test = metrics[OOF], metrics["test"]
    rows = [[name, f"{fold['n']} ({fold['n_malignant']})", with_interval(fold, "roc_auc", 3)]
            for name, fold in oof["folds"].items()]
    return f"""
## Folds

Each fold's model trained on the other folds and early-stopped on its own; its ROC AUC here is on that fold
(interval: the fold's groups resampled). The fold AUCs' mean is **{number(oof['fold_roc_auc_mean'], 3)}** with
standard deviation **{number(oof['fold_roc_auc_sd'], 3)}**: how much one model depends on the images it was given.

{_table(["fold", "images (malignant)", "ROC AUC (95% CI)"], rows, "lrr")}

Out-of-fold vs test: the out-of-fold ROC AUC, **{with_interval(oof, 'roc_auc', 3)}**, estimates one fold model
on every non-test image (the threshold and calibration are fitted on it); the test ROC AUC,
**{with_interval(test, 'roc_auc', 3)}**, is the ensemble's (the mean of the fold models, what `skincancer
predict` uses) on the held-out test split. The ensemble's test scores are averages, so a threshold fitted on
single models' scores may sit differently on them: the test sensitivity above says how it held.
"""


def _all_metrics(metrics: dict) -> str:
    chosen, test = _chosen_and_test(metrics)
    rows = [[key, number(metrics[chosen][key], 4), number(metrics[test][key], 4)] for key in METRIC_KEYS]
    return _table(["metric", SPLIT_NAMES[chosen], test], rows, "lrr")


def _mistakes_table(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "None."
    return _table(
        ["image", "diagnosis", "source", "probability"],
        [[row.image_id, row.diagnosis, row.source, f"{row.probability:.4f}"] for row in rows.itertuples()],
        "lllr",
    )


def labels_section(params: dict) -> str:
    """The benign/malignant mapping in force, where the shown params carry it (`labels.malignant`)."""
    if "labels" not in params:
        return ""
    return f"\n## Labels\n\n{mapping_in_words(params['labels']['malignant'])}\n"


def render_markdown(
    metrics: dict, predictions: pd.DataFrame, policy: ThresholdParams, params: dict, mistakes: ConfidentMistakes,
    with_history: bool,
) -> str:
    diagnoses = per_diagnosis(predictions)
    diagnosis_rows = [
        [row.diagnosis, "malignant" if row.label else "benign", str(row.n), number(row.called_malignant, 3)]
        for row in diagnoses.itertuples()
    ]
    missed, alarms = mistakes
    history = "\n![Training history](figures/history.png)" if with_history else ""
    return f"""# Evaluation report
{shortfalls_section(metrics, policy)}
{operating_point(metrics, predictions, policy)}

{_headline(metrics, group_counts(predictions))}

{intervals_note(metrics, predictions)}

{calibration_note(metrics)}
{ood_section(metrics)}{folds_section(metrics)}{labels_section(params)}
## Per diagnosis (test)

Share of images called malignant: the sensitivity for malignant diagnoses, the false-positive rate for benign ones.

{_table(["diagnosis", "class", "n", "called malignant"], diagnosis_rows, "llrr")}
{groups_section(metrics)}
## Most confident mistakes (test)

### Missed malignant lesions (false negatives, lowest probability first)

![False negatives](figures/false_negatives.png)

{_mistakes_table(missed)}

### Benign lesions called malignant (false positives, highest probability first)

![False positives](figures/false_positives.png)

{_mistakes_table(alarms)}

## Figures

![ROC](figures/roc.png) ![Precision-recall](figures/pr.png)
![Confusion matrix](figures/confusion.png) ![Calibration](figures/calibration.png){history}

## All metrics

{_all_metrics(metrics)}

## Params

```yaml
{yaml.safe_dump(params, sort_keys=False).rstrip()}
```
"""


def render_html(report_markdown: str, figures: dict[str, bytes]) -> str:
    """report.md as one HTML file with every figure embedded: it can be mailed or attached as is."""
    body = markdown.markdown(report_markdown, extensions=["tables", "fenced_code"])

    def embed(match: re.Match) -> str:
        data = base64.b64encode(figures[match.group(1)]).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="figures/([^"]+)"', embed, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .6rem}"
        "td{text-align:right}td:first-child{text-align:left}img{max-width:100%;vertical-align:top}"
        "pre{background:#f6f6f6;padding:.8rem;overflow:auto}"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>skincancer evaluation report</title><style>{style}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_report(
    reports_dir: Path,
    metrics: dict,
    predictions: pd.DataFrame,
    *,
    policy: ThresholdParams,
    params: dict,
    history: pd.DataFrame | None,
    images: dict[str, bytes],
    mistakes: ConfidentMistakes,
) -> None:
    """Every file under reports/, each written atomically. `images`: the encoded test images of `mistakes` by id."""
    tables = plot_tables(predictions, metrics["threshold"])
    for name, table in tables.items():
        atomic_write_text(reports_dir / "plots" / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
    missed, alarms = mistakes
    figures = {
        "roc.png": _curves_figure(tables, "roc", "fpr", "tpr", "ROC", metrics),
        "pr.png": _curves_figure(tables, "pr", "recall", "precision", "Precision-recall", metrics),
        "confusion.png": _confusion_figure(tables["confusion"]),
        "calibration.png": _calibration_figure(tables["calibration"]),
        "false_negatives.png": gallery_figure(missed, images, "Missed malignant lesions (test)"),
        "false_positives.png": gallery_figure(alarms, images, "Benign lesions called malignant (test)"),
    }
    if history is not None:
        figures["history.png"] = _history_figure(history)
    for name, png in figures.items():
        atomic_write_bytes(reports_dir / "figures" / name, png)
    text = render_markdown(metrics, predictions, policy, params, mistakes, with_history=history is not None)
    atomic_write_text(reports_dir / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(reports_dir / "report.md", text)
    atomic_write_text(reports_dir / "report.html", render_html(text, figures))

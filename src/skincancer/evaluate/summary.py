"""Metrics as text, one way everywhere: the stage log, the pipeline's last lines, `skincancer metrics`, the
report and the metrics diff.

metrics.json holds null where the data cannot define a value (no malignant image: no sensitivity, no AUC;
`evaluate.bootstrap: 0`: no AUC interval), so every number shown may be undefined; it reads as UNDEFINED.
Plain Python only: the CLI and the pipeline flow import this without NumPy or scikit-learn.
"""

from __future__ import annotations

import math
import numbers

UNDEFINED = "-"


def number(value: float | int | None, digits: int, *, signed: bool = False) -> str:
    """`value` at `digits` decimals, whole numbers (image counts) as they are; UNDEFINED for None or NaN
    (pandas' missing value in per-group tables)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED
    sign = "+" if signed else ""
    if isinstance(value, numbers.Integral):
        return f"{value:{sign}d}"
    return f"{value:{sign}.{digits}f}"


def interval(metrics: dict, key: str, digits: int) -> str:
    """'0.7000-0.9000' from `<key>_ci_low` and `<key>_ci_high`; UNDEFINED where either end is."""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return UNDEFINED if low is None or high is None else f"{number(low, digits)}-{number(high, digits)}"


def with_interval(metrics: dict, key: str, digits: int) -> str:
    """A table cell: '0.8123 (0.7000-0.9000)', or the value alone where its interval is undefined."""
    shown, around = number(metrics.get(key), digits), interval(metrics, key, digits)
    return shown if around == UNDEFINED else f"{shown} ({around})"


def split_summary(metrics: dict, split: str) -> str:
    """One split of a metrics.json document in a line: ROC AUC with its 95% interval, sensitivity and
    specificity at the threshold, and the images they rest on."""
    m = metrics[split]
    return (
        f"{split}: ROC AUC {number(m.get('roc_auc'), 4)} (95% CI {interval(m, 'roc_auc', 4)}), "
        f"sensitivity {number(m.get('sensitivity'), 3)}, specificity {number(m.get('specificity'), 3)} "
        f"at threshold {number(metrics.get('threshold'), 4)}, "
        f"{number(m.get('n'), 0)} images ({number(m.get('n_malignant'), 0)} malignant)"
    )


def fold_summary(oof: dict) -> str:
    """The fold models' AUCs on their own folds in a line, with their mean and standard deviation."""
    aucs = ", ".join(f"{name} {number(fold.get('roc_auc'), 4)}" for name, fold in oof["folds"].items())
    return (f"per fold ROC AUC: {aucs}; mean {number(oof.get('fold_roc_auc_mean'), 4)}, "
            f"sd {number(oof.get('fold_roc_auc_sd'), 4)}")


def band_summary(metrics: dict, split: str) -> str:
    """A split's resolution bands in a line: each band's ROC AUC and sensitivity with their 95% intervals and the
    images they rest on, so a shortfall on full-size images shows beside the pooled line (issue 31)."""
    bands = metrics[split].get("by_band", {})
    shown = "; ".join(
        f"{name} ROC AUC {number(m.get('roc_auc'), 3)} ({interval(m, 'roc_auc', 3)}), sensitivity "
        f"{number(m.get('sensitivity'), 3)} ({interval(m, 'sensitivity', 3)}), {number(m.get('n'), 0)} images "
        f"({number(m.get('n_malignant'), 0)} malignant)"
        for name, m in bands.items()
    )
    return f"{split} by resolution band: {shown or UNDEFINED}"


def flagged_in_words(part: dict) -> str:
    """A part's share of images flagged out of distribution: '5.0% (95% CI 1.7%-13.7%; 3 of 60 images)'."""
    if part.get("flagged") is None:
        return f"{UNDEFINED} (no images)"
    return (f"{part['flagged']:.1%} (95% CI {part['flagged_ci_low']:.1%}-{part['flagged_ci_high']:.1%}; "
            f"{part['n_flagged']} of {part['n']} images)")


def ood_summary(metrics: dict) -> str:
    """The out-of-distribution flag in a line: its cut-off and the share of each evaluated part's images it flags."""
    ood = metrics.get("ood")
    if ood is None:
        return f"out-of-distribution flag: {UNDEFINED} (evaluated before evaluate fitted one)"
    parts = [part for part, figures in ood.items() if isinstance(figures, dict)]  # val (or oof), then test
    shares = "; ".join(f"{part} {flagged_in_words(ood[part])}" for part in parts)
    return (f"out-of-distribution flag at ood_score > {number(ood['cutoff'], 4)} (percentile {ood['percentile']:g} of "
            f"{parts[0]}'s scores), flagged: {shares}")

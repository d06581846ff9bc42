"""Every headline figure per kind of image: per source (archive) and per resolution band (the original's size).

A model that learnt mostly from resized copies can score full-size originals far worse, and a pooled
figure hides it: the pooled sensitivity can meet its target while the full-size images' falls 20 points
short (issue 31). Each group gets the figures a reader needs to see that, with their intervals, under
stable metrics.json keys (`test.by_band.full_size.sensitivity`), so `dvc metrics diff` shows a change on
one kind of image on its own line.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from skincancer.core.model_card import GROUPING_NAMES
from skincancer.core.params import EvaluateParams, ThresholdParams
from skincancer.evaluate.metrics import binary_metrics, can_hold

GROUPINGS = ("source", "band")  # predictions.csv columns, each a metrics.json section `by_<grouping>`
GROUP_KEYS = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "brier", "mean_probability", "n", "n_malignant",
)


def section(grouping: str) -> str:
    """The metrics.json key of a grouping's figures within a split's section."""
    return f"by_{grouping}"


def _group_figures(rows: pd.DataFrame, threshold: float, params: EvaluateParams) -> dict:
    """GROUP_KEYS of one group's images; `mean_probability` beside the malignant share (n_malignant / n) says
    whether probabilities calibrated on the pooled images over- or under-state this group's risk."""
    values = binary_metrics(
        rows["label"].to_numpy(), rows["probability"].to_numpy(), threshold,
        groups=rows["group"].to_numpy(), resamples=params.bootstrap, seed=params.seed, warn_undefined=False,
    )
    values["mean_probability"] = round(float(rows["probability"].mean()), 6)
    return {key: values[key] for key in GROUP_KEYS}


def group_metrics(rows: pd.DataFrame, threshold: float, params: EvaluateParams) -> dict:
    """`by_source` and `by_band` of one split's predictions, each group by name (sorted): a split's section
    gains these after its pooled figures."""
    return {
        section(grouping): {str(name): _group_figures(members, threshold, params)
                            for name, members in rows.groupby(grouping, sort=True)}
        for grouping in GROUPINGS
    }


class Shortfall(NamedTuple):
    """A kind of image whose sensitivity interval lies wholly below the target the threshold was chosen for."""

    split: str
    grouping: str
    name: str
    figures: dict
    target: float

    def in_words(self) -> str:
        f = self.figures
        return (
            f"sensitivity falls short on {self.name} ({GROUPING_NAMES[self.grouping]}) in {self.split}: "
            f"{f['sensitivity']:.0%} (95% CI {f['sensitivity_ci_low']:.0%}-{f['sensitivity_ci_high']:.0%}) of "
            f"{f['n_malignant']} malignant images caught, against the {self.target:.0%} the threshold was chosen for"
        )


def sensitivity_shortfalls(metrics: dict, splits: tuple[str, ...], policy: ThresholdParams) -> list[Shortfall]:
    """Every source and band of `splits` whose Wilson interval of sensitivity ends below the policy's target: no
    chance variation explains the miss, so the promise does not hold on those images. None where the policy
    promises no sensitivity (youden, fixed)."""
    if policy.policy != "sensitivity":
        return []
    target = policy.target
    return [
        Shortfall(split, grouping, name, figures, target)
        for split in splits
        for grouping in GROUPINGS
        for name, figures in metrics[split].get(section(grouping), {}).items()
        if figures["sensitivity_ci_high"] is not None and figures["sensitivity_ci_high"] < target
    ]


POINT_KEYS = ("sensitivity", "sensitivity_ci_low", "sensitivity_ci_high", "specificity", "n", "n_malignant")


def operating_point(metrics: dict, chosen_on: str, policy: ThresholdParams) -> dict:
    """What the threshold was chosen on and to hold on, for the card: with `holds_on` a grouping, each of its
    groups' figures on the scores it was chosen on and whether the target was held there (`held`: the group
    had the malignant images to choose on; the others carry no promise)."""
    point: dict = {"chosen_on": chosen_on, "holds_on": policy.holds_on}
    if policy.holds_on == "pooled":
        return point
    groups = metrics[chosen_on][section(policy.holds_on)]
    return point | {"min_malignant": policy.min_malignant, "groups": {
        name: {"held": can_hold(figures["n"], figures["n_malignant"], policy), **{key: figures[key] for key in POINT_KEYS}}
        for name, figures in groups.items()
    }}

"""metrics.json keys are an interface: `dvc metrics diff` and every past PR comment line up on them.

Renaming, removing or reordering a key breaks comparisons with older commits: it needs a migration note
in docs/architecture.md ("metrics.json keys") and this pin updated in the same change.
"""

import json
from pathlib import Path

import yaml

from skincancer.evaluate.metrics import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
PINNED = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "precision", "precision_ci_low", "precision_ci_high",
    "f1", "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity",
    "pauc_above_80_tpr", "brier", "n", "n_malignant",
)
# Keys of the first release, in their order: later changes only ever add keys around them (architecture.md).
FIRST_RELEASE = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "sensitivity", "specificity",
    "precision", "f1", "accuracy", "balanced_accuracy", "specificity_at_95_sensitivity",
    "pauc_above_80_tpr", "brier", "n", "n_malignant",
)


def test_metric_keys_are_the_pinned_ones_in_the_pinned_order():
    assert METRIC_KEYS == PINNED


def test_no_key_of_the_first_release_was_renamed_removed_or_reordered():
    assert [key for key in METRIC_KEYS if key in FIRST_RELEASE] == list(FIRST_RELEASE)


# Per source and resolution band (issue 31): each split's section ends with these, each group holding GROUP_PINNED.
GROUP_PINNED = (
    "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "brier", "mean_probability", "n", "n_malignant",
)


# The out-of-distribution flag (issue 33): a top-level section after calibration, each evaluated part holding these.
OOD_PINNED = ("flagged", "flagged_ci_low", "flagged_ci_high", "n_flagged", "n")


def test_the_committed_metrics_json_has_exactly_those_keys():
    from skincancer.evaluate.groups import GROUP_KEYS

    metrics = json.loads((ROOT / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "val", "test", "calibration", "ood"]
    assert list(metrics["ood"]) == ["percentile", "cutoff", "val", "test"]
    assert all(list(metrics["ood"][part]) == list(OOD_PINNED) for part in ("val", "test"))
    for split in ("val", "test"):
        assert list(metrics[split]) == [*PINNED, "by_source", "by_band"]
        assert all(list(group) == list(GROUP_PINNED) for grouping in ("by_source", "by_band")
                   for group in metrics[split][grouping].values())
    assert GROUP_KEYS == GROUP_PINNED


def test_the_pr_workflow_renders_the_report_with_the_project_script():
    workflow = yaml.safe_load((ROOT / ".github/workflows/model-report.yml").read_text())
    steps = " ".join(step.get("run", "") for step in workflow["jobs"]["report"]["steps"])
    assert "python -m flows.pr_report --base" in steps and "cml comment update" in steps  # tests/test_nightly_box.py runs it
    assert "origin/results" in steps


def test_a_cross_validated_run_puts_the_out_of_fold_section_in_vals_place_with_the_folds_after_it():
    """The oof section's keys: every pinned metric, then the per-fold AUCs and their spread (architecture.md)."""
    import numpy as np

    from skincancer.core.params import EvaluateParams
    from skincancer.evaluate.metrics import FOLD_KEYS, Scores, evaluation_metrics, fold_metrics

    rng = np.random.default_rng(0)
    scores = Scores(np.arange(60) % 3 == 0, rng.random(60), np.arange(60) // 2)
    params = EvaluateParams(bootstrap=10)
    metrics = evaluation_metrics(scores, scores, params, "oof")
    metrics["oof"] |= fold_metrics({"fold0": scores, "fold1": scores, "fold2": scores}, params)
    assert list(metrics) == ["threshold", "oof", "test"]
    assert list(metrics["oof"]) == [*PINNED, "folds", "fold_roc_auc_mean", "fold_roc_auc_sd"]
    assert FOLD_KEYS == ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "n", "n_malignant")
    assert all(list(fold) == list(FOLD_KEYS) for fold in metrics["oof"]["folds"].values())


def test_the_ood_section_holds_the_percentile_the_cutoff_and_each_evaluated_parts_flagged_share():
    """Its keys for a single model (val) and a cross-validated run (oof), as plain rounded numbers."""
    import pandas as pd

    from skincancer.evaluate.ood import ood_metrics

    for chosen_on in ("val", "oof"):
        predictions = pd.DataFrame({"split": [chosen_on] * 20 + ["test"] * 7,
                                    "in_distribution": [True] * 19 + [False] + [True] * 5 + [False] * 2})
        ood = ood_metrics(predictions, (chosen_on, "test"), 95.0, 12.345678)
        assert list(ood) == ["percentile", "cutoff", chosen_on, "test"]
        assert all(list(ood[part]) == list(OOD_PINNED) for part in (chosen_on, "test"))
        assert (ood[chosen_on]["flagged"], ood[chosen_on]["n_flagged"], ood[chosen_on]["n"]) == (0.05, 1, 20)
        assert ood["test"]["flagged"] == round(2 / 7, 6) and ood["test"]["flagged_ci_low"] < 2 / 7 < ood["test"]["flagged_ci_high"]

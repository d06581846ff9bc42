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


def test_the_committed_metrics_json_has_exactly_those_keys():
    metrics = json.loads((ROOT / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "val", "test", "calibration"]
    assert list(metrics["val"]) == list(PINNED) and list(metrics["test"]) == list(PINNED)


def test_the_pr_workflow_renders_the_report_with_the_project_script():
    workflow = yaml.safe_load((ROOT / ".github/workflows/model-report.yml").read_text())
    steps = " ".join(step.get("run", "") for step in workflow["jobs"]["report"]["steps"])
    assert "python -m flows.pr_report --base" in steps and "cml comment update" in steps  # tests/test_nightly_box.py runs it
    assert "origin/results" in steps

"""`evaluate.bootstrap: 0` (no ROC AUC interval) is a valid setting: the real pipeline runs through and ends
with its summary, the undefined interval shown as such."""

from __future__ import annotations

import json
import re

import pytest
from project_copy import BIN, TINY_PARAMS, committed_project, merge, project_env, run

from skincancer.evaluate.summary import split_summary

pytestmark = pytest.mark.slow

NO_INTERVAL = merge(TINY_PARAMS, {"train": {"epochs": 1}, "evaluate": {"bootstrap": 0}})


def test_a_run_without_bootstrap_succeeds_and_prints_the_summary(tmp_path, prefect_api):
    env = project_env(tmp_path) | {"PREFECT_API_URL": prefect_api}
    root = committed_project(tmp_path / "project", env, NO_INTERVAL)
    result = run([str(BIN / "python"), "-m", "flows.pipeline"], root, env)
    metrics = json.loads((root / "metrics.json").read_text())
    test = metrics["test"]
    assert test["roc_auc"] is not None and test["roc_auc_ci_low"] is None and test["roc_auc_ci_high"] is None
    last = result.stdout.rstrip().splitlines()[-1]
    assert last == f"{split_summary(metrics, 'test')}; reports/report.html has the rest"
    assert re.match(r"test: ROC AUC [\d.]+ \(95% CI -\), sensitivity [\d.]+, specificity [\d.]+ at threshold [\d.]+, "
                    r"\d+ images \(\d+ malignant\);", last), last
    report = (root / "reports/report.md").read_text()
    assert re.search(r"\| ROC AUC \(95% CI, groups resampled\) \| [\d.]+ \| [\d.]+ \|", report)  # no interval, no error

"""The real thing: `dvc repro` in a temporary git repository, stages reporting to a real Prefect server."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest

from project_copy import BIN, TINY_PARAMS, committed_project, project_env, run, set_params, stages_run
from skincancer.metrics import METRIC_KEYS
from skincancer.metrics_diff import flatten

pytestmark = pytest.mark.slow

STAGES = ("fetch", "split", "shard", "train", "evaluate")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    target = tmp_path_factory.mktemp("project")
    env = project_env(target) | {"PREFECT_API_URL": prefect_api}
    return committed_project(target, env, TINY_PARAMS), env


def dvc_repro(repo_env) -> list[str]:
    root, env = repo_env
    result = run([str(BIN / "dvc"), "repro"], root, env)
    return stages_run(result.stdout)


def flow_runs(api: str) -> list[dict]:
    flows = {flow["id"]: flow["name"] for flow in httpx.post(f"{api}/flows/filter", json={}).json()}
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}).json()
    return [run | {"flow_name": flows[run["flow_id"]]} for run in runs]


def test_pipeline_flow_runs_every_stage_on_the_server_and_records_the_outputs(repo, prefect_api):
    """`python flows/pipeline.py` against a real server (tests/test_nightly_box.py runs it as the deployment)."""
    root, env = repo
    result = run([str(BIN / "python"), "flows/pipeline.py"], root, env)
    assert "no DVC remote configured" in result.stdout + result.stderr  # said once, and the run goes on locally
    assert (result.stdout + result.stderr).count("no DVC remote configured") == 1
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "val", "test", "calibration"]
    assert list(metrics["test"]) == list(METRIC_KEYS) and list(metrics["val"]) == list(METRIC_KEYS)
    for path in ("data/raw/index.parquet", "data/split/manifest.parquet", "data/shards/manifest.json",
                 "models/model.keras", "models/history.csv", "reports/report.md", "reports/predictions.csv",
                 "reports/report.html", "reports/plots/roc_val.csv", "reports/plots/roc_test.csv",
                 "reports/plots/confusion.csv", "reports/figures/roc.png", "reports/figures/false_negatives.png",
                 "reports/split.json", "data/split/removed.csv", "data/raw/duplicates.parquet"):
        assert (root / path).is_file(), path
    assert sorted(p.name for p in (root / "data/split").iterdir()) == ["manifest.parquet", "removed.csv", "test", "train", "val"]
    # cache.type hardlink: the image folders are not stored twice on disk
    image = next((root / "data/split/train/benign").iterdir())
    assert image.stat().st_nlink == 2
    # the split summary is a DVC metric beside metrics.json
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], root, env).stdout)
    split_numbers = next(iter(shown.values()))["data"]["reports/split.json"]["data"]  # the workspace entry
    assert split_numbers["images"] == sum(split_numbers[s]["images"] for s in ("train", "val", "test"))
    # every stage ran as a flow run of its own on the same server as the pipeline flow
    completed = {r["flow_name"] for r in flow_runs(prefect_api) if r["state_type"] == "COMPLETED"}
    assert {"skincancer-pipeline", *STAGES} <= completed
    # the metrics table, its diff against the last run, and the evaluation report, as artifacts
    artifacts = {a["key"]: a for a in httpx.post(f"{prefect_api}/artifacts/filter", json={}).json()}
    assert artifacts["skincancer-metrics"]["type"] == "table"
    assert artifacts["skincancer-metrics-diff"]["type"] == "markdown"
    assert "| test.roc_auc | - |" in artifacts["skincancer-metrics-diff"]["data"]  # nothing to compare with yet
    assert "# Evaluation report" in artifacts["skincancer-report"]["data"]
    run(["git", "add", "-A"], root, env)  # what a merged run leaves: the base later tests diff against
    run(["git", "commit", "-qm", "pipeline run"], root, env)


def test_nothing_changed_runs_no_stage(repo):
    assert dvc_repro(repo) == []


def test_pipeline_without_a_server_starts_one_for_all_stages_and_diffs_the_metrics(repo):
    """No PREFECT_API_URL at all: one temporary server for the flow and its stage subprocesses."""
    root, env = repo
    before = json.loads((root / "metrics.json").read_text())
    set_params(root, {"train": {"epochs": 3}})
    alone = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}
    result = run([str(BIN / "python"), "flows/pipeline.py"], root, alone)
    output = result.stdout + result.stderr
    assert list(dict.fromkeys(stages_run(output))) == ["train", "evaluate"]  # only what the change made stale
    assert output.count("Started a temporary Prefect server") == 1, output[-3000:]
    assert "Starting temporary server" not in output  # Prefect's own, in a process without the shared API
    after = json.loads((root / "metrics.json").read_text())
    for split in ("val", "test"):
        old, new = before[split]["roc_auc"], after[split]["roc_auc"]
        assert f"| {split}.roc_auc | {old:.4f} | {new:.4f} | {new - old:+.4f} |" in output


def test_diff_report_shows_the_changed_param_and_every_metric_against_the_base(repo):
    """What the PR comment shows after the epochs change above: old, new, delta, in metrics.json's order."""
    root, env = repo
    result = run([str(BIN / "skincancer"), "diff-report", "--base", "HEAD", "--out", "diff-report"], root, env)
    report = (root / "diff-report/report.md").read_text()
    assert result.stdout.strip() == "diff-report/report.md"
    assert "| train.epochs | `2` | `3` |" in report and report.count("| train.") == 1  # only the changed param
    old = flatten(json.loads(run(["git", "show", "HEAD:metrics.json"], root, env).stdout))
    new = flatten(json.loads((root / "metrics.json").read_text()))
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.count("|") == 5][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(new)  # every metric, stable order
    for row, name in zip(rows, new):
        if isinstance(new[name], float) and old[name] is not None:
            assert row == f"| {name} | {old[name]:.4f} | {new[name]:.4f} | {new[name] - old[name]:+.4f} |"
    assert (root / "diff-report/roc.png").read_bytes().startswith(b"\x89PNG") and (root / "diff-report/pr.png").is_file()
    # the paired comparison: the same split on both sides, so every test image is paired, base read from the DVC cache
    test = pd.read_csv(root / "reports/predictions.csv", dtype=str).query("split == 'test'")
    paired = report.split("### Paired comparison (test)\n")[1]
    assert f"ROC AUC difference (this change - `HEAD`) on the {len(test)} test images both scored" in paired
    assert f"resampling {test['group'].nunique()} groups" in paired
    noise = f"includes 0: not distinguishable from noise on {len(test)} test images"
    assert ("The interval excludes 0" in paired) != (noise in paired)


def test_diff_report_against_a_base_without_predictions_says_why_there_is_no_paired_comparison(repo):
    root, env = repo
    run([str(BIN / "skincancer"), "diff-report", "--base", "HEAD~1", "--out", "diff-report-first"], root, env)
    paired = (root / "diff-report-first/report.md").read_text().split("### Paired comparison (test)\n")[1]
    assert "No paired comparison: `HEAD~1` has no reports/predictions.csv in git or in the DVC cache" in paired


def test_a_failing_stage_fails_the_flow_naming_it_and_records_nothing(repo, prefect_api):
    root, env = repo
    lock = (root / "dvc.lock").read_bytes()
    set_params(root, {"train": {"weights": "missing/backbone.weights.h5"}})
    try:
        result = run([str(BIN / "python"), "flows/pipeline.py"], root, env, check=False)
    finally:
        set_params(root, {"train": {"weights": None}})
    assert result.returncode == 1
    assert "error: failed to reproduce 'train'" in result.stderr and "dvc.lock is unchanged" in result.stderr
    assert "missing/backbone.weights.h5 does not exist" in result.stdout + result.stderr  # the stage's own error
    assert (root / "dvc.lock").read_bytes() == lock
    assert (root / "models/model.keras").is_file()  # the last good model is back in the workspace
    assert "except models/history.csv (not cached by DVC): `git checkout -- models/history.csv`" in result.stderr
    failed = [r for r in flow_runs(prefect_api) if r["state_type"] == "FAILED"]
    assert {"skincancer-pipeline", "train"} <= {r["flow_name"] for r in failed}


def test_split_seed_change_reruns_split_onward(repo):
    set_params(repo[0], {"split": {"seed": 7}})
    assert dvc_repro(repo) == ["split", "shard", "train", "evaluate"]


def test_dvc_plots_render_every_declared_plot(repo):
    root, env = repo
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)["data"]
    for plot in ("ROC (val and test)", "Precision-recall (val and test)", "Confusion matrix (test)",
                 "Calibration (test)", "Training history"):
        assert plot in shown, (plot, sorted(shown))
    assert any(name.startswith("reports/figures/") for name in shown)

"""The real thing: `dvc repro` in a temporary git repository, stages reporting to a real Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from project_copy import BIN, copy_project, project_env, run, stages_run
from skincancer.metrics import METRIC_KEYS

pytestmark = pytest.mark.slow

STAGES = ("fetch", "split", "shard", "train", "evaluate")
TINY = {  # small enough for CI, big enough that every split holds both classes
    "fetch": {"sample": {"n_images": 240}},
    "shard": {"image_size": 32},
    "train": {"epochs": 2, "batch_size": 32},
    "evaluate": {"bootstrap": 50},
}


def merge(base: dict, change: dict) -> dict:
    return {key: merge(base[key], change[key]) if isinstance(change.get(key), dict) else change.get(key, base.get(key))
            for key in base.keys() | change.keys()}


def set_params(repo: Path, change: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), change), sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api):
    root = copy_project(tmp_path_factory.mktemp("project"))
    env = project_env(root) | {"PREFECT_API_URL": prefect_api}
    run(["git", "init", "-q", "-b", "main"], root, env)
    set_params(root, TINY)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return root, env


def dvc_repro(repo_env) -> list[str]:
    root, env = repo_env
    result = run([str(BIN / "dvc"), "repro"], root, env)
    return stages_run(result.stdout)


def test_full_run_writes_every_output(repo, prefect_api):
    root, _ = repo
    assert dvc_repro(repo) == list(STAGES)
    metrics = json.loads((root / "metrics.json").read_text())
    assert set(metrics) == {"threshold", "val", "test"}
    assert list(metrics["test"]) == list(METRIC_KEYS) and list(metrics["val"]) == list(METRIC_KEYS)
    assert 0.0 <= metrics["threshold"] <= 1.0
    for path in ("data/raw/index.parquet", "data/split/manifest.parquet", "data/shards/manifest.json",
                 "models/model.keras", "models/history.csv", "reports/report.md", "reports/predictions.csv",
                 "reports/report.html", "reports/plots/roc_val.csv", "reports/plots/roc_test.csv",
                 "reports/plots/confusion.csv", "reports/figures/roc.png", "reports/figures/false_negatives.png",
                 "reports/split.json", "data/split/removed.csv", "data/raw/duplicates.parquet"):
        assert (root / path).is_file(), path
    assert sorted(p.name for p in (root / "data/split").iterdir()) == ["manifest.parquet", "removed.csv", "test", "train", "val"]
    assert list((root / "data/shards").glob("train-00000-of-*.tfrecord"))
    # cache.type hardlink: the image folders are not stored twice on disk
    image = next((root / "data/split/train/benign").iterdir())
    assert image.stat().st_nlink == 2
    # the split summary is a DVC metric beside metrics.json
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], root, repo[1]).stdout)
    split_numbers = next(iter(shown.values()))["data"]["reports/split.json"]["data"]  # the workspace entry
    assert split_numbers["images"] == sum(split_numbers[s]["images"] for s in ("train", "val", "test"))
    # every stage ran as a Prefect flow run on the server the test started
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"limit": 50}).json()
    flows = {flow["id"]: flow["name"] for flow in httpx.post(f"{prefect_api}/flows/filter", json={}).json()}
    completed = {flows[r["flow_id"]] for r in runs if r["state_type"] == "COMPLETED"}
    assert set(STAGES) <= completed
    # the report is published as a Prefect markdown artifact of the evaluate run
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["skincancer-report"]}}}).json()
    assert artifacts and artifacts[0]["type"] == "markdown" and "# Evaluation report" in artifacts[0]["data"]


def test_dvc_plots_render_every_declared_plot(repo):
    root, env = repo
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)
    titles = set(shown)
    for plot in ("ROC (val and test)", "Precision-recall (val and test)", "Confusion matrix (test)",
                 "Calibration (test)", "Training history"):
        assert plot in titles, (plot, sorted(titles))
    assert any(name.startswith("reports/figures/") for name in titles)


def test_nothing_changed_runs_no_stage(repo):
    assert dvc_repro(repo) == []


def test_train_param_change_reruns_train_and_evaluate_only(repo):
    set_params(repo[0], {"train": {"epochs": 3}})
    assert dvc_repro(repo) == ["train", "evaluate"]


def test_split_seed_change_reruns_split_onward(repo):
    set_params(repo[0], {"split": {"seed": 7}})
    assert dvc_repro(repo) == ["split", "shard", "train", "evaluate"]

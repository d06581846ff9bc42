"""The real thing: `dvc repro` in a temporary git repository, stages reporting to a real Prefect server."""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from experiment_queue import (
    DVC,
    TEMPORARY_SERVER,
    RecordWatcher,
    busy_span_s,
    experiments,
    queue_log,
    queue_states,
    queue_workers,
    readme_grid_sweep,
    seconds_of_day,
    wait_until_done,
)
from param_knobs import execution_knobs
from project_copy import BIN, TINY_PARAMS, committed_project, project_env, run, set_params, stages_run

from skincancer.core.params import FetchParams, ShardParams, TrainParams
from skincancer.evaluate.metrics import METRIC_KEYS
from skincancer.evaluate.summary import band_summary, split_summary
from skincancer.ops import lifetime
from skincancer.review.metrics_diff import flatten

pytestmark = pytest.mark.slow

STAGES = ("fetch", "split", "shard", "train", "evaluate")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_api) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    """The project's first `python -m flows.pipeline`, committed as a merged run leaves it. Once per module, so
    whichever tests `-k` selects start from a reproduced project whose HEAD~1 has no outputs."""
    target = tmp_path_factory.mktemp("project")
    env = project_env(target) | {"PREFECT_API_URL": prefect_api}
    root = committed_project(target, env, TINY_PARAMS)
    result = run([str(BIN / "python"), "-m", "flows.pipeline"], root, env)
    run(["git", "add", "-A"], root, env)  # the base the diff-report tests compare with
    run(["git", "commit", "-qm", "pipeline run"], root, env)
    return root, env, result


@pytest.fixture(scope="module")
def repo(first_run) -> tuple[Path, dict[str, str]]:
    """The reproduced project and its environment: a test that changes it puts it back."""
    root, env, _ = first_run
    return root, env


@pytest.fixture(scope="module")
def tta_run(repo) -> tuple[dict, subprocess.CompletedProcess]:
    """The metrics before, and `skincancer run` after setting evaluate.tta to 2: the change the diff-report tests
    compare with HEAD. Once per module; the project is left reproduced at tta 2, which is all later tests need."""
    root, env = repo
    before = json.loads((root / "metrics.json").read_text())
    set_params(root, {"evaluate": {"tta": 2}})
    alone = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}  # no server: the run starts one
    return before, run([str(BIN / "skincancer"), "run"], root, alone)  # the CLI's way to flows/pipeline.py


def dvc_repro(repo_env) -> list[str]:
    root, env = repo_env
    result = run([str(BIN / "dvc"), "repro"], root, env)
    return stages_run(result.stdout)


def flow_runs(api: str) -> list[dict]:
    flows = {flow["id"]: flow["name"] for flow in httpx.post(f"{api}/flows/filter", json={}).json()}
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}).json()
    return [run | {"flow_name": flows[run["flow_id"]]} for run in runs]


def stage_log(api: str, flow_name: str) -> str:
    """The log lines of the newest run of a stage flow, as the Prefect UI shows them."""
    newest = next(r for r in httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 200}).json()
                  if r["id"] in {run["id"] for run in flow_runs(api) if run["flow_name"] == flow_name})
    entries = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [newest["id"]]}}, "limit": 200}).json()
    return "\n".join(entry["message"] for entry in entries)


def test_pipeline_flow_runs_every_stage_on_the_server_and_records_the_outputs(first_run, prefect_api):
    """`python -m flows.pipeline` against a real server (tests/test_nightly_box.py runs it as the deployment)."""
    root, env, result = first_run
    assert "no DVC remote configured" in result.stdout + result.stderr  # said once, and the run goes on locally
    assert (result.stdout + result.stderr).count("no DVC remote configured") == 1
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "val", "test", "calibration", "ood"]
    assert list(metrics["test"]) == [*METRIC_KEYS, "by_source", "by_band"] == list(metrics["val"])
    for path in ("data/raw/index.parquet", "data/split/manifest.parquet", "data/shards/manifest.json",
                 "models/model.keras", "models/dvclive/metrics.json", "models/train_card.json", "models/card.json",
                 "reports/report.md", "reports/predictions.csv",
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
    # what each stage did, in its run log on the server: the library's INFO records
    logs = {name: stage_log(prefect_api, name) for name in STAGES}
    assert re.search(r"sample/isic2020: \d+ images indexed", logs["fetch"]), logs["fetch"][-2000:]
    assert re.search(r"sharded \d+ images \(0 skipped\) into \d+ files, [\d.]+ MB, in [\d.]+ s: [\d.]+ images/s", logs["shard"])
    for epoch in (1, 2):
        assert re.search(rf"phase 1 epoch {epoch}/2: loss [\d.]+, auc [\d.]+, val_auc [\d.]+, learning rate [\d.e-]+, "
                         r"[\d.]+ s", logs["train"]), logs["train"][-2000:]
    assert re.search(r"test: ROC AUC [\d.]+ \(95% CI [\d.]+-[\d.]+\), sensitivity", logs["evaluate"])
    # the metrics table, its diff against the last run, and the evaluation report, as artifacts
    newest_first = httpx.post(f"{prefect_api}/artifacts/filter", json={"sort": "CREATED_DESC"}).json()
    artifacts = {}
    for artifact in newest_first:  # this run's: other tests' runs on the same server made older ones
        artifacts.setdefault(artifact["key"], artifact)
    assert artifacts["skincancer-metrics"]["type"] == "table"
    assert artifacts["skincancer-metrics-diff"]["type"] == "markdown"
    assert "| test.roc_auc | - |" in artifacts["skincancer-metrics-diff"]["data"]  # nothing to compare with yet
    assert "# Evaluation report" in artifacts["skincancer-report"]["data"]


def test_nothing_changed_runs_no_stage(repo):
    assert dvc_repro(repo) == []


def test_retraining_identically_leaves_dvc_lock_as_it_was_and_evaluate_does_not_rerun(repo):
    """The model file is a function of the weights (skincancer.train.model_file): the same training, the same bytes;
    DVCLive's record of it too."""
    root, env = repo
    lock = (root / "dvc.lock").read_bytes()
    forced = run([str(BIN / "dvc"), "repro", "--force", "--single-item", "train"], root, env)
    assert stages_run(forced.stdout) == ["train"]
    assert (root / "dvc.lock").read_bytes() == lock and b"path: models/dvclive\n" in lock
    # DVCLive's record, git-tracked: rewritten step by step, and no time stamp makes it differ from the commit's
    assert run(["git", "status", "--porcelain", "models"], root, env).stdout == ""
    assert dvc_repro(repo) == []  # evaluate's model dependency kept its hash


@pytest.fixture(scope="module")
def experiment_project(repo) -> tuple[Path, dict[str, str]]:
    """The reproduced project for DVC's experiment tools, in an environment naming no Prefect API: each queued
    experiment's stages start temporary servers on the project's own PREFECT_HOME, which no server has migrated
    yet (the runs before reported to the test server). Tests may create experiments (named: they stay) and leave
    nothing queued, no queue worker running and the workspace as it was."""
    root, env = repo
    return root, {key: value for key, value in env.items() if key != "PREFECT_API_URL"}


def test_two_queued_experiments_run_side_by_side_each_with_its_own_servers_params_and_metrics(experiment_project,
                                                                                                tmp_path):
    project, env = experiment_project
    rates = {"lr-0.001": 0.001, "lr-0.004": 0.004}
    now = datetime.datetime.now()
    started = seconds_of_day(now.hour, now.minute, now.second)
    for name, rate in rates.items():
        run([DVC, "exp", "run", "--queue", "--name", name, "-S", f"train.learning_rate={rate}"], project, env)
    with queue_workers(project, env, count=2), RecordWatcher(project) as watched:
        assert wait_until_done(project, env, list(rates)) == dict.fromkeys(rates, "Success"), \
            "\n".join(queue_log(project, env, name)[-3000:] for name in rates)
    # while each ran, its copy's DVCLive record grew an epoch at a time (after the committed run's rows), and
    # DVCLive told the VS Code extension of each step
    epochs = TINY_PARAMS["train"]["epochs"]
    assert len(watched.rows) == 2 and all(rows[rows.index(1):] == list(range(1, epochs + 1)) for rows in
                                          watched.rows.values()), watched.rows
    assert set(watched.steps) == set(range(epochs)), watched.steps
    logs = {name: queue_log(project, env, name) for name in rates}
    for log in logs.values():  # train and evaluate reran, each stage with a temporary server of its own
        assert re.findall(r"Running stage '(\w+)'", log) == ["train", "evaluate"], log[-3000:]
        assert len(TEMPORARY_SERVER.findall(log)) == 2, log[-3000:]
        assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    first, second = (busy_span_s(log, started) for log in logs.values())
    assert first[0] < second[1] and second[0] < first[1], f"one ran after the other: {first}, {second}"
    train_ports = [TEMPORARY_SERVER.findall(log)[0] for log in logs.values()]
    assert train_ports[0] != train_ports[1]  # side by side, on ports of their own

    shown = experiments(project, env)
    for name, rate in rates.items():
        assert shown[name]["state"] == "success"
        assert shown[name]["params"]["train"]["learning_rate"] == rate
        test_auc = re.search(r"test: ROC AUC ([\d.]+)", logs[name]).group(1)  # what this experiment's evaluate said
        assert f"{shown[name]['metrics']['test']['roc_auc']:.4f}" == test_auc
    assert shown["lr-0.001"]["metrics"] != shown["lr-0.004"]["metrics"]
    for name in rates:  # training's DVCLive summary beside evaluate's: its last step, at the experiment's rate
        assert shown[name]["training"]["step"] == epochs - 1
        assert shown[name]["training"]["learning_rate"] == pytest.approx(rates[name])

    # `dvc plots diff` of the two experiments draws both training curves, each from its own record
    plots = json.loads(run([DVC, "plots", "diff", *rates, "--json", "-o", str(tmp_path)], project, env).stdout)
    curve = plots["data"]["models/dvclive/plots/metrics/val_auc.tsv"][0]
    drawn = [(point["rev"], int(point["step"])) for point in curve["content"]["data"]["values"]]
    assert sorted(drawn) == sorted((name, step) for name in rates for step in range(epochs))


def test_the_readme_grid_sweep_queues_every_combination_and_they_can_be_removed_unrun(experiment_project):
    project, env = experiment_project
    command = readme_grid_sweep()
    assert command[0] == "dvc"
    run([DVC, *command[1:]], project, env)
    try:
        queued = {name for name, state in queue_states(project, env).items() if state == "Queued"}
        assert len(queued) == 4
        combinations = {(experiment["params"]["train"]["learning_rate"], experiment["params"]["train"]["dropout"])
                        for name, experiment in experiments(project, env).items() if name in queued}
        assert combinations == {(0.001, 0.2), (0.001, 0.3), (0.002, 0.2), (0.002, 0.3)}
    finally:
        run([DVC, "queue", "remove", "--queued"], project, env)
    assert "Queued" not in queue_states(project, env).values()


def test_a_queued_experiments_stages_report_to_the_prefect_api_its_workers_were_started_with(experiment_project,
                                                                                              prefect_api):
    """README's way to see every queued experiment's stage runs in one Prefect UI: `dvc queue start` with
    PREFECT_API_URL set. An evaluate-only experiment (evaluate.bootstrap) keeps it short."""
    project, env = experiment_project
    run([DVC, "exp", "run", "--queue", "--name", "bootstrap-61", "-S", "evaluate.bootstrap=61"], project, env)
    with queue_workers(project, env | {"PREFECT_API_URL": prefect_api}, count=1):
        assert wait_until_done(project, env, ["bootstrap-61"]) == {"bootstrap-61": "Success"}, \
            queue_log(project, env, "bootstrap-61")[-3000:]
    log = queue_log(project, env, "bootstrap-61")
    assert re.findall(r"Running stage '(\w+)'", log) == ["evaluate"] and not TEMPORARY_SERVER.search(log), log[-3000:]
    evaluate_runs = httpx.post(f"{prefect_api}/flow_runs/filter",
                               json={"flows": {"name": {"any_": ["evaluate"]}}, "limit": 200}).json()
    ours = [flow_run for flow_run in evaluate_runs
            if flow_run["parameters"].get("params", {}).get("evaluate", {}).get("bootstrap") == 61]
    assert [flow_run["state_type"] for flow_run in ours] == ["COMPLETED"]


def test_the_stage_scripts_and_their_fold_processes_run_the_projects_own_library(experiment_project):
    """A queued experiment runs in a copy of the project while the editable install points at the workspace's
    src/: a stage script, and each fold process it starts, must import the copy's (the code as queued)."""
    project, env = experiment_project
    probe = ("import flows, subprocess, sys, skincancer; from skincancer.train.cross_validation import fold_environment; "
             "print(skincancer.__file__); sys.stdout.flush(); subprocess.run([sys.executable, '-c', "
             "'import skincancer; print(skincancer.__file__)'], env=fold_environment('cpu'), cwd='/', check=True)")
    printed = run([str(BIN / "python"), "-c", probe], project, env).stdout.split()
    assert printed == [str(project / "src/skincancer/__init__.py")] * 2


def test_execution_knobs_make_no_stage_stale(repo):
    """Each knob params.py marks as execution (workers, retries, tensorboard, resume), changed: `dvc status` clean."""
    root, env = repo
    original = (root / "params.yaml").read_text()
    try:
        for section, model in (("fetch", FetchParams), ("shard", ShardParams), ("train", TrainParams)):
            for key in execution_knobs(model):
                default = model.model_fields[key].default
                set_params(root, {section: {key: (not default) if isinstance(default, bool) else default + 1}})
                status = run([str(BIN / "dvc"), "status"], root, env).stdout
                assert "Data and pipelines are up to date" in status, (section, key, status)
    finally:
        (root / "params.yaml").write_text(original)


def test_the_shard_stage_depends_on_the_image_size_not_on_the_word_auto(repo):
    """shard.image_size 'auto' and the size it stands for, under any backbone of that size, are one dependency
    (data/resolved.json): the resolve stage reruns and writes the same value, and the shards stay; a new size
    reshards."""
    root, env = repo
    params, lock = (root / "params.yaml").read_text(), (root / "dvc.lock").read_text()

    def repro_shard(change: dict) -> list[str]:
        set_params(root, change)
        return stages_run(run([str(BIN / "dvc"), "repro", "shard"], root, env).stdout)

    try:
        assert repro_shard({"shard": {"image_size": 96}}) == ["resolve", "shard"]
        assert repro_shard({"shard": {"image_size": "auto"}}) == ["resolve"]  # small_cnn's input size is 96
        assert json.loads((root / "data/resolved.json").read_text()) == {"shard.image_size": 96}
        assert repro_shard({"shard": {"image_size": 96}, "train": {"backbone": "mobilenet_v2"}}) == ["resolve"]
    finally:
        (root / "params.yaml").write_text(params)
        (root / "dvc.lock").write_text(lock)
        run([str(BIN / "dvc"), "checkout", "--quiet"], root, env)
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], root, env).stdout


def test_pipeline_without_a_server_starts_one_for_all_stages_and_diffs_the_metrics(repo, tta_run):
    """`skincancer run` without any PREFECT_API_URL: one temporary server for the pipeline flow and its
    stage subprocesses."""
    root, _ = repo
    before, result = tta_run
    output = result.stdout + result.stderr
    assert list(dict.fromkeys(stages_run(output))) == ["evaluate"]  # only what the change made stale
    assert re.search(r"stages run: evaluate in \d+ s\ntest: ROC AUC [\d.]+ \(95% CI [\d.]+-[\d.]+\), "
                     r"sensitivity [\d.]+, specificity [\d.]+ at threshold [\d.]+", result.stdout), result.stdout[-2000:]
    assert output.count("Started a temporary Prefect server") == 1, output[-3000:]
    assert "Starting temporary server" not in output  # Prefect's own, in a process without the shared API
    after = json.loads((root / "metrics.json").read_text())
    for split in ("val", "test"):
        old, new = before[split]["roc_auc"], after[split]["roc_auc"]
        assert f"| {split}.roc_auc | {old:.4f} | {new:.4f} | {new - old:+.4f} |" in output


@pytest.mark.usefixtures("tta_run")
def test_diff_report_shows_the_changed_param_and_every_metric_against_the_base(repo):
    """What the PR comment shows after the evaluate.tta change: old, new, delta, in metrics.json's order."""
    root, env = repo
    result = run([str(BIN / "skincancer"), "diff-report", "--base", "HEAD", "--out", "diff-report"], root, env)
    report = (root / "diff-report/report.md").read_text()
    assert result.stdout.strip() == "diff-report/report.md"
    assert "| evaluate.tta | `1` | `2` |" in report and report.count("| evaluate.") == 1  # only the changed param
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
    lock, history = (root / "dvc.lock").read_bytes(), (root / "models/dvclive/metrics.json").read_bytes()
    (root / "broken.weights.h5").write_bytes(b"not HDF5")  # passes the params check, fails inside the train flow
    set_params(root, {"train": {"weights": "broken.weights.h5"}})
    try:
        result = run([str(BIN / "python"), "-m", "flows.pipeline"], root, env, check=False)
    finally:
        set_params(root, {"train": {"weights": None}})
        (root / "broken.weights.h5").unlink()
    assert result.returncode == 1
    assert "error: failed to reproduce 'train'" in result.stderr and "dvc.lock records nothing of it" in result.stderr
    assert "train.weights: broken.weights.h5" in result.stdout + result.stderr  # the stage's own error
    assert (root / "dvc.lock").read_bytes() == lock
    assert (root / "models/model.keras").is_file()  # the last good model is back in the workspace
    assert (root / "models/dvclive/metrics.json").read_bytes() == history  # not cached by DVC: put back as it was
    assert "the last recorded outputs are back as they were" in result.stderr
    failed = [r for r in flow_runs(prefect_api) if r["state_type"] == "FAILED"]
    assert {"skincancer-pipeline", "train"} <= {r["flow_name"] for r in failed}


def descendants(pid: int) -> dict[int, str]:
    """Every process under `pid`, with its command line."""
    found = {}
    for child in lifetime.descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # it exited meanwhile: not a process left behind
            continue
        found[child] = command.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_for(predicate, timeout_s: float = 120.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pids) -> list[int]:
    return [pid for pid in pids if lifetime.alive(pid)]


@pytest.mark.parametrize("killed, shell", [("stage", "/bin/sh"), ("dvc repro", "/bin/sh"), ("dvc repro", "/bin/bash"),
                                           ("pipeline", "/bin/sh")])
def test_sigkill_leaves_no_server_or_stage_behind(repo, killed, shell):
    """No PREFECT_API_URL: the killed process's temporary server and stage watch it and end with it. DVC runs
    a stage as `$SHELL -c <cmd>`: bash execs the command, Debian's /bin/sh (dash, DVC's shell where SHELL is
    unset) waits on it, so the stage outlives the shell's parent unless it watches that process too."""
    root, env = repo
    # PREFECT_CLIENT_MAX_RETRIES=0: the orphaned stage's last crash report would otherwise retry for half a
    # minute against the server that died with its parent; it ends either way
    alone = {key: value for key, value in env.items() if key != "PREFECT_API_URL"} | {
        "PREFECT_CLIENT_MAX_RETRIES": "0", "SHELL": shell}
    command = {"stage": [str(BIN / "python"), "-m", "flows.evaluate"],
               "dvc repro": [str(BIN / "dvc"), "repro", "--force", "--single-item", "evaluate"],
               "pipeline": [str(BIN / "python"), "-m", "flows.pipeline", "--force", "fetch"]}[killed]  # no upstream to rerun
    stage = "-m flows.fetch" if killed == "pipeline" else "-m flows.evaluate"
    process = subprocess.Popen(command, cwd=root, env=alone, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tree = wait_for(lambda: (found := descendants(process.pid)) and any("uvicorn" in c for c in found.values())
                        and (killed == "stage" or any(c.startswith(f"python {stage}") for c in found.values())) and found,
                        what="a temporary server (and the stage) under the process")
        waits = killed != "stage" and shell == "/bin/sh"
        assert waits == any(c.startswith(f"{shell} -c python {stage}") for c in tree.values()), tree
        process.kill()
        process.wait()
        wait_for(lambda: not alive(tree), timeout_s=30, what=f"{tree} to exit after their parent was killed")
    finally:
        process.kill()
        subprocess.run([str(BIN / "dvc"), "checkout", "--force"], cwd=root, env=alone, capture_output=True)


def test_sigterm_stops_the_running_stage_and_leaves_the_outputs_as_they_were(repo, prefect_api):
    root, env = repo
    model, lock = (root / "models/model.keras").read_bytes(), (root / "dvc.lock").read_bytes()
    history = (root / "models/dvclive/metrics.json").read_bytes()
    process = subprocess.Popen([str(BIN / "python"), "-m", "flows.pipeline", "--force", "train"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stage = wait_for(lambda: [pid for pid, c in descendants(process.pid).items() if "flows.train" in c],
                     what="the train stage")
    wait_for(lambda: not (root / "models/model.keras").exists(), what="DVC to clear the stage's outputs")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "error: interrupted: the running stage was stopped and dvc.lock records nothing of it" in err, (out + err)[-3000:]
    assert "the last recorded outputs are back as they were" in err
    assert not alive(stage)
    assert (root / "models/model.keras").read_bytes() == model and (root / "dvc.lock").read_bytes() == lock
    assert (root / "models/dvclive/metrics.json").read_bytes() == history
    assert not list((root / "models").glob(".*partial*"))  # the stage cleaned up what it was writing


def test_split_seed_change_makes_split_and_the_report_stale_and_nothing_upstream(repo):
    """DVC's own decision, without running the stages (`--dry`: stages past split would follow once its output
    changes, which the nightly test shows for real): split, and evaluate, whose report prints split params."""
    root, env = repo
    params = (root / "params.yaml").read_text()
    set_params(root, {"split": {"seed": 7}})
    try:
        dry = run([str(BIN / "dvc"), "repro", "--dry"], root, env).stdout
    finally:
        (root / "params.yaml").write_text(params)
    assert stages_run(dry) == ["split", "evaluate"] and "Stage 'fetch' didn't change" in dry


def test_dvc_plots_render_every_declared_plot(repo):
    root, env = repo
    plots = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)
    shown = plots["data"]
    for plot in ("ROC (val and test)", "Precision-recall (val and test)", "Confusion matrix (test)",
                 "Calibration (test)", *(f"models/dvclive/plots/metrics/{metric}.tsv" for metric in ("auc", "val_auc"))):
        assert plot in shown, (plot, sorted(shown))
    assert any(name.startswith("reports/figures/") for name in shown)
    # every plot of training's DVCLive record loads (the _oof curves exist only in a cross-validated run)
    assert not [error for error in plots.get("errors", []) if "dvclive" in error.get("source", error["name"])], plots


def test_a_run_without_bootstrap_succeeds_and_ends_with_the_summary(repo):
    """`evaluate.bootstrap: 0` (no ROC AUC interval) is valid: only evaluate reruns, the run ends with its summary
    and the undefined interval is shown as such. It leaves evaluate's outputs at bootstrap 0."""
    root, env = repo
    params = (root / "params.yaml").read_text()
    set_params(root, {"evaluate": {"bootstrap": 0}})
    try:
        result = run([str(BIN / "python"), "-m", "flows.pipeline"], root, env)
    finally:
        (root / "params.yaml").write_text(params)
    metrics = json.loads((root / "metrics.json").read_text())
    test = metrics["test"]
    assert test["roc_auc"] is not None and test["roc_auc_ci_low"] is None and test["roc_auc_ci_high"] is None
    *_, pooled, last = result.stdout.rstrip().splitlines()
    assert re.search(r"stages run: evaluate in \d+ s\n", result.stdout), result.stdout[-2000:]
    assert pooled == f"{split_summary(metrics, 'test')}; reports/report.html has the rest"
    assert last == band_summary(metrics, "test") and "full_size ROC AUC" in last and "small ROC AUC" in last
    assert re.match(r"test: ROC AUC [\d.]+ \(95% CI -\), sensitivity [\d.]+, specificity [\d.]+ at threshold [\d.]+, "
                    r"\d+ images \(\d+ malignant\);", pooled), pooled
    report = (root / "reports/report.md").read_text()
    assert re.search(r"\| ROC AUC \(95% CI, groups resampled\) \| [\d.]+ \| [\d.]+ \|", report)  # no interval, no error


def test_folds_rerun_from_split_train_a_member_per_fold_and_metrics_diff_shows_the_out_of_fold_section(repo):
    """`split.folds: 3` through plain `dvc repro`: split, shard, train (three fold processes on two CPU slots) and
    evaluate rerun, fetch does not; the members are DVC outputs; `dvc metrics diff` against the single-model
    commit shows the new `oof` section (and each fold's AUC); `dvc plots` draws the out-of-fold curves.
    Last in the file: it leaves the project cross-validated."""
    root, env = repo
    set_params(root, {"split": {"folds": 3}, "orchestration": {"fold_devices": ["cpu", "cpu"]}})
    result = run([str(BIN / "dvc"), "repro"], root, env)
    assert stages_run(result.stdout) == ["split", "shard", "train", "evaluate"], result.stdout[-3000:]
    output = result.stdout + result.stderr
    for fold in range(3):
        assert re.search(rf"fold {fold}: started on slot \d \(cpu\), process \d+", output), output[-3000:]
        assert (root / f"models/folds/fold{fold}.keras").is_file()
    lock = (root / "dvc.lock").read_text()
    assert "path: models/folds" in lock and "nfiles: 3" in lock
    metrics = json.loads((root / "metrics.json").read_text())
    assert list(metrics) == ["threshold", "oof", "test", "calibration", "ood"]
    assert sum(fold["n"] for fold in metrics["oof"]["folds"].values()) == metrics["oof"]["n"]
    diff = json.loads(run([str(BIN / "dvc"), "metrics", "diff", "--json"], root, env).stdout)["metrics.json"]
    assert diff["oof.roc_auc"]["old"] is None and diff["oof.roc_auc"]["new"] == metrics["oof"]["roc_auc"]
    assert "oof.folds.fold2.roc_auc" in diff and "oof.fold_roc_auc_sd" in diff
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], root, env).stdout)["data"]
    drawn = set(re.findall(r'"filename": "([^"]+)"', json.dumps(shown["ROC (val and test)"])))
    assert drawn == {"roc_oof.csv", "roc_test.csv"}, drawn

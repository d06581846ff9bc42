"""The GPU box's loop end to end: a bare git repository on disk as the code remote, moto's S3 server on
127.0.0.1 as the DVC remote (DVC's own S3 support), and a real Prefect server and process worker running
prefect.yaml's `nightly` deployment; then a workstation and a pull request that take its results, and a user who
fetches the version promoted to prod (dvc.yaml's model artifact, GTO's tags) into an empty folder and predicts with it."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from project_copy import BIN, TINY_PARAMS, committed_project, project_env, run, set_params, stages_run

pytestmark = pytest.mark.slow

BUCKET = "skincancer"
MODEL = "skincancer-classifier"  # dvc.yaml's model artifact: GTO tags `<MODEL>@v...` on results commits
CPU_OK = ["--job-variable", 'env={"SKINCANCER_REQUIRE_GPU": ""}']  # this machine has no GPU


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_server(home: Path, env: dict[str, str] | None = None):
    """moto's S3 server on a free loopback port; its URL once it answers."""
    port = free_port()
    with open(home / f"moto-{port}.log", "w") as log:
        server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                  stderr=log, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up = time.monotonic() + 30
        while time.monotonic() < wait_until_up:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with one empty bucket: the object store a team's DVC remote lives in."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield url, client


@pytest.fixture(scope="module")
def remotes(tmp_path_factory, s3, prefect_api):
    """origin.git (the code remote), a developer's clone that pushes to it, the box's clone, and the env."""
    root = tmp_path_factory.mktemp("nightly")
    env = project_env(root) | {"PREFECT_API_URL": prefect_api, "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    dev = committed_project(root / "dev", env, TINY_PARAMS)
    for command in (["dvc", "remote", "add", "-d", "storage", f"s3://{BUCKET}/cache"],
                    ["dvc", "remote", "modify", "storage", "endpointurl", s3[0]],
                    ["git", "commit", "-qam", "DVC remote: the team's object store"],
                    ["git", "init", "-q", "--bare", "-b", "main", str(root / "origin.git")],
                    ["git", "remote", "add", "origin", str(root / "origin.git")],
                    ["git", "push", "-q", "origin", "main"]):
        run([str(BIN / command[0]) if command[0] == "dvc" else command[0], *command[1:]], dev, env)
    run(["git", "clone", "-q", str(root / "origin.git"), str(root / "box")], root, env)
    return root, dev, root / "box", env


def prefect(*args: str) -> list[str]:
    return [str(BIN / "prefect"), *args]


def nightly(box: Path, env: dict, api: str, *extra: str) -> tuple[dict, str]:
    """One run of the deployment, picked up by a process worker: its final state and its log lines."""
    triggered = run(prefect("deployment", "run", "skincancer-pipeline/nightly", *extra), box, env).stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered).group(1)
    run(prefect("worker", "start", "--pool", "gpu", "--run-once"), box, env)
    state = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["state"]
    logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}).json()
    return state, "\n".join(entry["message"] for entry in logs)


def ls_remote(origin: Path, branch: str) -> str:
    return subprocess.run(["git", "rev-parse", branch], cwd=origin, capture_output=True, text=True).stdout.strip()


def tag_target(origin: Path, tag: str) -> str:
    """The commit an annotated tag of the bare repository points at."""
    found = subprocess.run(["git", "rev-parse", "-q", "--verify", f"{tag}^{{commit}}"], cwd=origin, capture_output=True,
                           text=True).stdout.strip()
    return found or f"(no tag {tag})"


def dvc_cached_outputs_removed(box: Path) -> None:
    """A fresh disk on the box: no DVC cache and none of the cached outputs, only what git holds."""
    for path in (".dvc/cache", "data/resolved.json", "data/raw", "data/split", "data/shards", "models/model.keras", "reports/figures",
                 "reports/report.md", "reports/report.html", "reports/predictions.csv"):
        target = box / path
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def test_nightly_pulls_code_and_outputs_reruns_what_changed_pushes_and_publishes(remotes, s3, prefect_api):
    root, dev, box, env = remotes
    origin = root / "origin.git"
    run(prefect("work-pool", "create", "gpu", "--type", "process"), box, env)
    run(prefect("--no-prompt", "deploy", "--all"), box, env | {"PWD": str(box)})
    deployment = httpx.post(f"{prefect_api}/deployments/filter", json={}).json()[0]
    assert deployment["name"] == "nightly" and deployment["work_pool_name"] == "gpu"
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert deployment["job_variables"]["working_dir"] == str(box)
    # the shipped deployment expects a GPU (test_a_deployment_that_requires_a_gpu_fails_before_any_stage_without_one)
    assert deployment["job_variables"]["env"]["SKINCANCER_REQUIRE_GPU"] == "1"

    # night 1 (this machine has no GPU: the run's job variables allow the CPU): everything runs, the outputs go to the object store, the records to `results`
    state, logs = nightly(box, env, prefect_api, *CPU_OK)
    assert state["type"] == "COMPLETED", logs[-3000:]
    assert "stages run: resolve, fetch, split, shard, train, evaluate" in logs
    code_1, results_1 = ls_remote(origin, "main"), ls_remote(origin, "results")
    assert run(["git", "log", "-1", "--format=%P", results_1], origin, env).stdout.split() == [code_1]
    subject = run(["git", "log", "-1", "--format=%s", results_1], origin, env).stdout.strip()
    assert re.fullmatch(rf"nightly results for {code_1[:12]}, test ROC AUC 0\.\d{{4}} \(first run\)", subject)
    assert s3[1].list_objects_v2(Bucket=BUCKET, Prefix="cache/")["KeyCount"] > 0
    for published in ("dvc.lock", "metrics.json", "reports/plots/roc_test.csv", "models/card.json", "models/dvclive/metrics.json"):
        run(["git", "cat-file", "-e", f"{results_1}:{published}"], origin, env)
    assert tag_target(origin, f"{MODEL}@v0.1.0") == results_1  # the publish is the model's first version

    # a developer pushes a change to evaluate.tta; the box's disk is wiped of DVC data meanwhile
    set_params(dev, {"evaluate": {"tta": 2}})
    run(["git", "commit", "-qam", "evaluate.tta: 2"], dev, env)
    run(["git", "push", "-q", "origin", "main"], dev, env)
    dvc_cached_outputs_removed(box)

    # night 2: the new code, every other stage's outputs pulled from the remote, only evaluate reruns
    state, logs = nightly(box, env, prefect_api, *CPU_OK)
    assert state["type"] == "COMPLETED", logs[-3000:]
    assert "stages run: evaluate" in logs
    code_2, results_2 = ls_remote(origin, "main"), ls_remote(origin, "results")
    assert run(["git", "log", "-1", "--format=%P", results_2], origin, env).stdout.split() == [results_1, code_2]
    message = run(["git", "log", "-1", "--format=%B", results_2], origin, env).stdout
    assert "stages run: evaluate" in message and re.search(r"metrics changed \(old -> new\):\n(  .*\n)*  test\.brier: ", message)
    assert "tta: 2" in run(["git", "show", f"{results_2}:params.yaml"], origin, env).stdout
    assert tag_target(origin, f"{MODEL}@v0.2.0") == results_2 and f"registered {MODEL}@v0.2.0 on {results_2[:12]}" in logs

    # a workstation clones the results branch: `dvc pull` brings every output, `dvc repro` has nothing to do
    workstation = root / "workstation"
    run(["git", "clone", "-q", "-b", "results", str(origin), str(workstation)], root, env)
    run([str(BIN / "dvc"), "pull"], workstation, env)
    assert stages_run(run([str(BIN / "dvc"), "repro"], workstation, env).stdout) == []
    assert (workstation / "models/model.keras").is_file()

    # a pull request changes an evaluate param: its report script pulls the results and reruns evaluate only
    pull_request = root / "pull-request"
    run(["git", "clone", "-q", str(origin), str(pull_request)], root, env)
    run(["git", "checkout", "-q", "-b", "tta"], pull_request, env)
    set_params(pull_request, {"evaluate": {"tta": 4}})
    run(["git", "commit", "-qam", "evaluate.tta: 4"], pull_request, env)
    result = run([str(BIN / "python"), "-m", "flows.pr_report", "--base", "origin/results"], pull_request, env)
    assert list(dict.fromkeys(stages_run(result.stdout + result.stderr))) == ["evaluate"]
    report = (pull_request / "diff-report/report.md").read_text()
    assert "| evaluate.tta | `2` | `4` |" in report and "origin/results" in report

    # a developer promotes v0.1.0 (README: the one command, in a clone with the tags); a user fetches prod into an
    # empty folder from the object store and classifies with it: night 1's card (tta 1), not the newest (tta 2)
    run(["git", "fetch", "-q", "--tags", "origin"], dev, env)
    run([str(BIN / "gto"), "assign", MODEL, "--version", "v0.1.0", "--stage", "prod", "--push"], dev, env)
    assert tag_target(origin, f"{MODEL}#prod#1") == results_1
    user = root / "user"
    user.mkdir()
    run([str(BIN / "dvc"), "artifacts", "get", str(origin), MODEL, "--stage", "prod", "-o", "model"], user, env)
    card_1, card_2 = (run(["git", "show", f"{sha}:models/card.json"], origin, env).stdout for sha in (results_1, results_2))
    assert card_1 != card_2 and (user / "model/card.json").read_text() == card_1
    images = sorted((box / "data/split/test").rglob("*.jpg"))[:2]
    result = run([str(BIN / "skincancer"), "predict", *map(str, images), "--model", "model/model.keras"], user, env)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["path"] for row in rows] == list(map(str, images)) and len(rows) == 2, result.stdout
    assert all(0 <= float(row["probability"]) <= 1 and row["error"] == "" for row in rows), result.stdout


def test_an_unreachable_remote_fails_the_run_naming_it_and_changes_nothing(remotes):
    root, _, _, env = remotes
    clone = root / "unreachable"
    run(["git", "clone", "-q", "-b", "results", str(root / "origin.git"), str(clone)], root, env)
    run([str(BIN / "dvc"), "remote", "modify", "--local", "storage", "endpointurl", f"http://127.0.0.1:{free_port()}"], clone, env)
    lock = (clone / "dvc.lock").read_bytes()
    result = run([str(BIN / "python"), "-m", "flows.pipeline"], clone, env | {"AWS_MAX_ATTEMPTS": "1"}, check=False)
    assert result.returncode == 1
    assert re.search(r"error: dvc pull with remote 'storage' \(s3://skincancer/cache\) failed: .*check that it is "
                     r"reachable and that this machine's credentials for it are valid", result.stderr), result.stderr[-3000:]
    assert "Running stage" not in result.stdout and (clone / "dvc.lock").read_bytes() == lock


def test_a_rejected_credential_fails_the_run_naming_the_remote(remotes, tmp_path):
    """moto checking access keys (its IAM mode): the box's key is unknown to the store, as a revoked or
    expired one is."""
    root, _, _, env = remotes
    clone = root / "rejected"
    run(["git", "clone", "-q", "-b", "results", str(root / "origin.git"), str(clone)], root, env)
    with moto_server(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        run([str(BIN / "dvc"), "remote", "modify", "--local", "storage", "endpointurl", url], clone, env)
        result = run([str(BIN / "python"), "-m", "flows.pipeline"], clone, env | {"AWS_ACCESS_KEY_ID": "AKIAEXPIRED00000000"},
                     check=False)
    assert result.returncode == 1
    assert re.search(r"error: dvc pull with remote 'storage' \(s3://skincancer/cache\) failed: .*credentials for it are "
                     r"valid", result.stderr), result.stderr[-3000:]
    assert "Running stage" not in result.stdout


def test_a_deployment_that_requires_a_gpu_fails_before_any_stage_without_one(remotes):
    """The flow the nightly deployment runs, with its SKINCANCER_REQUIRE_GPU, on this GPU-less machine."""
    root, _, _, env = remotes
    clone = root / "no-gpu"
    run(["git", "clone", "-q", str(root / "origin.git"), str(clone)], root, env)
    result = run([str(BIN / "python"), "-m", "flows.pipeline"], clone, env | {"SKINCANCER_REQUIRE_GPU": "1"}, check=False)
    assert result.returncode == 1
    assert "SKINCANCER_REQUIRE_GPU is set but TensorFlow" in result.stderr and "sees no GPU" in result.stderr, result.stderr[-3000:]
    assert "Running stage" not in result.stdout
    assert not (clone / "dvc.lock").exists() and not (clone / "data/raw").exists()

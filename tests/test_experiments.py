"""DVC's experiment tools on the real project: queued experiments run side by side (`dvc queue start -j 2`),
each stage starting its own temporary Prefect server as a user's do, and README's grid sweep queues every
combination. Real dvc, git, celery workers and Prefect servers."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from project_copy import BIN, ROOT, TINY_PARAMS, committed_project, project_env, run

from skincancer.ops import lifetime

pytestmark = pytest.mark.slow

DVC = str(BIN / "dvc")
RUN_DEADLINE_S = 600.0  # two experiments side by side take ~2 min on a loaded 2-core machine
TEMPORARY_SERVER = re.compile(r"Started a temporary Prefect server on http://127\.0\.0\.1:(\d+)")
LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \| ", re.MULTILINE)


@pytest.fixture(scope="module")
def experiment_project(tmp_path_factory, prefect_api) -> Iterator[tuple[Path, dict[str, str]]]:
    """A reproduced project with dvc.lock and the git-tracked outputs committed, so an experiment on train.* reruns
    only train and evaluate. Its environment names no Prefect API: each experiment's stages start temporary
    servers on the project's own, still unmigrated, PREFECT_HOME (the initial `dvc repro` reports to the test
    server instead, which also spares it five server starts). Tests may create experiments (name them, they
    stay), and leave nothing queued and no queue worker running."""
    target = tmp_path_factory.mktemp("experiments")
    env = project_env(target)
    project = committed_project(target, env, TINY_PARAMS)
    run([DVC, "repro"], project, env | {"PREFECT_API_URL": prefect_api})
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "reproduced"], project, env)
    yield project, env


def queue_states(project: Path, env: dict[str, str]) -> dict[str, str]:
    """Each experiment the queue knows, by name: Queued, Running, Success or Failed (`dvc queue status`)."""
    table = run([DVC, "queue", "status"], project, env).stdout
    return dict(re.findall(r"^[0-9a-f]+\s+(\S+)\s.*\s(Queued|Running|Success|Failed)\s*$", table, re.MULTILINE))


def running_dvc(pid: int) -> bool:
    """A running dvc process (not one that exited, nor another that took over its process id)."""
    try:
        return b"dvc" in Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except OSError:  # no such process
        return False


def queue_processes(project: Path) -> list[int]:
    """The queue's workers and experiment runs still running, from DVC's own records of the processes it spawned."""
    records = [json.loads(path.read_text()) for path in (project / ".dvc/tmp/exps").glob("*/**/*.json")]
    return [record["pid"] for record in records
            if "pid" in record and record.get("returncode") is None and running_dvc(record["pid"])]


@contextlib.contextmanager
def queue_workers(project: Path, env: dict[str, str], count: int) -> Iterator[None]:
    """`dvc queue start -j count` with ``env`` (the workers and every stage they run inherit it); after, the
    workers are stopped, running experiments killed, and nothing of the queue is left running. The workers
    inherit the command's stdout: a file, not a pipe, which would hold `dvc queue start` open until they end."""
    with tempfile.TemporaryFile("w+") as output:
        started = subprocess.run([DVC, "queue", "start", "-j", str(count)], cwd=project, env=env, stdout=output,
                                 stderr=subprocess.STDOUT)
        output.seek(0)
        assert started.returncode == 0, output.read()[-3000:]
    try:
        yield
    finally:
        run([DVC, "queue", "stop", "--kill"], project, env, check=False)
        lifetime.stop(queue_processes(project), grace_s=30)


def wait_until_done(project: Path, env: dict[str, str], names: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + RUN_DEADLINE_S
    while time.monotonic() < deadline:
        states = queue_states(project, env)
        if all(states.get(name) in ("Success", "Failed") for name in names):
            return {name: states[name] for name in names}
        time.sleep(5)  # each `dvc queue status` costs the running experiments a second of CPU
    raise AssertionError(f"{names} not done after {RUN_DEADLINE_S:.0f} s: {queue_states(project, env)}")


class RecordWatcher:
    """What a user watching running experiments sees, change by change, polled in a thread of its own: each
    experiment copy's DVCLive curve (rows of val_auc.tsv, by copy) and the step DVCLive last signalled to DVC's
    VS Code extension (its file in the project's .dvc/tmp)."""

    def __init__(self, project: Path):
        self.project, self.rows, self.steps = project, {}, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        signal = self.project / ".dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED"
        while not self.done.wait(0.1):  # an epoch takes seconds
            with contextlib.suppress(OSError, ValueError):  # copies come and go, files are read as written
                for curve in self.project.glob(".dvc/tmp/exps/tmp*/models/dvclive/plots/metrics/val_auc.tsv"):
                    self._note(self.rows.setdefault(curve.relative_to(self.project).parts[3], []),
                               len(curve.read_text().splitlines()) - 1)
            with contextlib.suppress(OSError, ValueError):
                self._note(self.steps, json.loads(signal.read_text())["step"])

    @staticmethod
    def _note(seen: list[int], value: int) -> None:
        if not seen or seen[-1] != value:
            seen.append(value)

    def __enter__(self) -> RecordWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def queue_log(project: Path, env: dict[str, str], name: str) -> str:
    return run([DVC, "queue", "logs", name], project, env).stdout


def experiments(project: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json`'s experiments by name: their state, params.yaml, metrics.json and training's
    DVCLive summary."""
    found = {}
    for baseline in json.loads(run([DVC, "exp", "show", "--json"], project, env).stdout):
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            found[experiment["name"]] = {
                "state": experiment["executor"]["state"] if experiment.get("executor") else "done",
                "params": data["params"]["params.yaml"]["data"],
                "metrics": data.get("metrics", {}).get("metrics.json", {}).get("data"),
                "training": data.get("metrics", {}).get("models/dvclive/metrics.json", {}).get("data"),
            }
    return found


def seconds_of_day(hours: float, minutes: float, seconds: float) -> float:
    return hours * 3600 + minutes * 60 + seconds


def busy_span_s(log: str, since: float) -> tuple[float, float]:
    """First and last timestamped line of an experiment's stage logs, in seconds after ``since``, a time of day
    in seconds (the log's clock has no date: past midnight it starts again)."""
    times = [(seconds_of_day(*map(float, found)) - since) % 86400 for found in LOG_TIME.findall(log)]
    return times[0], times[-1]


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


def readme_grid_sweep() -> list[str]:
    """README's one-command grid sweep, as a user copies it."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.strip().startswith("dvc exp run --queue -S 'train.learning_rate="))
    return shlex.split(line.split("#", 1)[0])


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

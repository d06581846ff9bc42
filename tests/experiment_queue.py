"""Driving DVC's experiment queue from tests (tests/test_pipeline.py): its celery workers started and stopped,
its states, logs and `dvc exp show` read back, and what a user watching running experiments sees."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from project_copy import BIN, ROOT, run

from skincancer.ops import lifetime

DVC = str(BIN / "dvc")
RUN_DEADLINE_S = 600.0  # two experiments side by side take ~2 min on a loaded 2-core machine
TEMPORARY_SERVER = re.compile(r"Started a temporary Prefect server on http://127\.0\.0\.1:(\d+)")
LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) \| ", re.MULTILINE)


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


def readme_grid_sweep() -> list[str]:
    """README's one-command grid sweep, as a user copies it."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if line.strip().startswith("dvc exp run --queue -S 'train.learning_rate="))
    return shlex.split(line.split("#", 1)[0])

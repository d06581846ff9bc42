"""core/atomic.py: a writer killed outright leaves hidden siblings; the next writer of the same output clears
them (or puts back what was set aside), and never touches those of a writer that still runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_bytes, restored_on_failure

# A child process that runs a real writer and stops in the middle of it, saying so, until it is killed.
CHILD = """
import os, sys, time
from pathlib import Path
from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_bytes, restored_on_failure

def stop_here():
    print("writing", flush=True)
    time.sleep(600)

def stop_at_call(function, nth=1):
    calls = []
    def hook(frame, event, arg):
        if event == "c_call" and arg is function:
            calls.append(arg)
            if len(calls) == nth:
                stop_here()
    sys.setprofile(hook)

final = Path(sys.argv[1])
"""
WRITERS_STOPPED_MIDWAY = {
    "atomic_dir": "with atomic_dir(final) as partial:\n    (partial / 'part').write_text('half')\n    stop_here()",
    "atomic_path": "with atomic_path(final) as partial:\n    partial.write_text('half')\n    stop_here()",
    # the bytes are in the temp file, not yet synced or renamed
    "atomic_write_bytes": "stop_at_call(os.fsync)\natomic_write_bytes(final, b'half')",
    # the old output retired to .old-<pid>, the new one not yet renamed into place: neither is where it belongs
    "atomic_dir replacing": "stop_at_call(os.replace, nth=2)\n"
                            "with atomic_dir(final) as partial:\n    (partial / 'part').write_text('half')",
}


def write_whole(writer: str, final: Path) -> None:
    if writer.startswith("atomic_dir"):
        with atomic_dir(final) as partial:
            (partial / "part").write_text("whole")
    elif writer == "atomic_path":
        with atomic_path(final) as partial:
            partial.write_text("whole")
    else:
        atomic_write_bytes(final, b"whole")


def read(final: Path) -> str:
    return (final / "part" if final.is_dir() else final).read_text()


def hidden_siblings(final: Path) -> list[str]:
    return sorted(path.name for path in final.parent.iterdir() if path.name.startswith(f".{final.name}."))


@pytest.fixture
def stopped_writer() -> Iterator[Callable[[str, Path], subprocess.Popen]]:
    """Start a child that stops mid-write (it is killed at the end, whatever the test did)."""
    children: list[subprocess.Popen] = []

    def start(code: str, final: Path) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", CHILD + code, str(final)], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline() == "writing\n", f"the child died before it stopped mid-write: {child.wait()}"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()
        child.stdout.close()


def killed(child: subprocess.Popen) -> int:
    child.kill()
    child.wait()
    return child.pid


@pytest.mark.parametrize("writer", list(WRITERS_STOPPED_MIDWAY))
def test_the_next_writer_removes_what_a_sigkilled_one_left(tmp_path, stopped_writer, writer):
    final = tmp_path / "data" / "shards"
    if writer == "atomic_dir replacing":
        write_whole(writer, final)
    pid = killed(stopped_writer(WRITERS_STOPPED_MIDWAY[writer], final))
    left = hidden_siblings(final)
    assert left and all(f"-{pid}" in name for name in left)  # what the SIGKILL left, named by the dead pid

    write_whole(writer, final)  # the next run of the stage

    assert hidden_siblings(final) == []
    assert read(final) == "whole"


@pytest.mark.parametrize("writer", ["atomic_dir", "atomic_path", "atomic_write_bytes"])
def test_a_writer_that_still_runs_keeps_what_it_is_writing(tmp_path, stopped_writer, writer):
    final = tmp_path / "data" / "shards"
    child = stopped_writer(WRITERS_STOPPED_MIDWAY[writer], final)
    theirs = hidden_siblings(final)

    write_whole(writer, final)

    assert theirs and hidden_siblings(final) == theirs and all(f"-{child.pid}" in name for name in theirs)
    assert read(final) == "whole"


def outputs(root: Path) -> dict[str, str]:
    """Every file under root, hidden ones (what is set aside or half-written) included."""
    return {path.relative_to(root).as_posix(): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


def visible(files: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in files.items() if not any(part.startswith(".") for part in name.split("/"))}


@pytest.fixture
def recorded(tmp_path) -> Path:
    """A stage's last recorded outputs: a file, and a folder of plots from a cross-validated run."""
    (tmp_path / "reports" / "plots").mkdir(parents=True)
    (tmp_path / "reports" / "plots" / "roc_oof.csv").write_text("fpr,tpr\n0,1\n")
    (tmp_path / "metrics.json").write_text('{"auc": 0.8}\n')
    return tmp_path


def test_a_failed_run_leaves_the_outputs_it_set_aside_as_they_were(recorded):
    before = outputs(recorded)
    with pytest.raises(RuntimeError), restored_on_failure([recorded / "metrics.json", recorded / "reports/plots",
                                                            recorded / "card.json"]):
        assert visible(outputs(recorded)) == {}  # the run starts from nothing, as DVC would give it
        (recorded / "reports" / "plots").mkdir()
        (recorded / "reports" / "plots" / "roc_val.csv").write_text("fpr,tpr\n")
        (recorded / "card.json").write_text("{}")
        raise RuntimeError("the flow failed")
    assert outputs(recorded) == before  # card.json, absent before, is absent again


def test_a_run_that_succeeds_keeps_only_what_it_wrote(recorded):
    with restored_on_failure([recorded / "metrics.json", recorded / "reports/plots"]):
        (recorded / "reports" / "plots").mkdir()
        (recorded / "reports" / "plots" / "roc_val.csv").write_text("fpr,tpr\n")
    assert outputs(recorded) == {"reports/plots/roc_val.csv": "fpr,tpr\n"}  # no stale roc_oof.csv
    assert hidden_siblings(recorded / "metrics.json") == hidden_siblings(recorded / "reports/plots") == []


def test_what_a_sigkilled_run_set_aside_is_put_back_by_the_next(recorded, stopped_writer):
    final = recorded / "metrics.json"
    pid = killed(stopped_writer("with restored_on_failure([final]):\n    final.write_text('half')\n    stop_here()",
                                final))
    assert final.read_text() == "half" and hidden_siblings(final) == [f".metrics.json.kept-{pid}"]

    with pytest.raises(RuntimeError), restored_on_failure([final]):
        raise RuntimeError("the next run fails too")

    assert final.read_text() == '{"auc": 0.8}\n' and hidden_siblings(final) == []

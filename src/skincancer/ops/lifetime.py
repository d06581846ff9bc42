"""Processes that end with the process that started them: a stage with its `dvc repro`, a temporary
Prefect server with the stage or pipeline that started it. A SIGKILL cannot be caught, so the child
watches instead: Linux sends it SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), and a stage
whose parent is DVC's shell also watches the process that started the shell (a pidfd)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """From now on, SIGTERM to this process when its parent exits, however it exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the watch was set
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_dvc() -> None:
    """die_with_parent, and under `dvc repro` also SIGTERM when the process that started DVC's shell exits.

    DVC runs a stage's command as `$SHELL -c <cmd>`; bash replaces itself with the command, dash (Debian's
    /bin/sh, what DVC runs where SHELL is unset: cron, systemd, CI) waits on it instead. A SIGKILLed
    `dvc repro` then leaves that shell alive, so the parent's death signal never comes."""
    die_with_parent()
    stage = os.environ.get("DVC_STAGE")
    shell = os.getppid()
    if not stage or not sys.platform.startswith("linux") or started_environment(shell).get("DVC_STAGE") != stage:
        return  # not a DVC stage, or DVC is the parent (the shell exec'd this command)
    starter = parent_of(shell)
    try:
        handle = os.pidfd_open(starter)
    except ProcessLookupError:
        handle = None
    except OSError:  # a kernel before Linux 5.3 has no pidfd: only the parent's death signal holds there
        return
    if handle is None or parent_of(shell) != starter:  # it exited already (and its number may be reused)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_sigterm_once_readable, args=(handle,), name=f"exit-with-{starter}", daemon=True).start()


def _sigterm_once_readable(pidfd: int) -> None:
    """A pidfd turns readable when its process exits."""
    select.select([pidfd], [], [])
    os.kill(os.getpid(), signal.SIGTERM)


def started_environment(pid: int) -> dict[str, str]:
    """The environment `pid` was started with (empty if it has exited): DVC gives its shell DVC_STAGE."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as listing:
            pairs = [entry.decode(errors="replace").partition("=") for entry in listing.read().split(b"\0") if entry]
    except OSError:
        return {}
    return {name: value for name, _, value in pairs}


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and parentheses): state, parent,
    ...; empty if `pid` has exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def parent_of(pid: int) -> int:
    """The parent's process id (0 if `pid` has exited)."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, nearest first."""
    found, todo = [], [pid]
    while todo:
        found += (kids := [kid for parent in todo for kid in children(parent)])
        todo = kids
    return found


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`, from /proc (Linux; empty elsewhere)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:  # not Linux, or `pid` exited meanwhile
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found += [int(child) for child in listing.read().split()]
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Running (an exited child not yet reaped, a zombie, is not)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"  # a zombie has exited


def stop(pids: list[int], grace_s: float = 30.0) -> None:
    """SIGTERM each, wait for them to exit (their cleanup runs), SIGKILL what is left after `grace_s`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def exit_on_sigterm() -> None:
    """SIGTERM as SystemExit in the main thread, so `finally` blocks (atomic outputs' cleanup) run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

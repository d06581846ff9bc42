"""Processes that end with the process that started them: a stage with its `dvc repro`, a temporary
Prefect server with the stage or pipeline that started it. A SIGKILL cannot be caught, so the child
watches instead: Linux sends it SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
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
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


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

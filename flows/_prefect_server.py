"""Prefect API servers on loopback: the temporary one a pipeline run shares with its stage
subprocesses, and `prefect server start` for tests and benchmarks. Orchestration, not the library:
it lives in the flows package beside the stage scripts.

Without a configured API every Prefect process starts its own temporary server (Prefect's
SubprocessASGIServer, ~8 s here). The pipeline starts that same server once and hands its URL to
every stage. It starts the server's command itself, because importing SubprocessASGIServer's
module would cost the pipeline process ~5 s on top of the server's own start.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from skincancer.core.locks import folder_lock
from skincancer.ops.lifetime import die_with_parent

STARTUP_TIMEOUT_S = 120.0  # a loaded 2-core machine takes ~8 s; the limit only catches a server that hangs
PORT_IN_USE_EXIT = 3  # uvicorn's exit code when the port was taken between choosing it and binding it


SERVER_PIDS: set[int] = set()  # servers this process started: not stage processes to stop on an interrupt


class ServerDidNotStart(RuntimeError):
    """The server process exited or never answered /health; the message carries its log."""


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def prefect_server_start(port: int) -> list[str]:
    """The documented `prefect server start` (UI, scheduler and every service), as a user runs it."""
    return [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def temporary_server(port: int) -> list[str]:
    """The command Prefect's SubprocessASGIServer runs (prefect 3.8): the API with the services a
    temporary server runs, no UI. Its environment is TEMPORARY_SERVER_ENV."""
    return [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]


TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def one_start_at_a_time(home: Path | None) -> contextlib.AbstractContextManager:
    """Held from a server's launch until it answers. A starting server migrates the database in its Prefect
    home, and two doing that at once (side-by-side `dvc queue` experiments' stages on a fresh or upgraded
    home) break each other's migration: `duplicate column name`, `no such table`."""
    return contextlib.nullcontext() if home is None else folder_lock(home)


@contextlib.contextmanager
def running_server(command: Callable[[int], list[str]], env: Mapping[str, str], log_path: Path,
                   timeout_s: float = STARTUP_TIMEOUT_S, home: Path | None = None) -> Iterator[str]:
    """Start ``command(port)`` on a free loopback port, yield its API URL once /health answers, stop it after.
    ``home``: the Prefect home whose database the server shares with others; they start one at a time."""
    with log_path.open("w") as log:
        with one_start_at_a_time(home):
            process, url = _start(command, env, log, log_path, timeout_s)
        SERVER_PIDS.add(process.pid)
        try:
            yield url
        finally:
            SERVER_PIDS.discard(process.pid)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start(command: Callable[[int], list[str]], env: Mapping[str, str], log, log_path: Path,
           timeout_s: float) -> tuple[subprocess.Popen, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        port = free_loopback_port()
        process = subprocess.Popen(command(port), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent)  # a SIGKILLed starter leaves no server behind
        url = api_url(port)
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            return process, url
        if process.poll() == PORT_IN_USE_EXIT and time.monotonic() < deadline:
            continue
        process.kill()
        process.wait()
        raise ServerDidNotStart(
            f"the Prefect server `{' '.join(command(port))}` did not answer {url}/health within {timeout_s:.0f} s "
            f"(exit code {process.returncode}); its log, {log_path}:\n{log_path.read_text()[-3000:]}"
        )


@contextlib.contextmanager
def shared_api() -> Iterator[None]:
    """One Prefect API for this process and every subprocess it starts: the configured one, or a
    temporary server started here once and named in PREFECT_API_URL (which subprocesses inherit)."""
    from prefect.logging import get_logger
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    env = {**os.environ, **TEMPORARY_SERVER_ENV, **get_current_settings().to_environment_variables(exclude_unset=True)}
    with tempfile.TemporaryDirectory(prefix="skincancer-prefect-") as folder:
        with running_server(temporary_server, env, Path(folder) / "server.log", home=get_current_settings().home) as url:
            get_logger(__name__).info("Started a temporary Prefect server on %s for this run and its stages", url.removesuffix("/api"))
            os.environ["PREFECT_API_URL"] = url
            try:
                with temporary_settings({PREFECT_API_URL: url}):
                    yield
            finally:
                APILogWorker.drain_all(timeout=5)  # the last log lines, before their server goes away
                del os.environ["PREFECT_API_URL"]

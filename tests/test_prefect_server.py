"""Starting API servers on loopback: a server that dies is reported with its log, a taken port is retried.
(The temporary server a whole pipeline run shares is exercised in test_pipeline.py.)"""

from __future__ import annotations

import ast
import fcntl
import importlib.util
import os
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from flows._prefect_server import PORT_IN_USE_EXIT, SERVER_PIDS, ServerDidNotStart, running_server, shared_api

LIBRARY = Path(__file__).resolve().parents[1] / "src/skincancer"

# a stand-in server: answers GET /api/health; exits with uvicorn's "port in use" code while `busy` exists
HEALTH_SERVER = """
import http.server, pathlib, sys
busy = pathlib.Path(sys.argv[2])
if busy.exists():
    busy.unlink()
    sys.exit({code})
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
""".format(code=PORT_IN_USE_EXIT)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    def dies(port: int) -> list[str]:
        return [sys.executable, "-c", "print('cannot open the database'); raise SystemExit(1)"]

    with pytest.raises(ServerDidNotStart) as error:
        with running_server(dies, os.environ, tmp_path / "server.log", timeout_s=30):
            pass
    message = str(error.value)
    assert "exit code 1" in message and "cannot open the database" in message and str(tmp_path / "server.log") in message


def test_a_port_taken_before_the_server_binds_it_is_retried_on_another(tmp_path):
    busy = tmp_path / "busy"
    busy.touch()
    ports: list[int] = []

    def health_server(port: int) -> list[str]:
        ports.append(port)
        return [sys.executable, "-c", HEALTH_SERVER, str(port), str(busy)]

    with running_server(health_server, os.environ, tmp_path / "server.log", timeout_s=60) as url:
        with urllib.request.urlopen(f"{url}/health") as response:
            assert response.status == 200
    assert len(ports) == 2 and url == f"http://127.0.0.1:{ports[1]}/api"


def test_a_configured_api_is_used_as_it_is(monkeypatch):
    """Configured in a Prefect profile (not the environment): nothing is started, nothing is handed down."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}), shared_api():
        assert "PREFECT_API_URL" not in os.environ


def test_without_an_api_one_temporary_server_is_named_for_subprocesses_and_stopped_after(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_HOME: tmp_path}, restore_defaults={PREFECT_API_URL}), shared_api():
        url = os.environ["PREFECT_API_URL"]
        assert PREFECT_API_URL.value() == url  # this process's flows use it too
        with urllib.request.urlopen(f"{url}/health") as response:
            assert response.status == 200
    assert "PREFECT_API_URL" not in os.environ
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert (tmp_path / "prefect.db").is_file()  # the profile's PREFECT_HOME reached the server


def seconds_since_boot() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def started_since_boot(pid: int) -> float:
    """When a process started, on /proc/uptime's clock (field 22 of /proc/<pid>/stat, in clock ticks)."""
    fields_after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields_after_name[19]) / os.sysconf("SC_CLK_TCK")


def test_a_temporary_server_waits_while_another_starts_on_the_same_prefect_home(monkeypatch, tmp_path):
    """Two starting servers on one home would both migrate its database (side-by-side `dvc queue`
    experiments' stages): the second is launched only once the first answers and lets go of the home."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    other_start = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(other_start, fcntl.LOCK_EX)  # the lock a starting server of another stage holds
    released_at: list[float] = []

    def other_server_answers() -> None:
        released_at.append(seconds_since_boot())
        os.close(other_start)

    threading.Timer(2, other_server_answers).start()
    servers_before = set(SERVER_PIDS)  # the session's test server, where one runs
    with temporary_settings({PREFECT_HOME: tmp_path}, restore_defaults={PREFECT_API_URL}), shared_api():
        (server,) = SERVER_PIDS - servers_before
        assert started_since_boot(server) >= released_at[0] - 0.02  # a clock tick of rounding


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_library_never_imports_prefect_so_its_servers_live_in_flows():
    """Starting Prefect's servers is orchestration: the library (skincancer, as predict and export use it)
    imports no Prefect, and the module that starts servers sits beside the stage scripts."""
    assert importlib.util.find_spec("skincancer.prefect_server") is None
    for module in LIBRARY.glob("*.py"):
        prefect = {name for name in imported_modules(module) if name.split(".")[0] in ("prefect", "_prefect_server")}
        assert prefect == set(), f"{module.name} imports {prefect}"

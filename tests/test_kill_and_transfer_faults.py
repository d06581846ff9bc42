"""Faults no `finally` can answer: a stage SIGKILLed while it writes, and a `dvc push` / `dvc pull` whose connection
drops mid-transfer. After either, a plain rerun must give back exactly the bytes of an undisturbed run, and nothing
half-written may sit anywhere DVC would record or trust it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from project_copy import BIN, TINY_PARAMS, committed_project, merge, project_env, run
from test_nightly_box import BUCKET, moto_server
from test_pipeline import descendants, wait_for

from skincancer.ops import lifetime

pytestmark = pytest.mark.slow

STAGES = ("fetch", "split", "shard", "train", "evaluate")
ONE_EPOCH = merge(TINY_PARAMS, {"train": {"epochs": 1}})  # a kill after its backup leaves nothing to train: same model

# What each stage has begun writing, by its own process id where the file is named after it
# (skincancer.core.atomic's partial names): the moment to kill it.
WRITING: dict[str, Callable[[Path, int], list[Path]]] = {
    "fetch": lambda root, pid: list(root.glob(f"data/raw/sample/.*.partial-{pid}/*")),  # a sample layout's archives
    "split": lambda root, pid: list(root.glob(f"data/.split.partial-{pid}/*/*/*.jpg")),  # split folders being filled
    "shard": lambda root, pid: list(root.glob(f"data/.shards.partial-{pid}/.*.partial")),  # a TFRecord being written
    "train": lambda root, pid: list(root.glob("models/.train-state/*phase1-backup*/*")),  # the epoch's backup
    "evaluate": lambda root, pid: list(root.glob("reports/plots/*.csv")),  # the report's first files, figures to come
}


def dvc(*args: str) -> list[str]:
    return [str(BIN / "dvc"), *args]


def stage_outputs(root: Path) -> list[str]:
    """Every out and metric dvc.yaml declares, cached or not."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    declared = [entry for stage in stages.values() for entry in stage.get("outs", []) + stage.get("metrics", [])]
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in declared]


def output_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under every declared output, hidden ones included: a leftover counts as a change."""
    files = []
    for out in stage_outputs(root):
        target = root / out
        files += sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    present = [path for path in files if path.exists()]
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in present}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prefect_api) -> tuple[Path, dict[str, str], dict[str, str], bytes]:
    """The project reproduced once, undisturbed: the root, its env, every output's digest and dvc.lock."""
    target = tmp_path_factory.mktemp("killed")
    env = project_env(target) | {"PREFECT_API_URL": prefect_api}
    root = committed_project(target, env, ONE_EPOCH)
    run(dvc("repro"), root, env)
    return root, env, output_digests(root), (root / "dvc.lock").read_bytes()


def stage_process(parent: int, stage: str) -> int | None:
    """The stage's own python process under `dvc repro` (bash execs it; dash, DVC's /bin/sh, waits on it)."""
    return next((pid for pid, command in descendants(parent).items() if command.startswith(f"python -m flows.{stage}")),
                None)


def caught_writing(pid: int, begun: Callable[[], list[Path]], timeout_s: float = 120.0) -> list[Path]:
    """Poll every few milliseconds (split fills its folder in a tenth of a second) until process ``pid`` has begun
    writing, then SIGSTOP it, so what it had begun is exactly what the SIGKILL finds; [] if it got past first."""
    deadline = time.monotonic() + timeout_s
    while lifetime.alive(pid) and time.monotonic() < deadline:
        if begun():
            os.kill(pid, signal.SIGSTOP)
            return begun()
        time.sleep(0.005)
    return []


def sigkill_while_writing(root: Path, env: dict[str, str], stage: str) -> list[Path]:
    """`dvc repro --force --single-item <stage>` in a process group of its own, SIGKILLed whole (DVC, its shell and
    the stage, nobody warned) while the stage's own process is writing: what it had begun."""
    repro = subprocess.Popen(dvc("repro", "--force", "--single-item", stage), cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pid = wait_for(lambda: stage_process(repro.pid, stage), what=f"the {stage} stage's process")
        return caught_writing(pid, lambda: WRITING[stage](root, pid))
    finally:
        os.killpg(repro.pid, signal.SIGKILL)
        repro.wait()


def stages_left_alone(dvc_output: str) -> list[str]:
    """Stages `dvc repro` found unchanged, in order, from its output."""
    return re.findall(r"Stage '(\w+)' didn't change, skipping", dvc_output)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_sigkilled_while_writing_reruns_to_the_same_bytes(reproduced, stage):
    """No cleanup runs after a SIGKILL: whatever the stage had half-written stays on disk. Plain `dvc repro` must redo
    that stage alone (rerun it, or check its outputs out of the cache where dvc.lock still matches), finding every
    other stage unchanged, and leave every output, hidden files included, and dvc.lock exactly as the undisturbed
    run did."""
    root, env, digests, lock = reproduced
    begun = sigkill_while_writing(root, env, stage)
    assert begun, f"{stage} was not caught writing: it ended (or finished that write) first"
    rerun = run(dvc("repro"), root, env)
    assert stages_left_alone(rerun.stdout) == [s for s in ("resolve", *STAGES) if s != stage], rerun.stdout[-3000:]
    assert output_digests(root) == digests
    assert (root / "dvc.lock").read_bytes() == lock
    assert "Data and pipelines are up to date" in run(dvc("status"), root, env).stdout


class CuttingProxy:
    """A TCP proxy on loopback in front of ``upstream``. Healthy it forwards both ways; told to cut, it resets every
    connection once it has carried ``after`` bytes one way (uploads: to the server; downloads: to the client), on every
    retry too: a network that drops in the middle of each large transfer."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.cutting: tuple[bool, int] | None = None  # (uploads, after how many bytes a connection is cut)
        self.cuts = 0
        self._count = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def cut(self, uploads: bool, after: int) -> None:
        self.cutting, self.cuts = (uploads, after), 0

    def heal(self) -> None:
        self.cutting = None

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            pair = (client, socket.create_connection(self.upstream))
            for source, sink, uploads in ((*pair, True), (*reversed(pair), False)):
                threading.Thread(target=self._pump, args=(source, sink, uploads, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, uploads: bool, pair: tuple[socket.socket, ...]) -> None:
        carried = 0
        try:
            while data := source.recv(65536):
                if self.cutting and self.cutting[0] == uploads and carried + len(data) > self.cutting[1]:
                    sink.sendall(data[:max(self.cutting[1] - carried, 0)])
                    with self._count:
                        self.cuts += 1
                    close(pair, reset=True)
                    return
                sink.sendall(data)
                carried += len(data)
        except OSError:  # the other way was cut, or a side went away
            pass
        close(pair, reset=False)


def close(pair: tuple[socket.socket, ...], reset: bool) -> None:
    """Both ends of a proxied connection; ``reset``: at once with an RST, dropping what is in flight. The shutdown
    wakes the other way's thread, blocked in recv, which a close alone would leave holding the socket open."""
    for end in pair:
        with contextlib.suppress(OSError):
            if reset:
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # on, 0 s: RST
            end.shutdown(socket.SHUT_RDWR)
        end.close()


@pytest.fixture(scope="module")
def remote(tmp_path_factory, reproduced) -> Iterator[tuple[CuttingProxy, object, dict[str, str]]]:
    """moto's S3 server on loopback behind a CuttingProxy, the reproduced project's default DVC remote through the
    proxy, committed so that a clone has it: the proxy, a client that sees the bucket directly, and the environment
    with the remote's credentials."""
    import boto3

    root, env, _, _ = reproduced
    env = env | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        proxy = CuttingProxy(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        for command in (dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/cache"),
                        dvc("remote", "modify", "storage", "endpointurl", proxy.url),
                        ["git", "add", "-A"], ["git", "commit", "-qm", "reproduced, with the team's DVC remote"]):
            run(command, root, env)
        try:
            yield proxy, client, env
        finally:
            proxy.close()


def remote_objects(client) -> dict[str, bytes]:
    """Every object in the bucket, by its path under the remote's folder (as in the cache), with its content."""
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", [])]
    return {key.removeprefix("cache/"): client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def cache_files(root: Path) -> dict[str, bytes]:
    """Every file in the project's DVC cache, by its path in the cache, with its content."""
    cache = root / ".dvc/cache"
    return {str(path.relative_to(cache)): path.read_bytes() for path in cache.rglob("*") if path.is_file()}


def md5_name(digest: str) -> str:
    """Where DVC keeps the bytes of an md5, in a cache or a remote: files/md5/<first 2 hex digits>/<the other 30>."""
    return f"files/md5/{digest[:2]}/{digest[2:]}"


def misnamed(files: dict[str, bytes]) -> list[str]:
    """Files whose bytes are not what their name (the content's md5; `.dir` added for a folder's manifest) says."""
    return [name for name, data in files.items()
            if md5_name(hashlib.md5(data).hexdigest()) != name.removesuffix(".dir")]


def half_published(published: dict[str, bytes], cache: dict[str, bytes]) -> list[str]:
    """Objects that are not the whole cache file of their name, and folder manifests (.dir) listing a file the remote
    lacks: a later pull would take either as complete."""
    partial = [name for name, data in published.items() if cache.get(name) != data]
    return partial + [name for name, data in published.items() if name.endswith(".dir")
                      and any(md5_name(entry["md5"]) not in published for entry in json.loads(data))]


def test_a_push_cut_mid_upload_publishes_no_partial_object_and_its_retry_completes_the_remote(reproduced, remote):
    """Every upload dropped after 1 MiB (the sample's archives and the model are 2-5 MB), on every retry DVC's S3
    client (s3fs) makes: the push fails, and the bucket holds only whole objects, each the very bytes of the cache
    file of its name, and no folder manifest whose files are not all there; `dvc status --cloud` knows what is
    missing. The same push on a healthy network completes the remote."""
    root, _, _, _ = reproduced
    proxy, client, env = remote
    proxy.cut(uploads=True, after=1024 * 1024)
    # s3fs still retries each upload; botocore's retries under it, with backoff, would only meet the same cut
    cut = run(dvc("push"), root, env | {"AWS_MAX_ATTEMPTS": "1"}, check=False)
    assert cut.returncode != 0 and "failed to push data to the cloud" in cut.stderr, cut.stderr[-3000:]
    assert proxy.cuts, "no upload was cut"
    cache, published = cache_files(root), remote_objects(client)
    assert published and half_published(published, cache) == []
    assert "are in sync" not in run(dvc("status", "--cloud"), root, env).stdout

    proxy.heal()
    run(dvc("push"), root, env)
    complete = remote_objects(client)
    assert len(complete) > len(published) and half_published(complete, cache) == []
    assert "Cache and remote 'storage' are in sync" in run(dvc("status", "--cloud"), root, env).stdout


def test_a_pull_cut_mid_download_leaves_nothing_dvc_would_trust_and_its_retry_gives_the_same_bytes(
        reproduced, remote, tmp_path):
    """A fresh clone (no cache) pulls while every download is dropped after 256 KiB, on every retry and every range
    DVC's S3 client resumes from: the pull fails, and no half file is left where DVC would trust it: each cache file
    holds the content its name says, each output file present is the pushed one's bytes, and `dvc status` says what
    is missing. The same pull on a healthy network gives back every output byte for byte."""
    root, _, _, _ = reproduced
    proxy, _, env = remote
    run(dvc("push"), root, env)  # the remote complete, whichever test ran before
    pushed = output_digests(root)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    proxy.cut(uploads=False, after=256 * 1024)
    cut = run(dvc("pull"), clone, env, check=False)
    assert cut.returncode != 0 and "failed to pull data from the cloud" in cut.stderr, cut.stderr[-3000:]
    assert proxy.cuts, "no download was cut"
    assert cache_files(clone) and misnamed(cache_files(clone)) == []
    assert output_digests(clone).items() <= pushed.items()
    assert "Data and pipelines are up to date" not in run(dvc("status"), clone, env).stdout

    proxy.heal()
    run(dvc("pull"), clone, env)
    assert output_digests(clone) == pushed
    assert "Data and pipelines are up to date" in run(dvc("status"), clone, env).stdout

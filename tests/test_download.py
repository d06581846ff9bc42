"""download.py against a real loopback HTTP server that misbehaves on demand."""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from skincancer.ingest.download import ChecksumMismatch, Downloaded, DownloadError, download, redact, redact_url

PAYLOAD = random.Random(20240603).randbytes(3 * 2**20 + 12345)  # odd size: ranges are not aligned
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = random.Random(7).randbytes(len(PAYLOAD))
SECRET = "s3cr3t-t0ken-do-not-log"
FAST = {"backoff": 0.01, "timeout": 5.0, "progress": False}


@dataclass
class Scenario:
    """How the server behaves; tests set fields, then read what the server saw."""

    url: str = ""
    payload: bytes = PAYLOAD
    drop_first: int = 0  # send full Content-Length, half the body, then close
    fail_first: int = 0  # answer fail_status this many times, then serve
    fail_status: int = 500
    stall_first: int = 0  # send headers, then say nothing for longer than the client waits
    always: int | None = None  # answer this status to every request (404, 500)
    ignore_range: bool = False  # always 200 with the whole body
    wrong_range_start: bool = False  # 206 from byte 0 whatever was asked
    token: str | None = None  # require "Authorization: Bearer <token>", else 401
    redirect: str | None = None  # answer 302 to this Location
    requests: int = 0
    ranges: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    scenario: Scenario

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        sc = self.scenario
        with sc.lock:
            sc.requests += 1
            n = sc.requests
            sc.ranges.append(self.headers.get("Range"))
            sc.authorizations.append(self.headers.get("Authorization"))
        if self.path == "/old":
            return self._empty(302, Location="/file.bin")
        if sc.redirect is not None:
            return self._empty(302, Location=sc.redirect)
        if sc.token is not None and self.headers.get("Authorization") != f"Bearer {sc.token}":
            return self._empty(401)
        if sc.always is not None:
            return self._empty(sc.always)
        if n <= sc.fail_first:
            return self._empty(sc.fail_status)
        self._serve(sc, n)

    def _serve(self, sc: Scenario, n: int) -> None:
        body, size = sc.payload, len(sc.payload)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or sc.ignore_range:
            status, start = 200, 0
        elif sc.wrong_range_start:
            status, start = 206, 0
        else:
            status, start = 206, int(match.group(1))
        if start >= size and status == 206:
            return self._empty(416, **{"Content-Range": f"bytes */{size}"})
        self.send_response(status)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if n <= sc.stall_first:
            time.sleep(1.0)
        elif n <= sc.drop_first:
            self.wfile.write(body[start : start + (size - start) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body[start:])

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[Scenario]:
    scenario = Scenario()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"scenario": scenario}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    scenario.url = f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    try:
        yield scenario
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def partial_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def test_downloads_and_verifies(server, tmp_path):
    dest = tmp_path / "sub" / "a.zip"
    got = download(server.url, dest, sha256=SHA, size=len(PAYLOAD), **FAST)
    assert got == Downloaded(dest, len(PAYLOAD), SHA, fetched=True)
    assert dest.read_bytes() == PAYLOAD
    assert not partial_of(dest).exists()
    assert server.requests == 1 and server.ranges == [None]


def test_without_pin_reports_size_and_sha(server, tmp_path):
    got = download(server.url, tmp_path / "a.zip", **FAST)
    assert (got.size, got.sha256, got.fetched) == (len(PAYLOAD), SHA, True)


def test_follows_redirects(server, tmp_path):
    got = download(server.url.replace("/file.bin", "/old"), tmp_path / "a.zip", sha256=SHA, **FAST)
    assert got.path.read_bytes() == PAYLOAD
    assert server.requests == 2


def test_resumes_after_dropped_connection(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="skincancer.ingest.download")
    server.drop_first = 2
    dest = tmp_path / "a.zip"
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == 3
    assert server.ranges[0] is None
    offsets = [int(re.fullmatch(r"bytes=(\d+)-", r).group(1)) for r in server.ranges[1:]]
    half = len(PAYLOAD) // 2  # every byte that arrived before a drop was kept
    assert offsets == [half, half + (len(PAYLOAD) - half) // 2]
    assert "resuming at byte" in caplog.text and "retrying" in caplog.text


def test_resumes_a_partial_left_by_an_earlier_run(server, tmp_path):
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(PAYLOAD[:1_000_000])
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=1000000-"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_server_errors_then_succeeds(server, tmp_path, caplog, status):
    caplog.set_level(logging.INFO, logger="skincancer.ingest.download")
    server.fail_first, server.fail_status = 2, status
    download(server.url, tmp_path / "a.zip", sha256=SHA, retries=3, **FAST)
    assert server.requests == 3
    assert caplog.text.count(f"HTTP {status}") == 2


def test_retries_a_read_timeout(server, tmp_path):
    server.stall_first = 1
    download(server.url, tmp_path / "a.zip", sha256=SHA, retries=2, backoff=0.01, timeout=0.3, progress=False)
    assert server.requests == 2


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(b"garbage that is not a prefix of the payload")
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=43-"] and server.requests == 1


def test_range_answered_from_the_wrong_offset_restarts(server, tmp_path):
    server.wrong_range_start = True
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(PAYLOAD[:100])
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=100-", None]


def test_wrong_checksum_fails_and_leaves_nothing_to_trust(server, tmp_path):
    server.payload = OTHER
    dest = tmp_path / "a.zip"
    with pytest.raises(ChecksumMismatch) as info:
        download(server.url, dest, sha256=SHA, **FAST)
    message = str(info.value)
    assert server.url in message and SHA in message and hashlib.sha256(OTHER).hexdigest() in message
    assert not dest.exists() and not partial_of(dest).exists()
    server.payload = PAYLOAD
    assert download(server.url, dest, sha256=SHA, **FAST).fetched
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [None, None]


def test_body_longer_than_pinned_size_stops(server, tmp_path):
    dest = tmp_path / "a.zip"
    with pytest.raises(ChecksumMismatch, match="pinned size"):
        download(server.url, dest, size=len(PAYLOAD) - 1, **FAST)
    assert not dest.exists() and not partial_of(dest).exists()


def test_persistent_failure_gives_up_after_bounded_attempts(server, tmp_path):
    server.always = 500
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError) as info:
        download(server.url, dest, sha256=SHA, retries=2, **FAST)
    assert not isinstance(info.value, ChecksumMismatch)
    assert server.url in str(info.value) and "3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert server.requests == 3
    assert not dest.exists()


def test_connection_refused_is_retried_then_reported(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        port = httpd.server_address[1]  # closed on exit: nothing listens there any more
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(DownloadError, match="2 attempts.*ConnectError"):
        download(url, tmp_path / "a.zip", retries=1, **FAST)


def test_not_found_fails_at_once(server, tmp_path):
    server.always = 404
    with pytest.raises(DownloadError, match=r"HTTP 404") as info:
        download(server.url, tmp_path / "a.zip", retries=5, backoff=10.0, timeout=5.0, progress=False)
    assert server.url in str(info.value)
    assert server.requests == 1


def test_existing_verified_file_is_reused_without_requests(server, tmp_path):
    dest = tmp_path / "a.zip"
    dest.write_bytes(PAYLOAD)
    assert download(server.url, dest, sha256=SHA, size=len(PAYLOAD), **FAST) == Downloaded(
        dest, len(PAYLOAD), SHA, fetched=False
    )
    assert download(server.url, dest, **FAST).sha256 == SHA  # unpinned: reports what is there
    assert server.requests == 0


def test_existing_mismatching_file_is_left_untouched(server, tmp_path):
    dest = tmp_path / "a.zip"
    dest.write_bytes(OTHER)
    with pytest.raises(ChecksumMismatch) as info:
        download(server.url, dest, sha256=SHA, **FAST)
    message = str(info.value)
    assert str(dest) in message and SHA in message and hashlib.sha256(OTHER).hexdigest() in message
    assert "Delete" in message and "pin" in message
    assert dest.read_bytes() == OTHER
    assert server.requests == 0


def test_stale_longer_partial_is_discarded_and_recovered(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="skincancer.ingest.download")
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(PAYLOAD + b"left over from an older, longer upstream file")
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={len(PAYLOAD) + 45}-", None]
    assert "stale partial" in caplog.text


def test_complete_partial_answered_416_is_verified(server, tmp_path):
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(PAYLOAD)
    assert download(server.url, dest, sha256=SHA, **FAST).sha256 == SHA
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_same_length_stale_partial_is_reported_then_refetched(server, tmp_path):
    dest = tmp_path / "a.zip"
    partial_of(dest).write_bytes(OTHER)
    with pytest.raises(ChecksumMismatch, match=SHA):
        download(server.url, dest, sha256=SHA, **FAST)
    assert not partial_of(dest).exists() and not dest.exists()
    download(server.url, dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_file_url(tmp_path):
    source = tmp_path / "src dir" / "archive.zip"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "archive.zip"
    assert download(source.as_uri(), dest, sha256=SHA, **FAST).fetched
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(ChecksumMismatch):
        download(source.as_uri(), tmp_path / "other.zip", sha256=hashlib.sha256(OTHER).hexdigest(), **FAST)
    assert not (tmp_path / "other.zip").exists() and not partial_of(tmp_path / "other.zip").exists()
    with pytest.raises(DownloadError, match="cannot read"):
        download((tmp_path / "missing.zip").as_uri(), tmp_path / "m.zip", **FAST)


@pytest.mark.parametrize("url", ["ftp://example.org/a.zip", "s3://bucket/a.zip", "a.zip"])
def test_unsupported_scheme(tmp_path, url):
    with pytest.raises(ValueError, match=re.escape(url)):
        download(url, tmp_path / "a.zip", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_bad_pin_is_rejected_before_fetching(server, tmp_path):
    with pytest.raises(ValueError, match="64 hex"):
        download(server.url, tmp_path / "a.zip", sha256="abc", **FAST)
    assert server.requests == 0


def test_redact_masks_credentials_keeps_range():
    shown = redact({"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "Range": "bytes=5-"})
    assert SECRET not in repr(shown)
    assert shown["Range"] == "bytes=5-" and set(shown) == {"Authorization", "X-Api-Key", "Range"}


def test_auth_header_is_sent_and_never_logged(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.token, server.drop_first = SECRET, 1  # a retry too, so every log path runs
    auth = {"Authorization": f"Bearer {SECRET}"}
    got = download(server.url, tmp_path / "a.zip", sha256=SHA, headers=auth, **FAST)
    assert server.authorizations == [f"Bearer {SECRET}"] * 2
    assert "'authorization': '***'" in caplog.text  # the header was logged, redacted
    assert SECRET not in caplog.text and SECRET not in repr(got)


@pytest.mark.parametrize("scenario", ["unauthorized", "server_error"])
def test_secret_absent_from_failures(server, tmp_path, caplog, scenario):
    caplog.set_level(logging.DEBUG)
    if scenario == "unauthorized":
        server.token = "the-right-token"
    else:
        server.token, server.always = SECRET, 500
    with pytest.raises(DownloadError) as info:
        download(server.url, tmp_path / "a.zip", headers={"Authorization": f"Bearer {SECRET}"}, retries=1, **FAST)
    assert ("HTTP 401" if scenario == "unauthorized" else "HTTP 500") in str(info.value)
    rendered = [str(info.value), repr(info.value), caplog.text]
    rendered += [str(e) for e in (info.value.__cause__, info.value.__context__) if e is not None]
    assert not any(SECRET in text for text in rendered)


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/file.bin"])
def test_a_redirect_off_http_is_refused_at_once_naming_both_urls(server, tmp_path, target):
    server.redirect = target
    with pytest.raises(DownloadError) as info:
        download(server.url, tmp_path / "a.zip", retries=3, **FAST)
    assert f"{server.url}: redirected to {target}" in str(info.value) and "not retried" in str(info.value)
    assert server.requests == 1 and not (tmp_path / "a.zip").exists()


def test_redact_url_masks_user_info_and_query_values():
    url = f"https://reader:{SECRET}@mirror.example:8443/isic/a.zip?X-Amz-Signature={SECRET}&token={SECRET}&{SECRET}"
    assert redact_url(url) == "https://***@mirror.example:8443/isic/a.zip?X-Amz-Signature=***&token=***&***"
    for plain in ("https://isic-archive.s3.amazonaws.com/challenges/2019/a.zip", "file:///data/a%20b.zip", "a.zip"):
        assert redact_url(plain) == plain


def test_credentials_in_the_url_are_never_logged_or_raised(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.drop_first = 1  # a resumed retry too, so every log path runs
    url = server.url.replace("http://", f"http://reader:{SECRET}@") + f"?X-Amz-Signature={SECRET}"
    got = download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert got.path.read_bytes() == PAYLOAD and server.requests == 2
    assert "downloading http://***@127.0.0.1" in caplog.text and "X-Amz-Signature=***" in caplog.text
    server.always = 404
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "b.zip", **FAST)
    assert "HTTP 404" in str(info.value)
    assert not any(SECRET in text for text in (caplog.text, str(info.value), repr(got)))

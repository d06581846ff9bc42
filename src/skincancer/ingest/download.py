"""Robust single-file downloads: resume, retry, verify, and land atomically.

ISIC archives are tens of GB on a public bucket and publish no checksums, so a download must
survive dropped connections (HTTP Range resume, retries with backoff), must never let a torn
or wrong file reach DVC (sha256/size checks before one ``os.replace``), and must never leak
the credentials a private mirror may need (headers and urls are redacted wherever they could be shown).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from tqdm import tqdm

from skincancer.core.params import sha256_pin

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per local read: memory stays constant whatever the file size
MAX_BACKOFF = 60.0  # seconds; exponential backoff stops growing here
# Header values that are safe to log; everything else may be a credential and is masked.
LOGGABLE_HEADERS = frozenset({"accept", "accept-encoding", "range", "user-agent", "if-range"})
FOLLOWED_REDIRECTS = frozenset({"http", "https"})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be obtained; the message names the url and why (never the headers)."""


class ChecksumMismatch(DownloadError):
    """Bytes differ from the pinned sha256/size: a changed upstream file or a wrong pin."""


class _Transient(Exception):
    """A failure worth retrying (network, 5xx/429, dropped body); carries the reason only."""


@dataclass(frozen=True)
class Downloaded:
    """What landed at ``path``; ``fetched`` is False when a verified existing file was reused."""

    path: Path
    size: int
    sha256: str
    fetched: bool


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers fit for logs: values of anything not known to be harmless are masked."""
    return {name: value if name.lower() in LOGGABLE_HEADERS else "***" for name, value in headers.items()}


def redact_url(url: str) -> str:
    """A url fit for logs, errors and checksums.json. Credentials ride in the user info
    (``https://user:token@host/``) and the query (``?token=``, a presigned ``X-Amz-Signature=``): both are
    masked, every query value, as no list of credential names is complete."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "&".join(_masked_field(field) for field in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked_field(field: str) -> str:
    name, equals, _ = field.partition("=")
    return f"{name}=***" if equals else "***"


def _redact_logged_urls(record: logging.LogRecord) -> bool:
    """httpx logs every request's url at INFO, credentials and all: its records get the same redaction."""
    if isinstance(record.args, tuple):
        record.args = tuple(redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args)
    return True


logging.getLogger("httpx").addFilter(_redact_logged_urls)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    headers: Mapping[str, str] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Downloaded:
    """Fetch ``url`` (http, https or file) to ``dest``, verified against ``sha256``/``size``.

    An existing ``dest`` is reused if it matches and is never silently replaced if it does not.
    Bytes go to ``dest.partial`` first, which a later call resumes; transient failures are
    retried ``retries`` times (so at most ``retries + 1`` attempts), sleeping
    ``backoff * 2**n`` seconds between them.
    """
    scheme = _scheme(url)
    pin = None if sha256 is None else sha256_pin(sha256)  # a typo fails before any byte is fetched
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    dest, shown = Path(dest), redact_url(url)
    if dest.exists():
        return _reuse(dest, shown, pin, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _Partial(dest.with_name(f"{dest.name}.partial"), resume=scheme != "file")
    log.info("downloading %s -> %s", shown, dest)
    started = time.monotonic()
    try:
        if scheme == "file":
            _copy_local(url, partial, size=size, progress=progress)
        else:
            _fetch_http(
                url, partial, headers=headers or {}, size=size,
                retries=retries, backoff=backoff, timeout=timeout, progress=progress,
            )
        _verify(partial, shown, pin, size)
    except ChecksumMismatch:
        partial.discard()
        raise
    os.replace(partial.path, dest)
    _log_done(dest, partial, time.monotonic() - started)
    return Downloaded(dest, partial.size, partial.hexdigest(), fetched=True)


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {"http", "https", "file"}:
        raise ValueError(f"unsupported url {redact_url(url)!r}: expected an http://, https:// or file:// url")
    return scheme


def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


def _mismatch(pin: str | None, size: int | None, actual_sha: str, actual_size: int) -> bool:
    return (pin is not None and actual_sha != pin) or (size is not None and actual_size != size)


def _describe(sha: str | None, size: int | None) -> str:
    return f"sha256 {sha or '(not pinned)'}, size {size if size is not None else '(not pinned)'}"


def _reuse(dest: Path, url: str, pin: str | None, size: int | None) -> Downloaded:
    """Trust an existing file only if it matches the pin; a mismatch is the user's call."""
    digest, actual_size = _hash_file(dest)
    actual = digest.hexdigest()
    if _mismatch(pin, size, actual, actual_size):
        raise ChecksumMismatch(
            f"{dest} already exists but does not match the pin for {url}: "
            f"expected {_describe(pin, size)}; found {_describe(actual, actual_size)}. "
            "Delete the file to download it again."
        )
    log.info("%s already present and verified (%d bytes); not downloading", dest, actual_size)
    return Downloaded(dest, actual_size, actual, fetched=False)


class _Partial:
    """The ``.partial`` file plus a running sha256 of exactly the bytes it holds.

    Hashing while writing means a multi-GB archive is never read twice; an existing partial
    from an earlier run is hashed once so that resuming keeps the digest exact.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.written = 0  # bytes written by this process, for the transfer rate
        if resume and path.exists():
            self._digest, self.size = _hash_file(path)
        else:
            self.restart()

    def restart(self) -> None:
        """Truncate: what is on disk can no longer be continued."""
        self.path.write_bytes(b"")
        self._digest, self.size = hashlib.sha256(), 0

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[bytes], None]]:
        """Yield a writer that appends a chunk and hashes it; fsynced on close."""
        with self.path.open("ab") as handle:

            def write(chunk: bytes) -> None:
                handle.write(chunk)
                self._digest.update(chunk)
                self.size += len(chunk)
                self.written += len(chunk)

            try:
                yield write
            finally:
                handle.flush()
                os.fsync(handle.fileno())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _verify(partial: _Partial, url: str, pin: str | None, size: int | None) -> None:
    actual = partial.hexdigest()
    if _mismatch(pin, size, actual, partial.size):
        raise ChecksumMismatch(
            f"{url}: downloaded bytes do not match the pin: expected {_describe(pin, size)}; "
            f"got {_describe(actual, partial.size)}. The partial download was removed."
        )


def _write_chunks(
    chunks: Iterable[bytes], partial: _Partial, *, url: str, size: int | None, total: int | None,
    progress: bool,
) -> None:
    """Append a stream to the partial with a progress bar; stop at once past a pinned size."""
    bar = tqdm(
        total=total, initial=partial.size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=partial.path.name.removesuffix(".partial"), disable=None if progress else True,
    )
    with bar, partial.appender() as write:
        for chunk in chunks:
            write(chunk)
            bar.update(len(chunk))
            if size is not None and partial.size > size:
                raise ChecksumMismatch(f"{url}: more than the pinned size of {size} bytes; stopped, and the partial "
                                       "download removed.")


def _copy_local(url: str, partial: _Partial, *, size: int | None, progress: bool) -> None:
    """file:// urls: a chunked copy through the same hashing, checks and atomic landing."""
    parts, shown = urlsplit(url), redact_url(url)
    if parts.netloc not in {"", "localhost"}:
        raise ValueError(f"unsupported url {shown!r}: file urls must name a local path")
    source = Path(url2pathname(parts.path))
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise DownloadError(f"{shown}: cannot read {source}: {exc.strerror}") from exc
    with handle:
        chunks = iter(lambda: handle.read(CHUNK), b"")
        total = os.fstat(handle.fileno()).st_size
        _write_chunks(chunks, partial, url=shown, size=size, total=total, progress=progress)


def _fetch_http(
    url: str, partial: _Partial, *, headers: Mapping[str, str], size: int | None,
    retries: int, backoff: float, timeout: float, progress: bool,
) -> None:
    """Retry transient failures with exponential backoff; each attempt resumes the partial."""
    attempts, shown = retries + 1, redact_url(url)
    hooks = {"response": [functools.partial(_refuse_non_http_redirect, shown)]}
    with httpx.Client(follow_redirects=True, timeout=timeout, event_hooks=hooks) as client:
        for attempt in range(attempts):
            try:
                _get(client, url, partial, headers=headers, size=size, progress=progress)
                return
            except _Transient as exc:
                last = exc
                if attempt + 1 < attempts:
                    delay = min(backoff * 2**attempt, MAX_BACKOFF)
                    log.info(
                        "%s: attempt %d of %d failed (%s); retrying in %.2fs from byte %d",
                        shown, attempt + 1, attempts, exc, delay, partial.size,
                    )
                    time.sleep(delay)
    raise DownloadError(f"{shown}: giving up after {attempts} attempts; last error: {last}")


def _refuse_non_http_redirect(shown: str, response: httpx.Response) -> None:
    """httpx would follow a redirect to file:// or ftp:// into an error that looks like the network's, and
    so be retried: such a redirect is refused at once."""
    if not response.has_redirect_location:
        return
    target = response.url.join(response.headers["Location"])
    if target.scheme not in FOLLOWED_REDIRECTS:
        raise DownloadError(f"{shown}: redirected to {redact_url(str(target))}; only http:// and https:// redirects "
                            "are followed, so this is not retried: point the url at where the file is served")


def _get(
    client: httpx.Client, url: str, partial: _Partial, *, headers: Mapping[str, str],
    size: int | None, progress: bool,
) -> None:
    """One GET that continues the partial from where it ends, or restarts it when it must."""
    offset, shown = partial.size, redact_url(url)
    request_headers = httpx.Headers({"Accept-Encoding": "identity"})  # raw bytes, as published
    request_headers.update(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
        log.info("%s: resuming at byte %d", shown, offset)
    log.debug("GET %s headers=%s", shown, redact(request_headers))
    try:
        with client.stream("GET", url, headers=request_headers) as response:
            if response.status_code == 416 and offset:
                _check_complete(response, partial, shown)
                return
            _check_status(response, shown)
            start = _body_start(response, partial, shown)
            length = _content_length(response)
            total = start + length if length is not None else None
            _write_chunks(response.iter_raw(), partial, url=shown, size=size, total=total, progress=progress)
            if total is not None and partial.size < total:
                raise _Transient(f"connection dropped after {partial.size} of {total} bytes")
    except httpx.TransportError as exc:  # refused, reset, timed out, body cut short
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    except httpx.RequestError as exc:  # e.g. a redirect loop: retrying will not help
        raise DownloadError(f"{shown}: {type(exc).__name__}: {exc}") from exc


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status} {response.reason_phrase}")
    if status not in {200, 206}:
        raise DownloadError(f"{url}: HTTP {status} {response.reason_phrase}")


def _check_complete(response: httpx.Response, partial: _Partial, url: str) -> None:
    """416 to our Range: the partial is complete if the server's size equals it, else stale."""
    _, total = _content_range(response)
    if total == partial.size:
        log.info("%s: partial already holds all %d bytes; verifying", url, total)
        return
    stale = partial.size
    partial.restart()
    known = "an unknown number of" if total is None else str(total)
    raise _Transient(f"stale partial of {stale} bytes discarded (server has {known} bytes); starting over")


def _body_start(response: httpx.Response, partial: _Partial, url: str) -> int:
    """Byte offset the body continues from: ours for a matching 206, 0 for a full 200."""
    if response.status_code == 200:
        if partial.size:
            log.info("%s: server ignored the Range request; restarting from byte 0", url)
            partial.restart()
        return 0
    start, _ = _content_range(response)
    if start != partial.size:
        partial.restart()
        raise _Transient(f"server sent a range starting at byte {start}, expected {partial.size}; starting over")
    return start


def _content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) from Content-Range; None where absent or '*'."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _log_done(dest: Path, partial: _Partial, seconds: float) -> None:
    rate = partial.written / seconds if seconds > 0 else 0.0
    log.info(
        "downloaded %s: %s (%d bytes, sha256 %s) in %.1fs at %s",
        dest, tqdm.format_sizeof(partial.size, "B", 1024), partial.size, partial.hexdigest(),
        seconds, tqdm.format_sizeof(rate, "B/s", 1024),
    )

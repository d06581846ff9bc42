"""Atomic outputs: an interrupted stage must never leave files that DVC would record.

What is being written lies in a hidden sibling named after the output and the writer's process id
(`.shards.partial-<pid>`, `.shards.old-<pid>`, `.metrics.json.kept-<pid>`). A SIGKILL leaves it behind;
the next writer of the same output removes it (or, for `kept`, puts it back) once that process is gone,
and never touches one whose process still runs: it may still be writing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

IN_PROGRESS = ("partial", "old")  # what a writer holds while it replaces an output: garbage once it is gone
KEPT = "kept"  # the output as it was before a run (restored_on_failure): put back once its run is gone


def _own_name(final: Path, role: str, tail: str = "") -> Path:
    """The hidden sibling of ``final`` this process uses in ``role``."""
    return final.with_name(f".{final.name}.{role}-{os.getpid()}{tail}")


def _running(pid: int) -> bool:
    """Whether a process with this id exists: if so, what it left may still be being written."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _left_by_ended_runs(final: Path, roles: Iterable[str]) -> list[Path]:
    """Siblings of ``final`` in one of ``roles`` whose process no longer runs: a killed run's leftovers."""
    if not final.parent.is_dir():
        return []
    named = re.compile(rf"\.{re.escape(final.name)}\.(?:{'|'.join(roles)})-(\d+)(?:[-.].*)?")
    return sorted(path for path in final.parent.iterdir()
                  if (match := named.fullmatch(path.name)) and not _running(int(match.group(1))))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # another writer may be removing the same leftover
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_leftovers_of_killed_runs(final: Path) -> None:
    """What a SIGKILLed writer of ``final`` left half-written: no one else will ever remove it."""
    for leftover in _left_by_ended_runs(final, IN_PROGRESS):
        _remove(leftover)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers_of_killed_runs(final)
    partial = _own_name(final, "partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        retired = _own_name(final, "old")
        os.replace(final, retired)
        os.replace(partial, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(partial, final)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``final``, fsync it, then rename over ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers_of_killed_runs(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=_own_name(final, "partial", "-").name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(final: Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp file path beside ``final`` for writers that want a filename (parquet, keras)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers_of_killed_runs(final)
    tmp = _own_name(final, "partial", final.suffix)  # the suffix too: writers that pick a format by it
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def restored_on_failure(outputs: Iterable[Path]) -> Iterator[None]:
    """Set ``outputs`` aside, each as a hidden sibling, for the body to write afresh; if the body fails, put
    them back as they were (one absent before is absent again), and if it succeeds, drop what was set aside.

    For outputs that only their writer can give back (DVC's `persist: true`, `cache: false` outs): a run
    that fails leaves the last good ones, and what a SIGKILLed run set aside is put back by the next."""
    kept: dict[Path, Path] = {}
    try:
        for final in map(Path, outputs):
            for earlier in _left_by_ended_runs(final, [KEPT]):
                _put_back(earlier, final)
            kept[final] = _own_name(final, KEPT)
            if final.exists():
                os.replace(final, kept[final])
        yield
    except BaseException:
        for final, aside in kept.items():
            _put_back(aside, final)
        raise
    for aside in kept.values():
        _remove(aside)


def _put_back(aside: Path, final: Path) -> None:
    """``final`` as it was when it was set aside: what a failed run wrote there goes."""
    _remove(final)
    if aside.exists():
        os.replace(aside, final)

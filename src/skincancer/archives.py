"""Read images in place from published zips: no blind extraction, so a hostile archive cannot write or explode."""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

MAX_MEMBER_BYTES = 256 * 1024 * 1024
URI_SEPARATOR = "!"
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(ValueError):
    """A zip member that could escape the data folder, point elsewhere, or exhaust memory."""


def _path_problem(name: str) -> str | None:
    """Why a relative path is unsafe, or None when it stays inside its root."""
    if "\\" in name:
        return "contains a backslash (Windows path form)"
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "has a '..' component"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _checked_members(archive: zipfile.ZipFile, zip_path: Path, max_member_bytes: int) -> list[zipfile.ZipInfo]:
    members = []
    for info in archive.infolist():
        problem = _path_problem(info.filename)
        if problem is None and _is_symlink(info):
            problem = "is a symlink"
        if problem is None and info.file_size > max_member_bytes:
            problem = f"declares {info.file_size} bytes, above the {max_member_bytes}-byte bound"
        if problem is not None:
            raise UnsafeArchive(f"{zip_path}: member {info.filename!r} {problem}; refusing to read this archive")
        if not info.is_dir():
            members.append(info)
    return members


def safe_members(zip_path: Path, *, max_member_bytes: int = MAX_MEMBER_BYTES) -> list[zipfile.ZipInfo]:
    """The archive's file members, after refusing any unsafe one (directories are skipped)."""
    with zipfile.ZipFile(zip_path) as archive:
        return _checked_members(archive, Path(zip_path), max_member_bytes)


def member_uri(archive_rel: str | Path, member: str) -> str:
    """The index uri of a zip member: ``<archive path relative to raw_root>!<member>``."""
    return f"{PurePosixPath(Path(archive_rel).as_posix())}{URI_SEPARATOR}{member}"


def _split_uri(uri: str) -> tuple[str, str | None]:
    path, sep, member = uri.partition(URI_SEPARATOR)
    problem = _path_problem(path)
    if problem is not None:
        raise UnsafeArchive(f"uri {uri!r}: path {problem}")
    return path, (member if sep else None)


class _OpenArchive:
    """One open zip and its validated members, kept while consecutive uris point into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.members = {info.filename: info for info in _checked_members(self.zip, path, MAX_MEMBER_BYTES)}

    def read(self, member: str, uri: str) -> bytes:
        info = self.members.get(member)
        if info is None:
            raise FileNotFoundError(f"{uri}: no member {member!r} in {self.path}")
        return self.zip.read(info)


def _read_loose(raw_root: Path, rel: str, uri: str) -> bytes:
    try:
        return (raw_root / rel).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file under {raw_root}") from None


def read_uris(raw_root: Path, uris: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(uri, bytes)`` in input order, opening each zip once per consecutive run of its uris."""
    raw_root = Path(raw_root)
    current: _OpenArchive | None = None
    try:
        for uri in uris:
            rel, member = _split_uri(uri)
            if member is None:
                yield uri, _read_loose(raw_root, rel, uri)
                continue
            if current is None or current.path != raw_root / rel:
                if current is not None:
                    current.zip.close()
                    current = None
                if not (raw_root / rel).is_file():
                    raise FileNotFoundError(f"{uri}: archive {raw_root / rel} not found")
                current = _OpenArchive(raw_root / rel)
            yield uri, current.read(member, uri)
    finally:
        if current is not None:
            current.zip.close()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

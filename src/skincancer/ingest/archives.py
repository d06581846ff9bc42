"""Read images in place from published zips: no blind extraction, so a hostile archive cannot write or explode."""

from __future__ import annotations

import contextlib
import hashlib
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from skincancer.core.params import path_problem

MAX_MEMBER_BYTES = 256 * 1024 * 1024
# The largest published ISIC archives hold tens of GB of JPEGs; beyond this, hashing alone would take hours.
MAX_ARCHIVE_BYTES = 64 * 1024**3
# JPEGs barely compress and CSVs shrink ~10x; deflate tops out near 1000x on constant bytes. 100x follows
# Apache POI's zip-bomb default, checked only above RATIO_CHECKED_BYTES so tiny members never trip it.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECKED_BYTES = 1024 * 1024
URI_SEPARATOR = "!"
CHUNK = 1 << 20  # bytes per read when reading a member through
# What zipfile raises on a truncated, corrupt or unsupported archive, none of them naming the file: a missing
# central directory, a bad CRC or header, deflate data cut short or garbled, Deflate64, encryption.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError)


class UnsafeArchive(ValueError):
    """A zip member that could escape the data folder, point elsewhere, or exhaust memory."""


class BrokenArchive(ValueError):
    """A zip that cannot be read: truncated, corrupt or unsupported; ``path`` is the archive."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


@contextlib.contextmanager
def _reading(zip_path: Path, member: str | None = None) -> Iterator[None]:
    """zipfile's errors name neither archive nor (mostly) member: re-raised as a BrokenArchive naming both."""
    try:
        yield
    except _ZIP_ERRORS as error:
        where = f"{zip_path}" if member is None else f"{zip_path}: member {member!r}"
        raise BrokenArchive(Path(zip_path), f"{where}: cannot be read ({type(error).__name__}: {error}): the zip is "
                            "truncated, corrupt, or of a kind Python's zipfile cannot read") from None


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    with _reading(zip_path):
        return zipfile.ZipFile(zip_path)


@dataclass(frozen=True)
class Bounds:
    """What one archive may declare: per member, in all, and how far a member may expand."""

    member_bytes: int = MAX_MEMBER_BYTES
    archive_bytes: int = MAX_ARCHIVE_BYTES
    ratio: float = MAX_COMPRESSION_RATIO


def _link_problem(info: zipfile.ZipInfo, bounds: Bounds) -> str | None:
    return "is a symlink" if stat.S_ISLNK(info.external_attr >> 16) else None


def _size_problem(info: zipfile.ZipInfo, bounds: Bounds) -> str | None:
    if info.file_size > bounds.member_bytes:
        return f"declares {info.file_size} bytes, above the {bounds.member_bytes}-byte bound"
    return None


def _ratio_problem(info: zipfile.ZipInfo, bounds: Bounds) -> str | None:
    """A member that expands far beyond what images or tables do is a zip bomb, whatever its size bound."""
    if info.file_size > RATIO_CHECKED_BYTES and info.file_size > bounds.ratio * info.compress_size:
        return (
            f"expands {info.compress_size} -> {info.file_size} bytes, above the {bounds.ratio:g}x "
            "compression-ratio bound (a zip bomb?)"
        )
    return None


_MEMBER_CHECKS = (_link_problem, _size_problem, _ratio_problem)


def _member_problem(info: zipfile.ZipInfo, bounds: Bounds) -> str | None:
    """Why a member is refused, or None; the path is checked first as it matters whatever the sizes."""
    problem = path_problem(info.filename)
    for check in _MEMBER_CHECKS:
        problem = problem or check(info, bounds)
    return problem


def _checked_members(archive: zipfile.ZipFile, zip_path: Path, bounds: Bounds) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    for info in infos:
        if (problem := _member_problem(info, bounds)) is not None:
            raise UnsafeArchive(f"{zip_path}: member {info.filename!r} {problem}; refusing to read this archive")
    total = sum(info.file_size for info in infos)
    if total > bounds.archive_bytes:
        raise UnsafeArchive(
            f"{zip_path}: members declare {total} bytes in all, above the {bounds.archive_bytes}-byte archive "
            "bound (a zip bomb?); refusing to read this archive"
        )
    return [info for info in infos if not info.is_dir()]


def safe_members(
    zip_path: Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> list[zipfile.ZipInfo]:
    """The archive's file members, after refusing any unsafe one or an archive too large in all.

    Sizes are the ones the zip declares; zipfile never yields more than a member declares, so they bound
    what reading can cost. Directories are skipped.
    """
    bounds = Bounds(max_member_bytes, max_archive_bytes, max_ratio)
    with _open_zip(zip_path) as archive:
        return _checked_members(archive, Path(zip_path), bounds)


def read_through(zip_path: Path) -> int:
    """Read every member of a safe archive through its CRC check, a chunk at a time; the number of members.

    fetch pins a downloaded archive only after this: a truncated or corrupt one fails here, naming the file,
    rather than being recorded as good and failing every later run.
    """
    with _open_zip(zip_path) as archive:
        members = _checked_members(archive, Path(zip_path), Bounds())
        for info in members:
            with _reading(zip_path, info.filename), archive.open(info) as handle:
                while handle.read(CHUNK):
                    pass
    return len(members)


def member_uri(archive_rel: str | Path, member: str) -> str:
    """The index uri of a zip member: ``<archive path relative to raw_root>!<member>``."""
    return f"{PurePosixPath(Path(archive_rel).as_posix())}{URI_SEPARATOR}{member}"


def _split_uri(uri: str) -> tuple[str, str | None]:
    path, sep, member = uri.partition(URI_SEPARATOR)
    problem = path_problem(path)
    if problem is not None:
        raise UnsafeArchive(f"uri {uri!r}: path {problem}")
    return path, (member if sep else None)


class _OpenArchive:
    """One open zip and its validated members, kept while consecutive uris point into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = _open_zip(path)
        try:
            self.members = {info.filename: info for info in _checked_members(self.zip, path, Bounds())}
        except UnsafeArchive:
            self.zip.close()
            raise

    def read(self, member: str, uri: str) -> bytes:
        """Only validated file members are readable: a name outside that list is missing, never guessed."""
        info = self.members.get(member)
        if info is None:
            raise FileNotFoundError(f"{uri}: no member {member!r} in {self.path}")
        with _reading(self.path, member):
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

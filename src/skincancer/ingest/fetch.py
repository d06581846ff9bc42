"""fetch stage: obtain every dataset's files under data/raw/<name>/ and index them in one table.

data/raw persists between runs (dvc.yaml `persist: true`): files already there and verified are
not downloaded again, and the checksums recorded at the first download are enforced afterwards. An
archive is recorded only once it has been read through, and `skincancer repin` forgets a record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd

from skincancer.core import paths
from skincancer.core.atomic import atomic_path, atomic_write_text
from skincancer.core.params import METADATA_FOLDER, FetchParams, SourceParams
from skincancer.core.preparation import PILLOW_MAX_PIXELS
from skincancer.ingest.archives import BrokenArchive, UnsafeArchive, read_through
from skincancer.ingest.catalog import CATALOG
from skincancer.ingest.download import ChecksumMismatch, Downloaded, download, redact_url
from skincancer.ingest.layouts import DUPLICATE_READERS, read_layout
from skincancer.ingest.metadata import join_metadata, read_metadata_table
from skincancer.ingest.sample import write_sample

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"  # under data/raw: {"<folder>/<file>": {"url" (redacted), "size", "sha256"}}
REFETCH = "then run the fetch stage again (`dvc repro fetch`)"
INDEX = paths.INDEX.name
DUPLICATES = paths.DUPLICATES.name
METADATA_CONFLICTS = paths.METADATA_CONFLICTS.name


# how to run one function over the file jobs, results in job order
FileMapper = Callable[[Callable[["FileJob"], Downloaded], list["FileJob"]], list[Downloaded]]


class FetchError(RuntimeError):
    """A source cannot be obtained as configured; the message says which and what to change."""


@dataclass(frozen=True)
class FileJob:
    """One file to land at data/raw/<folder>/<name>."""

    folder: str
    name: str
    url: str
    sha256: str | None = None
    auth_env: str | None = None

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.name}"

    @property
    def owner(self) -> str:
        """The params entry this file comes from, as errors name it."""
        return f"fetch.metadata table {self.name!r}" if self.folder == METADATA_FOLDER else f"source {self.folder!r}"


def _mirrored(url: str, mirror: str | None) -> str:
    """The same path on a mirror: lets teams (and tests) serve the catalog files themselves."""
    return url if mirror is None else mirror.rstrip("/") + urlsplit(url).path


def catalog_jobs(name: str, mirror: str | None) -> list[FileJob]:
    entry = CATALOG[name]
    if not entry.files and name not in LOCAL_DATASETS:
        raise FetchError(f"dataset {name!r} has no direct download. {entry.note}".strip())
    return [FileJob(name, remote.name, _mirrored(remote.url, mirror)) for remote in entry.files]


def _local_folder(url: str) -> Path | None:
    parts = urlsplit(url)
    path = Path(url2pathname(parts.path)) if parts.scheme == "file" else None
    return path if path is not None and path.is_dir() else None


def source_jobs(source: SourceParams) -> list[FileJob]:
    """A source is one archive, a local folder (every file in it), or a base URL plus `files`."""
    if source.files:
        base = source.url.rstrip("/")
        names_urls = [(name, f"{base}/{name}") for name in source.files]
    elif (folder := _local_folder(source.url)) is not None:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        names_urls = [(name, (folder / name).as_uri()) for name in files]
    else:
        names_urls = [(Path(urlsplit(source.url).path).name or source.name, source.url)]
    pins = source.sha256 if isinstance(source.sha256, dict) else {}
    single = source.sha256 if isinstance(source.sha256, str) else None
    return [
        FileJob(source.name, name, url, pins.get(name, single), source.auth_env) for name, url in names_urls
    ]


def metadata_jobs(params: FetchParams) -> list[FileJob]:
    return [FileJob(METADATA_FOLDER, table.file_name, table.url, table.sha256, table.auth_env) for table in params.metadata]


def plan(params: FetchParams) -> list[FileJob]:
    jobs = [job for name in params.datasets for job in catalog_jobs(name, params.mirror)]
    return jobs + [job for source in params.sources for job in source_jobs(source)] + metadata_jobs(params)


def read_checksums(raw_root: Path) -> dict[str, dict]:
    path = raw_root / CHECKSUMS
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_recorded(raw_root: Path, recorded: dict[str, dict]) -> None:
    atomic_write_text(raw_root / CHECKSUMS, json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def write_checksums(raw_root: Path, recorded: dict[str, dict], results: Iterable[tuple[FileJob, Downloaded]]) -> None:
    """Record size and sha256 of every file, so a later run notices changed upstream bytes."""
    for job, done in results:
        recorded[job.key] = {"url": redact_url(job.url), "size": done.size, "sha256": done.sha256}
    _write_recorded(raw_root, recorded)


def forget_pins(raw_root: Path, targets: Iterable[str]) -> list[str]:
    """`skincancer repin`: forget the checksums recorded for these folders or ``<folder>/<file>`` keys and
    delete their files, so the next fetch downloads them again and records what it then reads. For a file
    that changed upstream on purpose, or one recorded broken; the keys forgotten, all or none."""
    recorded = read_checksums(raw_root)
    chosen: dict[str, None] = {}
    for target in targets:
        prefix = target.strip("/")
        keys = [key for key in recorded if key == prefix or key.startswith(f"{prefix}/")]
        if not keys:
            folders = sorted({key.partition("/")[0] for key in recorded})
            raise FetchError(f"{raw_root / CHECKSUMS} records nothing for {target!r}: name a folder it records "
                             f"({', '.join(folders) or 'none yet'}) or one of its <folder>/<file> keys")
        chosen |= dict.fromkeys(keys)
    for key in chosen:
        (raw_root / key).unlink(missing_ok=True)
        del recorded[key]
    _write_recorded(raw_root, recorded)
    return list(chosen)


def _missing_token(job: FileJob) -> str | None:
    if job.auth_env is None or os.environ.get(job.auth_env):
        return None
    return f"{job.owner}: environment variable {job.auth_env} (its auth token) is not set; export it, then run fetch"


def require_tokens(jobs: Iterable[FileJob]) -> None:
    """Before any download: a missing token would otherwise surface only in its download task, after retries
    and after the other files' downloads."""
    if missing := sorted({problem for job in jobs if (problem := _missing_token(job))}):
        raise FetchError("\n".join(missing))


def auth_headers(job: FileJob) -> dict[str, str]:
    if (problem := _missing_token(job)) is not None:  # a task on another machine may lack what this one has
        raise FetchError(problem)
    return {} if job.auth_env is None else {"Authorization": f"Bearer {os.environ[job.auth_env]}"}


def _repin_hint(job: FileJob) -> str:
    """How to accept a file that changed on purpose: its pin in params.yaml, or `skincancer repin` for a
    recorded one; never an edit of checksums.json."""
    if job.sha256:
        return (f"{job.key} is pinned by the sha256 of {job.owner} in params.yaml: if it changed on purpose, "
                "write its new digest there.")
    return (f"If the source changed on purpose, run `skincancer repin {job.key}` (it forgets the checksum recorded "
            f"in data/raw/{CHECKSUMS} and deletes the file, so fetch downloads it again and records what it reads), "
            f"{REFETCH}.")


def _read_through_or_remove(job: FileJob, path: Path) -> None:
    """An archive is recorded only once it reads: one that does not is removed, so that once its source is
    fixed the next fetch downloads it, rather than reusing this copy."""
    if path.suffix.lower() != ".zip":
        return
    try:
        read_through(path)
    except (BrokenArchive, UnsafeArchive) as error:
        path.unlink()
        raise FetchError(f"{error}. {job.key} (from {redact_url(job.url)}, {job.owner}) was removed and not "
                         f"recorded: fix the source, {REFETCH}.") from None


def fetch_file(job: FileJob, raw_root: Path, recorded: dict[str, dict], retries: int = 5) -> Downloaded:
    """Download (or reuse) one file, held to its pin, or else to the checksum recorded earlier; a file not
    yet recorded is read through first if it is an archive."""
    expected = recorded.get(job.key, {})
    try:
        done = download(
            job.url,
            raw_root / job.folder / job.name,
            sha256=job.sha256 or expected.get("sha256"),
            size=None if job.sha256 else expected.get("size"),
            headers=auth_headers(job),
            retries=retries,
        )
    except ChecksumMismatch as error:
        raise ChecksumMismatch(f"{error} {_repin_hint(job)}") from None
    if job.key not in recorded:
        _read_through_or_remove(job, done.path)
    return done


def write_local_dataset(name: str, raw_root: Path, params: FetchParams) -> None:
    """Datasets generated here rather than downloaded (the synthetic sample)."""
    write_sample(raw_root / name, n_images=params.sample.n_images, seed=params.sample.seed)


LOCAL_DATASETS: dict[str, Callable[[str, Path, FetchParams], None]] = {"sample": write_local_dataset}


def prune(raw_root: Path, params: FetchParams) -> None:
    """Folders of datasets no longer configured would bloat the DVC output: remove them."""
    keep = set(params.datasets) | {source.name for source in params.sources} | {CHECKSUMS, INDEX, DUPLICATES}
    keep |= {METADATA_FOLDER, METADATA_CONFLICTS} if params.metadata else set()
    tables = {table.file_name for table in params.metadata}
    stale = [child for child in raw_root.iterdir() if child.name not in keep] if raw_root.is_dir() else []
    stale += [child for child in (raw_root / METADATA_FOLDER).glob("*") if child.name not in tables]
    for child in stale:
        if not child.name.startswith("."):
            log.info("removing %s: no longer in fetch.datasets / fetch.sources / fetch.metadata", child)
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def layouts_of(params: FetchParams, raw_root: Path) -> list[tuple[str, str, Path]]:
    """(source name, layout, folder) for every configured dataset and source."""
    found = []
    for name in params.datasets:
        layouts = CATALOG[name].layouts
        for layout in layouts:
            folder = raw_root / name / layout if len(layouts) > 1 else raw_root / name
            found.append((f"{name}/{layout}" if len(layouts) > 1 else name, layout, folder))
    found += [(source.name, source.layout, raw_root / source.name) for source in params.sources]
    return found


def known_image_hashes(index_path: Path) -> dict[str, str]:
    """sha256 -> perceptual hash from the previous index: a rerun decodes only images it has not seen."""
    if not index_path.is_file():
        return {}
    previous = pd.read_parquet(index_path)
    if "image_hash" not in previous:
        return {}
    hashed = previous.dropna(subset=["image_hash"])
    return dict(zip(hashed["sha256"], hashed["image_hash"], strict=True))


def build_index(params: FetchParams, raw_root: Path, max_pixels: int = PILLOW_MAX_PIXELS) -> pd.DataFrame:
    """index.parquet over every layout, straight from the archives, completed from the metadata tables
    (conflicts listed in metadata_conflicts.csv), and the official duplicate pairs. An image over
    ``max_pixels`` (the shard stage's bound, `shard.max_pixels`) gets no perceptual hash: it is never decoded."""
    frames, pairs = [], []
    known_hashes = known_image_hashes(raw_root / INDEX)
    for source, layout, folder in layouts_of(params, raw_root):
        frame = read_layout(
            layout, folder, source=source, raw_root=raw_root, strict=params.strict, known_hashes=known_hashes,
            max_pixels=max_pixels,
        )
        log.info("%s: %d images indexed (%s layout)", source, len(frame), layout)
        frames.append(frame)
        if layout in DUPLICATE_READERS:
            pairs += [(a, b, source) for a, b in DUPLICATE_READERS[layout](folder)]
    tables = [read_metadata_table(raw_root / METADATA_FOLDER / table.file_name, table.layout) for table in params.metadata]
    index, conflicts = join_metadata(pd.concat(frames, ignore_index=True), tables)
    if params.metadata:
        with atomic_path(raw_root / METADATA_CONFLICTS) as tmp:
            conflicts.to_csv(tmp, index=False)
    with atomic_path(raw_root / INDEX) as tmp:
        index.to_parquet(tmp, index=False)
    with atomic_path(raw_root / DUPLICATES) as tmp:
        pd.DataFrame(pairs, columns=["image_id_1", "image_id_2", "source"], dtype="string").to_parquet(tmp, index=False)
    return index


def map_in_order(function: Callable[[FileJob], Downloaded], jobs: list[FileJob]) -> list[Downloaded]:
    return [function(job) for job in jobs]


def fetch(params: FetchParams, raw_root: Path, map_files: FileMapper = map_in_order,
          max_pixels: int = PILLOW_MAX_PIXELS) -> pd.DataFrame:
    """The whole stage; `map_files` decides how downloads run (the Prefect flow: concurrent tasks), and
    ``max_pixels`` is the one pixel bound every stage that decodes applies (`shard.max_pixels`)."""
    jobs = plan(params)
    require_tokens(jobs)
    raw_root.mkdir(parents=True, exist_ok=True)
    prune(raw_root, params)
    for name in params.datasets:
        if name in LOCAL_DATASETS:
            LOCAL_DATASETS[name](name, raw_root, params)
    recorded = read_checksums(raw_root)

    def download_file(job: FileJob) -> Downloaded:
        return fetch_file(job, raw_root, recorded, params.retries)

    write_checksums(raw_root, recorded, zip(jobs, map_files(download_file, jobs), strict=True))
    try:
        return build_index(params, raw_root, max_pixels)
    except BrokenArchive as error:  # recorded by a fetch that did not yet read archives through first
        key = error.path.relative_to(raw_root).as_posix()
        if key not in recorded:
            raise
        raise FetchError(f"{error}. It is recorded in data/raw/{CHECKSUMS} as good: run `skincancer repin {key}` "
                         f"(it forgets the record and deletes the file), {REFETCH}.") from None

"""Shard stage: split images -> byte-sized, shuffled, byte-reproducible TFRecord shards + manifest.json.

The ordered list of images is cut into chunks; a mapper (threads by default, Prefect task runs in the
flow) encodes the chunks and hands back each chunk's results in order. Only the parent serialises and
writes, in that fixed order, which is what makes the output byte-identical whatever runs the chunks.

Nothing per image lives for the whole run but its position in the manifest: chunks, jobs and row dicts are
made as the writer reaches them, and the image table is built column by column at the end, so memory does
not grow with the image count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np

from skincancer.core.atomic import atomic_dir
from skincancer.core.images import Resized
from skincancer.core.labels import CLASS_NAMES
from skincancer.core.paths import SPLIT_MANIFEST, SPLITS, parts_named
from skincancer.shard.prepare import Encoded, EncodeJob, encode_file

if TYPE_CHECKING:
    import pandas as pd

    from skincancer.core.params import ShardParams
    from skincancer.core.preparation import Preparation

log = logging.getLogger(__name__)

_REQUIRED = (
    "image_id", "source", "diagnosis", "patient_id", "sex", "age_approx", "anatom_site", "width", "height", "split",
    "label", "group", "path",
)
_RUN_SPLIT = "run the split stage first (`dvc repro split`)"
_SIZES = ("width", "height")  # the original's, which the index has recorded since issue 31
_RERUN_FETCH = ("the index it was split from predates the originals' sizes: rerun `dvc repro fetch` (it records "
                "them), then `dvc repro split`")


# A few chunks per worker balance the load (20% of ISIC images are 20x larger than the rest); the cap keeps
# the results of the chunks in flight small and gives big datasets one task run per few seconds of work.
CHUNKS_PER_WORKER = 4
MAX_CHUNK = 256
SHOWN_SKIPPED = 5


EncodeChunk = Callable[[Sequence[EncodeJob]], list[Encoded]]
ChunkMapper = Callable[[EncodeChunk, Sequence[Sequence[EncodeJob]]], Iterable[list[Encoded]]]


class TooManySkipped(ValueError):
    """More images than shard.max_skipped_fraction could not be read: likely a broken fetch, not a few bad files."""


class OutOfSpace(OSError):
    """The disk (or a quota, or the file size limit) ran out while the shards were written: nothing was published."""


@contextlib.contextmanager
def _out_of_space_named(out_dir: Path, out_of_space: tuple[int, ...]) -> Iterator[None]:
    """A full disk fails naming the file it stopped in and what is kept. Entered outside atomic_dir, so by the
    time it speaks the partial folder is gone and ``out_dir`` is as it was."""
    try:
        yield
    except OSError as error:
        if error.errno not in out_of_space:
            raise
        kept = f"the previous {out_dir} is kept as it was" if out_dir.exists() else f"no {out_dir} was written"
        raise OutOfSpace(error.errno, (
            f"{os.strerror(error.errno)} while writing {error.filename}: the disk (or a quota, or the file size limit, "
            f"`ulimit -f`) ran out; {kept} and the partial folder removed. Free space and rerun `dvc repro shard`"
        )) from error


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Yield ``path``; an OSError while it is written names it (Python's and pyarrow's write errors name no file)."""
    try:
        yield path
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


def write_shards(
    manifest: pd.DataFrame,
    split_root: Path,
    out_dir: Path,
    params: ShardParams,
    map_chunks: ChunkMapper | None = None,
) -> dict:
    """Write ``out_dir/<split>-<i>-of-<n>.tfrecord`` + ``manifest.json`` atomically; return the manifest.

    ``map_chunks(encode_chunk, chunks)`` decides where the chunks are encoded and must yield each chunk's
    results in chunk order; the default runs them on ``params.workers`` threads.
    """
    from skincancer.shard import tfrecords

    split_root, out_dir = Path(split_root), Path(out_dir)
    plan = _plan(manifest, split_root, params.seed)
    order = np.concatenate(list(plan.values()))
    chunks = _Chunks(manifest["path"], order, chunk_size(len(order), params.workers), split_root, params.preparation())
    limit = int(params.target_shard_mb * 1024 * 1024)
    shards: list[dict] = []
    skipped: list[dict] = []
    written: dict[str, np.ndarray] = {}
    mapper = map_chunks or in_threads(params.workers)
    started = time.perf_counter()
    with _out_of_space_named(out_dir, tfrecords.OUT_OF_SPACE), atomic_dir(out_dir) as tmp, \
            _results(mapper, chunks) as results:
        for split, positions in plan.items():
            roller = _ShardRoller(tmp, split, limit, tfrecords)
            unreadable = []
            # zip pulls from rows first, so the shared results stream is never over-read.
            for index, (row, result) in enumerate(zip(_rows(manifest, positions), results)):
                if isinstance(result, Resized):
                    image = _image_facts(row, split)
                    roller.add(_serialize(tfrecords, image, result), image["label"])
                else:
                    skipped.append(_skip(row, result))
                    unreadable.append(index)
            shards += roller.finish()
            written[split] = np.delete(positions, unreadable)
        _check_skipped(skipped, len(order), params.max_skipped_fraction)
        document = _document(params, tfrecords.SPEC_VERSION, shards, skipped, tuple(plan))
        with _writing(tmp / "manifest.json") as path:
            path.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
        with _writing(tmp / tfrecords.IMAGE_TABLE) as path:
            write_image_table(manifest, written, shards, path, params.bands)
    _log_written(shards, len(order) - len(skipped), len(skipped), time.perf_counter() - started)
    return document


def read_split_manifest(path: Path) -> pd.DataFrame:
    """The split manifest's columns that this stage reads, and no others: the manifest lives for the whole run,
    so its unread columns would cost memory per image. A missing column is left for the stage to name."""
    import pandas as pd
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[name for name in _REQUIRED if name in present])


def _log_written(shards: list[dict], images: int, skipped: int, seconds: float) -> None:
    megabytes = sum(shard["bytes"] for shard in shards) / 1e6
    log.info("sharded %d images (%d skipped) into %d files, %.1f MB, in %.1f s: %.1f images/s, %.1f MB/s",
             images, skipped, len(shards), megabytes, seconds, images / max(seconds, 1e-9), megabytes / max(seconds, 1e-9))


def chunk_size(n_jobs: int, workers: int) -> int:
    """Images per chunk: CHUNKS_PER_WORKER chunks for each worker, at most MAX_CHUNK images each."""
    return max(1, min(MAX_CHUNK, math.ceil(n_jobs / (workers * CHUNKS_PER_WORKER))))


class EncodeJobs(Sequence[EncodeJob]):
    """A chunk: its images' EncodeJobs, each made when read. It holds only their paths, so a mapper that lists
    every chunk up front (Prefect's map) holds a path per image, not a job; small and picklable (Dask)."""

    def __init__(self, root: str, paths: list[str], preparation: Preparation) -> None:
        self._root, self._paths, self._preparation = root, paths, preparation

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> EncodeJob: ...
    @overload
    def __getitem__(self, index: slice) -> list[EncodeJob]: ...
    def __getitem__(self, index: int | slice) -> EncodeJob | list[EncodeJob]:
        if isinstance(index, slice):
            return [self[number] for number in range(len(self))[index]]
        return EncodeJob(os.path.join(self._root, self._paths[index]), self._preparation)


class _Chunks(Sequence[EncodeJobs]):
    """The run's images in write order cut into chunks of ``size``, each made when asked for: a mapper that
    keeps only the chunks in flight keeps only their paths."""

    def __init__(self, paths: pd.Series, order: np.ndarray, size: int, split_root: Path, preparation: Preparation) -> None:
        self._paths, self._order, self._size, self._preparation = paths, order, size, preparation
        self._root = str(split_root.absolute())  # read by workers that may not share our cwd (Dask)
        self._starts = range(0, len(order), size)

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> EncodeJobs: ...
    @overload
    def __getitem__(self, index: slice) -> list[EncodeJobs]: ...
    def __getitem__(self, index: int | slice) -> EncodeJobs | list[EncodeJobs]:
        if isinstance(index, slice):
            return [self[number] for number in range(len(self))[index]]
        start = self._starts[index]  # an IndexError past the end, which ends iteration
        positions = self._order[start:start + self._size]
        return EncodeJobs(self._root, self._paths.iloc[positions].tolist(), self._preparation)


def encode_chunk(jobs: Sequence[EncodeJob]) -> list[Encoded]:
    """One unit of parallel work (a thread's, or a Prefect task run's): a chunk of images, in order."""
    return [encode_file(job) for job in jobs]


class _Result(Protocol):
    def result(self) -> list[Encoded]: ...


def ahead_of_the_writer(submit: Callable[[Sequence[EncodeJob]], _Result], chunks: Sequence[Sequence[EncodeJob]],
                        workers: int) -> Iterator[list[Encoded]]:
    """Each chunk's results in chunk order, with at most 2 x workers + 1 chunks submitted ahead of the writer, so
    memory stays flat whatever the image count (submitted all at once, encoders outrun the writer and hold every
    encoded image until it is written). ``submit`` returns anything with ``.result()``: a thread pool's future,
    a Prefect task's."""
    pending: deque[_Result] = deque()
    for chunk in chunks:
        pending.append(submit(chunk))
        if len(pending) > 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def in_threads(workers: int) -> ChunkMapper:
    """The library's own mapper: chunks on ``workers`` threads (Pillow releases the GIL), in-process for one."""

    def map_chunks(encode: EncodeChunk, chunks: Sequence[Sequence[EncodeJob]]) -> Iterator[list[Encoded]]:
        if workers <= 1:
            yield from map(encode, chunks)
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="shard-encode")
        try:
            yield from ahead_of_the_writer(lambda chunk: pool.submit(encode, chunk), chunks, workers)
        finally:
            pool.shutdown(cancel_futures=True)

    return map_chunks


@contextlib.contextmanager
def _results(map_chunks: ChunkMapper, chunks: Sequence[Sequence[EncodeJob]]) -> Iterator[Iterator[Encoded]]:
    """Every image's result in job order; a lazy mapper is closed on the way out, so a failed run stops encoding."""
    per_chunk = map_chunks(encode_chunk, chunks)
    try:
        yield _flatten(chunks, per_chunk)
    finally:
        if hasattr(per_chunk, "close"):  # a generator: stop its pool or tasks mid-stream
            per_chunk.close()


def _flatten(chunks: Sequence[Sequence[EncodeJob]], per_chunk: Iterable[list[Encoded]]) -> Iterator[Encoded]:
    """A mapper is pluggable: one it lost or cut short must fail the run, never drop images silently.

    Each result leaves its chunk's list as it is handed on: a mapper may keep the list (Prefect's task engine
    does, in reference cycles that live until the next full garbage collection), and its images must not."""
    for chunk, encoded in zip(chunks, per_chunk, strict=True):
        if len(encoded) != len(chunk):
            raise ValueError(f"map_chunks returned {len(encoded)} results for a chunk of {len(chunk)} images")
        for index, result in enumerate(encoded):
            encoded[index] = None
            yield result


def _plan(manifest: pd.DataFrame, split_root: Path, seed: int) -> dict[str, np.ndarray]:
    """Row positions per split (or fold), checked, sorted by id then shuffled by seed: independent of input row
    order. Positions, not rows: the plan lives for the whole run."""
    _check_inputs(manifest, split_root)
    ids = manifest["image_id"].astype(object).reset_index(drop=True)  # compared as Python objects, whatever the dtype
    plan = {}
    for split in parts_named(manifest["split"]):
        positions = ids[(manifest["split"] == split).to_numpy()].sort_values().index.to_numpy(copy=True)
        if not len(positions):
            raise ValueError(f"split {split!r} has no images in the split manifest; every split needs at least one")
        random.Random(f"{seed}:{split}").shuffle(positions)  # draws depend on the length alone: rows' order kept
        plan[split] = positions
    return plan


def _check_inputs(manifest: pd.DataFrame, split_root: Path) -> None:
    if not split_root.is_dir():
        raise FileNotFoundError(f"{split_root}: split images not found; {_RUN_SPLIT}")
    missing_columns = [name for name in _REQUIRED if name not in manifest.columns]
    if missing_columns:
        rerun = _RERUN_FETCH if set(missing_columns) & set(_SIZES) else _RUN_SPLIT
        where = split_root / SPLIT_MANIFEST.name
        raise ValueError(f"split manifest {where} lacks column(s) {missing_columns}; {rerun}")
    found = set(manifest["split"].astype(str))
    unknown = sorted(found - set(parts_named(found)))
    if unknown:
        raise ValueError(f"split manifest has unknown split value(s) {unknown}; expected {list(parts_named(found))}")
    bad_labels = sorted(set(manifest["label"].tolist()) - {0, 1})
    if bad_labels:
        raise ValueError(f"split manifest has label value(s) {bad_labels}; expected 0 (benign) or 1 (malignant)")
    root = str(split_root)  # joined as text: a Path per image would intern every file name for the run's life
    missing = [os.path.join(root, path) for path in manifest["path"] if not os.path.isfile(os.path.join(root, path))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: image listed in the split manifest is missing{more}; {_RUN_SPLIT}")


def _rows(manifest: pd.DataFrame, positions: np.ndarray) -> Iterator[dict[str, Any]]:
    """The rows at ``positions`` as dicts of the columns the stage reads, made a block at a time."""
    for start in range(0, len(positions), MAX_CHUNK):
        block = positions[start:start + MAX_CHUNK]
        columns = [_column(manifest, name, block) for name in _ROW_COLUMNS]
        yield from (dict(zip(_ROW_COLUMNS, values, strict=True)) for values in zip(*columns, strict=True))


def _column(manifest: pd.DataFrame, name: str, positions: np.ndarray) -> list[Any]:
    """A column's values at ``positions``, every kind of missing (None, NaN, pd.NA) as None, whatever its dtype."""
    column = manifest[name].iloc[positions]
    return column.astype(object).where(column.notna(), None).tolist()


def _image_facts(row: dict[str, Any], split: str) -> dict[str, Any]:
    """A split manifest row as its record states it (IMAGE_COLUMNS but `band` and `shard`, the table's alone).
    The image table converts its columns with the same _FACTS, so the two never disagree. The original's
    width and height are the table's alone: the record holds the prepared image's."""
    return {"split": split} | {name: convert(row[name]) for name, convert in _FACTS.items()}


def _serialize(tfrecords: ModuleType, facts: dict[str, Any], image: Resized) -> bytes:
    return tfrecords.serialize_example(
        encoded=image.data, height=image.height, width=image.width,
        image_id=facts["image_id"], label=facts["label"], diagnosis=facts["diagnosis"], source=facts["source"],
        group=facts["group"], patient_id=facts["patient_id"], sex=facts["sex"], age_approx=facts["age_approx"],
        anatom_site=facts["anatom_site"],
    )


def write_image_table(
    manifest: pd.DataFrame, written: Mapping[str, np.ndarray], shards: list[dict], path: Path, bands: Mapping[str, int]
) -> None:
    """The per-image table beside the shards, one row per record in the shards' own order, so readers learn
    labels, groups, ids and each original's size and resolution band (``shard.bands``) without decoding a
    single record. ``written``: each split's positions in the manifest of the images it wrote, in order.

    Built a column at a time from the manifest, so only one column's Python values exist at once."""
    import pandas as pd

    from skincancer.core.bands import band_names
    from skincancer.shard.tfrecords import IMAGE_COLUMNS

    positions = np.concatenate(list(written.values()))
    columns = {name: pd.Series([convert(value) for value in _column(manifest, name, positions)])
               for name, convert in _FACTS.items()}
    columns["split"] = pd.Series([split for split, images in written.items() for _ in range(len(images))])
    columns["shard"] = pd.Series([shard["file"] for shard in shards for _ in range(shard["count"])])
    columns["band"] = band_names(columns["width"], columns["height"], bands)
    table = pd.DataFrame({name: columns[name] for name in IMAGE_COLUMNS})
    dtypes = {"label": "int64", "age_approx": "float64", "width": "Int64", "height": "Int64", "band": "string"}
    table.astype(dtypes).to_parquet(path, index=False)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _text_or_empty(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _whole(value: Any) -> int | None:
    return None if value is None else int(value)


# Image table column -> how a manifest value (missing as None) becomes the record's and the table's value.
_FACTS: dict[str, Callable[[Any], Any]] = {
    "image_id": str, "label": int, "diagnosis": _text_or_empty, "source": _text_or_empty, "group": str,
    "patient_id": _text, "sex": _text, "age_approx": _number, "anatom_site": _text, "width": _whole, "height": _whole,
}
_ROW_COLUMNS = (*_FACTS, "path")  # what the writer reads of a row: its facts, and the path a skip names


def _skip(row: dict[str, Any], reason: str) -> dict[str, str]:
    log.warning("skipping %s (%s): %s", row["image_id"], row["path"], reason)
    return {"image_id": str(row["image_id"]), "path": str(row["path"]), "reason": reason}


class _ShardRoller:
    """Writes one split's records, starting a new shard when the next record would pass the byte limit.

    Files get provisional names because the shard total in the final name is only known at the end.
    """

    def __init__(self, out_dir: Path, split: str, limit: int, tfrecords: ModuleType) -> None:
        self._out_dir, self._split, self._limit, self._tfrecords = out_dir, split, limit, tfrecords
        self._files: list[tuple[Path, list[int]]] = []
        self._writer: Any = None
        self._bytes = 0

    def add(self, record: bytes, label: int) -> None:
        """Write the record, to a new shard if it would pass the limit: shards are filled in order, so finish()'s
        counts say which records each holds."""
        size = len(record) + self._tfrecords.RECORD_OVERHEAD
        if self._writer is None or self._bytes + size > self._limit:
            self._roll()
        self._writer.write(record)
        self._bytes += size
        self._files[-1][1][label] += 1

    def finish(self) -> list[dict]:
        """Close, rename to ``<split>-<i>-of-<n>.tfrecord`` and describe each shard."""
        if self._writer is None:
            raise ValueError(f"split {self._split!r} has no readable images; every split needs at least one")
        self._writer.close()
        total = len(self._files)
        return [self._publish(index, total, path, counts) for index, (path, counts) in enumerate(self._files)]

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self._out_dir / f".{self._split}-{len(self._files):05d}.partial"
        self._files.append((path, [0, 0]))
        self._writer = self._tfrecords.writer(path)
        self._bytes = 0

    def _publish(self, index: int, total: int, path: Path, counts: list[int]) -> dict:
        final = path.with_name(f"{self._split}-{index:05d}-of-{total:05d}.tfrecord")
        os.replace(path, final)
        with final.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {
            "file": final.name,
            "split": self._split,
            "count": sum(counts),
            "count_per_class": dict(zip(CLASS_NAMES, counts, strict=True)),
            "sha256": digest,
            "bytes": final.stat().st_size,
        }


def _check_skipped(skipped: list[dict], total: int, limit: float) -> None:
    if len(skipped) <= limit * total:
        return
    shown = "; ".join(f"{entry['image_id']} ({entry['reason']})" for entry in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    raise TooManySkipped(
        f"{len(skipped)} of {total} images ({len(skipped) / total:.1%}) could not be read, more than "
        f"shard.max_skipped_fraction = {limit:g}: {shown}{more}. Check the fetched data, or raise the limit"
    )


def _document(params: ShardParams, spec_version: int, shards: list[dict], skipped: list[dict], parts: tuple[str, ...]) -> dict:
    splits = {}
    for split in parts:
        mine = [shard for shard in shards if shard["split"] == split]
        totals = {name: sum(shard["count_per_class"][name] for shard in mine) for name in CLASS_NAMES}
        splits[split] = {"count": sum(totals.values()), **totals, "shards": len(mine)}
    return {
        "spec_version": spec_version,
        **params.preparation().as_json(),  # how predict must prepare an image (the model card copies it)
        "shards": shards,
        "splits": splits,
        "skipped": skipped,
    } | ({} if parts == SPLITS else {"folds": len(parts) - 1})

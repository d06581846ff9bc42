"""Shard stage: split images -> byte-sized, shuffled, byte-reproducible TFRecord shards + manifest.json.

The ordered list of images is cut into chunks; a mapper (threads by default, Prefect task runs in the
flow) encodes the chunks and hands back each chunk's results in order. Only the parent serialises and
writes, in that fixed order, which is what makes the output byte-identical whatever runs the chunks.
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

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


EncodeChunk = Callable[[list[EncodeJob]], list[Encoded]]
ChunkMapper = Callable[[EncodeChunk, list[list[EncodeJob]]], Iterable[list[Encoded]]]


class TooManySkipped(ValueError):
    """More images than shard.max_skipped_fraction could not be read: likely a broken fetch, not a few bad files."""


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
    preparation = params.preparation()
    jobs = [_job(split_root, row, preparation) for rows in plan.values() for row in rows]
    chunks = chunked(jobs, chunk_size(len(jobs), params.workers))
    limit = int(params.target_shard_mb * 1024 * 1024)
    shards: list[dict] = []
    skipped: list[dict] = []
    mapper = map_chunks or in_threads(params.workers)
    started = time.perf_counter()
    facts: list[dict[str, Any]] = []
    with atomic_dir(out_dir) as tmp, _results(mapper, chunks) as results:
        for split, rows in plan.items():
            roller = _ShardRoller(tmp, split, limit, tfrecords)
            written = []
            # zip pulls from rows first, so the shared results stream is never over-read.
            for row, result in zip(rows, results):
                if isinstance(result, Resized):
                    image = _image_facts(row, split)
                    written.append((image, roller.add(_serialize(tfrecords, image, result), image["label"])))
                else:
                    skipped.append(_skip(row, result))
            described = roller.finish()
            facts += [image | {"shard": described[index]["file"]} for image, index in written]
            shards += described
        _check_skipped(skipped, len(jobs), params.max_skipped_fraction)
        document = _document(params, tfrecords.SPEC_VERSION, shards, skipped, tuple(plan))
        (tmp / "manifest.json").write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
        write_image_table(facts, tmp / tfrecords.IMAGE_TABLE, params.bands)
    _log_written(shards, len(jobs) - len(skipped), len(skipped), time.perf_counter() - started)
    return document


def _log_written(shards: list[dict], images: int, skipped: int, seconds: float) -> None:
    megabytes = sum(shard["bytes"] for shard in shards) / 1e6
    log.info("sharded %d images (%d skipped) into %d files, %.1f MB, in %.1f s: %.1f images/s, %.1f MB/s",
             images, skipped, len(shards), megabytes, seconds, images / max(seconds, 1e-9), megabytes / max(seconds, 1e-9))


def chunk_size(n_jobs: int, workers: int) -> int:
    """Images per chunk: CHUNKS_PER_WORKER chunks for each worker, at most MAX_CHUNK images each."""
    return max(1, min(MAX_CHUNK, math.ceil(n_jobs / (workers * CHUNKS_PER_WORKER))))


def chunked(jobs: list[EncodeJob], size: int) -> list[list[EncodeJob]]:
    return [jobs[start:start + size] for start in range(0, len(jobs), size)]


def encode_chunk(jobs: list[EncodeJob]) -> list[Encoded]:
    """One unit of parallel work (a thread's, or a Prefect task run's): a chunk of images, in order."""
    return [encode_file(job) for job in jobs]


def in_threads(workers: int) -> ChunkMapper:
    """The library's own mapper: chunks on ``workers`` threads (Pillow releases the GIL), in-process for one.

    At most 2 x workers + 1 chunks are in flight ahead of the writer, so memory stays flat whatever the
    image count.
    """

    def map_chunks(encode: EncodeChunk, chunks: list[list[EncodeJob]]) -> Iterator[list[Encoded]]:
        if workers <= 1:
            yield from map(encode, chunks)
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="shard-encode")
        pending: deque[Future[list[Encoded]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(encode, chunk))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)

    return map_chunks


@contextlib.contextmanager
def _results(map_chunks: ChunkMapper, chunks: list[list[EncodeJob]]) -> Iterator[Iterator[Encoded]]:
    """Every image's result in job order; a lazy mapper is closed on the way out, so a failed run stops encoding."""
    per_chunk = map_chunks(encode_chunk, chunks)
    try:
        yield _flatten(chunks, per_chunk)
    finally:
        if hasattr(per_chunk, "close"):  # a generator: stop its pool or tasks mid-stream
            per_chunk.close()


def _flatten(chunks: list[list[EncodeJob]], per_chunk: Iterable[list[Encoded]]) -> Iterator[Encoded]:
    """A mapper is pluggable: one it lost or cut short must fail the run, never drop images silently."""
    for chunk, encoded in zip(chunks, per_chunk, strict=True):
        if len(encoded) != len(chunk):
            raise ValueError(f"map_chunks returned {len(encoded)} results for a chunk of {len(chunk)} images")
        yield from encoded


def _plan(manifest: pd.DataFrame, split_root: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Rows per split (or fold), checked, sorted by id then shuffled by seed: independent of input row order."""
    _check_inputs(manifest, split_root)
    # Every kind of missing (None, NaN, pd.NA) becomes None, whatever the column dtypes.
    frame = manifest.astype(object).where(manifest.notna(), None)
    plan = {}
    for split in parts_named(frame["split"]):
        rows = frame[frame["split"] == split].sort_values("image_id").to_dict("records")
        if not rows:
            raise ValueError(f"split {split!r} has no images in the split manifest; every split needs at least one")
        random.Random(f"{seed}:{split}").shuffle(rows)
        plan[split] = rows
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
    missing = [str(split_root / path) for path in manifest["path"] if not (split_root / path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: image listed in the split manifest is missing{more}; {_RUN_SPLIT}")


def _job(split_root: Path, row: dict[str, Any], preparation: Preparation) -> EncodeJob:
    path = str((split_root / row["path"]).absolute())  # read by workers that may not share our cwd (Dask)
    return EncodeJob(path, preparation)


def _image_facts(row: dict[str, Any], split: str) -> dict[str, Any]:
    """A split manifest row as its record and its image-table row both state it (IMAGE_COLUMNS but `band`, the
    table's, and `shard`, known once the split's shards are named): one conversion, so the two never disagree.
    The original's width and height are the table's alone: the record holds the prepared image's."""
    return {
        "image_id": str(row["image_id"]), "split": split, "label": int(row["label"]),
        "diagnosis": _text(row["diagnosis"]) or "", "source": _text(row["source"]) or "",
        "group": str(row["group"]), "patient_id": _text(row["patient_id"]),
        "sex": _text(row["sex"]), "age_approx": _number(row["age_approx"]), "anatom_site": _text(row["anatom_site"]),
        "width": _whole(row["width"]), "height": _whole(row["height"]),
    }


def _serialize(tfrecords: ModuleType, facts: dict[str, Any], image: Resized) -> bytes:
    return tfrecords.serialize_example(
        encoded=image.data, height=image.height, width=image.width,
        image_id=facts["image_id"], label=facts["label"], diagnosis=facts["diagnosis"], source=facts["source"],
        group=facts["group"], patient_id=facts["patient_id"], sex=facts["sex"], age_approx=facts["age_approx"],
        anatom_site=facts["anatom_site"],
    )


def write_image_table(facts: list[dict[str, Any]], path: Path, bands: Mapping[str, int]) -> None:
    """The per-image table beside the shards, one row per record in the shards' own order, so readers learn
    labels, groups, ids and each original's size and resolution band (``shard.bands``) without decoding a
    single record."""
    import pandas as pd

    from skincancer.core.bands import band_names
    from skincancer.shard.tfrecords import IMAGE_COLUMNS

    table = pd.DataFrame(facts, columns=list(IMAGE_COLUMNS))
    table["band"] = band_names(table["width"], table["height"], bands)
    dtypes = {"label": "int64", "age_approx": "float64", "width": "Int64", "height": "Int64", "band": "string"}
    table.astype(dtypes).to_parquet(path, index=False)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _whole(value: Any) -> int | None:
    return None if value is None else int(value)


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

    def add(self, record: bytes, label: int) -> int:
        """Write the record; the index of the shard it went to (in the order finish() describes them)."""
        size = len(record) + self._tfrecords.RECORD_OVERHEAD
        if self._writer is None or self._bytes + size > self._limit:
            self._roll()
        self._writer.write(record)
        self._bytes += size
        self._files[-1][1][label] += 1
        return len(self._files) - 1

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

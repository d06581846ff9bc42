"""Shard stage: split images -> byte-sized, shuffled, byte-reproducible TFRecord shards + manifest.json.

Workers only run PIL (images.resize_jpeg) in spawned processes, so nothing is forked after
TensorFlow is imported; the parent serialises and writes in a fixed order, which is what makes
the output byte-identical whatever the worker count.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from skincancer.atomic import atomic_dir
from skincancer.images import CorruptImage, Resized, ResizeMode, resize_jpeg
from skincancer.labels import CLASS_NAMES
from skincancer.paths import SPLITS

if TYPE_CHECKING:
    import pandas as pd

    from skincancer.params import ShardParams

log = logging.getLogger(__name__)

_REQUIRED = (
    "image_id", "source", "diagnosis", "patient_id", "sex", "age_approx", "anatom_site", "split", "label", "path",
)
_RUN_SPLIT = "run the split stage first (`dvc repro split`)"


@dataclass(frozen=True)
class _Task:
    """What a worker needs: small and picklable; the worker reads the file itself."""

    path: str
    size: int
    mode: ResizeMode
    quality: int


def write_shards(manifest: pd.DataFrame, split_root: Path, out_dir: Path, params: ShardParams) -> dict:
    """Write ``out_dir/<split>-<i>-of-<n>.tfrecord`` + ``manifest.json`` atomically; return the manifest."""
    from skincancer import tfrecords

    split_root, out_dir = Path(split_root), Path(out_dir)
    plan = _plan(manifest, split_root, params.seed)
    tasks = [_task(split_root, row, params) for rows in plan.values() for row in rows]
    limit = int(params.target_shard_mb * 1024 * 1024)
    shards: list[dict] = []
    skipped: list[dict] = []
    with atomic_dir(out_dir) as tmp, _mapper(params.workers, len(tasks)) as mapper:
        results = mapper(_encode_file, tasks)
        for split, rows in plan.items():
            roller = _ShardRoller(tmp, split, limit, tfrecords)
            # zip pulls from rows first, so the shared results stream is never over-read.
            for row, result in zip(rows, results):
                if isinstance(result, Resized):
                    roller.add(_serialize(tfrecords, row, result), int(row["label"]))
                else:
                    skipped.append(_skip(row, result))
            shards += roller.finish()
        document = _document(params, tfrecords.SPEC_VERSION, shards, skipped)
        (tmp / "manifest.json").write_text(json.dumps(document, sort_keys=True, indent=2) + "\n")
    return document


def _plan(manifest: pd.DataFrame, split_root: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Rows per split, checked, sorted by id then shuffled by seed: independent of input row order."""
    _check_inputs(manifest, split_root)
    # Every kind of missing (None, NaN, pd.NA) becomes None, whatever the column dtypes.
    frame = manifest.astype(object).where(manifest.notna(), None)
    plan = {}
    for split in SPLITS:
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
        raise ValueError(f"split manifest lacks column(s) {missing_columns}; {_RUN_SPLIT}")
    unknown = sorted(set(manifest["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise ValueError(f"split manifest has unknown split value(s) {unknown}; expected {list(SPLITS)}")
    bad_labels = sorted(set(manifest["label"].tolist()) - {0, 1})
    if bad_labels:
        raise ValueError(f"split manifest has label value(s) {bad_labels}; expected 0 (benign) or 1 (malignant)")
    missing = [str(split_root / path) for path in manifest["path"] if not (split_root / path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{missing[0]}: image listed in the split manifest is missing{more}; {_RUN_SPLIT}")


def _task(split_root: Path, row: dict[str, Any], params: ShardParams) -> _Task:
    return _Task(str(split_root / row["path"]), params.image_size, params.resize, params.jpeg_quality)


def _encode_file(task: _Task) -> Resized | str:
    """Worker body: the resized image, or why it was skipped (returned, so one bad file never stops imap)."""
    data = Path(task.path).read_bytes()
    try:
        return resize_jpeg(data, task.size, task.mode, task.quality, name=task.path)
    except CorruptImage as error:
        return error.reason


@contextlib.contextmanager
def _mapper(workers: int, n_tasks: int) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """An order-preserving lazy map: in-process for one worker, else a spawned pool torn down on exit."""
    workers = min(workers, n_tasks)
    if workers <= 1:
        yield map
        return
    chunksize = max(1, min(32, n_tasks // (workers * 8)))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield functools.partial(pool.imap, chunksize=chunksize)


def _serialize(tfrecords: ModuleType, row: dict[str, Any], image: Resized) -> bytes:
    return tfrecords.serialize_example(
        encoded=image.data,
        height=image.height,
        width=image.width,
        image_id=str(row["image_id"]),
        label=int(row["label"]),
        diagnosis=_text(row["diagnosis"]) or "",
        source=_text(row["source"]) or "",
        patient_id=_text(row["patient_id"]),
        sex=_text(row["sex"]),
        age_approx=_number(row["age_approx"]),
        anatom_site=_text(row["anatom_site"]),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


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


def _document(params: ShardParams, spec_version: int, shards: list[dict], skipped: list[dict]) -> dict:
    splits = {}
    for split in SPLITS:
        mine = [shard for shard in shards if shard["split"] == split]
        totals = {name: sum(shard["count_per_class"][name] for shard in mine) for name in CLASS_NAMES}
        splits[split] = {"count": sum(totals.values()), **totals, "shards": len(mine)}
    return {
        "spec_version": spec_version,
        "image_size": params.image_size,
        "resize": params.resize,
        "shards": shards,
        "splits": splits,
        "skipped": skipped,
    }

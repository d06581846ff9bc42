"""Data faults, detected and named (issue 33): a damaged TFRecord shard at train and at evaluate, a disk that fills
while the shards are written, and a metadata table fetch cannot read. Each fails naming the file and what to do,
and leaves the last good output as it was."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from layout_fixtures import csv_bytes, write_class_folders
from test_evaluate import untrained_small_cnn
from test_metadata import HAM_HEADER, NINE_CLASS_IDS, ham_row

from skincancer.core.model_card import file_sha256
from skincancer.core.params import EvaluateParams, FetchParams, ShardParams, TrainParams
from skincancer.evaluate.evaluate import evaluate
from skincancer.ingest.fetch import fetch
from skincancer.ingest.metadata import MetadataError, read_metadata_table
from skincancer.shard import tfrecords
from skincancer.shard.shard import read_split_manifest, write_shards
from skincancer.train import data
from skincancer.train.data import ShardDamaged
from skincancer.train.live import read_history
from skincancer.train.train import train

# ---------------------------------------------------------------- a damaged shard, at train and at evaluate


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record's JPEG: its CRC no longer matches
    path.write_bytes(bytes(data))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_after_the_first_record(path: Path) -> None:
    """Every record left is whole, so every CRC still holds: tf.data would read one image and stop."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: length + tfrecords.RECORD_OVERHEAD])


DAMAGES: dict[str, Callable[[Path], None]] = {
    "a flipped byte": flip_a_byte,
    "cut in half": cut_in_half,
    "cut at a record boundary": cut_after_the_first_record,
    "deleted": Path.unlink,
}


def damaged_copy(shards: Path, out: Path, file: str, damage: str) -> Path:
    """A copy of the session's tiny shards with one file damaged (the fixture's own stay good for other tests)."""
    shutil.copytree(shards, out)
    DAMAGES[damage](out / file)
    return out


def assert_names_the_shard_and_what_to_do(error: pytest.ExceptionInfo, shard: Path) -> None:
    message = str(error.value)
    assert message.startswith(f"{shard}: shard file damaged")
    assert f"dvc checkout {shard.parent}" in message and "dvc repro shard" in message


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_training_shard_fails_train_naming_it_before_any_epoch(tiny_shards, tmp_path, damage):
    shards = damaged_copy(tiny_shards, tmp_path / "shards", "train-00000-of-00001.tfrecord", damage)
    with pytest.raises(ShardDamaged) as error:
        train(TrainParams(epochs=1, batch_size=16), shards, tmp_path / "model.keras", tmp_path / "dvclive",
              image_size=32)
    assert_names_the_shard_and_what_to_do(error, shards / "train-00000-of-00001.tfrecord")
    assert not (tmp_path / "model.keras").exists() and read_history(tmp_path / "dvclive").empty  # no epoch ran


@pytest.fixture(scope="module")
def untrained_model(tiny_shards, tmp_path_factory) -> Path:
    """An untrained small_cnn with its training card: all evaluate needs to reach the shards."""
    return untrained_small_cnn(tiny_shards, tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_val_shard_fails_evaluate_naming_it_before_any_output(tiny_shards, untrained_model, tmp_path,
                                                                         damage):
    shards = damaged_copy(tiny_shards, tmp_path / "shards", "val-00000-of-00001.tfrecord", damage)
    with pytest.raises(ShardDamaged) as error:
        evaluate(EvaluateParams(bootstrap=10), untrained_model, shards, tmp_path / "metrics.json",
                 tmp_path / "reports", card_path=tmp_path / "card.json")
    assert_names_the_shard_and_what_to_do(error, shards / "val-00000-of-00001.tfrecord")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shards"]  # no metrics, report or card


def test_a_shard_is_hashed_once_per_process_until_its_bytes_change(tiny_shards, tmp_path, monkeypatch):
    """Train and evaluate build several datasets over the same shards: each file is hashed once, and a file
    written since (a flipped byte, same size) is hashed again and refused."""
    shards = shutil.copytree(tiny_shards, tmp_path / "shards")
    hashed: list[Path] = []
    monkeypatch.setattr(data, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    first = data.shard_paths(shards, "val")
    assert data.shard_paths(shards, "val") == first and len(hashed) == len(first)
    flip_a_byte(Path(first[0]))
    with pytest.raises(ShardDamaged, match="its sha256 is not"):
        data.shard_paths(shards, "val")
    assert len(hashed) == len(first) + 1


def test_an_unreadable_shard_manifest_is_named(tiny_shards, tmp_path):
    shards = damaged_copy(tiny_shards, tmp_path / "shards", "manifest.json", "cut in half")
    with pytest.raises(ShardDamaged, match=rf"^{shards / 'manifest.json'}: not a readable shard manifest .*"
                                           rf"dvc checkout {shards}.*dvc repro shard"):
        train(TrainParams(epochs=1), shards, tmp_path / "model.keras", tmp_path / "dvclive", image_size=32)


# ---------------------------------------------------------------- a disk that fills while the shards are written

# Run in a child: RLIMIT_FSIZE makes every write past the limit fail with EFBIG (SIGXFSZ ignored, it would kill
# the process instead), the same failure path as a full disk's ENOSPC, without root or a small filesystem.
FILL_THE_DISK = """
import json, resource, signal, sys
from pathlib import Path
from skincancer.core.params import ShardParams
from skincancer.shard.shard import read_split_manifest, write_shards

split_root, runs, results = Path(sys.argv[1]), json.loads(sys.argv[2]), {}
manifest = read_split_manifest(split_root / "manifest.parquet")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for name, (out, limit, shard_mb) in runs.items():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        write_shards(manifest, split_root, Path(out), ShardParams(image_size=32, workers=1, target_shard_mb=shard_mb))
        results[name] = "no error"
    except Exception as error:
        results[name] = f"{type(error).__name__}: {error}"
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
Path(sys.argv[3]).write_text(json.dumps(results))
"""

# where the limit strikes: (shard.target_shard_mb, the file that passes it, the name the error gives it)
FULL_AT = {
    "a shard": (1.0, "train-00000-of-00001.tfrecord", ".train-00000.partial"),  # the first file written
    "manifest.json": (0.002, "manifest.json", "manifest.json"),  # many small shards, a long manifest
    "images.parquet": (0.007, "images.parquet", "images.parquet"),
}
WRITTEN_AFTER_THE_SHARDS = ("manifest.json", "images.parquet")  # in this order


def size_limit_stopping_at(sizes: dict[str, int], file: str) -> int:
    """A file size limit that every file written before ``file`` fits under and ``file`` does not."""
    def order(name: str) -> int:
        return WRITTEN_AFTER_THE_SHARDS.index(name) + 1 if name in WRITTEN_AFTER_THE_SHARDS else 0

    earlier = max((size for name, size in sizes.items() if order(name) < order(file)), default=0)
    assert earlier < sizes[file], f"{file} is not the first file over {earlier} bytes: pick another shard size"
    return (earlier + sizes[file]) // 2


def folder_bytes(folder: Path) -> dict[str, bytes | None]:
    """Every entry of the folder by name, with its bytes (None for a subfolder)."""
    return {path.name: path.read_bytes() if path.is_file() else None for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def disks_filled(tiny_shards, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """For each FULL_AT case: the folder holding the previous shards (a copy of the tiny ones) and what the shard
    stage, run again into it under a file size limit, failed with. One child process runs them all."""
    split_root, root = tiny_shards.parent / "split", tmp_path_factory.mktemp("disk-full")
    runs = {}
    for case, (shard_mb, file, _) in FULL_AT.items():
        sizes_at = write_shards_sizes(split_root, root / f"measure-{shard_mb}", shard_mb)
        out = root / case / "shards"
        shutil.copytree(tiny_shards, out)
        runs[case] = (str(out), size_limit_stopping_at(sizes_at, file), shard_mb)
    results = root / "results.json"
    subprocess.run([sys.executable, "-c", FILL_THE_DISK, str(split_root), json.dumps(runs), str(results)],
                   check=True, timeout=300)
    failed = json.loads(results.read_text())
    return {case: (Path(runs[case][0]), failed[case]) for case in FULL_AT}


def write_shards_sizes(split_root: Path, out: Path, shard_mb: float) -> dict[str, int]:
    """Each output file's size when the shard stage has all the room it wants."""
    write_shards(read_split_manifest(split_root / "manifest.parquet"), split_root, out,
                 ShardParams(image_size=32, workers=1, target_shard_mb=shard_mb))
    return {path.name: path.stat().st_size for path in out.iterdir()}


@pytest.mark.parametrize("case", FULL_AT)
def test_a_disk_filling_during_shard_fails_naming_the_file_and_keeps_the_previous_shards(disks_filled, tiny_shards,
                                                                                          case):
    out, failure = disks_filled[case]
    _, _, named = FULL_AT[case]
    assert failure.startswith("OutOfSpace: [Errno 27] File too large while writing ")
    written = failure.split(" while writing ", 1)[1].split(": ", 1)[0]
    assert Path(written).name == named and Path(written).parent.name.startswith(f".{out.name}.partial-")
    assert "the disk (or a quota, or the file size limit, `ulimit -f`) ran out" in failure
    assert f"the previous {out} is kept as it was and the partial folder removed" in failure
    assert "rerun `dvc repro shard`" in failure
    assert folder_bytes(out) == folder_bytes(tiny_shards)  # the last good shards, byte for byte
    assert [path.name for path in out.parent.iterdir()] == ["shards"]  # no partial folder left


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full: no device that answers every write ENOSPC")
def test_a_tfrecord_write_on_a_full_disk_is_an_os_error_naming_the_file():
    """TensorFlow reports ENOSPC as ResourceExhaustedError, naming no errno: the shard stage must still see a full
    disk (/dev/full fails every write with ENOSPC, as a full filesystem does)."""
    writer = tfrecords.writer("/dev/full")
    with pytest.raises(OSError) as error:
        writer.write(b"x" * (1 << 20))
        writer.close()
    assert (error.value.errno, error.value.strerror, error.value.filename) == (28, os.strerror(28), "/dev/full")


# ---------------------------------------------------------------- a metadata table fetch cannot read

GOOD_TABLE = csv_bytes(HAM_HEADER, [ham_row(image_id, f"HAM_{i}") for i, image_id in enumerate(NINE_CLASS_IDS)])
DOWNLOAD_AGAIN = "run `skincancer repin metadata/HAM10000_metadata.csv` (it forgets the checksum fetch recorded"

# table bytes -> what the error must say besides the file
UNREADABLE_TABLES: dict[str, tuple[bytes, str]] = {
    "binary garbage": (random.Random(0).randbytes(4096), "not a CSV: it holds NUL bytes"),
    "gzip-compressed": (gzip.compress(GOOD_TABLE, mtime=0), "not a CSV: it holds NUL bytes"),
    "not UTF-8": (GOOD_TABLE.replace(b"vidir_modern", "vidir_modérn".encode("latin-1")), "not a readable CSV"),
    "empty": (b"", "not a readable CSV: No columns to parse"),
    # pandas fills the cells a cut-off last row lacks with "" (cells read as text): `mal` would be joined as a sex
    "cut mid-row": (GOOD_TABLE[: GOOD_TABLE.rindex(b",male,") + len(b",mal")],
                    "1 row(s) have fewer cells than the header's 8 columns"),
    "a quote never closed": (GOOD_TABLE + b'HAM_9,"ISIC_9,nv\n', "EOF inside string"),
    "a row with extra cells": (GOOD_TABLE + b"HAM_9,ISIC_9,nv,histo,45,male,back,x,y,z\n", "Expected 8 fields"),
    "missing required columns": (csv_bytes(("image_id", "dx"), [("ISIC_1", "nv")]),
                                 "not a ham10000 metadata table; missing column(s)"),
}
WHAT_TO_DO = {  # beyond re-downloading, by case
    "missing required columns": "check fetch.metadata's layout for this file",
    "cut mid-row": DOWNLOAD_AGAIN,
}


def metadata_params(source: Path, table: Path | None) -> FetchParams:
    return FetchParams.model_validate({
        "datasets": [],
        "sources": [{"name": "kaggle", "url": source.as_uri(), "layout": "class-folders"}],
        "metadata": [] if table is None else [{"url": table.as_uri(), "layout": "ham10000"}],
    })


@pytest.mark.parametrize("case", UNREADABLE_TABLES)
def test_an_unreadable_metadata_table_fails_fetch_naming_it_and_keeps_the_last_index(tmp_path, case):
    data, says = UNREADABLE_TABLES[case]
    source, raw = write_class_folders(tmp_path / "kaggle", as_zip=True), tmp_path / "raw"
    fetch(metadata_params(source, None), raw)  # the last good run: an index without the table
    before = folder_bytes(raw)
    table = tmp_path / "HAM10000_metadata.csv"
    table.write_bytes(data)
    with pytest.raises(MetadataError) as error:
        fetch(metadata_params(source, table), raw)
    landed = raw / "metadata" / table.name
    message = str(error.value)
    assert message.startswith(f"{landed}: ") and says in message
    what_to_do = WHAT_TO_DO.get(case, "fetch.metadata's url for it must serve the ham10000 table as a UTF-8 CSV")
    assert what_to_do in message
    after = folder_bytes(raw)
    assert {name: after[name] for name in ("index.parquet", "duplicates.parquet")} == {
        name: before[name] for name in ("index.parquet", "duplicates.parquet")}  # the last index, untouched
    assert sorted(after) == sorted([*before, "metadata"])  # no conflicts file, nothing half-written


@contextlib.contextmanager
def without_root() -> Iterator[None]:
    """Root reads any file: as root, the body runs with nobody's effective ids (65534), root's given back after."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_metadata_table_fetch_may_not_read_is_named_with_what_to_do(tmp_path):
    table = tmp_path / "metadata" / "HAM10000_metadata.csv"
    table.parent.mkdir()
    table.write_bytes(GOOD_TABLE)
    table.chmod(0)
    with without_root(), pytest.raises(MetadataError) as error:
        read_metadata_table(table, "ham10000")
    message = str(error.value)
    assert message.startswith(f"{table}: cannot be read (Permission denied): give the fetch stage read access")
    assert f"{DOWNLOAD_AGAIN} for it and deletes the file), then `dvc repro fetch`" in message

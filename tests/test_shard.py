"""shard.write_shards on a generated split tree: counts, sizing, names, reproducibility, mappers, failures."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skincancer.core.params import ShardParams
from skincancer.shard import shard, tfrecords
from skincancer.shard.prepare import EncodeJob
from skincancer.shard.shard import TooManySkipped, chunk_size, in_threads, write_shards

SIZE = 32
COUNTS = {"train": (14, 10), "val": (4, 4), "test": (4, 4)}  # (benign, malignant)


def _jpeg(rng: random.Random) -> bytes:
    width, height = rng.randint(20, 90), rng.randint(20, 90)
    noise = np.random.default_rng(rng.randint(0, 2**32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _row(number: int, split: str, label: int, size: tuple[int, int]) -> dict[str, object]:
    known = number % 3 != 0
    return {
        "image_id": f"ISIC_{number:07d}",
        "source": "sample",
        "uri": f"sample/images.zip!ISIC_{number:07d}.jpg",
        "diagnosis": "melanoma" if label else "nevus",
        "benign_malignant": None,
        "patient_id": f"P{number % 11}" if known else None,
        "lesion_id": None,
        "sex": ("male" if number % 2 else "female") if known else None,
        "age_approx": float(20 + number) if known else math.nan,
        "anatom_site": "torso" if known else None,
        "sha256": f"{number:064x}",
        "width": size[0],  # the original's, as fetch read it from the header
        "height": size[1],
        "split": split,
        "label": label,
        "path": f"{split}/{'malignant' if label else 'benign'}/ISIC_{number:07d}.jpg",
        "group": f"G{number // 2}",  # the split's connected component: here pairs of images
    }


@pytest.fixture()
def split_root(tmp_path: Path) -> Path:
    """A split tree like the split stage writes: 40 random-size JPEGs, benign listed before malignant."""
    root = tmp_path / "split"
    rng = random.Random(0)
    rows = []
    for split, (benign, malignant) in COUNTS.items():
        for label, count in ((0, benign), (1, malignant)):
            for _ in range(count):
                data = _jpeg(rng)
                row = _row(len(rows), split, label, Image.open(io.BytesIO(data)).size)
                (root / str(row["path"])).parent.mkdir(parents=True, exist_ok=True)
                (root / str(row["path"])).write_bytes(data)
                rows.append(row)
    frame = pd.DataFrame(rows).astype({"age_approx": "float64", "label": "int64"})
    for name in ("patient_id", "lesion_id", "sex", "anatom_site", "benign_malignant", "group"):
        frame[name] = frame[name].astype("string")
    frame[["width", "height"]] = frame[["width", "height"]].astype("Int64")  # as fetch indexes them
    frame.to_parquet(root / "manifest.parquet")
    return root


def _manifest(split_root: Path) -> pd.DataFrame:
    return pd.read_parquet(split_root / "manifest.parquet")


def _params(**overrides: object) -> ShardParams:
    return ShardParams(**{"image_size": SIZE, "workers": 1, **overrides})


def _hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_writes_one_shard_per_split_with_matching_counts(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    out = tmp_path / "shards"
    document = write_shards(manifest, split_root, out, _params())

    names = sorted(path.name for path in out.iterdir())
    assert names == [tfrecords.IMAGE_TABLE, "manifest.json"] + sorted(f"{split}-00000-of-00001.tfrecord" for split in COUNTS)
    text = (out / "manifest.json").read_text()
    assert text == json.dumps(document, sort_keys=True, indent=2) + "\n"
    assert json.loads(text) == document
    assert document["spec_version"] == tfrecords.SPEC_VERSION
    assert (document["image_size"], document["resize"], document["skipped"]) == (SIZE, "crop", [])
    for split, (benign, malignant) in COUNTS.items():
        assert document["splits"][split] == {"count": benign + malignant, "benign": benign, "malignant": malignant,
                                             "shards": 1}
    for entry in document["shards"]:
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        records = list(tfrecords.read_examples([out / entry["file"]]))
        labels = [record["image/label"] for record in records]
        assert entry["count"] == len(records)
        assert entry["count_per_class"] == {"benign": labels.count(0), "malignant": labels.count(1)}


def test_fold_parts_are_sharded_like_splits_and_the_manifest_counts_the_folds(split_root: Path, tmp_path: Path) -> None:
    """split.folds: K fold parts and test, each its own shards; the image table names each image's part."""
    manifest = _manifest(split_root)
    rest = manifest["split"] != "test"
    manifest.loc[rest, "split"] = [f"fold{number % 3}" for number in range(int(rest.sum()))]
    out = tmp_path / "shards"
    document = write_shards(manifest, split_root, out, _params())

    assert document["folds"] == 3 and list(document["splits"]) == ["fold0", "fold1", "fold2", "test"]
    assert [entry["split"] for entry in document["shards"]] == ["fold0", "fold1", "fold2", "test"]
    counts = manifest.groupby("split").size()
    assert {part: document["splits"][part]["count"] for part in document["splits"]} == counts.to_dict()
    table = pd.read_parquet(out / tfrecords.IMAGE_TABLE)
    assert table["split"].tolist() == [part for part in document["splits"] for _ in range(counts[part])]
    assert "folds" not in write_shards(_manifest(split_root), split_root, tmp_path / "plain", _params())


def test_records_carry_the_manifest_metadata_and_resized_images(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root).set_index("image_id")
    write_shards(manifest.reset_index(), split_root, tmp_path / "shards", _params(resize="pad"))
    records = list(tfrecords.read_examples([tmp_path / "shards" / "train-00000-of-00001.tfrecord"]))
    assert sorted(record["image/id"] for record in records) == sorted(manifest.index[manifest["split"] == "train"])
    for record in records:
        row = manifest.loc[record["image/id"]]
        assert Image.open(io.BytesIO(record["image/encoded"])).size == (SIZE, SIZE)
        assert (record["image/height"], record["image/width"]) == (SIZE, SIZE)
        assert record["image/label"] == row["label"]
        assert record["image/diagnosis"] == row["diagnosis"] and record["image/source"] == "sample"
        assert record["image/group"] == row["group"]
        for column in ("patient_id", "sex", "anatom_site"):
            assert record[f"image/{column}"] == ("" if pd.isna(row[column]) else row[column])
        if pd.isna(row["age_approx"]):
            assert math.isnan(record["image/age_approx"])
        else:
            assert record["image/age_approx"] == row["age_approx"]


def test_a_manifest_without_groups_is_refused_naming_the_column_and_the_stage_to_rerun(
    split_root: Path, tmp_path: Path
) -> None:
    """Evaluation resamples the split's groups: a manifest without them is one the split stage must rewrite."""
    manifest = _manifest(split_root).drop(columns="group")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['group'\].*dvc repro split"):
        write_shards(manifest, split_root, tmp_path / "shards", _params())
    assert not (tmp_path / "shards").exists()


def test_a_manifest_without_image_sizes_is_refused_naming_it_and_saying_to_rerun_fetch(
    split_root: Path, tmp_path: Path
) -> None:
    """Split from an index older than the originals' sizes: a new split alone would not help, a new fetch does."""
    manifest = _manifest(split_root).drop(columns=["width", "height"])
    message = re.escape(f"{split_root / 'manifest.parquet'} lacks column(s) ['width', 'height']") + ".*dvc repro fetch"
    with pytest.raises(ValueError, match=message):
        write_shards(manifest, split_root, tmp_path / "shards", _params())
    assert not (tmp_path / "shards").exists()


def test_the_image_table_gives_each_original_its_size_and_band(split_root: Path, tmp_path: Path) -> None:
    """The band goes by the original's longer side, a side at a band's minimum in it; no size is `unknown`."""
    manifest = _manifest(split_root)
    manifest.loc[5, ["width", "height"]] = pd.NA  # an image fetch could not read the header of
    edge = int(manifest[["width", "height"]].max(axis=1).dropna().sort_values().iloc[len(manifest) // 2])
    write_shards(manifest, split_root, tmp_path / "shards", _params(bands={"thumbnail": 0, "larger": edge}))
    table = pd.read_parquet(tmp_path / "shards" / tfrecords.IMAGE_TABLE)
    assert (table["width"].dtype, table["height"].dtype, table["band"].dtype) == (
        pd.Int64Dtype(), pd.Int64Dtype(), pd.StringDtype())
    by_id = manifest.set_index("image_id").loc[table["image_id"]].reset_index()
    pd.testing.assert_frame_equal(table[["width", "height"]], by_id[["width", "height"]])
    longer = by_id[["width", "height"]].max(axis=1, skipna=False)
    expected = ["unknown" if pd.isna(side) else "larger" if side >= edge else "thumbnail" for side in longer]
    assert table["band"].tolist() == expected
    assert set(expected) == {"thumbnail", "larger", "unknown"} and edge in set(longer)  # one image at the edge


def test_the_bands_change_the_image_table_and_not_a_byte_of_the_records(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    for name, bands in (("default", {"small": 0, "full_size": 512}), ("split_at_50", {"small": 0, "large": 50})):
        write_shards(manifest, split_root, tmp_path / name, _params(bands=bands))
    records = {name: {file: digest for file, digest in _hashes(tmp_path / name).items() if file.endswith(".tfrecord")}
               for name in ("default", "split_at_50")}
    assert records["default"] == records["split_at_50"] and len(records["default"]) == len(COUNTS)
    bands = {name: set(pd.read_parquet(tmp_path / name / tfrecords.IMAGE_TABLE)["band"]) for name in records}
    assert bands == {"default": {"small"}, "split_at_50": {"small", "large"}}


def test_the_image_table_lists_every_record_in_shard_order_with_its_facts(split_root: Path, tmp_path: Path) -> None:
    """Train, evaluate and the report read labels, groups and ids here instead of decoding the records."""
    manifest = _manifest(split_root)
    document = write_shards(manifest, split_root, tmp_path / "shards", _params(target_shard_mb=0.01))
    table = pd.read_parquet(tmp_path / "shards" / tfrecords.IMAGE_TABLE)
    assert list(table.columns) == list(tfrecords.IMAGE_COLUMNS)
    records = [(entry["file"], record) for entry in document["shards"]
               for record in tfrecords.read_examples([tmp_path / "shards" / entry["file"]])]
    assert len(records) > len(document["shards"]) > 3  # several records in several shards per split
    assert list(table["image_id"]) == [record["image/id"] for _, record in records]
    assert list(table["shard"]) == [file for file, _ in records]
    assert list(table["label"]) == [record["image/label"] for _, record in records]
    assert list(table["group"]) == [record["image/group"] for _, record in records]
    assert list(table["diagnosis"]) == [record["image/diagnosis"] for _, record in records]
    by_id = manifest.set_index("image_id")
    assert (table["split"].to_numpy() == by_id.loc[table["image_id"], "split"].to_numpy()).all()


def test_order_is_a_seeded_shuffle_mixing_classes(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    orders = {}
    for seed in (0, 1):
        write_shards(manifest, split_root, tmp_path / f"seed{seed}", _params(seed=seed))
        path = tmp_path / f"seed{seed}" / "train-00000-of-00001.tfrecord"
        orders[seed] = [(record["image/id"], record["image/label"]) for record in tfrecords.read_examples([path])]
    labels = [label for _, label in orders[0]]
    assert labels != sorted(labels)  # the manifest lists benign first; the shard must not
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]
    # The input row order does not matter, only the seed.
    write_shards(manifest.iloc[::-1], split_root, tmp_path / "reversed", _params(seed=0))
    assert _hashes(tmp_path / "reversed") == _hashes(tmp_path / "seed0")


def test_tiny_target_rolls_over_to_many_shards(split_root: Path, tmp_path: Path) -> None:
    target_mb = 4096 / 2**20
    document = write_shards(_manifest(split_root), split_root, tmp_path / "shards", _params(target_shard_mb=target_mb))
    train = [entry for entry in document["shards"] if entry["split"] == "train"]
    total = len(train)
    assert total > 3 and document["splits"]["train"]["shards"] == total
    assert [entry["file"] for entry in train] == [f"train-{i:05d}-of-{total:05d}.tfrecord" for i in range(total)]
    assert sum(entry["count"] for entry in train) == sum(COUNTS["train"])
    for entry in document["shards"]:
        assert entry["count"] >= 1
        assert entry["bytes"] <= 4096 or entry["count"] == 1
    on_disk = sorted(path.name for path in (tmp_path / "shards").iterdir())
    assert on_disk == sorted([tfrecords.IMAGE_TABLE, "manifest.json"] + [entry["file"] for entry in document["shards"]])


def test_chunks_are_a_few_per_worker_and_capped() -> None:
    assert chunk_size(40, 2) == 5
    assert chunk_size(40, 1) == 10
    assert chunk_size(3, 8) == 1
    assert chunk_size(1_000_000, 2) == shard.MAX_CHUNK


def test_any_mapper_yields_the_same_bytes(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    seen: list[list[str]] = []

    def eager_in_reverse(encode, chunks):  # runs the last chunk first, returns a plain list in order
        seen.extend([job.path for job in chunk] for chunk in chunks)
        return list(reversed([encode(chunk) for chunk in reversed(chunks)]))

    write_shards(manifest, split_root, tmp_path / "default", _params(workers=2))
    write_shards(manifest, split_root, tmp_path / "custom", _params(workers=2), map_chunks=eager_in_reverse)
    assert _hashes(tmp_path / "custom") == _hashes(tmp_path / "default")
    assert len(seen) == 8 and sorted(path for chunk in seen for path in chunk) == sorted(
        str(split_root / path) for path in manifest["path"]
    )


@pytest.mark.parametrize(
    ("mapper", "message"),
    [
        (lambda encode, chunks: [encode(chunk) for chunk in chunks[:-1]], "shorter"),
        (lambda encode, chunks: [encode(chunk)[1:] for chunk in chunks], "4 results for a chunk of 5 images"),
    ],
)
def test_a_mapper_losing_results_fails_the_run(split_root: Path, tmp_path: Path, mapper, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_shards(_manifest(split_root), split_root, tmp_path / "shards", _params(workers=2), map_chunks=mapper)
    assert not (tmp_path / "shards").exists()


def test_default_mapper_runs_ahead_by_at_most_two_chunks_per_worker() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def encode(chunk: list[int]) -> list[int]:
        with lock:
            started.append(chunk[0])
        return chunk

    results = in_threads(2)(encode, [[index] for index in range(50)])
    assert next(results) == [0]
    time.sleep(0.2)  # give the pool every chance to run ahead
    assert len(started) <= 2 * 2 + 1
    assert [chunk[0] for chunk in results] == list(range(1, 50))


def test_no_job_or_image_facts_outlive_their_chunk_so_memory_is_flat_in_the_image_count(
    split_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs are made a chunk at a time as the writer gets to them, and an image's facts are let go once its record
    is written (the image table is built from the manifest at the end): neither exists for every image at once."""
    manifest = _manifest(split_root)
    write_shards(manifest, split_root, tmp_path / "plain", _params(workers=2))
    lock = threading.Lock()
    live = {"jobs": 0, "facts": 0}
    live_at_each_record: list[tuple[int, int]] = []

    def count(kind: str, step: int) -> None:
        with lock:  # jobs are made and dropped on the encoding threads
            live[kind] += step

    def tracked(kind: str, made: object) -> object:
        count(kind, 1)
        weakref.finalize(made, count, kind, -1)
        return made

    class Facts(dict):  # a dict a weak reference can follow
        pass

    def job(path: str, preparation: object) -> object:
        return tracked("jobs", EncodeJob(path, preparation))

    def facts(row: dict, split: str, real=shard._image_facts) -> object:
        return tracked("facts", Facts(real(row, split)))

    def serialize(real=tfrecords.serialize_example, **fields: object) -> bytes:
        live_at_each_record.append((live["jobs"], live["facts"]))
        return real(**fields)

    monkeypatch.setattr(shard, "MAX_CHUNK", 2)  # 20 chunks of the 40 images
    monkeypatch.setattr(shard, "EncodeJob", job)
    monkeypatch.setattr(shard, "_image_facts", facts)
    monkeypatch.setattr(tfrecords, "serialize_example", serialize)
    write_shards(manifest, split_root, tmp_path / "tracked", _params(workers=2))

    assert _hashes(tmp_path / "tracked") == _hashes(tmp_path / "plain")
    assert len(live_at_each_record) == len(manifest)
    in_flight = (2 * 2 + 2) * shard.MAX_CHUNK  # the default mapper's 2 x workers + 1 chunks, and the one written
    assert max(jobs for jobs, _ in live_at_each_record) <= in_flight < len(manifest)
    assert max(image for _, image in live_at_each_record) == 1  # the image being written


def test_a_mapper_that_keeps_its_results_does_not_keep_the_encoded_images(split_root: Path, tmp_path: Path) -> None:
    """Prefect's task engine keeps each task's returned list in reference cycles until a full garbage collection:
    the writer takes each image out of its chunk's list as it writes it, so no encoded image outlives its record."""
    kept: list[list] = []

    def keeping(encode, chunks):
        for chunk in chunks:
            kept.append(encode(chunk))
            yield kept[-1]

    manifest = _manifest(split_root)
    write_shards(manifest, split_root, tmp_path / "kept", _params(), keeping)
    write_shards(manifest, split_root, tmp_path / "plain", _params())
    assert _hashes(tmp_path / "kept") == _hashes(tmp_path / "plain")
    assert len(kept) > 1 and all(result is None for chunk in kept for result in chunk)


def test_the_stage_reads_only_the_manifest_columns_it_uses_and_still_names_a_missing_one(
    split_root: Path, tmp_path: Path
) -> None:
    """The manifest lives for the whole run: the split's other columns (uri, sha256, lesion_id...) stay on disk."""
    read = shard.read_split_manifest(split_root / "manifest.parquet")
    assert sorted(read.columns) == sorted(shard._REQUIRED)
    assert {"uri", "sha256", "lesion_id"} <= set(_manifest(split_root).columns)
    write_shards(read, split_root, tmp_path / "narrow", _params())
    write_shards(_manifest(split_root), split_root, tmp_path / "whole", _params())
    assert _hashes(tmp_path / "narrow") == _hashes(tmp_path / "whole")

    _manifest(split_root).drop(columns="group").to_parquet(split_root / "manifest.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['group'\]"):
        write_shards(shard.read_split_manifest(split_root / "manifest.parquet"), split_root, tmp_path / "x", _params())


def test_reruns_are_byte_identical_whatever_the_worker_count(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    target_mb = 8192 / 2**20
    for workers in (1, 2, 3):
        write_shards(manifest, split_root, tmp_path / f"{workers}", _params(workers=workers, target_shard_mb=target_mb))
    first = _hashes(tmp_path / "1")
    assert len(first) > 4
    assert _hashes(tmp_path / "2") == _hashes(tmp_path / "3") == first
    # Rerunning over an existing output replaces it with the same bytes.
    write_shards(manifest, split_root, tmp_path / "2", _params(workers=2, target_shard_mb=target_mb))
    assert _hashes(tmp_path / "2") == first


def _break_images(split_root: Path, manifest: pd.DataFrame) -> dict[str, str]:
    """Garbage, a text file, a truncated JPEG and a zero-byte file; returns image id -> the reason expected."""
    garbage, text, truncated, empty = (manifest.iloc[i] for i in (0, 17, 30, 38))
    (split_root / garbage["path"]).write_bytes(b"definitely not a jpeg")
    (split_root / text["path"]).write_text("isic_id,diagnosis\nISIC_0000017,nevus\n")
    whole = (split_root / truncated["path"]).read_bytes()
    (split_root / truncated["path"]).write_bytes(whole[: len(whole) // 2])
    (split_root / empty["path"]).write_bytes(b"")
    return {
        garbage["image_id"]: "not a recognised image format",
        text["image_id"]: "not a recognised image format",
        truncated["image_id"]: "truncated",
        empty["image_id"]: "empty file (0 bytes)",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_images_are_skipped_and_reported(
    split_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    manifest = _manifest(split_root)
    expected = _break_images(split_root, manifest)

    with caplog.at_level(logging.WARNING, logger="skincancer.shard.shard"):
        params = _params(workers=workers, max_skipped_fraction=0.1)  # 4 of 40: exactly at the limit
        document = write_shards(manifest, split_root, tmp_path / "shards", params)

    by_id = {entry["image_id"]: entry for entry in document["skipped"]}
    assert set(by_id) == set(expected)
    for image_id, reason in expected.items():
        assert reason in by_id[image_id]["reason"]
        assert by_id[image_id]["path"] == manifest.set_index("image_id").loc[image_id, "path"]
        assert image_id in caplog.text
    assert document["splits"]["train"]["benign"] == COUNTS["train"][0] - 1
    assert sum(split["count"] for split in document["splits"].values()) == len(manifest) - len(expected)
    files = sorted((tmp_path / "shards").glob("*.tfrecord"))
    written = {record["image/id"] for record in tfrecords.read_examples(files)}
    assert written == set(manifest["image_id"]) - set(by_id)


def test_too_many_bad_images_fail_the_stage_naming_them(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    expected = _break_images(split_root, manifest)
    first = manifest["image_id"].iloc[0]
    with pytest.raises(TooManySkipped, match=r"4 of 40 images \(10\.0%\).*max_skipped_fraction = 0\.05") as caught:
        write_shards(manifest, split_root, tmp_path / "shards", _params(max_skipped_fraction=0.05))
    assert all(image_id in str(caught.value) for image_id in expected)
    assert f"{first} (not a recognised image format)" in str(caught.value)
    assert not (tmp_path / "shards").exists()


def test_images_over_max_pixels_are_skipped_as_bombs(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    big = manifest.iloc[3]
    Image.new("RGB", (120, 100)).save(split_root / big["path"], "JPEG")  # the others are at most 90 x 90
    params = _params(max_pixels=8100, max_skipped_fraction=0.05)
    document = write_shards(manifest, split_root, tmp_path / "shards", params)
    assert document["skipped"] == [
        {"image_id": big["image_id"], "path": big["path"], "reason": "decompression bomb: 120 x 100 pixels > 8100"}
    ]


def test_missing_split_root_says_to_run_split_first(tmp_path: Path, split_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*dvc repro split"):
        write_shards(_manifest(split_root), tmp_path / "nowhere", tmp_path / "shards", _params())
    assert not (tmp_path / "shards").exists()


def test_missing_image_names_the_file(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    (split_root / manifest["path"].iloc[5]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{manifest['image_id'].iloc[5]}\.jpg.*dvc repro split"):
        write_shards(manifest, split_root, tmp_path / "shards", _params())
    assert not (tmp_path / "shards").exists()


def test_a_split_with_no_images_is_an_error_naming_it(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    with pytest.raises(ValueError, match="'val'"):
        write_shards(manifest[manifest["split"] != "val"], split_root, tmp_path / "shards", _params())
    for path in manifest.loc[manifest["split"] == "test", "path"]:
        (split_root / path).write_bytes(b"broken")
    with pytest.raises(ValueError, match="'test' has no readable images"):
        write_shards(manifest, split_root, tmp_path / "shards", _params())
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_write_leaves_nothing_behind(
    split_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    manifest = _manifest(split_root)
    out = tmp_path / "out" / "shards"
    real = tfrecords.serialize_example
    calls = []

    def failing(**fields: object) -> bytes:
        calls.append(fields["image_id"])
        if len(calls) == 30:  # past the first split, so shard files have already been renamed
            raise RuntimeError("power cut")
        return real(**fields)

    monkeypatch.setattr(tfrecords, "serialize_example", failing)
    params = _params(workers=workers, target_shard_mb=4096 / 2**20)
    closed = []

    def lazy(encode, chunks) -> Iterator[list]:
        try:
            yield from in_threads(workers)(encode, chunks)
        finally:
            closed.append(True)

    with pytest.raises(RuntimeError, match="power cut"):
        write_shards(manifest, split_root, out, params, map_chunks=lazy)
    assert closed == [True]  # the mapper was stopped, not left encoding the rest
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_interrupted_rerun_keeps_the_previous_output(
    split_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(split_root)
    out = tmp_path / "out" / "shards"
    write_shards(manifest, split_root, out, _params())
    before = _hashes(out)

    def failing(self: object, record: bytes, label: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shard._ShardRoller, "add", failing)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, split_root, out, _params(image_size=48))
    assert _hashes(out) == before
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["shards"]


@pytest.fixture
def dask_cluster(prefect_api: str, monkeypatch: pytest.MonkeyPatch):
    """A real distributed.LocalCluster of 2 worker processes; they report task runs to the test's server."""
    from distributed import LocalCluster

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)  # inherited by the worker processes
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def _transitions(address: str) -> int:
    from distributed import Client

    with Client(address) as client:
        return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_flow_encodes_chunks_as_prefect_tasks_with_the_library_bytes(
    split_root: Path, tmp_path: Path, prefect_api: str, runner: str, request: pytest.FixtureRequest
) -> None:
    import shutil

    import httpx
    import yaml
    from project_copy import copy_project, project_env, run

    project = copy_project(tmp_path / "project")
    shutil.copytree(split_root, project / "data/split")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["shard"] |= {"image_size": SIZE, "workers": 2, "target_shard_mb": 8192 / 2**20}
    cluster = request.getfixturevalue("dask_cluster") if runner == "dask" else None
    if cluster is not None:
        params["orchestration"]["dask_address"] = cluster.scheduler_address
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    def encode_runs() -> dict[str, dict]:
        runs = httpx.post(f"{prefect_api}/task_runs/filter", json={"limit": 200}).json()
        return {run["id"]: run for run in runs if run["name"].startswith("encode-chunk")}

    before = encode_runs()
    transitions = _transitions(cluster.scheduler_address) if cluster else 0
    run([sys.executable, "-m", "flows.shard"], project, project_env(project) | {"PREFECT_API_URL": prefect_api})
    ours = [task_run for key, task_run in encode_runs().items() if key not in before]
    assert len(ours) == 8 and all(task_run["state_type"] == "COMPLETED" for task_run in ours)
    assert len({task_run["flow_run_id"] for task_run in ours}) == 1
    if cluster is not None:  # the chunks ran on the cluster's workers, not in the flow's process
        assert _transitions(cluster.scheduler_address) >= transitions + 3 * len(ours)

    library = _params(**params["shard"])
    write_shards(_manifest(split_root), split_root, tmp_path / "library", library)
    assert _hashes(project / "data/shards") == _hashes(tmp_path / "library")


@pytest.mark.slow
def test_the_flow_submits_only_a_few_chunks_ahead_of_the_writer(prefect_api: str, monkeypatch: pytest.MonkeyPatch):
    """Submitted all at once, the encode-chunk tasks outran the writer and held every encoded image of a large split
    until it was written (shard's peak grew with the image count at ISIC 2020 scale, under Prefect only)."""
    from prefect import flow

    from flows.shard import chunks_as_tasks

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    started: list[int] = []

    def encode(chunk: list[int]) -> list[int]:
        started.append(chunk[0])
        return list(chunk)

    @flow
    def leads() -> list[int]:
        ahead = []
        for consumed, _ in enumerate(chunks_as_tasks(1)(encode, [[index] for index in range(20)]), start=1):
            time.sleep(0.05)  # a slow writer: encoders submitted all at once would all have run meanwhile
            ahead.append(len(started) - consumed)
        return ahead

    assert max(leads()) <= 2  # 2 x workers + 1 in flight, one of them being handed over
    assert sorted(started) == list(range(20))

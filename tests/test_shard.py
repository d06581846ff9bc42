"""shard.write_shards on a generated split tree: counts, sizing, names, reproducibility, failures."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skincancer import shard, tfrecords
from skincancer.params import ShardParams
from skincancer.shard import write_shards

SIZE = 32
COUNTS = {"train": (14, 10), "val": (4, 4), "test": (4, 4)}  # (benign, malignant)


def _jpeg(rng: random.Random) -> bytes:
    width, height = rng.randint(20, 90), rng.randint(20, 90)
    noise = np.random.default_rng(rng.randint(0, 2**32)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _row(number: int, split: str, label: int) -> dict[str, object]:
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
        "split": split,
        "label": label,
        "path": f"{split}/{'malignant' if label else 'benign'}/ISIC_{number:07d}.jpg",
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
                row = _row(len(rows), split, label)
                (root / str(row["path"])).parent.mkdir(parents=True, exist_ok=True)
                (root / str(row["path"])).write_bytes(_jpeg(rng))
                rows.append(row)
    frame = pd.DataFrame(rows).astype({"age_approx": "float64", "label": "int64"})
    for name in ("patient_id", "lesion_id", "sex", "anatom_site", "benign_malignant"):
        frame[name] = frame[name].astype("string")
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
    assert names == ["manifest.json"] + sorted(f"{split}-00000-of-00001.tfrecord" for split in COUNTS)
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
        for column in ("patient_id", "sex", "anatom_site"):
            assert record[f"image/{column}"] == ("" if pd.isna(row[column]) else row[column])
        if pd.isna(row["age_approx"]):
            assert math.isnan(record["image/age_approx"])
        else:
            assert record["image/age_approx"] == row["age_approx"]


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
    assert on_disk == sorted(["manifest.json"] + [entry["file"] for entry in document["shards"]])


def test_reruns_are_byte_identical_whatever_the_worker_count(split_root: Path, tmp_path: Path) -> None:
    manifest = _manifest(split_root)
    target_mb = 8192 / 2**20
    write_shards(manifest, split_root, tmp_path / "one", _params(workers=1, target_shard_mb=target_mb))
    write_shards(manifest, split_root, tmp_path / "two", _params(workers=2, target_shard_mb=target_mb))
    first = _hashes(tmp_path / "one")
    assert len(first) > 4
    assert _hashes(tmp_path / "two") == first
    # Rerunning over an existing output replaces it with the same bytes.
    write_shards(manifest, split_root, tmp_path / "two", _params(workers=2, target_shard_mb=target_mb))
    assert _hashes(tmp_path / "two") == first


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_images_are_skipped_and_reported(
    split_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    manifest = _manifest(split_root)
    garbage, truncated = manifest.iloc[0], manifest.iloc[30]
    (split_root / garbage["path"]).write_bytes(b"definitely not a jpeg")
    whole = (split_root / truncated["path"]).read_bytes()
    (split_root / truncated["path"]).write_bytes(whole[: len(whole) // 2])

    with caplog.at_level(logging.WARNING, logger="skincancer.shard"):
        document = write_shards(manifest, split_root, tmp_path / "shards", _params(workers=workers))

    by_id = {entry["image_id"]: entry for entry in document["skipped"]}
    assert set(by_id) == {garbage["image_id"], truncated["image_id"]}
    assert by_id[garbage["image_id"]]["path"] == garbage["path"]
    assert by_id[garbage["image_id"]]["reason"] == "not a recognised image format"
    assert "truncated" in by_id[truncated["image_id"]]["reason"]
    assert garbage["image_id"] in caplog.text and truncated["image_id"] in caplog.text
    assert document["splits"]["train"]["benign"] == COUNTS["train"][0] - 1
    assert document["splits"][truncated["split"]]["count"] == sum(COUNTS[truncated["split"]]) - 1
    files = sorted((tmp_path / "shards").glob("*.tfrecord"))
    written = {record["image/id"] for record in tfrecords.read_examples(files)}
    assert written == set(manifest["image_id"]) - set(by_id)


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
    with pytest.raises(RuntimeError, match="power cut"):
        write_shards(manifest, split_root, out, params)
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

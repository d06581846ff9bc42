"""tfrecords: every feature round-trips through the graph parser and the Python reader alike; readers check
the shards' spec_version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tensorflow as tf

from skincancer.shard import tfrecords

KNOWN = {
    "encoded": b"\xff\xd8 not really a jpeg \x00\xff\xd9",
    "height": 96,
    "width": 64,
    "image_id": "ISIC_0000001",
    "label": 1,
    "diagnosis": "melanoma",
    "source": "isic2020",
    "patient_id": "IP_7279968",
    "sex": "female",
    "age_approx": 45.0,
    "anatom_site": "torso",
    "group": "IP_7279968",
}
UNKNOWN = {**KNOWN, "image_id": "ISIC_0000002", "label": 0, "diagnosis": "nevus", "patient_id": None,
           "sex": None, "age_approx": None, "anatom_site": None,
           "group": "ISIC_0000002"}

EXPECTED_KNOWN = {
    "image/encoded": KNOWN["encoded"],
    "image/height": 96,
    "image/width": 64,
    "image/id": "ISIC_0000001",
    "image/label": 1,
    "image/diagnosis": "melanoma",
    "image/source": "isic2020",
    "image/patient_id": "IP_7279968",
    "image/sex": "female",
    "image/age_approx": 45.0,
    "image/anatom_site": "torso",
    "image/group": "IP_7279968",
}
EXPECTED_UNKNOWN = {**EXPECTED_KNOWN, "image/id": "ISIC_0000002", "image/label": 0, "image/diagnosis": "nevus",
                    "image/patient_id": "", "image/sex": "", "image/age_approx": math.nan, "image/anatom_site": "",
                    "image/group": "ISIC_0000002"}


def _same(actual: dict[str, object], expected: dict[str, object]) -> None:
    assert set(actual) == set(expected) == set(tfrecords.FEATURE_SPEC)
    for name, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual[name]), name  # type: ignore[arg-type]
        else:
            assert actual[name] == value, name
            assert type(actual[name]) is type(value), name


def _python(parsed: dict[str, tf.Tensor]) -> dict[str, object]:
    """Tensors -> Python values the way a consumer of parse_example would read them."""
    out: dict[str, object] = {}
    for name, tensor in parsed.items():
        value = tensor.numpy()
        if tensor.dtype == tf.string:
            out[name] = value if name == "image/encoded" else value.decode()
        elif tensor.dtype == tf.int64:
            out[name] = int(value)
        else:
            out[name] = float(value)
    return out


@pytest.fixture()
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "train-00000-of-00001.tfrecord"
    with tfrecords.writer(path) as writer:
        writer.write(tfrecords.serialize_example(**KNOWN))
        writer.write(tfrecords.serialize_example(**UNKNOWN))
    return path


def test_parse_example_round_trips_every_feature() -> None:
    _same(_python(tfrecords.parse_example(tfrecords.serialize_example(**KNOWN))), EXPECTED_KNOWN)
    _same(_python(tfrecords.parse_example(tfrecords.serialize_example(**UNKNOWN))), EXPECTED_UNKNOWN)


def test_parse_example_dtypes_match_the_spec() -> None:
    parsed = tfrecords.parse_example(tf.constant(tfrecords.serialize_example(**KNOWN)))
    assert {name: tensor.dtype for name, tensor in parsed.items()} == {
        name: spec.dtype for name, spec in tfrecords.FEATURE_SPEC.items()
    }
    assert all(tensor.shape == () for tensor in parsed.values())


def test_parse_example_works_inside_tf_data(shard: Path) -> None:
    dataset = tf.data.TFRecordDataset([str(shard)]).map(tfrecords.parse_example)
    ids = [record["image/id"].numpy().decode() for record in dataset]
    assert ids == ["ISIC_0000001", "ISIC_0000002"]


def test_read_examples_round_trips_every_feature(shard: Path) -> None:
    records = list(tfrecords.read_examples([shard]))
    assert len(records) == 2
    _same(records[0], EXPECTED_KNOWN)
    _same(records[1], EXPECTED_UNKNOWN)


def test_read_examples_keeps_file_order(shard: Path, tmp_path: Path) -> None:
    other = tmp_path / "train-00001-of-00002.tfrecord"
    with tfrecords.writer(other) as writer:
        writer.write(tfrecords.serialize_example(**{**KNOWN, "image_id": "ISIC_0000003"}))
    ids = [record["image/id"] for record in tfrecords.read_examples([other, shard])]
    assert ids == ["ISIC_0000003", "ISIC_0000001", "ISIC_0000002"]
    assert list(tfrecords.read_examples([])) == []


def test_nan_age_is_stored_as_nan_not_dropped() -> None:
    explicit_nan = tfrecords.serialize_example(**{**KNOWN, "age_approx": math.nan})
    assert explicit_nan == tfrecords.serialize_example(**{**KNOWN, "age_approx": None})
    assert math.isnan(float(tfrecords.parse_example(explicit_nan)["image/age_approx"]))


def test_serialization_is_deterministic_and_record_size_is_exact(shard: Path) -> None:
    records = [tfrecords.serialize_example(**KNOWN), tfrecords.serialize_example(**UNKNOWN)]
    assert records == [tfrecords.serialize_example(**KNOWN), tfrecords.serialize_example(**UNKNOWN)]
    assert shard.stat().st_size == sum(len(record) + tfrecords.RECORD_OVERHEAD for record in records)


def test_readers_refuse_shards_of_another_spec_version(tmp_path: Path) -> None:
    from skincancer.train import data

    manifest = {"spec_version": tfrecords.SPEC_VERSION, "image_size": 32, "shards": [], "splits": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert data.read_shard_manifest(tmp_path) == manifest
    for old in ({**manifest, "spec_version": tfrecords.SPEC_VERSION - 1}, {"image_size": 32}):
        (tmp_path / "manifest.json").write_text(json.dumps(old))
        found, reads = old.get("spec_version"), tfrecords.SPEC_VERSION
        expected = rf"spec_version {found}, but this code reads spec_version {reads}.*dvc repro shard"
        with pytest.raises(data.ShardSpecMismatch, match=expected):
            data.read_shard_manifest(tmp_path)
        with pytest.raises(data.ShardSpecMismatch):
            data.eval_dataset(tmp_path, "val", batch_size=4)  # train and evaluate read through it

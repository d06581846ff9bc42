"""TFRecord feature spec, writer and reader: the one contract between the shard, train and evaluate stages.

Bump SPEC_VERSION on any change to the features below (it is recorded in data/shards/manifest.json).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import tensorflow as tf

SPEC_VERSION = 2  # 2: image/group

# Per-record framing on disk: uint64 length, masked crc32c of the length, masked crc32c of the data.
RECORD_OVERHEAD = 16
# what a write fails with when the disk (or a quota, or the file size limit `ulimit -f`) runs out
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# beside the shards: one row per record, in shard order (split, then shard, then record), so readers learn
# labels, groups, ids and the original's size (`width`, `height`) and resolution band without parsing a record
# (skincancer.shard.shard.write_image_table)
IMAGE_TABLE = "images.parquet"
IMAGE_COLUMNS = ("image_id", "split", "label", "diagnosis", "source", "group", "patient_id", "sex", "age_approx",
                 "anatom_site", "width", "height", "band", "shard")

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature] = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/diagnosis": tf.io.FixedLenFeature([], tf.string),
    "image/source": tf.io.FixedLenFeature([], tf.string),
    "image/patient_id": tf.io.FixedLenFeature([], tf.string),
    "image/sex": tf.io.FixedLenFeature([], tf.string),
    "image/age_approx": tf.io.FixedLenFeature([], tf.float32),
    "image/anatom_site": tf.io.FixedLenFeature([], tf.string),
    "image/group": tf.io.FixedLenFeature([], tf.string),
}

_TEXT_FEATURES = (
    "image/id", "image/diagnosis", "image/source", "image/patient_id", "image/sex", "image/anatom_site", "image/group",
)


def serialize_example(
    *,
    encoded: bytes,
    height: int,
    width: int,
    image_id: str,
    label: int,
    diagnosis: str,
    source: str,
    group: str,
    patient_id: str | None = None,
    sex: str | None = None,
    age_approx: float | None = None,
    anatom_site: str | None = None,
) -> bytes:
    """One tf.train.Example; unknown text is "" and unknown age NaN, so every record has every feature.

    `group` is the split's group (patient, lesion, duplicate links): evaluation resamples whole groups.
    """
    features = {
        "image/encoded": _bytes(encoded),
        "image/height": _int(height),
        "image/width": _int(width),
        "image/id": _text(image_id),
        "image/label": _int(label),
        "image/diagnosis": _text(diagnosis),
        "image/source": _text(source),
        "image/patient_id": _text(patient_id),
        "image/sex": _text(sex),
        "image/age_approx": _float(math.nan if age_approx is None else age_approx),
        "image/anatom_site": _text(anatom_site),
        "image/group": _text(group),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # Protobuf map order is otherwise unspecified; shards must be byte-identical across runs.
    return example.SerializeToString(deterministic=True)


def parse_example(serialized: tf.Tensor | bytes) -> dict[str, tf.Tensor]:
    """Parse one serialized record (graph-safe, for tf.data pipelines)."""
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def writer(path: Path | str) -> tf.io.TFRecordWriter:
    """Uncompressed: the payload is already JPEG, and plain records can be sized exactly."""
    return _Writer(str(path))


class _Writer(tf.io.TFRecordWriter):
    """A TFRecordWriter whose out-of-space failures are OSErrors naming the file, as Python's own writes fail."""

    def __init__(self, path: str) -> None:
        self._path = path
        with _out_of_space_as_os_error(path):
            super().__init__(path)

    def write(self, record: bytes) -> None:
        with _out_of_space_as_os_error(self._path):
            super().write(record)

    def close(self) -> None:
        with _out_of_space_as_os_error(self._path):
            super().close()


@contextlib.contextmanager
def _out_of_space_as_os_error(path: str) -> Iterator[None]:
    """TensorFlow keeps no errno, only its words: ENOSPC and EDQUOT come as RESOURCE_EXHAUSTED, EFBIG as
    OUT_OF_RANGE. Give them back their errno, so callers tell a full disk from a bad record."""
    try:
        yield
    except (tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError) as error:
        code = next((code for code in OUT_OF_SPACE if os.strerror(code) in error.message), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), path) from error


def read_examples(paths: Iterable[Path | str]) -> Iterator[dict[str, object]]:
    """Yield every record of ``paths`` in order as plain Python values (bytes, int, float, str)."""
    files = [str(path) for path in paths]
    if not files:
        return
    for raw in tf.data.TFRecordDataset(files):
        yield _to_python(tf.train.Example.FromString(raw.numpy()))


def _to_python(example: tf.train.Example) -> dict[str, object]:
    feature = example.features.feature
    values: dict[str, object] = {}
    for name, spec in FEATURE_SPEC.items():
        if spec.dtype == tf.string:
            raw = feature[name].bytes_list.value[0]
            values[name] = raw.decode("utf-8") if name in _TEXT_FEATURES else raw
        elif spec.dtype == tf.int64:
            values[name] = int(feature[name].int64_list.value[0])
        else:
            values[name] = float(feature[name].float_list.value[0])
    return values


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _text(value: str | None) -> tf.train.Feature:
    return _bytes(b"" if value is None else value.encode("utf-8"))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))

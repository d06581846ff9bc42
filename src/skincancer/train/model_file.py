"""models/model.keras as a function of the model alone. Keras stamps every save with the date
(metadata.json), gives the weights entry the current time and numbers shared objects in config.json by
their memory address, so two identical trainings would differ in bytes, DVC would record a new hash and
evaluate would rerun. The archive is rewritten without any of them."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import keras

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
SHARED_OBJECT_ID = re.compile(rb'"shared_object_id": (\d+)')


def save_model(model: keras.Model, path: Path) -> None:
    model.save(path)
    normalise_archive(path)


def _renumbered(config: bytes) -> bytes:
    """Shared-object ids only pair references within the file: number them 1, 2, ... in order of appearance."""
    ids: dict[bytes, int] = {}
    return SHARED_OBJECT_ID.sub(lambda m: b'"shared_object_id": %d' % ids.setdefault(m.group(1), len(ids) + 1), config)


def _without_date(metadata: bytes) -> bytes:
    fields = json.loads(metadata)
    fields.pop("date_saved", None)
    return json.dumps(fields).encode()


NORMALISE = {"metadata.json": _without_date, "config.json": _renumbered}


def normalise_archive(path: Path) -> None:
    """Each entry rewritten by NORMALISE where it names one, all at one fixed time, order and mode kept."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME)
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            archive.writestr(fixed, NORMALISE.get(info.filename, bytes)(data))

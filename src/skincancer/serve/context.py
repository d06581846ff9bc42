"""Patient context for `skincancer predict --metadata`: the fields the model's card records, each image's row of
a CSV beside the images, encoded as training encoded them (skincancer.core.patient_context.encode_context).

A file's row is the one whose `image` is the file's path as given to predict (compared as paths: `./a.jpg` is
`a.jpg`), else its file name (`a.jpg`), else its stem (`a`, as the ISIC tables name images by id): a user's CSV
names paths, a published table ids, and neither needs rewriting. Two files in two folders with one name both
take a row that gives the name alone.

An image with no row, or with a field blank, unknown or spelled in a way the vocabulary does not know, is
scored with that field missing (the model learnt a missing indicator for each field), and the output says
which fields per image; never a guessed value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from skincancer.core.model_card import ModelCard
from skincancer.core.patient_context import (
    SOURCE_COLUMNS,
    context_columns,
    encode_context,
    read_context_csv,
    unmapped_spellings,
)
from skincancer.evaluate.inference import context_width


class ContextError(ValueError):
    """Patient context that does not fit the model: given to a model without it, or a card and model that
    disagree on the vector."""


@dataclass(frozen=True)
class ImageContext:
    """The encoded context of each file, in the files' order, what was missing per file, and what to warn."""

    vectors: np.ndarray  # (files, columns) float32
    notes: list[str]  # per file: "" when complete, else "missing: age, site"
    warnings: list[str]


def card_context(card: ModelCard) -> dict | None:
    """The card's record of the patient context (context_encoding's), None for an image-only model."""
    return card.document.get("context")


def check_context(model: keras.Model, card: ModelCard) -> dict | None:
    """The card's context record, refused unless the model takes exactly the vector it describes."""
    encoding, width = card_context(card), context_width(model)
    expected = None if encoding is None else len(encoding["columns"])
    if width != expected:
        recorded = "no patient context" if expected is None else f"a patient context of {expected} columns"
        taken = "the image alone" if width is None else f"a context input of {width} columns"
        raise ContextError(f"{card.path} records {recorded} but its model takes {taken}: rerun "
                           "`dvc repro train evaluate` so that model and card come from one run")
    return encoding


def _row_of(file: Path, images: pd.Index, by_path: dict[Path, str]) -> str | None:
    """The CSV's image for a file: its path as given, else its file name, else its stem."""
    if (image := by_path.get(Path(file))) is not None:
        return image
    return next((key for key in (file.name, file.stem) if key in images), None)


def matched_rows(files: Sequence[Path], table: pd.DataFrame) -> pd.DataFrame:
    """read_context_csv's rows, one per file in order (all NA where none matches), with `matched` saying which."""
    by_path = {Path(image): image for image in table.index}
    keys = [_row_of(Path(file), table.index, by_path) for file in files]
    rows = table.reindex(pd.Index(keys, dtype=object)).reset_index(drop=True)
    return rows.assign(matched=[key is not None for key in keys])


def _missing_fields(vectors: np.ndarray, fields: Sequence[str]) -> list[list[str]]:
    """Per image, the fields its vector marks missing (their `<field>_missing` column)."""
    columns = context_columns(fields)
    flags = {field: vectors[:, columns.index(f"{field}_missing")] > 0.5 for field in fields}
    return [[field for field in fields if flags[field][row]] for row in range(len(vectors))]


def _spelling_warnings(rows: pd.DataFrame, fields: Sequence[str], metadata: Path) -> list[str]:
    return [f"{metadata}: {field} {spelling!r} ({count} image(s)) is not a spelling the model's vocabulary knows: "
            f"scored as missing (the card's context.{field}.spellings lists the known ones)"
            for field, spellings in unmapped_spellings(rows, fields).items() for spelling, count in spellings.items()]


def _count_warning(rows: pd.DataFrame, missing: list[list[str]], metadata: Path) -> list[str]:
    unmatched = int((~rows["matched"]).sum())
    partial = sum(1 for found, lost in zip(rows["matched"], missing, strict=True) if found and lost)
    if not unmatched and not partial:
        return []
    return [f"{metadata}: {unmatched} of {len(rows)} image(s) have no row and {partial} have blank or unknown "
            "fields: scored with those fields missing (the context column names them)"]


def image_context(files: Sequence[Path], card: ModelCard, metadata: Path | None) -> ImageContext | None:
    """The files' context as the card's model takes it, from `metadata` (read_context_csv's CSV) or, without
    one, every field missing; None for an image-only model, which refuses a CSV it would ignore."""
    encoding = card_context(card)
    if encoding is None:
        if metadata is not None:
            raise ContextError(f"{card.path} records no patient context: its model takes the image alone and "
                               f"would ignore {metadata}; drop --metadata, or use a model trained with train.metadata")
        return None
    fields = encoding["fields"]
    if metadata is None:
        rows = matched_rows(files, pd.DataFrame(columns=list(SOURCE_COLUMNS.values())))
        warnings = [f"the model takes patient context ({', '.join(fields)}) and no --metadata was given: every "
                    "image is scored with it missing"]
    else:
        rows = matched_rows(files, read_context_csv(metadata))
        warnings = _spelling_warnings(rows, fields, metadata)
    vectors = encode_context(rows, fields)
    missing = _missing_fields(vectors, fields)
    if metadata is not None:
        warnings += _count_warning(rows, missing, metadata)
    notes = [f"missing: {', '.join(lost)}" if lost else "" for lost in missing]
    return ImageContext(vectors, notes, warnings)

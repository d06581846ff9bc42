"""Metadata tables joined to the index by image id: patient, lesion, sex, age and site where a source lacks them.

Class-folder copies and the 2016/2017 archives publish no patient or lesion ids, although ISIC publishes
them in side tables (HAM10000_metadata.csv, an isic-cli metadata.csv, the ISIC 2020 ground truth). Without
them no split can keep a lesion in one split. A table only fills what the source left unknown; where both
know a value and disagree, the source's stays and the disagreement is reported, never guessed away.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skincancer.core.labels import lookup_diagnosis
from skincancer.ingest.image_ids import canonical_image_ids
from skincancer.ingest.layouts import LayoutError, ids_preview, index_metadata, read_csv_cells

log = logging.getLogger(__name__)

# what a table may fill; each gets an `<name>_from` column in the index: "source", a table's file name, or NA
FILLED: tuple[str, ...] = ("patient_id", "lesion_id", "sex", "age_approx", "anatom_site")
ORIGIN_COLUMNS: tuple[str, ...] = tuple(f"{name}_from" for name in FILLED)
SOURCE_ORIGIN = "source"
# compared, never filled: a diagnosis decides the label, and which side is right is for a person to say
COMPARED: tuple[str, ...] = (*FILLED, "diagnosis")
CONFLICT_COLUMNS = ("image_id", "source", "field", "value", "value_from", "table", "table_value")


class MetadataError(ValueError):
    """A metadata table cannot be joined as configured; the message names the file and what to change."""


@dataclass(frozen=True)
class MetadataLayout:
    """How one kind of published table names its columns."""

    required: tuple[str, ...]  # as published
    renames: dict[str, str] = field(default_factory=dict)  # published -> index name, beyond the layouts' own


METADATA_LAYOUTS: dict[str, MetadataLayout] = {
    "ham10000": MetadataLayout(
        ("lesion_id", "image_id", "dx", "age", "sex", "localization"),
        {"dx": "diagnosis", "age": "age_approx", "localization": "anatom_site"},
    ),
    "isic2020": MetadataLayout(
        ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis")
    ),
    # `isic metadata download` / `isic image download`: isic_id plus whichever fields the archive holds
    "isic-cli": MetadataLayout(("isic_id",)),
}


@dataclass(frozen=True)
class MetadataTable:
    name: str  # the file name, recorded as the origin of what it fills
    rows: pd.DataFrame  # canonical image_id (unique) + the COMPARED columns it has


def _known_diagnosis(raw: str) -> str | None:
    name = lookup_diagnosis(raw)
    return None if name == "unknown" else name


def _download_again(path: Path) -> str:
    """How to replace a table fetch downloaded: the checksum recorded at its first download refuses new bytes."""
    return (f"to download it again, run `skincancer repin {path.parent.name}/{path.name}` (it forgets the checksum "
            "fetch recorded for it and deletes the file), then `dvc repro fetch`")


def _read_cells(path: Path, layout: str) -> pd.DataFrame:
    """Every cell as text; a table that cannot be read, is no CSV, or is cut short fails naming it and what to do,
    before fetch writes anything."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MetadataError(f"{path}: cannot be read ({error.strerror}): give the fetch stage read access to it, or "
                            f"{_download_again(path)}") from None
    not_csv = (f"fetch.metadata's url for it must serve the {layout} table as a UTF-8 CSV (not compressed, not a "
               f"spreadsheet): fix or remove that entry; {_download_again(path)}")
    if b"\0" in data:
        raise MetadataError(f"{path}: not a CSV: it holds NUL bytes, as binary files do; {not_csv}")
    try:
        table = read_csv_cells(data, path)
    except LayoutError as error:
        raise MetadataError(f"{str(error).strip()}; {not_csv}") from None
    if short := _short_rows(data, table.shape[1]):
        raise MetadataError(
            f"{path}: {len(short)} row(s) have fewer cells than the header's {table.shape[1]} columns, the first "
            f"being row {short[0]} after the header: the file is cut short or garbled; {_download_again(path)}"
        )
    return table


def _short_rows(data: bytes, width: int) -> list[int]:
    """The rows (1 = the first after the header) with fewer cells than the header: pandas fills the cells a
    truncated last row lacks with "" (cells read as text), so a cut-off value such as `mal` for `male` would
    pass as data."""
    rows = csv.reader(io.StringIO(data.decode("utf-8-sig")))
    next(rows, None)
    return [number for number, row in enumerate(rows, 1) if row and len(row) < width]


def read_metadata_table(path: Path, layout: str) -> MetadataTable:
    """The table's rows under index column names, keyed by canonical image id; refuses what it cannot trust."""
    spec = METADATA_LAYOUTS[layout]
    table = _read_cells(path, layout)
    if missing := [column for column in spec.required if column not in table.columns]:
        raise MetadataError(
            f"{path}: not a {layout} metadata table; missing column(s) {missing} (expected {list(spec.required)}, "
            f"found {list(table.columns)}): check fetch.metadata's layout for this file"
        )
    rows = index_metadata(table.rename(columns=spec.renames).replace("", pd.NA), path)
    if "diagnosis" in rows:  # compared by canonical name; unknown or unmapped compares with nothing
        rows["diagnosis"] = rows["diagnosis"].map(_known_diagnosis, na_action="ignore").astype("string")
    if not set(FILLED) & set(rows.columns):
        raise MetadataError(f"{path}: none of {list(FILLED)} found (columns {list(table.columns)}): nothing to join")
    rows["image_id"] = canonical_image_ids(rows["image_id"])
    if twice := set(rows.loc[rows["image_id"].duplicated(), "image_id"]):
        raise MetadataError(
            f"{path}: {len(twice)} image id(s) have more than one row: {ids_preview(twice)}; "
            "which row holds the right ids cannot be told: fix the table or remove it from fetch.metadata"
        )
    return MetadataTable(path.name, rows[[c for c in ("image_id", *COMPARED) if c in rows]].set_index("image_id"))


def _differs(ours: pd.Series, theirs: pd.Series) -> pd.Series:
    if ours.dtype.kind == "f":
        return ours.ne(theirs)
    return ours.astype("string").str.strip().str.casefold().ne(theirs.astype("string").str.strip().str.casefold())


def _report_matches(table: MetadataTable, matched: pd.Series, key: pd.Series) -> None:
    """How much of the table found an image: a table for other images is a warning with counts, not silence."""
    unmatched = table.rows.index.difference(key[matched].unique())
    log.info("%s: %d indexed image(s) joined", table.name, int(matched.sum()))
    if len(unmatched):
        log.warning(
            "%s: %d of %d row(s) match no indexed image (ids compared without copy suffixes such as "
            "_downsampled): %s", table.name, len(unmatched), len(table.rows), ids_preview(unmatched),
        )
    if not matched.any():
        log.warning("%s matches no indexed image at all: is it the table of another dataset?", table.name)


def _conflicts(index: pd.DataFrame, origin: pd.Series, column: str, theirs: pd.Series, table: str) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": index["image_id"], "source": index["source"], "field": column,
        "value": index[column].astype("string"), "value_from": origin, "table": table,
        "table_value": theirs.astype("string"),
    })


def join_metadata(index: pd.DataFrame, tables: list[MetadataTable]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The index with FILLED columns completed from the tables (in order) and ORIGIN_COLUMNS saying where
    each value came from, and the conflicts found (CONFLICT_COLUMNS)."""
    joined = index.copy()
    for column in FILLED:
        joined[f"{column}_from"] = pd.Series(SOURCE_ORIGIN, index=index.index, dtype="string").where(index[column].notna())
    key = canonical_image_ids(index["image_id"])
    found = []
    for table in tables:
        matched = key.isin(table.rows.index)
        _report_matches(table, matched, key)
        for column in table.rows.columns:
            theirs = key.map(table.rows[column])
            ours = joined[column].mask(joined[column] == "unknown") if column == "diagnosis" else joined[column]
            disagree = ours.notna() & theirs.notna() & _differs(ours, theirs)
            if disagree.any():
                origin = joined[f"{column}_from"] if column in FILLED else pd.Series(SOURCE_ORIGIN, index=index.index)
                found.append(_conflicts(joined[disagree], origin[disagree], column, theirs[disagree], table.name))
            if column in FILLED:
                fill = joined[column].isna() & theirs.notna()
                joined.loc[fill, column] = theirs[fill].astype(joined[column].dtype)
                joined.loc[fill, f"{column}_from"] = table.name
    conflicts = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=list(CONFLICT_COLUMNS))
    if len(conflicts):
        counts = ", ".join(f"{name} ({n})" for name, n in conflicts["field"].value_counts().sort_index().items())
        log.warning(
            "%d value(s) of the sources disagree with a metadata table: %s; the sources' values are kept, "
            "each disagreement is listed in metadata_conflicts.csv", len(conflicts), counts,
        )
    return joined, conflicts.sort_values(["image_id", "source", "field", "table"], kind="stable").reset_index(drop=True)

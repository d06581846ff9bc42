"""Layout readers: index rows straight from published archives, without extracting them.

Each reader turns one folder of a source's files into rows whose ``uri`` is relative to that folder;
``read_layout`` makes the uris relative to the raw root, hashes the image bytes and fixes the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import pandas as pd

from skincancer.archives import member_uri, read_uris, safe_members, sha256_hex
from skincancer.labels import canonical_diagnosis

INDEX_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source",
    "uri",
    "diagnosis",
    "benign_malignant",
    "patient_id",
    "lesion_id",
    "sex",
    "age_approx",
    "anatom_site",
    "sha256",
)
STRING = pd.StringDtype()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
UDACITY_ZIPS = ("train.zip", "valid.zip", "test.zip")
ISIC2020_ZIP = "ISIC_2020_Training_JPEG.zip"
ISIC2020_COLUMNS = (
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
)
# Ground-truth tables in order of preference; v2 adds lesion_id.
ISIC2020_CSV = "ISIC_2020_Training_GroundTruth.csv"
ISIC2020_TABLES: dict[str, tuple[str, ...]] = {
    "ISIC_2020_Training_GroundTruth_v2.csv": (*ISIC2020_COLUMNS[:2], "lesion_id", *ISIC2020_COLUMNS[2:]),
    ISIC2020_CSV: ISIC2020_COLUMNS,
}
ISIC2020_RENAMES = {"image_name": "image_id", "anatom_site_general_challenge": "anatom_site"}
_SHOWN_IDS = 5


class LayoutError(ValueError):
    """A source folder does not hold what its layout promises; the message names the file."""


def _image_members(zip_path: Path) -> list[str]:
    """Image member names, skipping macOS resource forks that archivers add."""
    names = []
    for info in safe_members(zip_path):
        path = PurePosixPath(info.filename)
        if path.parts[0] == "__MACOSX" or path.name.startswith("._"):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            names.append(info.filename)
    return names


def read_udacity(root: Path) -> pd.DataFrame:
    """udacity/dermatologist-ai: ``<split>.zip`` with ``<split>/<diagnosis>/<image>.jpg`` members."""
    zips = [root / name for name in UDACITY_ZIPS if (root / name).is_file()]
    if not zips:
        raise LayoutError(f"{root}: no isic2017-udacity archives; expected one of {list(UDACITY_ZIPS)}")
    rows = []
    for zip_path in zips:
        for member in _image_members(zip_path):
            parts = PurePosixPath(member).parts
            if len(parts) < 2:
                raise LayoutError(f"{zip_path}: member {member!r} is not inside a diagnosis folder")
            diagnosis = canonical_diagnosis(parts[-2], where=f"{zip_path}!{member}")
            uri = member_uri(zip_path.name, member)
            rows.append({"image_id": PurePosixPath(member).stem, "uri": uri, "diagnosis": diagnosis})
    return pd.DataFrame(rows)


def _ground_truth_table(root: Path) -> tuple[Path, pd.DataFrame]:
    """The ISIC 2020 ground-truth CSV with exactly its published columns, empty cells as NA."""
    for name, expected in ISIC2020_TABLES.items():
        path = root / name
        if not path.is_file():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if tuple(table.columns) != expected:
            raise LayoutError(f"{path}: unexpected columns; expected {list(expected)}, found {list(table.columns)}")
        return path, table.replace("", pd.NA)
    raise LayoutError(f"{root}: no ISIC 2020 ground truth; expected one of {list(ISIC2020_TABLES)}")


def _ids_preview(ids: Iterable[str]) -> str:
    ordered = sorted(ids)
    more = f" and {len(ordered) - _SHOWN_IDS} more" if len(ordered) > _SHOWN_IDS else ""
    return f"{ordered[:_SHOWN_IDS]}{more}"


def check_matched(table_ids: Iterable[str], archive_ids: Iterable[str], table: Path, archive: Path) -> None:
    """Every ground-truth row needs its image and every image its row; otherwise labels are silently lost."""
    table_ids, archive_ids = set(table_ids), set(archive_ids)
    problems = []
    if missing := table_ids - archive_ids:
        listed = f"{len(missing)} image(s) listed in {table.name} are missing from the zip"
        problems.append(f"{listed}: {_ids_preview(missing)}")
    if unlisted := archive_ids - table_ids:
        problems.append(f"{len(unlisted)} image(s) in the zip have no row in {table.name}: {_ids_preview(unlisted)}")
    if problems:
        raise LayoutError(f"{archive}: " + "; ".join(problems))


def _ages(values: pd.Series, path: Path) -> pd.Series:
    try:
        return pd.to_numeric(values.astype(object), errors="raise").astype("float64")
    except (TypeError, ValueError) as error:
        raise LayoutError(f"{path}: age_approx is not numeric: {error}") from None


def read_isic2020(root: Path) -> pd.DataFrame:
    """ISIC 2020: training JPEG zip (``train/<image>.jpg``) joined to its ground-truth CSV by image_name."""
    zip_path = root / ISIC2020_ZIP
    if not zip_path.is_file():
        raise LayoutError(f"{root}: {ISIC2020_ZIP} not found")
    csv_path, table = _ground_truth_table(root)
    members = {PurePosixPath(member).stem: member for member in _image_members(zip_path)}
    check_matched(table["image_name"], members, csv_path, zip_path)
    diagnoses = table["diagnosis"].fillna("")
    spellings = {raw: canonical_diagnosis(raw, where=str(csv_path)) for raw in diagnoses.unique()}
    rows = table.rename(columns=ISIC2020_RENAMES).drop(columns="target")
    rows["uri"] = [member_uri(zip_path.name, members[image_id]) for image_id in rows["image_id"]]
    rows["diagnosis"] = diagnoses.map(spellings)
    rows["age_approx"] = _ages(rows["age_approx"], csv_path)
    return rows


LAYOUT_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "isic2017-udacity": read_udacity,
    "isic2020": read_isic2020,
}


def _conform(rows: pd.DataFrame) -> pd.DataFrame:
    """Exactly INDEX_COLUMNS in order: strings as nullable strings, age as float64 with NaN unknown."""
    out = pd.DataFrame(index=rows.index)
    for column in INDEX_COLUMNS:
        dtype = "float64" if column == "age_approx" else STRING
        out[column] = rows[column].astype(dtype) if column in rows else pd.Series(index=rows.index, dtype=dtype)
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


def _hashes(raw_root: Path, uris: pd.Series) -> pd.Series:
    """sha256 of each image's bytes, reading uris in sorted order so each zip is opened once."""
    ordered = sorted(uris)
    digests = {uri: sha256_hex(data) for uri, data in read_uris(raw_root, ordered)}
    return uris.map(digests)


def read_layout(layout: str, root: Path, *, source: str, raw_root: Path) -> pd.DataFrame:
    """Index rows (INDEX_COLUMNS) for the folder ``root`` of ``source``, uris relative to ``raw_root``."""
    reader = LAYOUT_READERS.get(layout)
    if reader is None:
        raise LayoutError(f"unknown layout {layout!r}; known: {sorted(LAYOUT_READERS)}")
    root, raw_root = Path(root), Path(raw_root)
    try:
        prefix = root.resolve().relative_to(raw_root.resolve()).as_posix()
    except ValueError:
        raise LayoutError(f"{root}: not inside the raw data folder {raw_root}") from None
    rows = reader(root)
    if rows.empty:
        raise LayoutError(f"{root}: no images found for layout {layout!r}")
    rows = rows.assign(source=source, uri=[f"{prefix}/{uri}" if prefix != "." else uri for uri in rows["uri"]])
    rows["sha256"] = _hashes(raw_root, rows["uri"])
    return _conform(rows)

"""Layout readers: index rows straight from published archives, without extracting them.

Each reader turns one folder of a source's files into rows whose ``uri`` is relative to that folder;
``read_layout`` makes the uris relative to the raw root, hashes the image bytes (sha256 and a perceptual
hash), reads each image's stored size from its header and fixes the schema.
Every published table is checked against the columns its layout promises, so a changed file fails
naming what it expected instead of mislabelling images.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import pandas as pd

from skincancer.core.images import PILLOW_MAX_PIXELS, stored_size
from skincancer.core.labels import canonical_diagnosis, lookup_diagnosis
from skincancer.ingest.archives import URI_SEPARATOR, member_uri, read_uris, safe_members, sha256_hex
from skincancer.ingest.near_duplicates import image_hash

log = logging.getLogger(__name__)

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
    "image_hash",
    "width",
    "height",
)
STRING = pd.StringDtype()
# Index columns that are not nullable strings: age with NaN unknown, the stored pixel size with <NA> unreadable.
_DTYPES = {"age_approx": "float64", "width": "Int64", "height": "Int64"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Companion files published next to images that are not dermoscopy images (ISIC 2017 superpixel maps).
COMPANION_STEMS = ("_superpixels",)
MACOS_FOLDER = "__MACOSX"
# Source column names -> index column names (each source spells these its own way).
COLUMN_RENAMES = {
    "image": "image_id",
    "image_name": "image_id",
    "isic_id": "image_id",
    "age_approximate": "age_approx",
    "anatom_site_general": "anatom_site",
    "anatom_site_general_challenge": "anatom_site",
}
# Metadata columns where ISIC 2017 writes "unknown" for a value nobody recorded.
UNKNOWN_MARKED = ("sex", "age_approx", "anatom_site")
# Published verdict spellings; the ISIC 2016 test ground truth writes 0/1 as floats.
VERDICTS = {"benign": "benign", "malignant": "malignant", "0": "benign", "1": "malignant"}
VERDICTS.update({"0.0": "benign", "1.0": "malignant"})
_SHOWN_IDS = 5
# Hashing threads: decoding for the perceptual hash is most of the indexing work, and Pillow releases the GIL.
_HASH_WORKERS = min(8, os.cpu_count() or 1)
_HASH_BATCH = 64  # images read ahead for those threads: memory stays at a few dozen images


class LayoutError(ValueError):
    """A source folder does not hold what its layout promises; the message names the file."""


class Reader(Protocol):
    """A layout reader: rows with uris relative to ``root``; ``strict`` decides what unmatched images do."""

    def __call__(self, root: Path, *, strict: bool = True) -> pd.DataFrame: ...


# ---------------------------------------------------------------- files: zip members and loose files


@dataclass(frozen=True)
class SourceFile:
    """A file of a layout folder: loose, or a member of one of its zips."""

    container: Path  # the zip holding it, or the layout folder for a loose file
    path: PurePosixPath  # inside the container
    uri: str  # relative to the layout folder


def _is_resource_fork(path: PurePosixPath) -> bool:
    """macOS archivers add ``__MACOSX/`` and ``._name`` entries that look like images but are not."""
    return MACOS_FOLDER in path.parts or path.name.startswith("._")


def _is_image(path: PurePosixPath) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(COMPANION_STEMS)


def _zip_files(zip_path: Path, rel: str) -> list[SourceFile]:
    """The zip's validated members; ``rel`` is the zip's path inside the layout folder."""
    files = []
    for info in safe_members(zip_path):
        path = PurePosixPath(info.filename)
        if not _is_resource_fork(path):
            files.append(SourceFile(zip_path, path, member_uri(rel, info.filename)))  # the uri names it as stored
    return files


def _folder_files(root: Path) -> list[SourceFile]:
    """Every file under ``root`` with zips opened in place: for layouts shipped as a folder or a zip of it."""
    files: list[SourceFile] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.suffix.lower() == ".zip":
            files += _zip_files(path, str(rel))
        elif not _is_resource_fork(rel):
            files.append(SourceFile(root, rel, str(rel)))
    return files


def ids_preview(ids: Iterable[str]) -> str:
    ordered = sorted(ids)
    more = f" and {len(ordered) - _SHOWN_IDS} more" if len(ordered) > _SHOWN_IDS else ""
    return f"{ordered[:_SHOWN_IDS]}{more}"


def _image_uris(files: Iterable[SourceFile], where: Path) -> dict[str, str]:
    """Image id (the file name without extension, as published) -> uri; an id twice would be ambiguous."""
    uris: dict[str, str] = {}
    twice = set()
    for file in files:
        if _is_image(file.path):
            twice.update({file.path.stem} & uris.keys())
            uris[file.path.stem] = file.uri
    if twice:
        raise LayoutError(f"{where}: {len(twice)} image id(s) appear more than once: {ids_preview(twice)}")
    return uris


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """A published CSV and exactly the columns it must have."""

    name: str  # path in the layout folder; ``<zip>!<member>`` for a table inside a zip
    columns: tuple[str, ...]
    header: bool = True  # False: no header row, ``columns`` name the positions

    @property
    def container(self) -> str:
        """The file in the layout folder that holds the table (itself, or its zip)."""
        return self.name.partition(URI_SEPARATOR)[0]


def _table_bytes(root: Path, name: str) -> bytes | None:
    """A table's bytes, read through the archive checks when inside a zip; None when absent."""
    try:
        return next(read_uris(root, [name]))[1]
    except FileNotFoundError:
        return None


def read_csv_cells(data: bytes, path: Path, header: bool = True) -> pd.DataFrame:
    """All cells as strings, an empty cell as an empty string (NA comes after the column checks)."""
    try:
        return pd.read_csv(
            io.BytesIO(data), dtype=str, keep_default_na=False, header=0 if header else None, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: not a readable CSV: {error}") from None


def _with_columns(table: pd.DataFrame, spec: Table, path: Path) -> pd.DataFrame:
    """The table under its promised column names, or an error naming the expected and found columns."""
    if not spec.header:
        if table.shape[1] != len(spec.columns):
            raise LayoutError(
                f"{path}: unexpected columns; expected {len(spec.columns)} columns {list(spec.columns)} with no "
                f"header row, found {table.shape[1]}"
            )
        return table.set_axis(list(spec.columns), axis=1)
    if tuple(table.columns) != spec.columns:
        raise LayoutError(f"{path}: unexpected columns; expected {list(spec.columns)}, found {list(table.columns)}")
    return table


def _load(root: Path, spec: Table) -> pd.DataFrame | None:
    """The table with its promised columns and empty cells as NA; None when the file is absent."""
    data = _table_bytes(root, spec.name)
    if data is None:
        return None
    path = root / spec.name
    return _with_columns(read_csv_cells(data, path, spec.header), spec, path).replace("", pd.NA)


def _require(root: Path, spec: Table) -> pd.DataFrame:
    table = _load(root, spec)
    if table is None:
        raise LayoutError(f"{root / spec.name} not found")
    return table


def _ages(values: pd.Series, path: Path) -> pd.Series:
    try:
        return pd.to_numeric(values.astype(object), errors="raise").astype("float64")
    except (TypeError, ValueError) as error:
        raise LayoutError(f"{path}: age_approx is not numeric: {error}") from None


def index_metadata(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The table's index columns under their index names, "unknown" as NA and ages as numbers."""
    renamed = table.rename(columns=COLUMN_RENAMES)
    meta = renamed[[column for column in renamed.columns if column in INDEX_COLUMNS]].copy()
    for column in set(UNKNOWN_MARKED) & set(meta.columns):
        meta[column] = meta[column].mask(meta[column].str.lower() == "unknown")
    if "age_approx" in meta:
        meta["age_approx"] = _ages(meta["age_approx"], path)
    return meta


def _canonical(spellings: pd.Series, path: Path) -> pd.Series:
    """Each distinct spelling mapped once (an unmapped one is kept as snake_case, with a warning naming the file)."""
    mapping = {raw: canonical_diagnosis(raw, where=str(path)) for raw in spellings.unique()}
    return spellings.map(mapping)


def _named_by_folder(rows: list[dict[str, str]]) -> pd.DataFrame:
    """Rows whose diagnosis is their folder's name, each name mapped once: an unmapped one gets one warning,
    naming its first image and how many more it labels, not a warning per image."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    first = frame.groupby("diagnosis", sort=False)["found"].agg(["first", "size"])
    mapping = {raw: canonical_diagnosis(raw, where=found + (f" and {size - 1} more image(s)" if size > 1 else ""))
               for raw, (found, size) in first.iterrows()}
    return frame.drop(columns="found").assign(diagnosis=frame["diagnosis"].map(mapping))


def _rows_preview(table: pd.DataFrame, bad: pd.Series) -> str:
    """Which rows are wrong, in file order, by image id."""
    ids = table.loc[bad, "image_id"].astype(str).tolist()
    more = f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    return f"{len(ids)} row(s): {ids[:_SHOWN_IDS]}{more}"


# ---------------------------------------------------------------- matching tables to images


def _unmatched(table_ids: set[str], image_ids: set[str], table: Path, images: Path) -> list[str]:
    problems = []
    if missing := table_ids - image_ids:
        problems.append(
            f"{len(missing)} image(s) listed in {table.name} are missing from {images.name}: {ids_preview(missing)}"
        )
    if unlisted := image_ids - table_ids:
        problems.append(
            f"{len(unlisted)} image(s) in {images.name} have no row in {table.name}: {ids_preview(unlisted)}"
        )
    return problems


def _unique_ids(ids: pd.Series, path: Path) -> None:
    """An image with two rows has two possibly different labels; neither can be trusted."""
    if twice := set(ids[ids.duplicated()]):
        raise LayoutError(f"{path}: {len(twice)} image id(s) have more than one row: {ids_preview(twice)}")


def _matched(rows: pd.DataFrame, images: dict[str, str], table: Path, archive: Path, strict: bool) -> pd.DataFrame:
    """Rows given their images' uris: every row needs its image and every image its row, or labels are lost.

    strict refuses a mismatch; otherwise the matched rows are kept and the rest reported as a warning.
    """
    _unique_ids(rows["image_id"], table)
    problems = _unmatched(set(rows["image_id"]), set(images), table, archive)
    if problems:
        message = f"{archive}: " + "; ".join(problems)
        if strict:
            raise LayoutError(message)
        rows = rows[rows["image_id"].isin(images.keys())]
        log.warning("%s; keeping the %d matched image(s) (strict=False)", message, len(rows))
    return rows.assign(uri=rows["image_id"].map(images))


# ---------------------------------------------------------------- challenge layouts: image zips + tables

Labeller = Callable[[pd.DataFrame, Path], pd.DataFrame]  # ground truth -> image_id, diagnosis[, benign_malignant]


@dataclass(frozen=True)
class Part:
    """One published split: its image zip, the table that labels it, and per-image metadata when present."""

    images: str
    truth: Table
    extras: tuple[Table, ...] = ()


@dataclass(frozen=True)
class Challenge:
    """A challenge layout: its parts (any present ones are read) and how its ground truth encodes labels."""

    parts: tuple[Part, ...]
    labels: Labeller

    @property
    def files(self) -> tuple[str, ...]:
        """The files the layout folder holds when complete (tables inside zips count as their zip)."""
        names = [name for part in self.parts for name in (part.images, part.truth.container)]
        names += [extra.container for part in self.parts for extra in part.extras]
        return tuple(dict.fromkeys(names))


def _verdict_labels(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """ISIC 2016: a published benign/malignant (or 0/1) and no diagnosis."""
    verdicts = table["benign_malignant"].str.strip().str.lower().map(VERDICTS)
    if (bad := verdicts.isna()).any():
        raise LayoutError(f"{path}: column 2 must be benign/malignant or 0/1; not so in {_rows_preview(table, bad)}")
    return pd.DataFrame({"image_id": table["image_id"], "diagnosis": "unknown", "benign_malignant": verdicts})


def _one_hot(columns: tuple[str, ...], none: str | None = None) -> Labeller:
    """Diagnosis from one-hot 0/1 columns named by their spelling; ``none`` names an all-zero row's class
    (ISIC 2017 leaves nevus implicit). Any other row is refused: guessing would mislabel it."""

    def labels(table: pd.DataFrame, path: Path) -> pd.DataFrame:
        values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
        ones = values.sum(axis=1)
        allowed = [1.0] if none is None else [0.0, 1.0]
        bad = ~values.isin([0.0, 1.0]).all(axis=1) | ~ones.isin(allowed)
        if bad.any():
            rule = "exactly one" if none is None else "at most one"
            raise LayoutError(
                f"{path}: {rule} of {list(columns)} must be 1 (the rest 0); not so in {_rows_preview(table, bad)}"
            )
        spellings = values.idxmax(axis=1).where(ones == 1, none)
        return pd.DataFrame({"image_id": table["image_id"], "diagnosis": _canonical(spellings, path)})

    return labels


def _with_extras(rows: pd.DataFrame, root: Path, extras: tuple[Table, ...]) -> pd.DataFrame:
    """Metadata tables joined by image id; an absent one only leaves its columns unknown."""
    for spec in extras:
        table = _load(root, spec)
        path = root / spec.name
        if table is None:
            log.warning("%s not found: the metadata it holds stays unknown", path)
            continue
        meta = index_metadata(table, path)
        _unique_ids(meta["image_id"], path)
        rows = rows.merge(meta, on="image_id", how="left")
    return rows


def _read_part(part: Part, labels: Labeller, root: Path, strict: bool) -> pd.DataFrame:
    """One split's labelled images: its image zip and its ground truth mean nothing without each other."""
    for needed in (part.images, part.truth.container):
        if not (root / needed).is_file():
            raise LayoutError(f"{root / needed} not found; {part.images} and {part.truth.container} go together")
    truth = root / part.truth.name
    rows = labels(_require(root, part.truth).rename(columns=COLUMN_RENAMES), truth)
    rows = _with_extras(rows, root, part.extras)
    zip_path = root / part.images
    images = _image_uris(_zip_files(zip_path, part.images), zip_path)
    return _matched(rows, images, truth, zip_path, strict)


def _read_challenge(layout: Challenge, root: Path, strict: bool) -> pd.DataFrame:
    """Every part whose files are present; a layout folder holding only some splits is fine."""
    parts = [p for p in layout.parts if (root / p.images).is_file() or (root / p.truth.container).is_file()]
    if not parts:
        raise LayoutError(f"{root}: none of the layout's files found; expected {list(layout.files)}")
    return pd.concat([_read_part(part, layout.labels, root, strict) for part in parts], ignore_index=True)


def _isic2016_part(split: str) -> Part:
    stem = f"ISBI2016_ISIC_Part3_{split}"
    return Part(f"{stem}_Data.zip", Table(f"{stem}_GroundTruth.csv", ("image_id", "benign_malignant"), header=False))


ISIC2017_CLASSES = ("melanoma", "seborrheic_keratosis")


def _isic2017_part(split: str) -> Part:
    data = f"ISIC-2017_{split}_Data"
    metadata = Table(member_uri(f"{data}.zip", f"{data}/{data}_metadata.csv"), ("image_id", "age_approximate", "sex"))
    truth = Table(f"ISIC-2017_{split}_Part3_GroundTruth.csv", ("image_id", *ISIC2017_CLASSES))
    return Part(f"{data}.zip", truth, (metadata,))


ISIC2018_TRUTH = "ISIC2018_Task3_Training_GroundTruth"
ISIC2018_COLUMNS = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2018_GROUPINGS = ("image", "lesion_id", "diagnosis_confirm_type")
ISIC2019_COLUMNS = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC2019_METADATA = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")

CHALLENGES: dict[str, Challenge] = {
    "isic2016": Challenge((_isic2016_part("Training"), _isic2016_part("Test")), _verdict_labels),
    "isic2017": Challenge(
        tuple(_isic2017_part(split) for split in ("Training", "Validation", "Test_v2")),
        _one_hot(ISIC2017_CLASSES, none="nevus"),
    ),
    "isic2018": Challenge(
        (
            Part(
                "ISIC2018_Task3_Training_Input.zip",
                Table(member_uri(f"{ISIC2018_TRUTH}.zip", f"{ISIC2018_TRUTH}/{ISIC2018_TRUTH}.csv"), ISIC2018_COLUMNS),
                (Table("ISIC2018_Task3_Training_LesionGroupings.csv", ISIC2018_GROUPINGS),),
            ),
        ),
        _one_hot(ISIC2018_COLUMNS[1:]),
    ),
    "isic2019": Challenge(
        (
            Part(
                "ISIC_2019_Training_Input.zip",
                Table("ISIC_2019_Training_GroundTruth.csv", ISIC2019_COLUMNS),
                (Table("ISIC_2019_Training_Metadata.csv", ISIC2019_METADATA),),
            ),
        ),
        _one_hot(ISIC2019_COLUMNS[1:]),
    ),
}


def read_isic2016(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """ISBI 2016 part 3: training/test image zips, each with a headerless image,verdict CSV."""
    return _read_challenge(CHALLENGES["isic2016"], root, strict)


def read_isic2017(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """ISIC 2017 part 3: training/validation/test zips (age and sex from the metadata CSV inside each)."""
    return _read_challenge(CHALLENGES["isic2017"], root, strict)


def read_isic2018(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """ISIC 2018 task 3 (HAM10000): one-hot ground truth in its own zip, lesion ids from the groupings CSV."""
    return _read_challenge(CHALLENGES["isic2018"], root, strict)


def read_isic2019(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """ISIC 2019: one-hot ground truth (UNK included) and the metadata CSV (age, site, lesion, sex)."""
    return _read_challenge(CHALLENGES["isic2019"], root, strict)


# ---------------------------------------------------------------- ISIC 2020

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
ISIC2020_CSV = "ISIC_2020_Training_GroundTruth.csv"
# Ground-truth tables in order of preference; v2 adds lesion_id.
ISIC2020_TABLES = (
    Table("ISIC_2020_Training_GroundTruth_v2.csv", (*ISIC2020_COLUMNS[:2], "lesion_id", *ISIC2020_COLUMNS[2:])),
    Table(ISIC2020_CSV, ISIC2020_COLUMNS),
)
ISIC2020_DUPLICATES = Table("ISIC_2020_Training_Duplicates.csv", ("image_name_1", "image_name_2"))


def _isic2020_truth(root: Path) -> tuple[Path, pd.DataFrame]:
    for spec in ISIC2020_TABLES:
        if (table := _load(root, spec)) is not None:
            return root / spec.name, table
    raise LayoutError(f"{root}: no ISIC 2020 ground truth; expected one of {[spec.name for spec in ISIC2020_TABLES]}")


def read_isic2020(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """ISIC 2020: training JPEG zip (``train/<image>.jpg``) joined to its ground-truth CSV by image_name."""
    zip_path = root / ISIC2020_ZIP
    if not zip_path.is_file():
        raise LayoutError(f"{root}: {ISIC2020_ZIP} not found")
    csv_path, table = _isic2020_truth(root)
    rows = index_metadata(table, csv_path).assign(diagnosis=_canonical(table["diagnosis"].fillna(""), csv_path))
    return _matched(rows, _image_uris(_zip_files(zip_path, ISIC2020_ZIP), zip_path), csv_path, zip_path, strict)


def read_isic2020_duplicates(root: Path) -> list[tuple[str, str]]:
    """The official pairs of ISIC 2020 images showing the same thing, for the split to drop one of each.

    An absent file lists none: the v1 downloads and the synthetic sample do not have it.
    """
    table = _load(Path(root), ISIC2020_DUPLICATES)
    if table is None:
        return []
    path = Path(root) / ISIC2020_DUPLICATES.name
    if (incomplete := table.isna().any(axis=1)).any():
        raise LayoutError(f"{path}: {int(incomplete.sum())} row(s) name only one image of a pair")
    return list(zip(table["image_name_1"], table["image_name_2"]))


# layout -> reader of the source's official duplicate pairs (image ids), where it publishes one
DUPLICATE_READERS: dict[str, Callable[[Path], list[tuple[str, str]]]] = {"isic2020": read_isic2020_duplicates}


# ---------------------------------------------------------------- folder-per-class layouts

UDACITY_ZIPS = ("train.zip", "valid.zip", "test.zip")
SPLIT_FOLDERS = frozenset({"train", "test"})


def read_udacity(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """udacity/dermatologist-ai: ``<split>.zip`` with ``<split>/<diagnosis>/<image>.jpg`` members.

    There is no table to match, so ``strict`` changes nothing.
    """
    zips = [root / name for name in UDACITY_ZIPS if (root / name).is_file()]
    if not zips:
        raise LayoutError(f"{root}: no isic2017-udacity archives; expected one of {list(UDACITY_ZIPS)}")
    rows = []
    for zip_path in zips:
        for file in _zip_files(zip_path, zip_path.name):
            if not _is_image(file.path):
                continue
            if len(file.path.parts) < 2:
                raise LayoutError(f"{zip_path}: member {str(file.path)!r} is not inside a diagnosis folder")
            rows.append({"image_id": file.path.stem, "uri": file.uri, "diagnosis": file.path.parts[-2],
                         "found": f"{zip_path}!{file.path}"})
    return _named_by_folder(rows)


def read_class_folders(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """``.../{Train,Test}/<class name>/<image>`` at any depth, in zips or loose (the Kaggle ISIC 9-class set).

    Images elsewhere are not this layout's and are skipped; there is no table, so ``strict`` changes nothing.
    """
    rows = []
    for file in _folder_files(root):
        parts = file.path.parts
        if _is_image(file.path) and len(parts) >= 3 and parts[-3].lower() in SPLIT_FOLDERS:
            rows.append({"image_id": file.path.stem, "uri": file.uri, "diagnosis": parts[-2],
                         "found": f"{file.container}!{file.path}"})
    if not rows:
        raise LayoutError(f"{root}: no images in .../Train/<class>/ or .../Test/<class>/ folders, loose or in a zip")
    return _named_by_folder(rows)


# ---------------------------------------------------------------- isic-cli downloads

CLI_METADATA = "metadata.csv"
# Diagnosis columns, most specific first: the hierarchical taxonomy's levels 5..3, then the old flat field.
CLI_DIAGNOSES = ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis")
# The published verdict: the old field, else the taxonomy's top level (Benign/Malignant/Indeterminate).
CLI_VERDICTS = ("benign_malignant", "diagnosis_1")


def _cli_columns(table: pd.DataFrame, path: Path) -> None:
    labels = set(CLI_DIAGNOSES) | set(CLI_VERDICTS)
    if "isic_id" not in table.columns or not labels & set(table.columns):
        expected = f"'isic_id' and at least one of {sorted(labels)}"
        raise LayoutError(f"{path}: unexpected columns; expected {expected}, found {list(table.columns)}")


def _most_specific(values: tuple[str, ...], where: str) -> str:
    """The deepest level the vocabulary names; a subtype it lacks (``Nevus, Junctional``) falls back to its
    parent level. No level at all is ``unknown``; when no level is known the deepest is kept as snake_case."""
    published = [value for value in values if value.strip()]
    known = (lookup_diagnosis(value) for value in published)
    found = next((name for name in known if name is not None), None)
    if found is None and published:
        return canonical_diagnosis(published[0], where=where)
    return found or "unknown"


def _cli_diagnoses(table: pd.DataFrame, path: Path) -> pd.Series:
    levels = [column for column in CLI_DIAGNOSES if column in table.columns]
    keys = list(table[levels].itertuples(index=False, name=None))
    mapping = {key: _most_specific(key, str(path)) for key in set(keys)}
    return pd.Series([mapping[key] for key in keys], index=table.index, dtype=object)


def _cli_verdicts(table: pd.DataFrame) -> pd.Series:
    """benign/malignant as published; Indeterminate (or indeterminate/benign) stays null so the diagnosis decides."""
    column = next((c for c in CLI_VERDICTS if c in table.columns), None)
    if column is None:
        return pd.Series(pd.NA, index=table.index, dtype=STRING)
    words = table[column].str.strip().str.lower()
    return words.where(words.isin(["benign", "malignant"]), pd.NA)


def _read_cli_download(root: Path, metadata: SourceFile, files: list[SourceFile], strict: bool) -> pd.DataFrame:
    """One ``isic image download`` folder: its metadata.csv and the images beside it."""
    path = root / metadata.uri
    table = read_csv_cells(next(read_uris(root, [metadata.uri]))[1], path)
    _cli_columns(table, path)
    rows = index_metadata(table.replace("", pd.NA), path)
    rows = rows.assign(diagnosis=_cli_diagnoses(table, path), benign_malignant=_cli_verdicts(table))
    beside = [f for f in files if (f.container, f.path.parent) == (metadata.container, metadata.path.parent)]
    folder = metadata.container / metadata.path.parent
    return _matched(rows, _image_uris(beside, folder), path, folder, strict)


def read_isic_cli(root: Path, *, strict: bool = True) -> pd.DataFrame:
    """What ``isic image download OUT`` writes (``<isic_id>.jpg`` + metadata.csv), as a folder or a zip of it.

    Every metadata.csv found is one download; several downloads may share the layout folder.
    """
    files = _folder_files(root)
    tables = [file for file in files if file.path.name == CLI_METADATA]
    if not tables:
        raise LayoutError(f"{root}: no {CLI_METADATA} found, loose or in a zip (`isic image download OUT` writes one)")
    return pd.concat([_read_cli_download(root, table, files, strict) for table in tables], ignore_index=True)


# ---------------------------------------------------------------- the index

LAYOUT_READERS: dict[str, Reader] = {
    "isic2016": read_isic2016,
    "isic2017": read_isic2017,
    "isic2017-udacity": read_udacity,
    "isic2018": read_isic2018,
    "isic2019": read_isic2019,
    "isic2020": read_isic2020,
    "class-folders": read_class_folders,
    "isic-cli": read_isic_cli,
}


def _conform(rows: pd.DataFrame) -> pd.DataFrame:
    """Exactly INDEX_COLUMNS in order: strings as nullable strings, age as float64 with NaN unknown, the
    size as nullable Int64."""
    out = pd.DataFrame(index=rows.index)
    for column in INDEX_COLUMNS:
        dtype = _DTYPES.get(column, STRING)
        out[column] = rows[column].astype(dtype) if column in rows else pd.Series(index=rows.index, dtype=dtype)
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


_Facts = tuple[str, str | None, int | None, int | None]
_FACT_COLUMNS = ("sha256", "image_hash", "width", "height")  # what indexing reads from each image's bytes


def _hashes_and_sizes(
    raw_root: Path, uris: pd.Series, known_hashes: Mapping[str, str], max_pixels: int
) -> pd.DataFrame:
    """sha256, perceptual hash (``near_duplicates.image_hash``; none over ``max_pixels``) and stored width and
    height (the header's, ``images.stored_size``; <NA> when unreadable) of each image's bytes, in one read of
    the uris in sorted order so each zip is opened once; a batch at a time is hashed on threads, their
    decodes held to ``images.DECODE_BUDGET``. Decoding for the perceptual hash is most of indexing's work, so
    bytes hashed before (``known_hashes``: sha256 -> image_hash) are not decoded again; the size costs a
    header read, so every image's is read on every fetch."""

    def facts(data: bytes) -> _Facts:
        digest = sha256_hex(data)
        width, height = stored_size(data) or (None, None)
        perceptual = known_hashes[digest] if digest in known_hashes else image_hash(data, max_pixels)
        return digest, perceptual, width, height

    found: dict[str, _Facts] = {}
    members = read_uris(raw_root, sorted(uris))
    with ThreadPoolExecutor(_HASH_WORKERS) as pool:
        while batch := list(itertools.islice(members, _HASH_BATCH)):
            found.update(zip((uri for uri, _ in batch), pool.map(facts, (data for _, data in batch)), strict=True))
    return pd.DataFrame([found[uri] for uri in uris], columns=list(_FACT_COLUMNS), index=uris.index)


def read_layout(
    layout: str, root: Path, *, source: str, raw_root: Path, strict: bool = True,
    known_hashes: Mapping[str, str] | None = None, max_pixels: int = PILLOW_MAX_PIXELS,
) -> pd.DataFrame:
    """Index rows (INDEX_COLUMNS) for the folder ``root`` of ``source``, uris relative to ``raw_root``.

    ``strict=False`` keeps the images a table and its archive agree on, warning about the rest, where the
    default refuses a source whose tables and images disagree. ``known_hashes`` (sha256 -> image_hash, from
    the previous index) spares decoding images already hashed. An image over ``max_pixels`` (shard.max_pixels,
    the one bound every decoding stage applies) gets no perceptual hash and is not decoded.
    """
    reader = LAYOUT_READERS.get(layout)
    if reader is None:
        raise LayoutError(f"unknown layout {layout!r}; known: {sorted(LAYOUT_READERS)}")
    root, raw_root = Path(root), Path(raw_root)
    try:
        prefix = root.resolve().relative_to(raw_root.resolve()).as_posix()
    except ValueError:
        raise LayoutError(f"{root}: not inside the raw data folder {raw_root}") from None
    rows = reader(root, strict=strict)
    if rows.empty:
        raise LayoutError(f"{root}: no images found for layout {layout!r}")
    rows = rows.assign(source=source, uri=[f"{prefix}/{uri}" if prefix != "." else uri for uri in rows["uri"]])
    rows[list(_FACT_COLUMNS)] = _hashes_and_sizes(raw_root, rows["uri"], known_hashes or {}, max_pixels)
    return _conform(rows)

"""Patient context beside the pixels: age, sex and anatomic site as a fixed float vector the head reads.

The releases spell the site differently (HAM10000's `localization`: back, trunk, acral...; ISIC 2019 and
the archive's `anatom_site_general`: anterior/posterior/lateral torso...; ISIC 2020's
`anatom_site_general_challenge`: torso...), so every spelling maps to one vocabulary, coarse enough that
each release can say it. Many images leave a field blank: each field carries a missing indicator, so
"unknown" is an input the model learns from, never a guess (0, or the commonest value) it cannot tell apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skincancer.core.params import CONTEXT_FIELDS

# canonical site -> the spellings that mean it (matched stripped and case-folded). Torso takes anterior,
# posterior and lateral torso and HAM10000's back/trunk/chest/abdomen: ISIC 2020 and HAM10000's trunk do not
# tell them apart. HAM10000's acral is palms/soles, hand and foot are their extremities.
SITE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "head/neck": ("head/neck", "face", "scalp", "ear", "neck"),
    "upper extremity": ("upper extremity", "hand"),
    "lower extremity": ("lower extremity", "foot"),
    "torso": ("torso", "anterior torso", "posterior torso", "lateral torso", "back", "trunk", "chest", "abdomen"),
    "palms/soles": ("palms/soles", "acral"),
    "oral/genital": ("oral/genital", "genital"),
}
SITES: tuple[str, ...] = tuple(SITE_SPELLINGS)
SEXES: tuple[str, ...] = ("male", "female")
MISSING_SPELLINGS = ("", "unknown")  # how the tables say "not recorded" (the ingest turns both into null)
AGE_SCALE = 100.0  # years; ISIC ages are 0..85 in steps of 5
SOURCE_COLUMNS = {"age": "age_approx", "sex": "sex", "site": "anatom_site"}  # the image table's columns
_SITE_OF = {spelling: site for site, spellings in SITE_SPELLINGS.items() for spelling in spellings}
_VOCABULARIES = {"sex": {sex: sex for sex in SEXES}, "site": _SITE_OF}

# read_context_csv: header (stripped, case-folded) -> the image table's column
CSV_COLUMNS = {
    "age": "age_approx", "age_approx": "age_approx", "sex": "sex", "site": "anatom_site",
    "anatom_site": "anatom_site", "anatom_site_general": "anatom_site", "anatom_site_general_challenge": "anatom_site",
    "localization": "anatom_site",
}
CSV_IMAGE = "image"
MAX_AGE = 120.0


def _key(value: object) -> str | None:
    """How a spelling is looked up; None for a missing cell (None, NaN, pd.NA)."""
    return None if value is None or pd.isna(value) else str(value).strip().casefold()


def canonical_site(value: object) -> str | None:
    """The vocabulary's site for a published spelling; None when blank, unknown or unmapped."""
    return _SITE_OF.get(_key(value) or "")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name)


def _ordered(fields: Sequence[str]) -> list[str]:
    """The fields in CONTEXT_FIELDS order, so the vector's layout does not depend on how params listed them."""
    if unknown := sorted(set(fields) - set(CONTEXT_FIELDS)):
        raise ValueError(f"unknown patient context field(s) {unknown}; known: {list(CONTEXT_FIELDS)}")
    return [name for name in CONTEXT_FIELDS if name in fields]


def _field_columns(field: str) -> list[str]:
    values = {"age": ["age"], "sex": [f"sex_{sex}" for sex in SEXES], "site": [f"site_{_slug(s)}" for s in SITES]}
    return [*values[field], f"{field}_missing"]


def context_columns(fields: Sequence[str]) -> list[str]:
    """The names of the encoded vector's columns, in their order."""
    return [column for field in _ordered(fields) for column in _field_columns(field)]


def _canonical(frame: pd.DataFrame, field: str) -> pd.Series:
    """The field's vocabulary value per row (NA when missing or unmapped)."""
    keys = frame[SOURCE_COLUMNS[field]].astype("string").str.strip().str.casefold()
    return keys.map(_VOCABULARIES[field], na_action="ignore").astype("string")


def _one_hot(values: pd.Series, vocabulary: Sequence[str]) -> np.ndarray:
    hot = np.stack([values.eq(name).fillna(False).to_numpy(bool) for name in vocabulary], axis=1)
    return np.concatenate([hot, values.isna().to_numpy()[:, None]], axis=1)


def _encode_field(frame: pd.DataFrame, field: str) -> np.ndarray:
    if field == "age":
        age = pd.to_numeric(frame[SOURCE_COLUMNS["age"]]).to_numpy("float64", na_value=np.nan)
        missing = np.isnan(age)
        return np.stack([np.where(missing, 0.0, age / AGE_SCALE), missing], axis=1)
    return _one_hot(_canonical(frame, field), SEXES if field == "sex" else SITES)


def encode_context(frame: pd.DataFrame, fields: Sequence[str]) -> np.ndarray:
    """One float32 row per image over `context_columns(fields)`, from the columns age_approx, sex, anatom_site."""
    ordered = _ordered(fields)
    if absent := [SOURCE_COLUMNS[f] for f in ordered if SOURCE_COLUMNS[f] not in frame.columns]:
        raise ValueError(f"patient context {ordered} needs column(s) {absent}; found {list(frame.columns)}")
    parts = [_encode_field(frame, field) for field in ordered]
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)


def unmapped_spellings(frame: pd.DataFrame, fields: Sequence[str]) -> dict[str, dict[str, int]]:
    """field -> {spelling: images} for the values the vocabulary does not know, encoded as missing: the train
    stage and predict warn once per spelling instead of silently losing a site nobody mapped."""
    found = {}
    for field in (f for f in _ordered(fields) if f in _VOCABULARIES):
        raw = frame[SOURCE_COLUMNS[field]].astype("string")
        key = raw.str.strip().str.casefold()
        lost = raw[key.notna() & ~key.isin(MISSING_SPELLINGS) & _canonical(frame, field).isna()]
        if len(lost):
            found[field] = {str(s): int(n) for s, n in lost.value_counts().sort_index().items()}
    return found


def _field_encoding(field: str) -> dict:
    column = SOURCE_COLUMNS[field]
    if field == "age":
        return {"from": column, "columns": _field_columns(field), "value": f"{column} / {AGE_SCALE:g}",
                "scale": AGE_SCALE}
    spellings = {sex: [sex] for sex in SEXES} if field == "sex" else {s: list(v) for s, v in SITE_SPELLINGS.items()}
    return {"from": column, "columns": _field_columns(field), "spellings": spellings}


def context_encoding(fields: Sequence[str]) -> dict:
    """What the model card records: enough to build an image's vector by hand, without this module."""
    ordered = _ordered(fields)
    return {
        "fields": ordered,
        "columns": context_columns(ordered),
        "dtype": "float32",
        "missing": (f"a value that is blank, null, one of {list(MISSING_SPELLINGS)} or not among a field's spellings "
                    "(matched stripped and case-folded) is missing: its value columns 0, its <field>_missing column 1"),
        **{field: _field_encoding(field) for field in ordered},
    }


# ---------------------------------------------------------------- predict --metadata


def _read_cells(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:  # pandas' parser and empty-file errors are ValueErrors
        raise ValueError(f"{path}: not a readable CSV ({error}); write one row per image with a header "
                         "such as image,age,sex,site") from None


def _renamed(cells: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Headers as the image table names them; two headers for one field would be ambiguous."""
    headers = [str(column).strip().casefold() for column in cells.columns]
    if CSV_IMAGE not in headers:
        raise ValueError(f"{path}: no `{CSV_IMAGE}` column (found {list(cells.columns)}); add one holding each "
                         "image's file name or path as given to predict")
    targets = [CSV_COLUMNS.get(header) for header in headers]
    if twice := sorted({t for t in targets if t and targets.count(t) > 1}):
        clash = [column for column, t in zip(cells.columns, targets, strict=True) if t in twice]
        raise ValueError(f"{path}: columns {clash} say the same field; keep one of them")
    return cells.set_axis([t or h for t, h in zip(targets, headers, strict=True)], axis=1)


def _rows(lines: pd.Series) -> str:
    """Rows named by their line in the file (the header is line 1) and their image."""
    shown = [f"line {line + 2} ({image!r})" for line, image in lines.head(5).items()]
    more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
    return ", ".join(shown) + more


def _ages(cells: pd.DataFrame, path: Path) -> pd.Series:
    text = cells["age_approx"].str.strip()
    missing = text.str.casefold().isin(MISSING_SPELLINGS)
    age = pd.to_numeric(text.mask(missing), errors="coerce")
    if (bad := ~missing & ~age.between(0, MAX_AGE)).any():  # NaN (not a number) is not between either
        raise ValueError(f"{path}: column age at {_rows(cells.loc[bad, CSV_IMAGE])}: "
                         f"{cells.loc[bad, 'age_approx'].head(5).tolist()} is not an age in years (0..{MAX_AGE:g}); "
                         "write the age in years, or leave the cell blank for unknown")
    return age.astype("float64")


def read_context_csv(path: Path) -> pd.DataFrame:
    """`skincancer predict --metadata`: one row per image, indexed by `image` as written, with the image
    table's columns age_approx (float, NaN unknown), sex and anatom_site (as written, NA when blank or absent)."""
    cells = _renamed(_read_cells(path), path)
    images = cells[CSV_IMAGE].str.strip()
    if (blank := images.eq("")).any():
        raise ValueError(f"{path}: {int(blank.sum())} row(s) name no image ({_rows(images[blank])}); "
                         "fill in the image's file name or remove the row")
    if (twice := images.duplicated(keep=False)).any():
        raise ValueError(f"{path}: image(s) with more than one row: {_rows(images[twice])}; keep one row "
                         "per image")
    cells = cells.assign(**{CSV_IMAGE: images})
    context = pd.DataFrame(index=pd.Index(images, name=CSV_IMAGE))
    context["age_approx"] = _ages(cells, path).to_numpy() if "age_approx" in cells else np.nan
    for column in ("sex", "anatom_site"):
        text = cells[column].str.strip() if column in cells else pd.Series("", index=cells.index)
        context[column] = text.mask(text.eq("")).astype("string").to_numpy()
    return context

"""train.metadata: age, sex and site as a fixed vector with missing flags, one site vocabulary across releases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from layout_fixtures import csv_bytes, write_isic2019
from test_metadata import HAM_HEADER

from skincancer.core.params import ParamsError, parse_params
from skincancer.core.patient_context import (
    SITES,
    canonical_site,
    context_columns,
    context_encoding,
    encode_context,
    read_context_csv,
    unmapped_spellings,
)
from skincancer.ingest.layouts import read_isic2019
from skincancer.ingest.metadata import read_metadata_table
from skincancer.ingest.sample import ANATOM_SITES

ROOT = Path(__file__).resolve().parents[1]

# every value of the real tables (HAM10000_metadata.csv `localization`, ISIC_2019_Training_Metadata.csv
# `anatom_site_general`, ISIC_2020_Training_GroundTruth.csv `anatom_site_general_challenge`) -> its site
HAM10000_SITES = {
    "scalp": "head/neck", "ear": "head/neck", "face": "head/neck", "neck": "head/neck", "back": "torso",
    "trunk": "torso", "chest": "torso", "abdomen": "torso", "upper extremity": "upper extremity",
    "hand": "upper extremity", "lower extremity": "lower extremity", "foot": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital", "unknown": None,
}
ISIC2019_SITES = {
    "anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso", "head/neck": "head/neck",
    "upper extremity": "upper extremity", "lower extremity": "lower extremity", "palms/soles": "palms/soles",
    "oral/genital": "oral/genital", "": None,
}
ISIC2020_SITES = {
    "torso": "torso", "head/neck": "head/neck", "upper extremity": "upper extremity",
    "lower extremity": "lower extremity", "palms/soles": "palms/soles", "oral/genital": "oral/genital", "": None,
}


def ids(n: int, first: int = 24306) -> list[str]:
    return [f"ISIC_{first + i:07d}" for i in range(n)]


def ham10000_rows(tmp_path: Path) -> pd.DataFrame:
    rows = [(f"HAM_{i}", image_id, "nv", "histo", "45", "male", site, "vidir_modern")
            for i, (image_id, site) in enumerate(zip(ids(len(HAM10000_SITES)), HAM10000_SITES, strict=True))]
    (tmp_path / "HAM10000_metadata.csv").write_bytes(csv_bytes(HAM_HEADER, rows))
    return read_metadata_table(tmp_path / "HAM10000_metadata.csv", "ham10000").rows


def isic2019_rows(tmp_path: Path) -> pd.DataFrame:
    cases = {image_id: ("NV", "55.0", site, "", "female")
             for image_id, site in zip(ids(len(ISIC2019_SITES)), ISIC2019_SITES, strict=True)}
    return read_isic2019(write_isic2019(tmp_path, cases)).set_index("image_id").loc[list(cases)]


def isic2020_rows(tmp_path: Path) -> pd.DataFrame:
    header = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
              "benign_malignant", "target")
    rows = [(image_id, "IP_1", "male", "40", site, "nevus", "benign", "0")
            for image_id, site in zip(ids(len(ISIC2020_SITES), 2000000), ISIC2020_SITES, strict=True)]
    (tmp_path / "truth.csv").write_bytes(csv_bytes(header, rows))
    return read_metadata_table(tmp_path / "truth.csv", "isic2020").rows


@pytest.mark.parametrize(("read", "published"), [(ham10000_rows, HAM10000_SITES), (isic2019_rows, ISIC2019_SITES),
                                                 (isic2020_rows, ISIC2020_SITES)], ids=["ham10000", "isic2019", "isic2020"])
def test_every_site_a_release_publishes_maps_to_the_one_vocabulary(tmp_path, read, published):
    """Read through the real ingest readers, so case, blanks and 'unknown' arrive as they do in the index."""
    rows = read(tmp_path)
    assert [canonical_site(site) for site in rows["anatom_site"]] == list(published.values())
    assert unmapped_spellings(rows, ["site"]) == {}
    flags = encode_context(rows, ["site"])
    assert flags[:, -1].tolist() == [float(site is None) for site in published.values()]  # site_missing
    assert (flags.sum(axis=1) == 1).all()  # exactly one site or the missing flag


def test_the_vocabulary_is_what_every_release_can_say():
    """The ISIC 2020 set, the coarsest: each site is reachable from every table, and the demo's sample spells it."""
    for published in (HAM10000_SITES, ISIC2019_SITES, ISIC2020_SITES):
        assert set(published.values()) - {None} == set(SITES)
    assert {canonical_site(site) for site in ANATOM_SITES} == {*SITES, None}
    assert canonical_site("  Posterior Torso ") == "torso" and canonical_site(float("nan")) is None


def context_frame(age, sex, site) -> pd.DataFrame:
    return pd.DataFrame({"age_approx": pd.Series(age, dtype="float64"), "sex": pd.Series(sex, dtype="string"),
                         "anatom_site": pd.Series(site, dtype="string")})


def test_blank_nan_null_and_unknown_are_missing_with_their_flag_set():
    frame = context_frame([np.nan, 0.0, 85.0, np.nan], [None, "", "unknown", "Female"],
                          [None, "", "unknown", "Hand"])
    vector = pd.DataFrame(encode_context(frame, ["age", "sex", "site"]), columns=context_columns(["age", "sex", "site"]))
    assert vector["age_missing"].tolist() == [1, 0, 0, 1] and vector["age"].tolist() == pytest.approx([0, 0, 0.85, 0])
    assert vector["sex_missing"].tolist() == [1, 1, 1, 0] and vector["sex_female"].tolist() == [0, 0, 0, 1]
    assert vector["site_missing"].tolist() == [1, 1, 1, 0] and vector["site_upper_extremity"].tolist() == [0, 0, 0, 1]
    assert vector.drop(columns=["age", "age_missing"]).sum(axis=1).tolist() == [2, 2, 2, 2]  # one per field


def test_the_vector_is_float32_in_one_column_order_whatever_order_params_lists():
    frame = context_frame([50.0], ["male"], ["back"])
    columns = context_columns(["site", "age", "sex"])
    assert columns == ["age", "age_missing", "sex_male", "sex_female", "sex_missing", "site_head_neck",
                       "site_upper_extremity", "site_lower_extremity", "site_torso", "site_palms_soles",
                       "site_oral_genital", "site_missing"]
    vector = encode_context(frame, ["site", "age", "sex"])
    assert vector.dtype == np.float32 and vector.shape == (1, len(columns))
    assert dict(zip(columns, vector[0].tolist(), strict=True)) == {
        column: {"age": 0.5, "sex_male": 1.0, "site_torso": 1.0}.get(column, 0.0) for column in columns}
    assert context_columns(["sex"]) == ["sex_male", "sex_female", "sex_missing"]
    assert encode_context(frame, []).shape == (1, 0)
    with pytest.raises(ValueError, match=r"unknown patient context field\(s\) \['weight'\]"):
        context_columns(["weight"])


def test_a_spelling_no_release_uses_is_missing_and_counted_once_per_spelling():
    frame = context_frame([np.nan] * 6, ["M", "male", None, "M", "", "female"],
                          ["elbow", "Knee", "elbow", "unknown", "", "torso"])
    assert unmapped_spellings(frame, ["age", "sex", "site"]) == {"sex": {"M": 2}, "site": {"Knee": 1, "elbow": 2}}
    assert unmapped_spellings(frame, ["age"]) == {}
    assert encode_context(frame, ["site"])[:, -1].tolist() == [1, 1, 1, 1, 1, 0]


def by_hand(encoding: dict, age: float | None, sex: str | None, site: str | None) -> list[float]:
    """A reader of the model card who has only its `patient_context` record."""
    values, row = {"age": age, "sex": sex, "site": site}, []
    for field in encoding["fields"]:
        value, spec = values[field], encoding[field]
        if field == "age":
            row += [0.0, 1.0] if value is None else [value / spec["scale"], 0.0]
            continue
        hot = [float(value is not None and value.strip().casefold() in names) for names in spec["spellings"].values()]
        row += [*hot, float(not any(hot))]
    return row


def test_the_card_record_is_enough_to_build_the_vector_without_the_code():
    encoding = json.loads(json.dumps(context_encoding(["site", "sex", "age"])))
    assert encoding["fields"] == ["age", "sex", "site"] and encoding["columns"] == context_columns(["age", "sex", "site"])
    assert encoding["site"]["spellings"]["torso"][:2] == ["torso", "anterior torso"]
    cases = [(35.0, "female", "posterior torso"), (None, None, None), (70.0, "male", "Acral"), (5.0, "", "scalp")]
    frame = context_frame(*zip(*[(np.nan if a is None else a, s, t) for a, s, t in cases], strict=True))
    expected = np.array([by_hand(encoding, *case) for case in cases], np.float32)
    np.testing.assert_array_equal(encode_context(frame, encoding["fields"]), expected)


# ---------------------------------------------------------------- train.metadata


def params_with(metadata: object) -> dict:
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    document["train"]["metadata"] = metadata
    return document


def test_the_shipped_params_feed_no_patient_context():
    for name in ("params.yaml", "params/real.yaml"):
        assert yaml.safe_load((ROOT / name).read_text())["train"]["metadata"] == []


@pytest.mark.parametrize(("written", "fields"), [(None, []), ("none", []), ([], []), (["site", "age"], ["site", "age"]),
                                                 (["age", "sex", "site"], ["age", "sex", "site"])])
def test_train_metadata_takes_any_of_age_sex_and_site(written, fields):
    assert parse_params(params_with(written)).train.metadata == fields


@pytest.mark.parametrize(("written", "message"), [
    (["age", "Site"], "train.metadata: unknown field(s) ['Site']; known: ['age', 'sex', 'site']"),
    (["age", "sex", "age"], "train.metadata: ['age', 'sex', 'age'] lists ['age'] more than once"),
    ("age", "train.metadata: Input should be a valid list"),
])
def test_train_metadata_refuses_unknown_or_repeated_fields_naming_the_allowed_ones(written, message):
    with pytest.raises(ParamsError) as error:
        parse_params(params_with(written))
    assert message in str(error.value)


# ---------------------------------------------------------------- skincancer predict --metadata


def write_csv(tmp_path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    path = tmp_path / "context.csv"
    path.write_bytes(csv_bytes(header, rows))
    return path


def test_a_context_csv_becomes_the_image_tables_columns_indexed_by_image(tmp_path):
    path = write_csv(tmp_path, ("Image", "Age", "localization", "diagnosis"), [
        ("a.jpg", "45", "back", "nevus"), ("photos/b.jpg", "", "unknown", ""), ("c.jpg", " unknown ", " ", "")])
    context = read_context_csv(path)
    assert context.index.name == "image" and context.index.tolist() == ["a.jpg", "photos/b.jpg", "c.jpg"]
    assert list(context.columns) == ["age_approx", "sex", "anatom_site"] and context["age_approx"].dtype == "float64"
    assert context["age_approx"].tolist()[0] == 45.0 and context["age_approx"].iloc[1:].isna().all()
    assert context["sex"].isna().all()  # no sex column: every image's sex is missing
    assert context["anatom_site"].tolist()[:2] == ["back", "unknown"] and pd.isna(context["anatom_site"].iloc[2])
    assert encode_context(context, ["age", "site"])[:, [1, -1]].tolist() == [[0, 0], [1, 1], [1, 1]]


@pytest.mark.parametrize(("header", "rows", "message"), [
    (("file", "age"), [("a.jpg", "40")], r"no `image` column \(found \['file', 'age'\]\); add one"),
    (("image", "age"), [("a.jpg", "40"), ("b.jpg", "50"), ("a.jpg", "40")],
     r"image\(s\) with more than one row: line 2 \('a.jpg'\), line 4 \('a.jpg'\); keep one row per image"),
    (("image", "age", "sex"), [("a.jpg", "40", "male"), ("b.jpg", "forty", "female")],
     r"column age at line 3 \('b.jpg'\): \['forty'\] is not an age in years .*leave the cell blank for unknown"),
    (("image", "age"), [("a.jpg", "-3")], r"column age at line 2 \('a.jpg'\): \['-3'\] is not an age"),
    (("image", "site", "anatom_site"), [("a.jpg", "back", "torso")], r"columns \['site', 'anatom_site'\] say the same"),
    (("image", "age"), [("", "40")], r"1 row\(s\) name no image \(line 2 \(''\)\)"),
])
def test_a_context_csv_that_cannot_be_trusted_is_refused_naming_the_file_row_and_fix(tmp_path, header, rows, message):
    path = write_csv(tmp_path, header, rows)
    with pytest.raises(ValueError, match=message) as error:
        read_context_csv(path)
    assert str(error.value).startswith(f"{path}: ")

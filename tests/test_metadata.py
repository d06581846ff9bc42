"""fetch.metadata: published tables fill patient/lesion ids, sex, age and site by image id, and say so."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from layout_fixtures import NINE_CLASS, csv_bytes, write_class_folders

from skincancer.core.params import FetchParams
from skincancer.ingest.fetch import fetch
from skincancer.ingest.metadata import MetadataError, join_metadata, read_metadata_table

HAM_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
NINE_CLASS_IDS = sorted(i for ids in NINE_CLASS.values() for i in ids)


def write_ham(path: Path, rows: list[tuple]) -> Path:
    path.write_bytes(csv_bytes(HAM_HEADER, rows))
    return path


def ham_row(image_id: str, lesion: str, dx: str = "nv", sex: str = "male", age: str = "45") -> tuple:
    return (lesion, image_id, dx, "histo", age, sex, "back", "vidir_modern")


def index_rows(**columns) -> pd.DataFrame:
    n = len(columns["image_id"])
    frame = pd.DataFrame({"source": "kaggle", **columns})
    for name in ("patient_id", "lesion_id", "sex", "anatom_site", "diagnosis"):
        if name not in frame:
            frame[name] = pd.Series([None] * n, dtype="string")
    if "age_approx" not in frame:
        frame["age_approx"] = float("nan")
    return frame


def test_a_ham10000_table_fills_lesion_sex_age_and_site_and_records_where_from(tmp_path):
    table = read_metadata_table(write_ham(tmp_path / "HAM10000_metadata.csv", [
        ham_row("ISIC_0000001", "HAM_1"), ham_row("ISIC_0000002", "HAM_1", sex="unknown", age=""),
    ]), "ham10000")
    index = index_rows(image_id=["ISIC_0000001", "ISIC_0000002_downsampled", "ISIC_0000009"],
                       sex=pd.Series(["female", None, None], dtype="string"))
    joined, conflicts = join_metadata(index, [table])
    assert joined["lesion_id"].tolist()[:2] == ["HAM_1", "HAM_1"] and pd.isna(joined["lesion_id"][2])
    assert joined["lesion_id_from"].tolist()[:2] == ["HAM10000_metadata.csv"] * 2
    # the source's own value stays and says so; "unknown" and an empty age fill nothing
    assert joined.loc[0, "sex_from"] == "source" and joined.loc[0, "sex"] == "female"
    assert pd.isna(joined.loc[1, "sex"]) and pd.isna(joined.loc[1, "age_approx_from"])
    assert joined.loc[0, "age_approx"] == 45.0 and joined.loc[0, "anatom_site"] == "back"
    assert pd.isna(joined.loc[2, "lesion_id_from"]) and pd.isna(joined.loc[2, "patient_id_from"])
    # the source said female, the table male: reported, not overwritten
    assert conflicts[["image_id", "field", "value", "value_from", "table_value"]].values.tolist() == [
        ["ISIC_0000001", "sex", "female", "source", "male"]]


def test_a_diagnosis_the_table_disagrees_with_is_reported_and_left_alone(tmp_path, caplog):
    table = read_metadata_table(write_ham(tmp_path / "ham.csv", [ham_row("ISIC_0028619", "HAM_7", dx="akiec")]),
                                "ham10000")
    index = index_rows(image_id=["ISIC_0028619"], diagnosis=pd.Series(["nevus"], dtype="string"))
    with caplog.at_level(logging.WARNING, logger="skincancer.ingest.metadata"):
        joined, conflicts = join_metadata(index, [table])
    assert joined["diagnosis"].tolist() == ["nevus"]
    assert conflicts[["field", "value", "table_value"]].values.tolist() == [["diagnosis", "nevus", "actinic_keratosis"]]
    assert "1 value(s) of the sources disagree with a metadata table: diagnosis (1)" in caplog.text


def test_isic2020_and_isic_cli_tables_fill_patient_ids(tmp_path):
    truth = tmp_path / "ISIC_2020_Training_GroundTruth_v2.csv"
    truth.write_bytes(csv_bytes(
        ("image_name", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
         "benign_malignant", "target"),
        [("ISIC_2000001", "IP_1", "IL_1", "male", "40", "torso", "unknown", "benign", "0")]))
    cli = tmp_path / "metadata.csv"
    cli.write_bytes(csv_bytes(("isic_id", "patient_id", "age_approx"), [("ISIC_0000005", "IP_9", "60")]))
    index = index_rows(image_id=["ISIC_2000001", "ISIC_0000005"])
    joined, conflicts = join_metadata(index, [read_metadata_table(truth, "isic2020"), read_metadata_table(cli, "isic-cli")])
    assert joined["patient_id"].tolist() == ["IP_1", "IP_9"] and joined["lesion_id"].tolist()[0] == "IL_1"
    assert joined["patient_id_from"].tolist() == [truth.name, cli.name] and conflicts.empty


@pytest.mark.parametrize(
    ("layout", "header", "rows", "message"),
    [
        ("ham10000", ("image_id", "dx"), [("ISIC_1", "nv")],
         r"ham.csv: not a ham10000 metadata table; missing column\(s\) \['lesion_id', 'age', 'sex', 'localization'\]"),
        ("ham10000", HAM_HEADER, [ham_row("ISIC_0000001", "HAM_1"), ham_row("ISIC_0000001_downsampled", "HAM_2")],
         r"ham.csv: 1 image id\(s\) have more than one row: \['ISIC_0000001'\]"),
        ("isic-cli", ("isic_id", "attribution"), [("ISIC_1", "x")], r"ham.csv: none of \['patient_id'.* nothing to join"),
    ],
)
def test_tables_that_cannot_be_trusted_are_refused_naming_the_file(tmp_path, layout, header, rows, message):
    (tmp_path / "ham.csv").write_bytes(csv_bytes(header, rows))
    with pytest.raises(MetadataError, match=message):
        read_metadata_table(tmp_path / "ham.csv", layout)


def test_rows_matching_no_image_are_counted_in_a_warning(tmp_path, caplog):
    table = read_metadata_table(write_ham(tmp_path / "ham.csv", [ham_row(f"ISIC_000000{i}", "HAM_1") for i in range(4)]),
                                "ham10000")
    with caplog.at_level(logging.WARNING, logger="skincancer.ingest.metadata"):
        join_metadata(index_rows(image_id=["ISIC_0000001"]), [table])
        join_metadata(index_rows(image_id=["ISIC_0000009"]), [table])
    assert "ham.csv: 3 of 4 row(s) match no indexed image" in caplog.text
    assert "ham.csv matches no indexed image at all" in caplog.text


def test_fetch_joins_a_table_to_a_class_folder_source(tmp_path):
    local = write_class_folders(tmp_path / "kaggle", as_zip=True)
    # two images of the 9-class fixture are one lesion in the table, and one is a conflict
    rows = [ham_row(image_id, f"HAM_{i}") for i, image_id in enumerate(NINE_CLASS_IDS)]
    rows[1] = ham_row(NINE_CLASS_IDS[1], "HAM_0")
    ham = write_ham(tmp_path / "HAM10000_metadata.csv", rows)
    params = FetchParams.model_validate({
        "datasets": [],
        "sources": [{"name": "kaggle", "url": local.as_uri(), "layout": "class-folders"}],
        "metadata": [{"url": ham.as_uri(), "layout": "ham10000"}],
    })
    index = fetch(params, tmp_path / "raw")
    assert (tmp_path / "raw/metadata/HAM10000_metadata.csv").read_bytes() == ham.read_bytes()
    assert index.set_index("image_id").loc[NINE_CLASS_IDS[:2], "lesion_id"].tolist() == ["HAM_0", "HAM_0"]
    assert set(index["lesion_id_from"]) == {"HAM10000_metadata.csv"}
    conflicts = pd.read_csv(tmp_path / "raw/metadata_conflicts.csv")
    assert set(conflicts["field"]) == {"diagnosis"}  # the table says nv for every fixture image
    saved = pd.read_parquet(tmp_path / "raw/index.parquet")
    assert saved["lesion_id"].tolist() == index["lesion_id"].tolist()

import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from skincancer.archives import UnsafeArchive, read_uris, sha256_hex
from skincancer.labels import UnknownDiagnosis
from skincancer.layouts import INDEX_COLUMNS, LAYOUT_READERS, LayoutError, read_layout
from skincancer.sample import write_sample

N = 60
CSV_NAME = "ISIC_2020_Training_GroundTruth.csv"


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_sample(root / "sample", n_images=N, seed=3)
    return root


@pytest.fixture
def isic2020_copy(raw_root, tmp_path) -> Path:
    return Path(shutil.copytree(raw_root / "sample" / "isic2020", tmp_path / "isic2020"))


def read(layout: str, raw_root: Path, folder: Path | None = None) -> pd.DataFrame:
    return read_layout(layout, folder or raw_root / "sample" / layout, source="sample", raw_root=raw_root)


def zip_images(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return [name for name in archive.namelist() if name.endswith(".jpg")]


def test_registry_holds_both_layouts():
    assert set(LAYOUT_READERS) == {"isic2017-udacity", "isic2020"}


@pytest.mark.parametrize("layout", ["isic2017-udacity", "isic2020"])
def test_index_schema_and_order(raw_root, layout):
    index = read(layout, raw_root)
    assert tuple(index.columns) == INDEX_COLUMNS
    assert index["age_approx"].dtype == "float64"
    for column in set(INDEX_COLUMNS) - {"age_approx"}:
        assert isinstance(index[column].dtype, pd.StringDtype), column
    assert index["image_id"].is_unique and list(index["image_id"]) == sorted(index["image_id"])
    assert (index["source"] == "sample").all()
    assert index["uri"].str.startswith(f"sample/{layout}/").all()
    assert index[["image_id", "uri", "diagnosis", "sha256"]].notna().all().all()


@pytest.mark.parametrize("layout", ["isic2017-udacity", "isic2020"])
def test_uris_resolve_and_hashes_match(raw_root, layout):
    index = read(layout, raw_root)
    read_back = dict(read_uris(raw_root, sorted(index["uri"])))
    assert len(read_back) == len(index)
    for uri, digest, image_id in zip(index["uri"], index["sha256"], index["image_id"]):
        assert sha256_hex(read_back[uri]) == digest
        assert uri.endswith(f"/{image_id}.jpg")


def test_udacity_rows_match_what_was_written(raw_root):
    index = read("isic2017-udacity", raw_root)
    folder = raw_root / "sample" / "isic2017-udacity"
    written = {
        f"sample/isic2017-udacity/{split}.zip!{member}": member.split("/")[1]
        for split in ("train", "valid", "test")
        for member in zip_images(folder / f"{split}.zip")
    }
    assert dict(zip(index["uri"], index["diagnosis"])) == written
    assert len(index) == round(0.4 * N)
    for column in ("benign_malignant", "patient_id", "lesion_id", "sex", "anatom_site"):
        assert index[column].isna().all()
    assert index["age_approx"].isna().all()


def test_isic2020_rows_match_the_ground_truth(raw_root):
    index = read("isic2020", raw_root).set_index("image_id")
    truth = pd.read_csv(raw_root / "sample/isic2020" / CSV_NAME, dtype=str, keep_default_na=False)
    truth = truth.set_index("image_name")
    assert len(index) == len(truth) == N - round(0.4 * N)
    assert set(index["diagnosis"]) <= {"melanoma", "nevus", "seborrheic_keratosis"}
    for image_id, row in truth.iterrows():
        got = index.loc[image_id]
        assert got["diagnosis"] == row["diagnosis"].replace(" ", "_")
        assert got["benign_malignant"] == row["benign_malignant"]
        assert got["patient_id"] == row["patient_id"]
        assert (pd.isna(got["sex"]) and row["sex"] == "") or got["sex"] == row["sex"]
        assert (pd.isna(got["anatom_site"]) and row["anatom_site_general_challenge"] == "") or (
            got["anatom_site"] == row["anatom_site_general_challenge"]
        )
        assert (pd.isna(got["age_approx"]) and row["age_approx"] == "") or got["age_approx"] == float(row["age_approx"])
        assert got["uri"] == f"sample/isic2020/ISIC_2020_Training_JPEG.zip!train/{image_id}.jpg"
    assert index["lesion_id"].isna().all()


def test_index_survives_a_parquet_round_trip(raw_root, tmp_path):
    index = read("isic2020", raw_root)
    index.to_parquet(tmp_path / "index.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "index.parquet"), index)


def test_csv_with_wrong_columns_names_expected_and_found(raw_root, isic2020_copy):
    path = isic2020_copy / CSV_NAME
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0].replace("anatom_site_general_challenge", "site") + "".join(lines[1:]))
    with pytest.raises(LayoutError) as caught:
        read("isic2020", isic2020_copy.parent, isic2020_copy)
    message = str(caught.value)
    assert CSV_NAME in message
    assert "'anatom_site_general_challenge'" in message and "'site'" in message


def test_image_missing_from_zip_is_reported_with_count_and_ids(raw_root, isic2020_copy):
    with open(isic2020_copy / CSV_NAME, "a") as handle:
        handle.write("ISIC_9999998,IP_0000001,male,50.0,torso,nevus,benign,0\n")
        handle.write("ISIC_9999999,IP_0000001,male,50.0,torso,nevus,benign,0\n")
    expected = r"2 image\(s\) listed in .* missing from the zip: \['ISIC_9999998', 'ISIC_9999999'\]"
    with pytest.raises(LayoutError, match=expected):
        read("isic2020", isic2020_copy.parent, isic2020_copy)


def test_image_without_ground_truth_row_is_reported(raw_root, isic2020_copy):
    path = isic2020_copy / CSV_NAME
    lines = path.read_text().splitlines(keepends=True)
    dropped = lines[1].split(",")[0]
    path.write_text(lines[0] + "".join(lines[2:]))
    with pytest.raises(LayoutError, match=rf"1 image\(s\) in the zip have no row in {CSV_NAME}: \['{dropped}'\]"):
        read("isic2020", isic2020_copy.parent, isic2020_copy)


def test_unknown_diagnosis_in_csv_names_the_file(raw_root, isic2020_copy):
    path = isic2020_copy / CSV_NAME
    path.write_text(path.read_text().replace(",nevus,", ",blue nevus,", 1))
    with pytest.raises(UnknownDiagnosis, match=rf"'blue nevus' in .*{CSV_NAME}"):
        read("isic2020", isic2020_copy.parent, isic2020_copy)


def write_udacity(folder: Path, members: list[str]) -> Path:
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        for member in members:
            archive.writestr(member, b"\xff\xd8 not really a jpeg")
    return folder


def test_unknown_class_folder_names_the_member(tmp_path):
    folder = write_udacity(tmp_path / "udacity", ["train/nevus/ISIC_1.jpg", "train/blue_nevus/ISIC_2.jpg"])
    with pytest.raises(UnknownDiagnosis, match=r"'blue_nevus' in .*train.zip!train/blue_nevus/ISIC_2.jpg"):
        read("isic2017-udacity", tmp_path, folder)


def test_udacity_skips_macos_resource_forks(tmp_path):
    members = ["train/melanoma/ISIC_1.jpg", "__MACOSX/train/melanoma/._ISIC_1.jpg", "train/melanoma/._ISIC_1.jpg"]
    index = read("isic2017-udacity", tmp_path, write_udacity(tmp_path / "udacity", members))
    assert list(index["uri"]) == ["udacity/train.zip!train/melanoma/ISIC_1.jpg"]


def test_unsafe_member_in_a_layout_zip_is_refused(tmp_path):
    folder = write_udacity(tmp_path / "udacity", ["train/nevus/ISIC_1.jpg", "../evil.jpg"])
    with pytest.raises(UnsafeArchive, match="evil.jpg"):
        read("isic2017-udacity", tmp_path, folder)


def test_missing_files_and_unknown_layout_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="train.zip"):
        read("isic2017-udacity", tmp_path, tmp_path / "empty")
    with pytest.raises(LayoutError, match="ISIC_2020_Training_JPEG.zip"):
        read("isic2020", tmp_path, tmp_path / "empty")
    with pytest.raises(LayoutError, match=r"unknown layout 'ham10000'.*isic2020"):
        read("ham10000", tmp_path, tmp_path / "empty")
    with pytest.raises(LayoutError, match="not inside the raw data folder"):
        read_layout("isic2020", tmp_path / "empty", source="x", raw_root=tmp_path / "elsewhere")


def test_isic2020_v2_ground_truth_supplies_lesion_ids(raw_root, isic2020_copy):
    lines = (isic2020_copy / CSV_NAME).read_text().splitlines()
    (isic2020_copy / CSV_NAME).unlink()
    v2 = []
    for number, line in enumerate(lines):
        image, patient, rest = line.split(",", 2)
        v2.append(f"{image},{patient},{'lesion_id' if number == 0 else f'IL_{number:07d}'},{rest}\n")
    (isic2020_copy / "ISIC_2020_Training_GroundTruth_v2.csv").write_text("".join(v2))
    index = read("isic2020", isic2020_copy.parent, isic2020_copy)
    assert index["lesion_id"].notna().all() and index["lesion_id"].str.match(r"^IL_\d{7}$").all()
    assert len(index) == len(lines) - 1

import io
import logging
import re
import shutil
import zipfile
from pathlib import Path

import layout_fixtures as lf
import pandas as pd
import pytest
from PIL import Image

from skincancer.core.labels import canonical_diagnosis
from skincancer.ingest.archives import UnsafeArchive, member_uri, read_uris, sha256_hex
from skincancer.ingest.catalog import CATALOG, CHALLENGE_URL
from skincancer.ingest.layouts import (
    CHALLENGES,
    INDEX_COLUMNS,
    ISIC2020_TABLES,
    ISIC2020_ZIP,
    LAYOUT_READERS,
    UDACITY_ZIPS,
    LayoutError,
    read_isic2020_duplicates,
    read_layout,
)
from skincancer.ingest.sample import write_sample

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


def test_registry_holds_every_layout():
    assert set(LAYOUT_READERS) == {
        "isic2016", "isic2017", "isic2017-udacity", "isic2018", "isic2019", "isic2020", "class-folders", "isic-cli"
    }


@pytest.mark.parametrize("layout", ["isic2017-udacity", "isic2020"])
def test_index_schema_and_order(raw_root, layout):
    index = read(layout, raw_root)
    assert tuple(index.columns) == INDEX_COLUMNS
    assert index["age_approx"].dtype == "float64"
    assert (index["width"].dtype, index["height"].dtype) == (pd.Int64Dtype(), pd.Int64Dtype())
    for column in set(INDEX_COLUMNS) - {"age_approx", "width", "height"}:
        assert isinstance(index[column].dtype, pd.StringDtype), column
    assert index["image_id"].is_unique and list(index["image_id"]) == sorted(index["image_id"])
    assert (index["source"] == "sample").all()
    assert index["uri"].str.startswith(f"sample/{layout}/").all()
    assert index[["image_id", "uri", "diagnosis", "sha256", "image_hash", "width", "height"]].notna().all().all()


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
    expected = r"2 image\(s\) listed in .* missing from ISIC_2020_Training_JPEG.zip: \['ISIC_9999998', 'ISIC_9999999'\]"
    with pytest.raises(LayoutError, match=expected):
        read("isic2020", isic2020_copy.parent, isic2020_copy)


def test_image_without_ground_truth_row_is_reported(raw_root, isic2020_copy):
    path = isic2020_copy / CSV_NAME
    lines = path.read_text().splitlines(keepends=True)
    dropped = lines[1].split(",")[0]
    path.write_text(lines[0] + "".join(lines[2:]))
    message = rf"1 image\(s\) in ISIC_2020_Training_JPEG.zip have no row in {CSV_NAME}: \['{dropped}'\]"
    with pytest.raises(LayoutError, match=message):
        read("isic2020", isic2020_copy.parent, isic2020_copy)


def test_unmapped_diagnosis_in_csv_is_kept_and_named(raw_root, isic2020_copy, caplog):
    path = isic2020_copy / CSV_NAME
    path.write_text(path.read_text().replace(",nevus,", ",blue nevus,", 1))
    index = read("isic2020", isic2020_copy.parent, isic2020_copy)
    assert (index["diagnosis"] == "blue_nevus").sum() == 1  # the split decides whether it can be labelled
    assert re.search(rf"'blue nevus' in .*{CSV_NAME}", caplog.text)


def write_udacity(folder: Path, members: list[str]) -> Path:
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        for member in members:
            archive.writestr(member, b"\xff\xd8 not really a jpeg")
    return folder


def test_unknown_class_folder_is_kept_and_named(tmp_path, caplog):
    folder = write_udacity(tmp_path / "udacity", ["train/nevus/ISIC_1.jpg", "train/blue_nevus/ISIC_2.jpg"])
    index = read("isic2017-udacity", tmp_path, folder)
    assert by_id(index)["ISIC_2"]["diagnosis"] == "blue_nevus"
    assert re.search(r"'blue_nevus' in .*train.zip!train/blue_nevus/ISIC_2.jpg", caplog.text)


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


# ---------------------------------------------------------------- every published layout, generated exactly


def by_id(index: pd.DataFrame) -> dict[str, dict]:
    return {row["image_id"]: row for row in index.to_dict("records")}


def hashes_are_the_images(index: pd.DataFrame) -> bool:
    return all(digest == sha256_hex(lf.jpeg(image_id)) for image_id, digest in zip(index["image_id"], index["sha256"]))


def replace_in_member(zip_path: Path, member: str, old: str, new: str) -> None:
    def change(name: str, data: bytes) -> bytes:
        return data.replace(old.encode(), new.encode()) if name == member else data

    lf.rewrite_zip(zip_path, change)


def replace_in_file(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_isic2016_reads_both_splits_with_published_verdicts(tmp_path):
    index = read("isic2016", tmp_path, lf.write_isic2016(tmp_path / "isic2016"))
    rows = by_id(index)
    assert set(rows) == {f"ISIC_000000{i}" for i in range(5)}
    verdicts = {"benign": "benign", "malignant": "malignant", "0.0": "benign", "1.0": "malignant"}
    expected = {image_id: verdicts[v] for split in lf.ISIC2016.values() for image_id, v in split.items()}
    assert {image_id: row["benign_malignant"] for image_id, row in rows.items()} == expected
    assert (index["diagnosis"] == "unknown").all()
    assert rows["ISIC_0000003"]["uri"] == (
        "isic2016/ISBI2016_ISIC_Part3_Test_Data.zip!ISBI2016_ISIC_Part3_Test_Data/ISIC_0000003.jpg"
    )
    assert index[["patient_id", "lesion_id", "sex", "anatom_site"]].isna().all().all()
    assert hashes_are_the_images(index)


def test_isic2017_one_hot_with_implicit_nevus_and_metadata_from_the_zip(tmp_path):
    index = read("isic2017", tmp_path, lf.write_isic2017(tmp_path / "isic2017"))
    rows = by_id(index)
    assert len(index) == 6  # superpixel maps, the metadata CSV and __MACOSX forks are not images
    assert {image_id: row["diagnosis"] for image_id, row in rows.items()} == {
        "ISIC_0000000": "nevus",
        "ISIC_0000001": "melanoma",
        "ISIC_0000002": "seborrheic_keratosis",
        "ISIC_0001769": "melanoma",
        "ISIC_0012086": "nevus",
        "ISIC_0012087": "seborrheic_keratosis",
    }
    assert rows["ISIC_0000000"]["age_approx"] == 55.0 and rows["ISIC_0000000"]["sex"] == "female"
    assert pd.isna(rows["ISIC_0000001"]["age_approx"]) and rows["ISIC_0000001"]["sex"] == "male"  # "unknown" age
    assert pd.isna(rows["ISIC_0000002"]["sex"])  # "unknown" sex
    assert rows["ISIC_0001769"]["uri"] == (
        "isic2017/ISIC-2017_Validation_Data.zip!ISIC-2017_Validation_Data/ISIC_0001769.jpg"
    )
    assert index["benign_malignant"].isna().all()
    assert hashes_are_the_images(index)


def test_isic2018_ground_truth_zip_and_lesion_groupings(tmp_path):
    index = read("isic2018", tmp_path, lf.write_isic2018(tmp_path / "isic2018"))
    rows = by_id(index)
    canonical = {"NV": "nevus", "MEL": "melanoma", "AKIEC": "actinic_keratosis", "BKL": "benign_keratosis",
                 "VASC": "vascular_lesion"}
    assert {i: r["diagnosis"] for i, r in rows.items()} == {i: canonical[c] for i, (c, _) in lf.ISIC2018.items()}
    assert {i: r["lesion_id"] for i, r in rows.items()} == {i: lesion for i, (_, lesion) in lf.ISIC2018.items()}
    assert rows["ISIC_0024306"]["uri"] == (
        "isic2018/ISIC2018_Task3_Training_Input.zip!ISIC2018_Task3_Training_Input/ISIC_0024306.jpg"
    )
    assert hashes_are_the_images(index)


def test_isic2019_keeps_downsampled_ids_and_reads_the_metadata(tmp_path):
    index = read("isic2019", tmp_path, lf.write_isic2019(tmp_path / "isic2019"))
    rows = by_id(index)
    assert set(rows) == set(lf.ISIC2019)
    assert rows["ISIC_0000001_downsampled"]["uri"].endswith("ISIC_2019_Training_Input/ISIC_0000001_downsampled.jpg")
    assert {i: r["diagnosis"] for i, r in rows.items()} == {
        "ISIC_0000000": "nevus",
        "ISIC_0000001_downsampled": "melanoma",
        "ISIC_0000002": "basal_cell_carcinoma",
        "ISIC_0000003": "actinic_keratosis",
        "ISIC_0000004": "squamous_cell_carcinoma",
    }
    first, second = rows["ISIC_0000000"], rows["ISIC_0000002"]
    assert (first["age_approx"], first["anatom_site"], first["sex"]) == (55.0, "anterior torso", "female")
    assert pd.isna(first["lesion_id"]) and second["lesion_id"] == "BCN_0000002"
    assert pd.isna(second["age_approx"]) and pd.isna(second["sex"])
    assert hashes_are_the_images(index)


def test_isic2019_unk_column_maps_to_unknown(tmp_path):
    cases = dict(lf.ISIC2019, ISIC_0000005=("UNK", "", "", "", ""))
    index = read("isic2019", tmp_path, lf.write_isic2019(tmp_path / "isic2019", cases))
    assert by_id(index)["ISIC_0000005"]["diagnosis"] == "unknown"


def test_missing_metadata_only_leaves_its_columns_unknown(tmp_path, caplog):
    folder = lf.write_isic2019(tmp_path / "isic2019")
    (folder / lf.ISIC2019_META).unlink()
    with caplog.at_level(logging.WARNING, logger="skincancer.ingest.layouts"):
        index = read("isic2019", tmp_path, folder)
    assert len(index) == len(lf.ISIC2019)
    assert index[["age_approx", "anatom_site", "lesion_id", "sex"]].isna().all().all()
    assert lf.ISIC2019_META in caplog.text


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_class_folders_found_at_any_depth(tmp_path, as_zip):
    folder = lf.write_class_folders(tmp_path / "nine", as_zip=as_zip)
    index = read("class-folders", tmp_path, folder)
    expected = {image_id: name for (_, name), ids in lf.NINE_CLASS.items() for image_id in ids}
    got = dict(zip(index["image_id"], index["diagnosis"]))
    assert got == {i: canonical_diagnosis(name) for i, name in expected.items()}
    assert got["ISIC_0024324"] == "benign_keratosis"
    member = f"{lf.NINE_CLASS_ROOT}/Train/actinic keratosis/ISIC_0025780.jpg"
    uri = member_uri("nine/archive.zip", member) if as_zip else f"nine/downloads/{member}"
    assert uri in set(index["uri"])
    assert hashes_are_the_images(index)


def _image(kind: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 60)).save(buffer, kind)
    return buffer.getvalue()


def test_each_image_is_indexed_with_the_size_its_file_stores_on_every_read(tmp_path):
    """Width and height come from the header, whatever the format; bytes that are no image have none, and a
    reread that decodes nothing (every hash known) still records every size."""
    members = {"Train/nevus/ISIC_1.jpg": _image("JPEG", (600, 450)), "Train/nevus/ISIC_2.png": _image("PNG", (96, 180)),
               "Test/melanoma/ISIC_3.jpg": b"definitely not a jpeg"}
    lf.write_zip(tmp_path / "nine" / "archive.zip", members)
    index = read("class-folders", tmp_path, tmp_path / "nine")
    sizes = {row.image_id: (row.width, row.height) for row in index.itertuples()}
    assert sizes == {"ISIC_1": (600, 450), "ISIC_2": (96, 180), "ISIC_3": (pd.NA, pd.NA)}
    assert (index["width"].dtype, index["height"].dtype) == (pd.Int64Dtype(), pd.Int64Dtype())
    hashed = dict(zip(index["sha256"], index["image_hash"].fillna("0" * 64), strict=True))
    again = read_layout("class-folders", tmp_path / "nine", source="sample", raw_root=tmp_path, known_hashes=hashed)
    pd.testing.assert_frame_equal(again[["width", "height"]], index[["width", "height"]])


def test_class_folders_without_split_folders_is_an_error(tmp_path):
    lf.write_zip(tmp_path / "nine" / "archive.zip", lf.images("melanoma", ["ISIC_1"]))
    with pytest.raises(LayoutError, match="Train/<class>"):
        read("class-folders", tmp_path, tmp_path / "nine")


def test_class_folder_with_unknown_class_names_it(tmp_path, caplog):
    lf.write_zip(tmp_path / "nine" / "archive.zip", lf.images("x/Train/blue nevus", ["ISIC_1"]))
    index = read("class-folders", tmp_path, tmp_path / "nine")
    assert list(index["diagnosis"]) == ["blue_nevus"]
    assert re.search(r"'blue nevus' in .*archive.zip!x/Train/blue nevus/ISIC_1.jpg", caplog.text)


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_isic_cli_new_taxonomy_most_specific_known_level(tmp_path, as_zip):
    index = read("isic-cli", tmp_path, lf.write_isic_cli(tmp_path / "cli", as_zip=as_zip))
    rows = by_id(index)
    expected = {  # image id -> (diagnosis, published verdict)
        "ISIC_0000000": ("nevus", "benign"),  # "Nevus, Junctional" is a subtype the vocabulary leaves to "Nevus"
        "ISIC_0000001": ("melanoma", "malignant"),
        "ISIC_0000002": ("actinic_keratosis", None),  # Indeterminate: the diagnosis decides
        "ISIC_0000003": ("unknown", "benign"),  # only diagnosis_1
        "ISIC_0000004": ("basal_cell_carcinoma", "malignant"),
    }
    verdicts = index["benign_malignant"].astype(object).where(index["benign_malignant"].notna(), None)
    got = dict(zip(index["image_id"], zip(index["diagnosis"], verdicts)))
    assert got == expected
    first = rows["ISIC_0000000"]
    assert (first["patient_id"], first["lesion_id"], first["sex"], first["age_approx"], first["anatom_site"]) == (
        "IP_0000001", "IL_0000001", "female", 55.0, "anterior torso"
    )
    assert pd.isna(rows["ISIC_0000002"]["patient_id"]) and pd.isna(rows["ISIC_0000002"]["age_approx"])
    prefix = "cli/isic-download.zip!isic-download/" if as_zip else "cli/isic-download/"
    assert rows["ISIC_0000004"]["uri"] == f"{prefix}ISIC_0000004.jpg"
    assert hashes_are_the_images(index)


def test_isic_cli_old_flat_fields(tmp_path):
    index = read("isic-cli", tmp_path, lf.write_isic_cli(tmp_path / "cli", lf.CLI_OLD, as_zip=True))
    rows = by_id(index)
    assert {i: r["diagnosis"] for i, r in rows.items()} == {
        "ISIC_0000010": "seborrheic_keratosis",
        "ISIC_0000011": "melanoma",
        "ISIC_0000012": "nevus",
    }
    assert rows["ISIC_0000010"]["benign_malignant"] == "benign"
    assert rows["ISIC_0000011"]["benign_malignant"] == "malignant"
    assert pd.isna(rows["ISIC_0000012"]["benign_malignant"])  # "indeterminate/benign" is no verdict


def test_isic_cli_unknown_diagnosis_names_the_most_specific_value(tmp_path, caplog):
    table = (lf.CLI_NEW[0], lf.CLI_NEW[1][:7] + ("Blue nevus", "Blue nevus, cellular") + lf.CLI_NEW[1][9:])
    folder = lf.write_isic_cli(tmp_path / "cli", table, as_zip=False)
    index = read("isic-cli", tmp_path, folder)
    assert "blue_nevus_cellular" in set(index["diagnosis"])
    assert re.search(r"'Blue nevus, cellular' in .*metadata.csv", caplog.text)


def test_isic_cli_without_metadata_is_an_error(tmp_path):
    lf.write_zip(tmp_path / "cli" / "out.zip", lf.images("out", ["ISIC_1"]))
    with pytest.raises(LayoutError, match="no metadata.csv found"):
        read("isic-cli", tmp_path, tmp_path / "cli")


# ---------------------------------------------------------------- tables that do not match their layout

T2017 = "ISIC-2017_Training_Data"
T2018 = lf.ISIC2018_TRUTH
WRONG_COLUMNS = {
    # id: (layout, writer, corrupt(folder), file named, expected columns named, found columns named)
    "2016-three-columns": (
        "isic2016", lf.write_isic2016,
        lambda f: replace_in_file(f / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv", ",0.0", ",0.0,x"),
        "ISBI2016_ISIC_Part3_Test_GroundTruth.csv", "['image_id', 'benign_malignant'] with no header row", "found 3",
    ),
    "2017-truth": (
        "isic2017", lf.write_isic2017,
        lambda f: replace_in_file(f / lf.isic2017_truth("Training"), "seborrheic_keratosis", "keratosis"),
        lf.isic2017_truth("Training"), "'seborrheic_keratosis'", "'keratosis'",
    ),
    "2017-metadata-in-zip": (
        "isic2017", lf.write_isic2017,
        lambda f: replace_in_member(f / f"{T2017}.zip", f"{T2017}/{T2017}_metadata.csv", "age_approximate", "age"),
        f"{T2017}.zip!{T2017}/{T2017}_metadata.csv", "'age_approximate'", "'age'",
    ),
    "2018-truth-in-zip": (
        "isic2018", lf.write_isic2018,
        lambda f: replace_in_member(f / f"{T2018}.zip", f"{T2018}/{T2018}.csv", "AKIEC", "AK"),
        f"{T2018}.zip!{T2018}/{T2018}.csv", "'AKIEC'", "'AK'",
    ),
    "2018-groupings": (
        "isic2018", lf.write_isic2018,
        lambda f: replace_in_file(f / lf.ISIC2018_GROUPINGS, "lesion_id", "lesion"),
        lf.ISIC2018_GROUPINGS, "'lesion_id'", "'lesion'",
    ),
    "2019-truth-without-scc": (
        "isic2019", lf.write_isic2019,
        lambda f: replace_in_file(f / lf.ISIC2019_TRUTH, ",SCC,UNK", ""),
        lf.ISIC2019_TRUTH, "'SCC', 'UNK'", "'VASC']",
    ),
    "2019-metadata": (
        "isic2019", lf.write_isic2019,
        lambda f: replace_in_file(f / lf.ISIC2019_META, "anatom_site_general", "anatom_site_general_challenge"),
        lf.ISIC2019_META, "'anatom_site_general'", "'anatom_site_general_challenge'",
    ),
    "cli-without-isic-id": (
        "isic-cli", lambda f: lf.write_isic_cli(f, as_zip=False),
        lambda f: replace_in_file(f / lf.CLI_OUT / "metadata.csv", "isic_id", "image_id"),
        "metadata.csv", "'isic_id' and at least one of ['benign_malignant', 'diagnosis'", "'image_id'",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_COLUMNS))
def test_csv_with_wrong_columns_names_the_file_expected_and_found(tmp_path, case):
    layout, write, corrupt, named, expected, found = WRONG_COLUMNS[case]
    folder = write(tmp_path / layout)
    corrupt(folder)
    with pytest.raises(LayoutError) as caught:
        read(layout, tmp_path, folder)
    message = str(caught.value)
    assert named in message and "unexpected columns" in message
    assert expected in message and found in message


@pytest.mark.parametrize(
    ("layout", "write", "path", "old", "new", "bad_id"),
    [
        ("isic2017", lf.write_isic2017, lf.isic2017_truth("Training"), "ISIC_0000001,1.0,0.0", "ISIC_0000001,1.0,1.0",
         "ISIC_0000001"),
        ("isic2019", lf.write_isic2019, lf.ISIC2019_TRUTH, "ISIC_0000000,0.0", "ISIC_0000000,1.0", "ISIC_0000000"),
        ("isic2019", lf.write_isic2019, lf.ISIC2019_TRUTH, "ISIC_0000003,0.0,0.0,0.0,1.0",
         "ISIC_0000003,0.0,0.0,0.0,0.0", "ISIC_0000003"),
        ("isic2019", lf.write_isic2019, lf.ISIC2019_TRUTH, "ISIC_0000002,0.0", "ISIC_0000002,yes", "ISIC_0000002"),
        ("isic2016", lf.write_isic2016, "ISBI2016_ISIC_Part3_Training_GroundTruth.csv", "ISIC_0000001,malignant",
         "ISIC_0000001,maybe", "ISIC_0000001"),
    ],
    ids=["2017-two-hot", "2019-two-hot", "2019-no-hot", "2019-not-a-number", "2016-not-a-verdict"],
)
def test_ground_truth_row_that_is_not_one_label_is_named(tmp_path, layout, write, path, old, new, bad_id):
    folder = write(tmp_path / layout)
    replace_in_file(folder / path, old, new)
    with pytest.raises(LayoutError, match=rf"{path}: .*1 row\(s\): \['{bad_id}'\]"):
        read(layout, tmp_path, folder)


def test_ground_truth_listing_an_image_twice_is_an_error(tmp_path):
    folder = lf.write_isic2019(tmp_path / "isic2019")
    with open(folder / lf.ISIC2019_TRUTH, "a") as handle:
        handle.write("ISIC_0000000,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    with pytest.raises(LayoutError, match=r"1 image id\(s\) have more than one row: \['ISIC_0000000'\]"):
        read("isic2019", tmp_path, folder)


def test_challenge_layout_reads_the_splits_present_and_needs_both_halves_of_one(tmp_path):
    folder = lf.write_isic2017(tmp_path / "isic2017", {"Training": lf.ISIC2017["Training"]})
    assert len(read("isic2017", tmp_path, folder)) == 3
    (folder / lf.isic2017_truth("Training")).unlink()
    with pytest.raises(LayoutError, match=r"ISIC-2017_Training_Part3_GroundTruth.csv not found"):
        read("isic2017", tmp_path, folder)
    (folder / f"{T2017}.zip").unlink()
    with pytest.raises(LayoutError, match=r"none of the layout's files found; expected \['ISIC-2017_Training_Data.zip"):
        read("isic2017", tmp_path, folder)


# ---------------------------------------------------------------- strict and non-strict matching


def drop_member(zip_path: Path, image_id: str) -> None:
    lf.rewrite_zip(zip_path, lambda name, data: None if name.endswith(f"/{image_id}.jpg") else data)


MISMATCHED = {
    # id: (layout, write and mismatch(folder), images kept, ids named in the problem)
    "isic2017": (
        "isic2017",
        lambda f: (
            lf.write_isic2017(f),
            drop_member(f / f"{T2017}.zip", "ISIC_0000002"),
            replace_in_file(f / lf.isic2017_truth("Validation"), "ISIC_0001769,1.0,0.0\n",
                            "ISIC_0001769,1.0,0.0\nISIC_0001770,0.0,0.0\n"),
        ),
        5,
        ["1 image(s) listed in ISIC-2017_Training_Part3_GroundTruth.csv are missing from ISIC-2017_Training_Data.zip: "
         "['ISIC_0000002']",
         "1 image(s) listed in ISIC-2017_Validation_Part3_GroundTruth.csv are missing from "
         "ISIC-2017_Validation_Data.zip: ['ISIC_0001770']"],
    ),
    "isic-cli": (
        "isic-cli",
        lambda f: lf.write_isic_cli(f, as_zip=True, image_ids=["ISIC_0000000", "ISIC_0000001", "ISIC_0000099"]),
        2,
        ["3 image(s) listed in metadata.csv are missing from isic-download: ['ISIC_0000002', 'ISIC_0000003', "
         "'ISIC_0000004']",
         "1 image(s) in isic-download have no row in metadata.csv: ['ISIC_0000099']"],
    ),
    "isic2018": (
        "isic2018",
        lambda f: (lf.write_isic2018(f), drop_member(f / f"{lf.ISIC2018_INPUT}.zip", "ISIC_0024310")),
        5,
        ["1 image(s) listed in ISIC2018_Task3_Training_GroundTruth.csv are missing from "
         "ISIC2018_Task3_Training_Input.zip: ['ISIC_0024310']"],
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHED))
def test_strict_refuses_mismatched_images_and_names_them(tmp_path, case):
    layout, write, _, problems = MISMATCHED[case]
    write(tmp_path / layout)
    with pytest.raises(LayoutError) as caught:
        read(layout, tmp_path, tmp_path / layout)
    assert problems[0] in str(caught.value)


@pytest.mark.parametrize("case", list(MISMATCHED))
def test_non_strict_keeps_matched_images_and_warns_with_counts_and_ids(tmp_path, caplog, case):
    layout, write, kept, problems = MISMATCHED[case]
    write(tmp_path / layout)
    with caplog.at_level(logging.WARNING, logger="skincancer.ingest.layouts"):
        index = read_layout(layout, tmp_path / layout, source="x", raw_root=tmp_path, strict=False)
    assert len(index) == kept and index["uri"].notna().all() and hashes_are_the_images(index)
    for problem in problems:
        assert problem in caplog.text
    assert "strict=False" in caplog.text


# ---------------------------------------------------------------- ISIC 2020 duplicates list


def test_isic2020_duplicates_are_read_as_pairs(isic2020_copy):
    assert read_isic2020_duplicates(isic2020_copy) == []  # v1 downloads and the sample have no list
    pairs = [("ISIC_0000001", "ISIC_0000002"), ("ISIC_0000003", "ISIC_0000004")]
    lf.write_isic2020_duplicates(isic2020_copy, pairs)
    assert read_isic2020_duplicates(isic2020_copy) == pairs


def test_isic2020_duplicates_with_wrong_columns_names_them(isic2020_copy):
    (isic2020_copy / lf.ISIC2020_DUPLICATES).write_text("image_1,image_2\nISIC_1,ISIC_2\n")
    expected = r"Duplicates.csv: unexpected columns; expected \['image_name_1', 'image_name_2'\]"
    with pytest.raises(LayoutError, match=expected):
        read_isic2020_duplicates(isic2020_copy)


def test_isic2020_non_strict_drops_rows_without_images(raw_root, isic2020_copy):
    with open(isic2020_copy / CSV_NAME, "a") as handle:
        handle.write("ISIC_9999999,IP_0000001,male,50.0,torso,nevus,benign,0\n")
    index = read_layout("isic2020", isic2020_copy, source="x", raw_root=isic2020_copy.parent, strict=False)
    assert len(index) == N - round(0.4 * N) and "ISIC_9999999" not in set(index["image_id"])


# ---------------------------------------------------------------- catalog


def test_catalog_entries_name_registered_layouts():
    for name, entry in CATALOG.items():
        assert entry.name == name
        assert entry.layouts and set(entry.layouts) <= set(LAYOUT_READERS), name
        assert entry.files or entry.note or name == "sample", name


@pytest.mark.parametrize("year", [2016, 2017, 2018, 2019, 2020])
def test_official_challenge_files_come_from_the_challenge_bucket(year):
    entry = CATALOG[f"isic{year}"]
    prefix = f"https://isic-archive.s3.amazonaws.com/challenges/{year}/"
    assert entry.files and all(file.url == prefix + file.name for file in entry.files)
    assert CHALLENGE_URL.format(year=year, name="x") == prefix + "x"


def test_catalog_file_names_are_the_ones_the_layout_reads():
    known = {layout: set(challenge.files) for layout, challenge in CHALLENGES.items()}
    known["isic2020"] = {ISIC2020_ZIP, lf.ISIC2020_DUPLICATES, *(table.name for table in ISIC2020_TABLES)}
    known["isic2017-udacity"] = set(UDACITY_ZIPS)
    for entry in CATALOG.values():
        if entry.files:
            (layout,) = entry.layouts
            assert {file.name for file in entry.files} <= known[layout], entry.name
    assert {file.name for file in CATALOG["isic2017"].files} == known["isic2017"]


def test_sources_without_a_download_say_how_to_get_them():
    nine, cli = CATALOG["isic-9class"], CATALOG["isic-cli"]
    assert nine.layouts == ("class-folders",) and not nine.files
    assert "kaggle.com/datasets/nodoubttome/skin-cancer9-classesisic" in nine.note and "fetch.sources" in nine.note
    assert cli.layouts == ("isic-cli",) and not cli.files and "isic image download" in cli.note
    udacity = CATALOG["isic2017-udacity"]
    base = "https://s3-us-west-1.amazonaws.com/udacity-dlnfd/datasets/skin-cancer"
    assert [f.url for f in udacity.files] == [f"{base}/{n}.zip" for n in ("train", "valid", "test")]


def test_an_unknown_class_folder_is_warned_about_once_with_its_image_count(tmp_path, caplog):
    """Kaggle-style folders name their class once per image: the warning comes once per class, with a count."""
    for number in range(5):
        path = tmp_path / "Train" / "blue nevus" / f"ISIC_{number:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lf.jpeg(f"ISIC_{number:07d}"))
    with caplog.at_level(logging.WARNING, logger="skincancer"):
        frame = read_layout("class-folders", tmp_path, source="kaggle", raw_root=tmp_path)
    warnings = [record.getMessage() for record in caplog.records if "not in skincancer.core.labels" in record.getMessage()]
    assert len(warnings) == 1 and "'blue nevus'" in warnings[0] and "and 4 more image(s)" in warnings[0]
    assert set(frame["diagnosis"]) == {"blue_nevus"}

"""Tiny sources in each published ISIC layout: the exact file, folder and member names, CSV headers and cell
spellings of the real downloads, plus the clutter they ship (superpixel maps, ATTRIBUTION/LICENSE files,
``__MACOSX`` forks) that readers must skip. Images are 2x2 JPEGs, distinct per id."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

FORK = b"\x00\x05\x16\x07 AppleDouble"  # what a macOS resource fork starts with; not an image


def jpeg(image_id: str) -> bytes:
    """A valid 2x2 JPEG whose colour (so bytes) depends on the id."""
    colour = tuple(hashlib.sha256(image_id.encode()).digest()[:3])
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def csv_bytes(header: Iterable[str] | None, rows: Iterable[Iterable[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """Members in order, each folder entry written before its first file, as archivers do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folders: set[str] = set()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth]) + "/"
                if folder not in folders:
                    folders.add(folder)
                    archive.writestr(folder, b"")
            archive.writestr(name, data)
    return path


def rewrite_zip(path: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite every file member through ``change``; None drops the member."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    kept = {name: new for name, data in members.items() if (new := change(name, data)) is not None}
    path.unlink()
    write_zip(path, kept)


def images(folder: str, ids: Iterable[str]) -> dict[str, bytes]:
    return {f"{folder}/{image_id}.jpg": jpeg(image_id) for image_id in ids}


# ---------------------------------------------------------------- ISBI 2016 part 3

ISIC2016 = {
    "Training": {"ISIC_0000000": "benign", "ISIC_0000001": "malignant", "ISIC_0000002": "benign"},
    "Test": {"ISIC_0000003": "0.0", "ISIC_0000004": "1.0"},  # the test ground truth writes floats
}


def write_isic2016(folder: Path, splits: dict[str, dict[str, str]] = ISIC2016) -> Path:
    for split, verdicts in splits.items():
        stem = f"ISBI2016_ISIC_Part3_{split}"
        write_zip(folder / f"{stem}_Data.zip", images(f"{stem}_Data", verdicts))
        (folder / f"{stem}_GroundTruth.csv").write_bytes(csv_bytes(None, verdicts.items()))
    return folder


# ---------------------------------------------------------------- ISIC 2017 part 3

# split -> image id -> (melanoma, seborrheic_keratosis, age_approximate, sex)
ISIC2017 = {
    "Training": {
        "ISIC_0000000": ("0.0", "0.0", "55", "female"),
        "ISIC_0000001": ("1.0", "0.0", "unknown", "male"),
        "ISIC_0000002": ("0.0", "1.0", "70", "unknown"),
    },
    "Validation": {"ISIC_0001769": ("1.0", "0.0", "35", "female")},
    "Test_v2": {"ISIC_0012086": ("0.0", "0.0", "45", "male"), "ISIC_0012087": ("0.0", "1.0", "60", "female")},
}
ISIC2017_TRUTH = ("image_id", "melanoma", "seborrheic_keratosis")


def isic2017_truth(split: str) -> str:
    return f"ISIC-2017_{split}_Part3_GroundTruth.csv"


def write_isic2017(folder: Path, splits: dict[str, dict[str, tuple[str, ...]]] = ISIC2017) -> Path:
    for split, cases in splits.items():
        data = f"ISIC-2017_{split}_Data"
        members = {}
        for image_id in cases:
            members[f"{data}/{image_id}.jpg"] = jpeg(image_id)
            members[f"{data}/{image_id}_superpixels.png"] = b"\x89PNG superpixel map"
        metadata = [(image_id, age, sex) for image_id, (_, _, age, sex) in cases.items()]
        members[f"{data}/{data}_metadata.csv"] = csv_bytes(("image_id", "age_approximate", "sex"), metadata)
        members[f"__MACOSX/{data}/._{next(iter(cases))}.jpg"] = FORK
        write_zip(folder / f"{data}.zip", members)
        truth = [(image_id, mel, sk) for image_id, (mel, sk, _, _) in cases.items()]
        (folder / isic2017_truth(split)).write_bytes(csv_bytes(ISIC2017_TRUTH, truth))
    return folder


# ---------------------------------------------------------------- ISIC 2018 task 3 (HAM10000)

ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2018 = {  # image id -> (diagnosis column, lesion id)
    "ISIC_0024306": ("NV", "HAM_0000550"),
    "ISIC_0024307": ("NV", "HAM_0003577"),
    "ISIC_0024308": ("MEL", "HAM_0001477"),
    "ISIC_0024309": ("AKIEC", "HAM_0000484"),
    "ISIC_0024310": ("BKL", "HAM_0003350"),
    "ISIC_0024311": ("VASC", "HAM_0000550"),
}
ISIC2018_INPUT = "ISIC2018_Task3_Training_Input"
ISIC2018_TRUTH = "ISIC2018_Task3_Training_GroundTruth"
ISIC2018_GROUPINGS = "ISIC2018_Task3_Training_LesionGroupings.csv"
NOTICES = {"ATTRIBUTION.txt": b"HAM10000 ... CC BY-NC 4.0", "LICENSE.txt": b"Attribution-NonCommercial 4.0"}


def one_hot(columns: tuple[str, ...], hot: str) -> list[str]:
    return ["1.0" if column == hot else "0.0" for column in columns]


def write_isic2018(folder: Path, cases: dict[str, tuple[str, str]] = ISIC2018) -> Path:
    notices = {f"{ISIC2018_INPUT}/{name}": data for name, data in NOTICES.items()}
    write_zip(folder / f"{ISIC2018_INPUT}.zip", images(ISIC2018_INPUT, cases) | notices)
    truth = [(image_id, *one_hot(ISIC2018_CLASSES, hot)) for image_id, (hot, _) in cases.items()]
    member = f"{ISIC2018_TRUTH}/{ISIC2018_TRUTH}.csv"
    gt_notices = {f"{ISIC2018_TRUTH}/{name}": data for name, data in NOTICES.items()}
    write_zip(folder / f"{ISIC2018_TRUTH}.zip", {member: csv_bytes(("image", *ISIC2018_CLASSES), truth)} | gt_notices)
    groupings = [(image_id, lesion, "histo") for image_id, (_, lesion) in cases.items()]
    header = ("image", "lesion_id", "diagnosis_confirm_type")
    (folder / ISIC2018_GROUPINGS).write_bytes(csv_bytes(header, groupings))
    return folder


# ---------------------------------------------------------------- ISIC 2019

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC2019_METADATA = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
ISIC2019 = {  # image id -> (diagnosis column, age_approx, anatom_site_general, lesion_id, sex)
    "ISIC_0000000": ("NV", "55.0", "anterior torso", "", "female"),
    "ISIC_0000001_downsampled": ("MEL", "30.0", "", "MSK4_0000001", "male"),
    "ISIC_0000002": ("BCC", "", "head/neck", "BCN_0000002", ""),
    "ISIC_0000003": ("AK", "70.0", "upper extremity", "BCN_0000003", "male"),
    "ISIC_0000004": ("SCC", "80.0", "lower extremity", "HAM_0000004", "female"),
}
ISIC2019_INPUT = "ISIC_2019_Training_Input"
ISIC2019_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_META = "ISIC_2019_Training_Metadata.csv"


def write_isic2019(folder: Path, cases: dict[str, tuple[str, ...]] = ISIC2019) -> Path:
    notices = {f"{ISIC2019_INPUT}/{name}": data for name, data in NOTICES.items()}
    write_zip(folder / f"{ISIC2019_INPUT}.zip", images(ISIC2019_INPUT, cases) | notices)
    truth = [(image_id, *one_hot(ISIC2019_CLASSES, hot)) for image_id, (hot, *_) in cases.items()]
    (folder / ISIC2019_TRUTH).write_bytes(csv_bytes(("image", *ISIC2019_CLASSES), truth))
    metadata = [(image_id, *meta) for image_id, (_, *meta) in cases.items()]
    (folder / ISIC2019_META).write_bytes(csv_bytes(ISIC2019_METADATA, metadata))
    return folder


# ---------------------------------------------------------------- ISIC 2020 duplicates list

ISIC2020_DUPLICATES = "ISIC_2020_Training_Duplicates.csv"


def write_isic2020_duplicates(folder: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    (folder / ISIC2020_DUPLICATES).write_bytes(csv_bytes(("image_name_1", "image_name_2"), pairs))
    return folder


# ---------------------------------------------------------------- Kaggle ISIC 9-class (class folders)

NINE_CLASS_ROOT = "Skin cancer ISIC The International Skin Imaging Collaboration"
NINE_CLASS = {  # (split folder, class folder) -> image ids
    ("Train", "actinic keratosis"): ("ISIC_0025780",),
    ("Train", "basal cell carcinoma"): ("ISIC_0024331",),
    ("Train", "pigmented benign keratosis"): ("ISIC_0024324",),
    ("Train", "vascular lesion"): ("ISIC_0024370",),
    ("Test", "melanoma"): ("ISIC_0000002",),
    ("Test", "nevus"): ("ISIC_0000000",),
    ("Test", "squamous cell carcinoma"): ("ISIC_0010853",),
}


def nine_class_members() -> dict[str, bytes]:
    members = {}
    for (split, name), ids in NINE_CLASS.items():
        members |= images(f"{NINE_CLASS_ROOT}/{split}/{name}", ids)
        members[f"__MACOSX/{NINE_CLASS_ROOT}/{split}/{name}/._{ids[0]}.jpg"] = FORK
    return members


def write_class_folders(folder: Path, *, as_zip: bool) -> Path:
    """Kaggle's zip (``archive.zip``), or the same tree unpacked one folder deeper, as users keep it."""
    if as_zip:
        write_zip(folder / "archive.zip", nine_class_members())
        return folder
    for name, data in nine_class_members().items():
        path = folder / "downloads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


# ---------------------------------------------------------------- isic-cli downloads

# `isic image download` metadata: the 2024 hierarchical taxonomy (diagnosis_1..5)...
CLI_NEW = (
    ("isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general", "diagnosis_1",
     "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5", "image_type", "lesion_id", "patient_id", "sex"),
    ("ISIC_0000000", "Anonymous", "CC-0", "55", "anterior torso", "Benign", "Benign melanocytic proliferations",
     "Nevus", "Nevus, Junctional", "", "dermoscopic", "IL_0000001", "IP_0000001", "female"),
    ("ISIC_0000001", "Anonymous", "CC-0", "30", "", "Malignant", "Malignant melanocytic proliferations (Melanoma)",
     "Melanoma, NOS", "", "", "dermoscopic", "IL_0000002", "IP_0000001", "female"),
    ("ISIC_0000002", "MSKCC", "CC-BY", "", "head/neck", "Indeterminate", "Indeterminate epidermal proliferations",
     "Solar or actinic keratosis", "", "", "dermoscopic", "", "", ""),
    ("ISIC_0000003", "MSKCC", "CC-BY", "70", "posterior torso", "Benign", "", "", "", "", "dermoscopic",
     "IL_0000004", "IP_0000002", "male"),
    ("ISIC_0000004", "MSKCC", "CC-BY", "65", "lower extremity", "Malignant",
     "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma",
     "Basal cell carcinoma, Nodular", "", "dermoscopic", "IL_0000005", "IP_0000003", "male"),
)
# ...and the older flat fields (diagnosis, benign_malignant).
CLI_OLD = (
    ("isic_id", "age_approx", "anatom_site_general", "benign_malignant", "diagnosis", "diagnosis_confirm_type",
     "lesion_id", "patient_id", "sex"),
    ("ISIC_0000010", "40", "upper extremity", "benign", "seborrheic keratosis", "histopathology", "IL_0000010",
     "IP_0000010", "male"),
    ("ISIC_0000011", "50", "", "malignant", "melanoma", "histopathology", "", "IP_0000010", "male"),
    ("ISIC_0000012", "", "", "indeterminate/benign", "nevus", "", "", "", ""),
)
CLI_OUT = "isic-download"


def cli_members(table: tuple[tuple[str, ...], ...], image_ids: Iterable[str] | None = None) -> dict[str, bytes]:
    """An OUT folder's files: images, metadata.csv, attribution.txt and licenses/ as the CLI writes them."""
    ids = [row[0] for row in table[1:]] if image_ids is None else list(image_ids)
    members = {f"{image_id}.jpg": jpeg(image_id) for image_id in ids}
    members["metadata.csv"] = csv_bytes(table[0], table[1:])
    members["attribution.txt"] = b"Anonymous, MSKCC"
    members["licenses/CC-BY.txt"] = b"Creative Commons Attribution 4.0"
    return members


def write_isic_cli(folder: Path, table=CLI_NEW, *, as_zip: bool, image_ids: Iterable[str] | None = None) -> Path:
    members = {f"{CLI_OUT}/{name}": data for name, data in cli_members(table, image_ids).items()}
    if as_zip:
        write_zip(folder / f"{CLI_OUT}.zip", members)
        return folder
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder

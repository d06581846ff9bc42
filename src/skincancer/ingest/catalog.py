"""Known ISIC sources, as data: what each is, which layout reader reads it, and where its files come from.

File names are exactly as published, because the layout readers look for them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

# Official challenge files; the older isic-challenge-data bucket moved here in 2025.
CHALLENGE_URL = "https://isic-archive.s3.amazonaws.com/challenges/{year}/{name}"
UDACITY_URL = "https://s3-us-west-1.amazonaws.com/udacity-dlnfd/datasets/skin-cancer/{name}"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name in the dataset's folder under data/raw, and where to download it."""

    name: str
    url: str


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    layouts: tuple[str, ...]  # layout reader names, see skincancer.ingest.layouts.LAYOUT_READERS
    files: tuple[RemoteFile, ...] = ()  # empty: generated locally, or obtained by the user (see note)
    note: str = ""  # how to obtain a dataset that cannot be downloaded directly


def _challenge_files(year: int, *names: str) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, CHALLENGE_URL.format(year=year, name=name)) for name in names)


ENTRIES: tuple[DatasetEntry, ...] = (
    DatasetEntry(
        "sample",
        "synthetic ISIC-like dermoscopy images, generated locally and offline",
        ("isic2017-udacity", "isic2020"),
    ),
    DatasetEntry(
        "isic2016",
        "ISBI 2016 part 3: 900 training and 379 test dermoscopy images, benign or malignant",
        ("isic2016",),
        _challenge_files(
            2016,
            "ISBI2016_ISIC_Part3_Training_Data.zip",
            "ISBI2016_ISIC_Part3_Training_GroundTruth.csv",
            "ISBI2016_ISIC_Part3_Test_Data.zip",
            "ISBI2016_ISIC_Part3_Test_GroundTruth.csv",
        ),
    ),
    DatasetEntry(
        "isic2017",
        "ISIC 2017 part 3: 2000 training, 150 validation and 600 test images; melanoma, seborrheic keratosis, nevus",
        ("isic2017",),
        _challenge_files(
            2017,
            "ISIC-2017_Training_Data.zip",
            "ISIC-2017_Training_Part3_GroundTruth.csv",
            "ISIC-2017_Validation_Data.zip",
            "ISIC-2017_Validation_Part3_GroundTruth.csv",
            "ISIC-2017_Test_v2_Data.zip",
            "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
        ),
    ),
    DatasetEntry(
        "isic2017-udacity",
        "ISIC 2017 as repackaged for udacity/dermatologist-ai: train/valid/test zips of diagnosis folders",
        ("isic2017-udacity",),
        tuple(RemoteFile(name, UDACITY_URL.format(name=name)) for name in ("train.zip", "valid.zip", "test.zip")),
    ),
    DatasetEntry(
        "isic2018",
        "ISIC 2018 task 3 (HAM10000): 10015 training images in 7 diagnoses, with lesion groupings",
        ("isic2018",),
        _challenge_files(
            2018,
            "ISIC2018_Task3_Training_Input.zip",
            "ISIC2018_Task3_Training_GroundTruth.zip",
            "ISIC2018_Task3_Training_LesionGroupings.csv",
        ),
    ),
    DatasetEntry(
        "isic2019",
        "ISIC 2019: 25331 training images in 8 diagnoses, with age, sex, site and lesion ids",
        ("isic2019",),
        _challenge_files(
            2019,
            "ISIC_2019_Training_Input.zip",
            "ISIC_2019_Training_GroundTruth.csv",
            "ISIC_2019_Training_Metadata.csv",
        ),
    ),
    DatasetEntry(
        "isic2020",
        "ISIC 2020 (SIIM-ISIC): 33126 training images of 2056 patients, benign or malignant, with duplicates list",
        ("isic2020",),
        _challenge_files(
            2020,
            "ISIC_2020_Training_JPEG.zip",
            "ISIC_2020_Training_GroundTruth_v2.csv",
            "ISIC_2020_Training_Duplicates.csv",
        ),
    ),
    DatasetEntry(
        "isic-9class",
        "Kaggle 'Skin cancer ISIC The International Skin Imaging Collaboration': Train/Test folders of 9 classes",
        ("class-folders",),
        note=(
            "Kaggle needs a login: download https://www.kaggle.com/datasets/nodoubttome/skin-cancer9-classesisic "
            "and add the zip (or the unpacked folder) to fetch.sources with layout: class-folders"
        ),
    ),
    DatasetEntry(
        "isic-cli",
        "images and metadata.csv written by `isic image download OUT` (https://github.com/ImageMarkup/isic-cli)",
        ("isic-cli",),
        note=(
            "run `isic image download [--search QUERY] OUT` yourself and add OUT (or a zip of it) to fetch.sources "
            "with layout: isic-cli"
        ),
    ),
)

CATALOG: dict[str, DatasetEntry] = {entry.name: entry for entry in ENTRIES}

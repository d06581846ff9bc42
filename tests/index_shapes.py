"""Generated index.parquet rows shaped like the real releases: ids, group sizes and class mix, no images."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from skincancer.ingest.layouts import INDEX_COLUMNS

# HAM10000 (ISIC 2018): 10,015 images of 7,470 lesions, lesion ids only
HAM10000_DIAGNOSES = {
    "nevus": 6705, "melanoma": 1113, "benign_keratosis": 1099, "basal_cell_carcinoma": 514,
    "actinic_keratosis": 327, "vascular_lesion": 142, "dermatofibroma": 115,
}


def _rows(image_ids: list[str], source: str, size: tuple[int, int], **columns: object) -> pd.DataFrame:
    """Index rows in INDEX_COLUMNS order, every image of the release's stored ``size`` (width, height); absent
    columns unknown, sha256 distinct per source and id."""
    n = len(image_ids)
    frame = pd.DataFrame({"image_id": image_ids, "source": source})
    frame["uri"] = source + "/images.zip!" + frame["image_id"] + ".jpg"
    for name, value in columns.items():
        frame[name] = value
    frame["sha256"] = [hashlib.sha256(f"{source}/{i}".encode()).hexdigest() for i in image_ids]
    frame["width"], frame["height"] = size
    for name in INDEX_COLUMNS:
        if name not in frame:
            frame[name] = pd.Series([None] * n, dtype="float64" if name == "age_approx" else "string")
    dtypes = {"patient_id": "string", "lesion_id": "string", "width": "Int64", "height": "Int64"}
    return frame[[c for c in INDEX_COLUMNS if c in frame]].astype(dtypes)


def ham10000_shaped(seed: int = 0, first_id: int = 24306) -> pd.DataFrame:
    """10,015 images of 7,470 lesions: most lesions photographed once, some up to six times."""
    rng = np.random.default_rng(seed)
    diagnoses = np.repeat(list(HAM10000_DIAGNOSES), list(HAM10000_DIAGNOSES.values()))
    n_images, n_lesions = len(diagnoses), 7470
    # every lesion one image, the remaining images spread over a quarter of the lesions
    lesion_of_image = np.concatenate([np.arange(n_lesions), rng.choice(n_lesions // 4, n_images - n_lesions)])
    lesion_diagnosis = rng.permutation(diagnoses)[:n_lesions]
    order = rng.permutation(n_images)
    return _rows(
        [f"ISIC_{first_id + i:07d}" for i in order],
        "isic2018",
        (600, 450),
        diagnosis=lesion_diagnosis[lesion_of_image],
        lesion_id=[f"HAM_{lesion:07d}" for lesion in lesion_of_image],
    )


def isic2020_shaped(n_patients: int = 2056, seed: int = 0, first_id: int = 2000000) -> pd.DataFrame:
    """~16 images a patient (long-tailed), 1.8% malignant in ~20% of patients, lesions within patients."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.negative_binomial(2, 2 / 17, n_patients)
    patient = np.repeat(np.arange(n_patients), sizes)
    diagnosis = np.full(len(patient), "nevus", dtype=object)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for p in np.flatnonzero(rng.random(n_patients) < 0.215):
        diagnosis[starts[p] : starts[p] + min(sizes[p], rng.choice([1, 1, 2]))] = "melanoma"
    lesion = [f"IL_{p:07d}_{i // 2}" for p, i in zip(patient, np.arange(len(patient)) - starts[patient], strict=True)]
    return _rows(
        [f"ISIC_{first_id + i:07d}" for i in rng.permutation(len(patient))],
        "isic2020",
        (6000, 4000),
        diagnosis=diagnosis,
        benign_malignant=np.where(diagnosis == "melanoma", "malignant", "benign"),
        patient_id=[f"IP_{p:07d}" for p in patient],
        lesion_id=lesion,
    )


def class_folder_copy(of: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """A Kaggle-style class-folder copy: the same images re-encoded under their ids, no patient or lesion."""
    picked = of.sample(n, random_state=seed)
    return _rows(picked["image_id"].tolist(), "isic-9class", (180, 180), diagnosis=picked["diagnosis"].to_numpy())

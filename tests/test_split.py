"""split: stratified, seeded, group-aware, deduplicated, materialised into class folders."""

import hashlib
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from skincancer.core.params import LabelParams, SplitParams
from skincancer.core.paths import SPLITS
from skincancer.split.split import (
    SplitError,
    describe_summary,
    materialise,
    official_duplicate_pairs,
    plan_split,
    summary,
    write_summary,
)

LABELS = LabelParams()


def make_index(n: int = 1000, malignant_share: float = 0.2, per_patient: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    diagnosis = np.where(rng.random(n) < malignant_share, "melanoma", rng.choice(["nevus", "seborrheic_keratosis"], n))
    return pd.DataFrame(
        {
            "image_id": ids,
            "source": "test/isic2020",
            "uri": [f"test/isic2020/images.zip!train/{i}.jpg" for i in ids],
            "diagnosis": diagnosis,
            "benign_malignant": pd.Series([None] * n, dtype="string"),
            "patient_id": [f"IP_{i // per_patient:07d}" for i in range(n)],
            "lesion_id": pd.Series([None] * n, dtype="string"),
            "sex": "female",
            "age_approx": 45.0,
            "anatom_site": "torso",
            "sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids],
            "image_hash": pd.Series([None] * n, dtype="string"),  # fetch's null: the image was unreadable
        }
    )


def test_stratified_80_10_10_per_class():
    plan = plan_split(make_index(), SplitParams(), LABELS)
    numbers, manifest = summary(plan), plan.manifest
    for name in ("benign", "malignant"):
        total = sum(numbers[split][name] for split in SPLITS)
        for split, fraction in zip(SPLITS, (0.8, 0.1, 0.1)):
            assert abs(numbers[split][name] / total - fraction) < 0.03, (split, name, numbers[split])
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["path"] == manifest["split"] + "/" + np.where(manifest["label"] == 1, "malignant", "benign") + "/" + manifest["image_id"] + ".jpg").all()


def test_same_seed_same_manifest_other_seed_other_split():
    index = make_index()
    first = plan_split(index, SplitParams(seed=7), LABELS).manifest
    shuffled = index.sample(frac=1.0, random_state=3)
    assert first.equals(plan_split(shuffled, SplitParams(seed=7), LABELS).manifest), "row order must not matter"
    other = plan_split(index, SplitParams(seed=8), LABELS).manifest
    assert not first["split"].equals(other.set_index("image_id").loc[first["image_id"], "split"].reset_index(drop=True))


def test_no_patient_spans_two_splits():
    manifest = plan_split(make_index(per_patient=5), SplitParams(group_by="patient_id"), LABELS).manifest
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1


def test_images_without_group_value_stand_alone():
    index = make_index()
    index["patient_id"] = pd.Series([None] * len(index), dtype="string")
    plan = plan_split(index, SplitParams(group_by="patient_id"), LABELS)
    assert summary(plan)["val"]["malignant"] > 0


def test_duplicate_bytes_are_removed_before_splitting():
    index = make_index(200)
    copy = index.iloc[:10].assign(image_id=lambda f: f["image_id"] + "_dup", source="test/other")
    manifest = plan_split(pd.concat([index, copy]), SplitParams(), LABELS).manifest
    assert len(manifest) == 200 and manifest["sha256"].is_unique


def test_published_benign_malignant_wins_over_diagnosis():
    index = make_index(300)
    index.loc[index["diagnosis"] == "nevus", "benign_malignant"] = "malignant"
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    assert (manifest.loc[manifest["diagnosis"] == "nevus", "label"] == 1).all()


def test_unlabellable_diagnoses_are_named_with_counts_or_dropped():
    index = make_index(300)
    index.loc[:4, "diagnosis"] = "unknown"
    index.loc[5:6, "diagnosis"] = "blue_nevus"  # kept as snake_case at fetch: not in the vocabulary
    with pytest.raises(SplitError, match=r"7 image\(s\) cannot be labelled.*'blue_nevus' \(2\), 'unknown' \(5\).*labels.unknown: drop"):
        plan_split(index, SplitParams(), LABELS)
    plan = plan_split(index, SplitParams(), LabelParams(unknown="drop"))
    assert len(plan.manifest) == 293 and not {"unknown", "blue_nevus"} & set(plan.manifest["diagnosis"])
    assert sorted(plan.removed.loc[plan.removed["reason"] == "unlabelled", "image_id"]) == sorted(index["image_id"][:7])
    # a published verdict makes it labellable
    index.loc[5:6, "benign_malignant"] = "malignant"
    published = plan_split(index.iloc[5:], SplitParams(), LabelParams())
    assert (published.manifest.loc[published.manifest["diagnosis"] == "blue_nevus", "label"] == 1).all()


def test_duplicates_across_sources_keep_one_and_say_which():
    index = make_index(200)
    copies = index.iloc[:10].assign(image_id=lambda f: f["image_id"] + "_copy", source="test/other")
    plan = plan_split(pd.concat([index, copies]), SplitParams(), LABELS)
    assert len(plan.manifest) == 200
    duplicates = plan.removed[plan.removed["reason"] == "duplicate"]
    assert sorted(duplicates["image_id"]) == sorted(copies["image_id"])
    assert (duplicates["kept_image_id"] + "_copy" == duplicates["image_id"]).all()


def test_same_isic_id_in_two_sources_is_one_image():
    index = make_index(200)
    resized = index.iloc[:3].assign(source="test/kaggle", sha256=lambda f: "f" + f["sha256"].str[1:])
    plan = plan_split(pd.concat([index, resized]), SplitParams(), LABELS)
    assert plan.manifest["image_id"].is_unique and len(plan.manifest) == 200
    assert set(plan.removed["reason"]) == {"duplicate"} and len(plan.removed) == 3


def test_official_duplicate_pairs_are_removed():
    index = make_index(200)
    same_label = index[index["diagnosis"] == "nevus"]["image_id"].tolist()[:4]
    pairs = [(same_label[0], same_label[1]), (same_label[2], same_label[3])]
    plan = plan_split(index, SplitParams(), LABELS, pairs)
    assert len(plan.manifest) == 198
    assert sorted(plan.removed["image_id"]) == sorted([same_label[1], same_label[3]])
    assert sorted(plan.removed["kept_image_id"]) == sorted([same_label[0], same_label[2]])


def test_duplicates_whose_labels_disagree_are_all_excluded():
    index = make_index(200)
    melanoma = index[index["diagnosis"] == "melanoma"].iloc[0]
    twin = melanoma.copy()
    twin["image_id"], twin["source"], twin["diagnosis"] = "ISIC_twin", "test/kaggle", "seborrheic_keratosis"
    nevus, sk = index[index["diagnosis"] == "nevus"].iloc[0], index[index["diagnosis"] == "seborrheic_keratosis"].iloc[0]
    plan = plan_split(pd.concat([index, twin.to_frame().T]), SplitParams(), LABELS, [(nevus["image_id"], melanoma["image_id"])])
    conflicts = plan.removed[plan.removed["reason"] == "label_conflict"]
    assert sorted(conflicts["image_id"]) == sorted([melanoma["image_id"], "ISIC_twin", nevus["image_id"]])
    assert conflicts["kept_image_id"].isna().all()
    assert not set(conflicts["image_id"]) & set(plan.manifest["image_id"]) and sk["image_id"] in set(plan.manifest["image_id"])


def make_isic2020_like(n_patients: int = 620, seed: int = 0) -> pd.DataFrame:
    """~16 images per patient, ~2% malignant, melanoma concentrated in a few patients (as in ISIC 2020)."""
    rng = np.random.default_rng(seed)
    frames = []
    for p in range(n_patients):
        size = max(1, rng.poisson(16))
        diagnosis = np.full(size, "nevus", dtype=object)
        if rng.random() < 0.25:
            diagnosis[: rng.integers(1, 3)] = "melanoma"
        ids = [f"ISIC_{p:04d}_{i:02d}" for i in range(size)]
        frames.append(pd.DataFrame({"image_id": ids, "diagnosis": diagnosis, "patient_id": f"IP_{p:07d}"}))
    frame = pd.concat(frames, ignore_index=True)
    base = make_index(len(frame))
    return base.assign(image_id=frame["image_id"], diagnosis=frame["diagnosis"], patient_id=frame["patient_id"],
                       sha256=[hashlib.sha256(i.encode()).hexdigest() for i in frame["image_id"]])


def test_realistic_isic2020_proportions_within_one_point():
    index = make_isic2020_like()
    assert 0.015 < (index["diagnosis"] == "melanoma").mean() < 0.03 and len(index) > 9000
    manifest = plan_split(index, SplitParams(group_by="patient_id"), LABELS).manifest
    whole = manifest["label"].mean()
    for split, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        part = manifest[manifest["split"] == split]
        assert abs(part["label"].mean() - whole) < 0.01, split
        assert abs(len(part) / len(manifest) - fraction) < 0.01, split
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1


def test_group_by_none_splits_images_independently():
    index = make_index(600, per_patient=50)
    manifest = plan_split(index, SplitParams(group_by="none"), LABELS).manifest
    assert manifest.groupby("patient_id")["split"].nunique().max() > 1


def test_manifest_bytes_are_identical_across_runs(tmp_path):
    raw, index = write_zip_index(tmp_path)
    for name in ("a", "b"):
        plan = plan_split(index, SplitParams(), LABELS)
        materialise(plan.manifest, raw, tmp_path / name, plan.removed)
    for file in ("manifest.parquet", "removed.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_too_few_malignant_names_split_and_class():
    index = make_index(200)
    index.loc[index["diagnosis"] == "melanoma", "diagnosis"] = "nevus"
    index.loc[:1, "diagnosis"] = "melanoma"
    with pytest.raises(SplitError, match=r"the (val|test) split would hold no malignant images \(2 malignant"):
        plan_split(index, SplitParams(group_by=None), LABELS)


def write_zip_index(tmp_path, n=60):
    raw = tmp_path / "raw"
    (raw / "test/isic2020").mkdir(parents=True)
    index = make_index(n, per_patient=1)
    with zipfile.ZipFile(raw / "test/isic2020/images.zip", "w") as archive:
        for image_id in index["image_id"]:
            archive.writestr(f"train/{image_id}.jpg", image_id.encode())
    return raw, index


def test_materialise_writes_class_folders_and_manifest(tmp_path):
    raw, index = write_zip_index(tmp_path)
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    materialise(manifest, raw, tmp_path / "split")
    written = sorted(p.relative_to(tmp_path / "split").as_posix() for p in (tmp_path / "split").rglob("*.jpg"))
    assert written == sorted(manifest["path"])
    for row in manifest.itertuples():
        assert (tmp_path / "split" / row.path).read_bytes() == row.image_id.encode()
    assert pd.read_parquet(tmp_path / "split/manifest.parquet").equals(manifest)


def test_materialise_refuses_changed_bytes_and_leaves_nothing(tmp_path):
    raw, index = write_zip_index(tmp_path)
    index.loc[5, "sha256"] = "0" * 64
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    with pytest.raises(SplitError, match=r"ISIC_0000005.jpg: bytes changed since fetch"):
        materialise(manifest, raw, tmp_path / "split")
    assert list(tmp_path.iterdir()) == [raw]


def test_loose_source_files_are_hardlinked_not_copied(tmp_path):
    raw = tmp_path / "raw"
    (raw / "loose").mkdir(parents=True)
    index = make_index(60, per_patient=1)
    for image_id in index["image_id"]:
        (raw / "loose" / f"{image_id}.jpg").write_bytes(image_id.encode())
    index["uri"] = "loose/" + index["image_id"] + ".jpg"
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    materialise(manifest, raw, tmp_path / "split")
    for row in manifest.itertuples():
        placed, source = tmp_path / "split" / row.path, raw / row.uri
        assert placed.stat().st_ino == source.stat().st_ino and placed.stat().st_nlink == 2


def test_summary_counts_split_class_and_diagnosis(tmp_path):
    index = make_index(400)
    copies = index.iloc[:5].assign(image_id=lambda f: f["image_id"] + "_copy", source="test/other")
    plan = plan_split(pd.concat([index, copies]), SplitParams(), LABELS)
    numbers = summary(plan)
    assert numbers["images"] == 400 and numbers["removed"] == {"duplicate": 5, "label_conflict": 0, "unlabelled": 0}
    assert sum(numbers[s]["images"] for s in ("train", "val", "test")) == 400
    assert sum(numbers[s]["groups"] for s in ("train", "val", "test")) == numbers["groups"] == index["patient_id"].nunique()
    for split in ("train", "val", "test"):
        part = numbers[split]
        assert part["benign"] + part["malignant"] == part["images"] == sum(part["diagnosis"].values())
        assert part["malignant_share"] == pytest.approx(part["malignant"] / part["images"], abs=1e-4)
    written = write_summary(plan, tmp_path / "reports/split.json")
    assert json.loads((tmp_path / "reports/split.json").read_text()) == written == numbers
    line = describe_summary(written)
    counts = {name: numbers[name]["images"] for name in ("train", "val", "test")}
    assert line == (f"split: {counts | numbers['removed']}; {numbers['groups']} groups; "
                    "ids in two splits: {'patient_id': 0, 'lesion_id': 0}")


def test_official_duplicate_pairs_are_read_from_fetchs_table(tmp_path):
    assert official_duplicate_pairs(tmp_path / "duplicates.parquet") == []  # no table, no pairs
    pd.DataFrame({"image_id_1": ["ISIC_1"], "image_id_2": ["ISIC_2"], "source": ["isic2020"]}).to_parquet(
        tmp_path / "duplicates.parquet")
    assert official_duplicate_pairs(tmp_path / "duplicates.parquet") == [("ISIC_1", "ISIC_2")]


def test_folds_are_materialised_as_fold_folders_and_counted_in_the_summary(tmp_path):
    raw, index = write_zip_index(tmp_path, n=90)
    plan = plan_split(index, SplitParams(folds=3), LABELS)
    materialise(plan.manifest, raw, tmp_path / "split", plan.removed)
    folders = sorted(path.name for path in (tmp_path / "split").iterdir() if path.is_dir())
    assert folders == ["fold0", "fold1", "fold2", "test"]
    written = sorted(p.relative_to(tmp_path / "split").as_posix() for p in (tmp_path / "split").rglob("*.jpg"))
    assert written == sorted(plan.manifest["path"])
    assert pd.read_parquet(tmp_path / "split/manifest.parquet")["fold"].dtype == "Int64"
    numbers = write_summary(plan, tmp_path / "reports/split.json")
    assert numbers["folds"] == 3 and "train" not in numbers
    assert sum(numbers[part]["images"] for part in ("fold0", "fold1", "fold2", "test")) == 90
    assert describe_summary(numbers).startswith("split: {'fold0': ")

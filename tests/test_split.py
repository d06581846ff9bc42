"""split: stratified, seeded, group-aware, deduplicated, materialised into class folders."""

import hashlib
import zipfile

import numpy as np
import pandas as pd
import pytest

from skincancer.params import LabelParams, SplitParams
from skincancer.split import SplitError, build_manifest, materialise, split_counts

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
        }
    )


def test_stratified_80_10_10_per_class():
    manifest = build_manifest(make_index(), SplitParams(), LABELS)
    counts = split_counts(manifest)
    for name in ("benign", "malignant"):
        total = sum(counts[split][name] for split in counts)
        for split, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
            assert abs(counts[split][name] / total - fraction) < 0.03, (split, name, counts)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["path"] == manifest["split"] + "/" + np.where(manifest["label"] == 1, "malignant", "benign") + "/" + manifest["image_id"] + ".jpg").all()


def test_same_seed_same_manifest_other_seed_other_split():
    index = make_index()
    first = build_manifest(index, SplitParams(seed=7), LABELS)
    shuffled = index.sample(frac=1.0, random_state=3)
    assert first.equals(build_manifest(shuffled, SplitParams(seed=7), LABELS)), "row order must not matter"
    other = build_manifest(index, SplitParams(seed=8), LABELS)
    assert not first["split"].equals(other.set_index("image_id").loc[first["image_id"], "split"].reset_index(drop=True))


def test_no_patient_spans_two_splits():
    manifest = build_manifest(make_index(per_patient=5), SplitParams(group_by="patient_id"), LABELS)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1


def test_images_without_group_value_stand_alone():
    index = make_index()
    index["patient_id"] = pd.Series([None] * len(index), dtype="string")
    manifest = build_manifest(index, SplitParams(group_by="patient_id"), LABELS)
    assert split_counts(manifest)["val"]["malignant"] > 0


def test_duplicate_bytes_are_removed_before_splitting():
    index = make_index(200)
    copy = index.iloc[:10].assign(image_id=lambda f: f["image_id"] + "_dup", source="test/other")
    manifest = build_manifest(pd.concat([index, copy]), SplitParams(), LABELS)
    assert len(manifest) == 200 and manifest["sha256"].is_unique


def test_published_benign_malignant_wins_over_diagnosis():
    index = make_index(300)
    index.loc[index["diagnosis"] == "nevus", "benign_malignant"] = "malignant"
    manifest = build_manifest(index, SplitParams(), LABELS)
    assert (manifest.loc[manifest["diagnosis"] == "nevus", "label"] == 1).all()


def test_unknown_label_is_an_error_or_dropped():
    index = make_index(300)
    index.loc[:4, "diagnosis"] = "unknown"
    with pytest.raises(SplitError, match="labels.unknown: drop"):
        build_manifest(index, SplitParams(), LABELS)
    manifest = build_manifest(index, SplitParams(), LabelParams(unknown="drop"))
    assert len(manifest) == 295 and "unknown" not in set(manifest["diagnosis"])


def test_too_few_malignant_names_split_and_class():
    index = make_index(200)
    index.loc[index["diagnosis"] == "melanoma", "diagnosis"] = "nevus"
    index.loc[:1, "diagnosis"] = "melanoma"
    with pytest.raises(SplitError, match=r"the (val|test) split would hold no malignant images \(2 malignant"):
        build_manifest(index, SplitParams(group_by=None), LABELS)


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
    manifest = build_manifest(index, SplitParams(), LABELS)
    materialise(manifest, raw, tmp_path / "split")
    written = sorted(p.relative_to(tmp_path / "split").as_posix() for p in (tmp_path / "split").rglob("*.jpg"))
    assert written == sorted(manifest["path"])
    for row in manifest.itertuples():
        assert (tmp_path / "split" / row.path).read_bytes() == row.image_id.encode()
    assert pd.read_parquet(tmp_path / "split/manifest.parquet").equals(manifest)


def test_materialise_refuses_changed_bytes_and_leaves_nothing(tmp_path):
    raw, index = write_zip_index(tmp_path)
    index.loc[5, "sha256"] = "0" * 64
    manifest = build_manifest(index, SplitParams(), LABELS)
    with pytest.raises(SplitError, match=r"ISIC_0000005.jpg: bytes changed since fetch"):
        materialise(manifest, raw, tmp_path / "split")
    assert list(tmp_path.iterdir()) == [raw]

"""split groups: connected components of patient, lesion and duplicate links, placed by class share."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from index_shapes import class_folder_copy, ham10000_shaped, isic2020_shaped

from skincancer.core.params import LabelParams, SplitParams
from skincancer.split.split import SplitError, ids_spanning_splits, plan_split

LABELS = LabelParams()
FRACTIONS = dict(zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True))


def assert_leak_free_and_stratified(manifest: pd.DataFrame) -> None:
    """No patient or lesion in two splits; each split's malignant share within 1 point and 10% relative
    of the whole; image fractions within 2 points of 80/10/10."""
    assert ids_spanning_splits(manifest, "patient_id") == 0
    assert ids_spanning_splits(manifest, "lesion_id") == 0
    assert manifest.groupby("group")["split"].nunique().max() == 1
    whole = manifest["label"].mean()
    for split, fraction in FRACTIONS.items():
        part = manifest.loc[manifest["split"] == split, "label"]
        share = part.mean()
        assert abs(share - whole) <= 0.01 and abs(share - whole) <= 0.1 * whole, (split, share, whole)
        assert abs(len(part) / len(manifest) - fraction) <= 0.02, (split, len(part) / len(manifest))


def test_ham10000_shaped_index_keeps_each_lesion_in_one_split():
    index = ham10000_shaped()
    assert index["patient_id"].isna().all() and index["lesion_id"].nunique() == 7470
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    assert_leak_free_and_stratified(manifest)
    assert manifest["group"].nunique() == 7470


def test_patient_id_alone_leaks_ham10000_lesions():
    """Why the default lists both keys: HAM10000 publishes lesion ids only."""
    manifest = plan_split(ham10000_shaped(), SplitParams(group_by="patient_id"), LABELS).manifest
    test = manifest[manifest["split"] == "test"]
    train_lesions = set(manifest.loc[manifest["split"] == "train", "lesion_id"])
    assert test["lesion_id"].isin(train_lesions).mean() > 0.1


def test_isic2020_shaped_index_holds_its_1_8_percent_malignant_share_in_every_split():
    index = isic2020_shaped()
    assert len(index) > 30000 and 0.015 < (index["diagnosis"] == "melanoma").mean() < 0.02
    manifest = plan_split(index, SplitParams(), LABELS).manifest
    assert_leak_free_and_stratified(manifest)
    assert manifest["group"].nunique() == index["patient_id"].nunique()


def test_mixed_releases_and_a_class_folder_copy_form_one_leak_free_split():
    ham, isic2020 = ham10000_shaped(), isic2020_shaped(n_patients=700)
    copies = class_folder_copy(ham, 1500)
    # ISIC 2019 republishes older images as `<id>_downsampled`: same image, other id and bytes
    downsampled = ham.iloc[:300].assign(source="isic2019", image_id=lambda f: f["image_id"] + "_downsampled")
    downsampled["sha256"] = [hashlib.sha256(i.encode()).hexdigest() for i in downsampled["image_id"]]
    plan = plan_split(pd.concat([ham, isic2020, copies, downsampled]), SplitParams(), LABELS)
    assert_leak_free_and_stratified(plan.manifest)
    assert plan.manifest["image_id"].is_unique and len(plan.manifest) == len(ham) + len(isic2020)
    removed = plan.removed.set_index("image_id")
    assert set(removed["reason"]) == {"duplicate"}
    assert (removed.loc[downsampled["image_id"], "linked_by"] == "same_id").all()


def test_keys_and_duplicate_links_join_groups_transitively():
    """A 2020 image (patient P) republished by 2019 under another id with a lesion id L: every image of
    patient P and of lesion L is one group, although the copy itself is removed."""
    index = isic2020_shaped(n_patients=60)
    patient = index["patient_id"].iloc[0]
    first = index[index["patient_id"] == patient].iloc[0]
    copy = first.copy()
    copy["image_id"], copy["source"], copy["patient_id"], copy["lesion_id"] = (
        first["image_id"] + "_downsampled", "isic2019", pd.NA, "ISIC19_L1")
    copy["sha256"] = "f" * 64
    same_lesion = copy.copy()
    same_lesion["image_id"], same_lesion["sha256"] = "ISIC_9999999", "e" * 64
    plan = plan_split(pd.concat([index, copy.to_frame().T, same_lesion.to_frame().T], ignore_index=True),
                      SplitParams(), LABELS)
    manifest = plan.manifest.set_index("image_id")
    joined = manifest.loc[(manifest["patient_id"] == patient) | (manifest.index == "ISIC_9999999")]
    assert joined["group"].nunique() == 1 and joined["split"].nunique() == 1
    assert len({copy["image_id"], first["image_id"]} & set(plan.removed["image_id"])) == 1


def test_group_by_lists_the_keys_that_join_images():
    index = ham10000_shaped()
    by_lesion = plan_split(index, SplitParams(group_by=["lesion_id"]), LABELS).manifest
    alone = plan_split(index, SplitParams(group_by=[]), LABELS).manifest
    assert by_lesion["group"].nunique() == index["lesion_id"].nunique()
    assert alone["group"].nunique() == len(index) and ids_spanning_splits(alone, "lesion_id") > 0


def test_a_group_larger_than_any_split_share_is_named_with_its_size():
    index = isic2020_shaped(n_patients=40)
    index["patient_id"] = index["patient_id"].where(np.arange(len(index)) > len(index) * 0.85, "IP_BIG")
    with pytest.raises(SplitError, match=r"group 'ISIC_\d+' holds \d+ of \d+ images, more than any split's share"):
        plan_split(index, SplitParams(), LABELS)


def test_seed_moves_groups_and_the_same_seed_reproduces_them():
    index = isic2020_shaped(n_patients=300)
    first = plan_split(index, SplitParams(seed=1), LABELS).manifest
    again = plan_split(index.sample(frac=1.0, random_state=5), SplitParams(seed=1), LABELS).manifest
    other = plan_split(index, SplitParams(seed=2), LABELS).manifest.set_index("image_id")["split"]
    assert first.equals(again)
    assert (first.set_index("image_id")["split"] != other.loc[first["image_id"]]).mean() > 0.05


def test_every_split_gets_a_like_mix_of_large_and_single_image_groups():
    """Groups holding several malignant images are placed first; val and test must not be filled with them
    (and the single-image groups left to train): each source keeps its share of every split's malignant."""
    ham = ham10000_shaped()
    singles = ham[ham["diagnosis"] == "melanoma"].drop_duplicates("lesion_id").head(400)
    singles = singles.assign(source="isic-archive", image_id=singles["image_id"].str.replace("ISIC_", "ARCH_"),
                             lesion_id=pd.NA, sha256=singles["sha256"].str[::-1])
    manifest = plan_split(pd.concat([ham, singles], ignore_index=True), SplitParams(), LABELS).manifest
    malignant = manifest[manifest["label"] == 1]
    for split, fraction in FRACTIONS.items():
        share = (malignant.loc[malignant["source"] == "isic-archive", "split"] == split).mean()
        assert abs(share - fraction) <= 0.05, (split, share)


def assert_folds_leak_free_and_stratified(manifest: pd.DataFrame, folds: int) -> None:
    """Every group in one fold; each fold's malignant share within 1 point and 10% relative of the whole;
    each fold's size within 2 points of its (1 - test) / K share of all images."""
    assert ids_spanning_splits(manifest, "patient_id") == 0 and ids_spanning_splits(manifest, "lesion_id") == 0
    assert manifest.groupby("group")["split"].nunique().max() == 1
    rest = manifest[manifest["split"] != "test"]
    whole = rest["label"].mean()
    for fold in range(folds):
        part = rest.loc[rest["split"] == f"fold{fold}"]
        assert (part["fold"] == fold).all()
        share = part["label"].mean()
        assert abs(share - whole) <= 0.01 and abs(share - whole) <= 0.1 * whole, (fold, share, whole)
        assert abs(len(part) / len(manifest) - 0.9 / folds) <= 0.02, (fold, len(part) / len(manifest))
    assert manifest.loc[manifest["split"] == "test", "fold"].isna().all()


@pytest.mark.parametrize(("shaped", "folds"), [(ham10000_shaped, 5), (isic2020_shaped, 5), (ham10000_shaped, 3)])
def test_folds_keep_every_group_in_one_fold_with_the_classes_balanced(shaped, folds):
    index = shaped()
    manifest = plan_split(index, SplitParams(folds=folds), LABELS).manifest
    assert sorted(manifest["split"].unique()) == sorted([*(f"fold{k}" for k in range(folds)), "test"])
    assert_folds_leak_free_and_stratified(manifest, folds)


def test_folds_hold_out_the_test_images_of_the_plain_split_and_leave_it_unchanged_without_folds():
    """The same test images with and without folds: a single model and a fold ensemble meet one test set.
    Without folds the manifest has no fold column (today's files, byte for byte)."""
    index = ham10000_shaped()
    plain = plan_split(index, SplitParams(), LABELS).manifest
    folded = plan_split(index, SplitParams(folds=5), LABELS).manifest
    assert "fold" not in plain.columns
    test_ids = lambda manifest: set(manifest.loc[manifest["split"] == "test", "image_id"])  # noqa: E731
    assert test_ids(folded) == test_ids(plain)
    assert set(folded["image_id"]) == set(plain["image_id"])


def test_fold_paths_name_the_fold_and_the_same_seed_reproduces_the_folds():
    index = isic2020_shaped(n_patients=400)
    first = plan_split(index, SplitParams(folds=3), LABELS).manifest
    again = plan_split(index.sample(frac=1, random_state=3), SplitParams(folds=3), LABELS).manifest
    pd.testing.assert_frame_equal(first[["image_id", "split", "fold"]], again[["image_id", "split", "fold"]])
    assert (first["path"].str.split("/").str[0] == first["split"]).all()
    other_seed = plan_split(index, SplitParams(folds=3, seed=7), LABELS).manifest
    assert not first["split"].equals(other_seed["split"])

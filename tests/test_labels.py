import numpy as np
import pandas as pd
import pytest

from skincancer.core.labels import (
    CANONICAL,
    SPELLINGS,
    canonical_diagnosis,
    is_labellable,
    label_of,
    lookup_diagnosis,
)

MALIGNANT = frozenset({"melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma"})


def test_canonical_names_map_to_themselves():
    assert len(CANONICAL) == 11 and "unknown" in CANONICAL
    for name in CANONICAL:
        assert canonical_diagnosis(name) == name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MEL", "melanoma"),
        ("nv", "nevus"),
        ("AKIEC", "actinic_keratosis"),
        ("AK", "actinic_keratosis"),
        ("BKL", "benign_keratosis"),
        ("pigmented benign keratosis", "benign_keratosis"),
        ("lichenoid keratosis", "benign_keratosis"),
        ("Seborrheic Keratosis", "seborrheic_keratosis"),
        ("seborrheic-keratosis", "seborrheic_keratosis"),
        ("  seborrheic__keratosis ", "seborrheic_keratosis"),
        ("lentigo NOS", "lentigo"),
        ("Lentigo simplex", "lentigo"),
        ("solar_lentigo", "lentigo"),
        ("cafe-au-lait macule", "cafe_au_lait_macule"),
        ("Cafe au lait macule", "cafe_au_lait_macule"),
        ("atypical melanocytic proliferation", "atypical_melanocytic_proliferation"),
        ("VASC", "vascular_lesion"),
        ("vascular lesion", "vascular_lesion"),
        ("Basal Cell Carcinoma", "basal_cell_carcinoma"),
        ("scc", "squamous_cell_carcinoma"),
        ("DF", "dermatofibroma"),
        ("UNK", "unknown"),
    ],
)
def test_source_spellings_are_case_and_separator_insensitive(raw, expected):
    assert canonical_diagnosis(raw) == expected


def test_every_spelling_target_is_canonical_or_snake_case():
    for target in SPELLINGS.values():
        assert target in CANONICAL or (target.replace("_", "").isalpha() and target == target.lower())


def test_unmapped_diagnosis_is_kept_as_snake_case_with_a_warning(caplog):
    assert canonical_diagnosis("Blue nevus", where="ISIC_2020_Training_GroundTruth.csv") == "blue_nevus"
    assert "'Blue nevus' in ISIC_2020_Training_GroundTruth.csv" in caplog.text and "SPELLINGS" in caplog.text


def test_near_misses_are_not_guessed():
    for raw, kept in (("melanomas", "melanomas"), ("naevus", "naevus"), ("", "unknown"), ("keratosis", "keratosis")):
        assert canonical_diagnosis(raw) == kept
        assert not is_labellable(kept, {"melanoma"})


def test_labellable_needs_a_verdict_a_listed_malignant_or_a_known_diagnosis():
    assert is_labellable("nevus", set()) and is_labellable("melanoma", set())
    assert not is_labellable("unknown", {"melanoma"})
    assert is_labellable("unknown", set(), published="benign")
    assert is_labellable("blue_nevus", {"blue_nevus"})


def test_label_from_diagnosis_when_nothing_published():
    assert label_of("melanoma", MALIGNANT) == 1
    assert label_of("basal_cell_carcinoma", set(MALIGNANT)) == 1
    assert label_of("nevus", MALIGNANT) == 0
    assert label_of("seborrheic_keratosis", MALIGNANT) == 0


@pytest.mark.parametrize("null", [None, float("nan"), np.float32("nan"), pd.NA, "", "  "])
def test_null_published_value_falls_back_to_diagnosis(null):
    assert label_of("melanoma", MALIGNANT, null) == 1
    assert label_of("nevus", MALIGNANT, null) == 0


@pytest.mark.parametrize(
    ("published", "expected"),
    [("malignant", 1), ("Malignant", 1), ("BENIGN", 0), (" benign ", 0), (1, 1), (0, 0), (np.int64(1), 1),
     (1.0, 1), (np.float64(0.0), 0), ("1", 1), ("0", 0)],
)
def test_published_verdict_wins_over_diagnosis(published, expected):
    diagnosis = "nevus" if expected == 1 else "melanoma"  # the opposite of what the diagnosis implies
    assert label_of(diagnosis, MALIGNANT, published) == expected


@pytest.mark.parametrize("bad", ["indeterminate", 2, 0.5])
def test_unrecognised_published_value_is_an_error(bad):
    with pytest.raises(ValueError, match="published label"):
        label_of("nevus", MALIGNANT, bad)


def test_infinite_published_value_is_an_error_not_null():
    with pytest.raises(ValueError, match="published label"):
        label_of("nevus", MALIGNANT, float("inf"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Melanoma, NOS", "melanoma"),
        ("Melanoma in situ", "melanoma"),
        ("Melanoma Invasive", "melanoma"),
        ("Nevus", "nevus"),
        ("Seborrheic keratosis", "seborrheic_keratosis"),
        ("Solar or actinic keratosis", "actinic_keratosis"),
        ("Squamous cell carcinoma in situ", "squamous_cell_carcinoma"),
        ("Squamous cell carcinoma, NOS", "squamous_cell_carcinoma"),
        ("Lichen planus like keratosis", "benign_keratosis"),
        ("Hemangioma", "vascular_lesion"),
        ("angiokeratoma", "vascular_lesion"),
        ("AIMP", "atypical_melanocytic_proliferation"),
    ],
)
def test_isic_archive_taxonomy_spellings(raw, expected):
    assert canonical_diagnosis(raw) == expected


def test_lookup_returns_none_instead_of_failing():
    assert lookup_diagnosis("Melanoma, NOS") == "melanoma"
    assert lookup_diagnosis("Nevus, Junctional") is None

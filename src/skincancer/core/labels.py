"""Diagnosis vocabulary: every source's spellings map to one canonical name, so labels agree across sources."""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

CANONICAL: tuple[str, ...] = (
    "melanoma",
    "nevus",
    "seborrheic_keratosis",
    "benign_keratosis",
    "basal_cell_carcinoma",
    "squamous_cell_carcinoma",
    "actinic_keratosis",
    "dermatofibroma",
    "vascular_lesion",
    "lentigo",
    "unknown",
)

# Source spelling -> canonical (or normalised snake_case for diagnoses a source publishes beyond CANONICAL).
SPELLINGS: dict[str, str] = {
    "MEL": "melanoma",
    "NV": "nevus",
    "BCC": "basal_cell_carcinoma",
    "AK": "actinic_keratosis",
    "AKIEC": "actinic_keratosis",
    "BKL": "benign_keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular_lesion",
    "SCC": "squamous_cell_carcinoma",
    "UNK": "unknown",
    "pigmented benign keratosis": "benign_keratosis",
    "seborrheic keratosis": "seborrheic_keratosis",
    "lentigo NOS": "lentigo",
    "lentigo simplex": "lentigo",
    "solar lentigo": "lentigo",
    "lichenoid keratosis": "benign_keratosis",
    "cafe-au-lait macule": "cafe_au_lait_macule",
    "atypical melanocytic proliferation": "atypical_melanocytic_proliferation",
    "vascular lesion": "vascular_lesion",
    "actinic keratosis": "actinic_keratosis",
    "basal cell carcinoma": "basal_cell_carcinoma",
    "squamous cell carcinoma": "squamous_cell_carcinoma",
    "dermatofibroma": "dermatofibroma",
    "melanoma": "melanoma",
    "nevus": "nevus",
    "unknown": "unknown",
    # older ISIC archive `diagnosis` values (isic-cli metadata before the hierarchical taxonomy)
    "AIMP": "atypical_melanocytic_proliferation",
    "angioma": "vascular_lesion",
    "angiokeratoma": "vascular_lesion",
    "pyogenic granuloma": "vascular_lesion",
    # ISIC hierarchical taxonomy, diagnosis_3..5 (isic-cli metadata since 2024)
    "Melanoma, NOS": "melanoma",
    "Melanoma in situ": "melanoma",
    "Melanoma Invasive": "melanoma",
    "Melanoma metastasis": "melanoma",
    "Solar or actinic keratosis": "actinic_keratosis",
    "Squamous cell carcinoma, NOS": "squamous_cell_carcinoma",
    "Squamous cell carcinoma in situ": "squamous_cell_carcinoma",
    "Squamous cell carcinoma, Invasive": "squamous_cell_carcinoma",
    "Lichen planus like keratosis": "benign_keratosis",
    "Hemangioma": "vascular_lesion",
    "Atypical melanocytic neoplasm": "atypical_melanocytic_proliferation",
    "Atypical intraepidermal melanocytic proliferation": "atypical_melanocytic_proliferation",
}

_BENIGN_MALIGNANT = {"benign": 0, "malignant": 1}


def _key(raw: str) -> str:
    """Fold case and the separators sources disagree on (space, underscore, hyphen)."""
    return re.sub(r"[\s_\-]+", " ", raw).strip().lower()


_LOOKUP: dict[str, str] = {_key(name): name for name in CANONICAL} | {
    _key(spelling): canonical for spelling, canonical in SPELLINGS.items()
}


# label index -> class name: the folder names under data/split/<split>/ and the report's wording
CLASS_NAMES: tuple[str, str] = ("benign", "malignant")


def lookup_diagnosis(raw: str) -> str | None:
    """The canonical name of a spelling, or None: for sources that fall back to a coarser level they publish."""
    return _LOOKUP.get(_key(str(raw)))


def snake_case(raw: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", raw.lower()).strip("_")


def canonical_diagnosis(raw: str, *, where: str = "") -> str:
    """A spelling's canonical name; one outside the map is kept as snake_case (design: sources may
    publish more), and the split stage decides whether such images can be labelled."""
    found = lookup_diagnosis(raw)
    if found is not None:
        return found
    kept = snake_case(str(raw)) or "unknown"
    place = f" in {where}" if where else ""
    log.warning("diagnosis %r%s is not in skincancer.core.labels.SPELLINGS; kept as %r", raw, place, kept)
    return kept


# every diagnosis the spelling map knows: benign unless listed in labels.malignant
VOCABULARY: frozenset[str] = frozenset(_LOOKUP.values())
# benign unless listed, which surprises readers of the tutorials that count them malignant
NOTABLY_BENIGN = {"actinic_keratosis": "actinic keratosis (AKIEC, which includes Bowen's disease)"}


def is_diagnosis(name: str) -> bool:
    """A canonical name of the vocabulary (what labels.malignant lists), not a source's spelling."""
    return name in VOCABULARY


def closest_diagnosis(name: str) -> str:
    """The fix for a name outside the vocabulary: its canonical name, or the closest spelling."""
    if (canonical := lookup_diagnosis(name)) is not None:
        return f"write it as {canonical!r}"
    close = difflib.get_close_matches(snake_case(name), sorted(VOCABULARY), n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known: {sorted(VOCABULARY)}"


def mapping_in_words(malignant: Iterable[str]) -> str:
    """The benign/malignant mapping in force, for the report."""
    listed = sorted(malignant)
    benign = [words for name, words in NOTABLY_BENIGN.items() if name not in listed]
    text = f"Malignant: {', '.join(name.replace('_', ' ') for name in listed)} (`labels.malignant`); every other diagnosis is benign"
    if benign:
        text += f", including {' and '.join(benign)} unless listed"
    return text + ". A published benign/malignant verdict outranks the diagnosis."


def is_labellable(diagnosis: str, malignant: frozenset[str] | set[str], published: object = None) -> bool:
    """Whether benign/malignant is known: a published verdict, a listed malignant, or a known diagnosis."""
    if not _is_null(published) or diagnosis in malignant:
        return True
    return diagnosis in VOCABULARY and diagnosis != "unknown"


def _is_null(value: object) -> bool:
    """None, NaN, pandas NA or an empty CSV cell all mean "not published"."""
    if value is None or type(value).__name__ == "NAType":
        return True
    if isinstance(value, numbers.Real):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _published_label(published: object) -> int:
    if isinstance(published, str):
        text = published.strip().lower()
        if text in _BENIGN_MALIGNANT:
            return _BENIGN_MALIGNANT[text]
        if text in {"0", "1"}:
            return int(text)
    elif isinstance(published, numbers.Real) and float(published) in (0.0, 1.0):
        return int(published)
    raise ValueError(f"published label {published!r} is neither benign/malignant nor a 0/1 target")


def label_of(diagnosis: str, malignant: frozenset[str] | set[str], published: object = None) -> int:
    """1 malignant, 0 benign; a source's own published verdict outranks the diagnosis mapping."""
    if not _is_null(published):
        return _published_label(published)
    return int(diagnosis in malignant)

"""The classes of the diagnosis head (train.head: diagnosis): the diagnoses train holds, each with its label.

Learning to tell a nevus from a seborrheic keratosis, not only benign from malignant, gives the backbone
far more to learn from (the ISIC 2020 winners trained on a 9-class target); P(malignant) is then the summed
probability of the malignant classes. Kept free of TensorFlow: the classes are plain data in the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from skincancer.core.labels import CLASS_NAMES

# Diagnoses with fewer train images than this join their label's `other` class: a softmax output learnt
# from a handful of images is noise.
MIN_CLASS_IMAGES = 10
OTHER = "other"


@dataclass(frozen=True)
class DiagnosisClasses:
    names: tuple[str, ...]
    labels: tuple[int, ...]  # 0 benign, 1 malignant, per class
    diagnoses: tuple[str, ...]  # the diagnosis each class stands for (its name, but for `other_*` and twins)

    @property
    def keys(self) -> tuple[str, ...]:
        """Each class's (label, diagnosis) key, as `class_key` writes it; `other_*` keys match no image."""
        return tuple(class_key(label, diagnosis) for label, diagnosis in zip(self.labels, self.diagnoses, strict=True))

    @property
    def malignant_mask(self) -> list[float]:
        return [float(label) for label in self.labels]

    def other(self, label: int) -> int:
        """The class of a diagnosis train did not hold often enough (or at all), by its label."""
        return self.names.index(f"{OTHER}_{CLASS_NAMES[label]}")

    def index(self, diagnosis: str, label: int) -> int:
        key = class_key(label, diagnosis)
        return self.keys.index(key) if key in self.keys else self.other(label)


def class_key(label: int, diagnosis: str) -> str:
    """A diagnosis and its label: 'unknown' can be either, and must not mix the two."""
    return f"{int(label)}/{diagnosis}"


def diagnosis_classes(records: pd.DataFrame) -> DiagnosisClasses:
    """Classes from train's (diagnosis, label) rows: every pair with MIN_CLASS_IMAGES images, in name order,
    then `other_benign` and `other_malignant` for the rest (and for diagnoses only val or test hold)."""
    counts = records.groupby(["label", "diagnosis"]).size()
    kept = sorted((diagnosis, int(label)) for (label, diagnosis), n in counts.items() if n >= MIN_CLASS_IMAGES)
    both_labels = {diagnosis for diagnosis, label in kept if (diagnosis, 1 - label) in kept}
    names = [f"{diagnosis}_{CLASS_NAMES[label]}" if diagnosis in both_labels else diagnosis for diagnosis, label in kept]
    others = [f"{OTHER}_{name}" for name in CLASS_NAMES]
    labels = [label for _, label in kept] + [0, 1]
    return DiagnosisClasses(tuple(names + others), tuple(labels), tuple([d for d, _ in kept] + others))

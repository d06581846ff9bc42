"""The cross-validated model: the fold models' mean as one Keras model, so evaluate, predict, the exports
and the card handle an ensemble exactly as they handle a single network (uint8 images, and the patient context
where the members take it, in; P(malignant) out).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

import skincancer.train.models  # noqa: F401  (registers the custom layers the members name)
from skincancer.core.paths import fold_part
from skincancer.train.model_file import save_model

MEAN_LAYER = "ensemble_mean"


def _like(tensor: keras.KerasTensor) -> keras.KerasTensor:
    """A fresh input of the ensemble with the name, shape and dtype of a member's."""
    return keras.Input(tensor.shape[1:], dtype=tensor.dtype, name=tensor.name)


def ensemble_of(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the members' outputs; member k is nested as sub-model "fold{k}"
    (its own layers and weights unchanged), all fed the same named inputs as the members take: uint8 "image",
    and "context" for members trained with patient context."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    inputs = keras.tree.map_structure(_like, members[0].input)
    scores = [keras.Model(model.input, model.output, name=fold_part(fold))(inputs) for fold, model in enumerate(members)]
    return keras.Model(inputs, keras.layers.Average(dtype="float32", name=MEAN_LAYER)(scores), name="ensemble")


def save_ensemble(member_paths: Sequence[Path], path: Path) -> None:
    """The members' files (in fold order) ensembled into `path`, byte-stable like every saved model."""
    members = [keras.saving.load_model(member, compile=False) for member in member_paths]
    save_model(ensemble_of(members), path)

"""Where pretrained backbone weights come from: keras' ImageNet download, or a local file.

Either way a failure stops the run with a message that says what to change in params.yaml; a
backbone asked to start pretrained never silently trains from random weights instead.
"""

from __future__ import annotations

import os
import tempfile
import traceback
import warnings
from pathlib import Path
from types import FrameType

import h5py
import keras
from keras.src.backend.config import keras_home

from skincancer.core.locks import folder_lock

KERAS3_SUFFIX = ".weights.h5"  # written by `model.save_weights`, matched by variable path
H5_SUFFIXES = (".h5", ".hdf5")  # any other name keras reads as the Keras 2 layout (*_notop.h5), matched by layer order
MAX_CAUSE_CHARS = 400  # keras lists every failed layer; the full text stays on the chained exception


class WeightsError(ValueError):
    """Base: the train.weights setting cannot be honoured."""


class WeightsUnavailable(WeightsError):
    """imagenet weights could not be downloaded (network, HTTP error, corrupt download)."""


class WeightsMismatch(WeightsError):
    """A local weights file is missing, unreadable, or does not fit the backbone."""


def imagenet_backbone(name: str, application: str, shape: tuple[int, int, int]) -> keras.Model:
    """keras.applications.<application>(include_top=False, weights='imagenet', input_shape=shape).

    Download failures and input shapes the constructor refuses become WeightsErrors that say what
    to do, instead of a bare urllib or keras traceback.
    """
    constructor = getattr(keras.applications, application)
    try:
        with folder_lock(_download_folder()):  # side-by-side experiments: one downloads, the others then read it
            return constructor(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as error:
        download = _download_frame(error)
        if download is not None:
            raise WeightsUnavailable(_unavailable_message(name, application, error, download)) from error
        if isinstance(error, ValueError):
            raise WeightsError(
                f"backbone {name!r}: keras.applications.{application} with imagenet weights refuses image size "
                f"{shape[0]}x{shape[1]}: {_excerpt(error)}\nChange `shard.image_size` in params.yaml."
            ) from error
        raise


def _download_folder() -> Path:
    """Where keras.utils.get_file keeps the applications' weights (KERAS_HOME/models, as keras resolved it at
    import, or its fallback when that is not writable); keras writes the download in place, so two processes
    fetching it at once would read each other's half-written file."""
    home = Path(keras_home()).expanduser()
    base = home if os.access(home, os.W_OK) else Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / ".keras"
    return base / "models"


def load_weights_file(backbone: keras.Model, path: str | Path, name: str) -> None:
    """Load a no-top weights file into the built backbone.

    Keras 3 `.weights.h5` files are matched by variable path, legacy `.h5` files by layer order
    (keras checks the layer count and every shape). Keras 3 loading ignores extra entries and only
    warns when it skips a nested container, so both are checked here and raise as well.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsMismatch(
            f"train.weights: {path} does not exist (weights for backbone {name!r}). Point `train.weights` "
            f"in params.yaml at a no-top `{KERAS3_SUFFIX}` or `.h5` file, or set it to imagenet or null."
        )
    if not path.name.endswith(H5_SUFFIXES):
        raise WeightsMismatch(
            f"train.weights: {path} is not a weights file for backbone {name!r}: expected a Keras 3 "
            f"`{KERAS3_SUFFIX}` file (model.save_weights) or a legacy `.h5` file (keras' *_notop.h5)."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(path)
        except (OSError, ValueError, KeyError) as error:
            raise _mismatch(path, name, _excerpt(error)) from error
    skipped = [str(warning.message) for warning in caught if str(warning.message).startswith("Skipping")]
    if skipped:
        raise _mismatch(path, name, f"keras left {len(skipped)} part(s) at random init: {skipped[0]}")
    for warning in caught:  # unrelated warnings are the caller's to see
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if path.name.endswith(KERAS3_SUFFIX):
        stored, expected = _stored_variables(path), len(backbone.weights)
        if stored != expected:
            raise _mismatch(path, name, f"the file holds {stored} variables, the backbone has {expected}")


def _download_frame(error: BaseException) -> FrameType | None:
    """keras.utils.get_file's frame if the error was raised inside it: the download failed, not the model."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code is keras.utils.get_file.__code__:
            return frame
    return None


def _unavailable_message(name: str, application: str, error: BaseException, download: FrameType) -> str:
    """What failed, and the two ways around it; origin and cache dir as get_file itself resolved them."""
    state = download.f_locals
    fname, origin, cache = state["fname"], state["origin"], Path(state["datadir"])
    return (
        f"backbone {name!r}: could not download the imagenet weights of keras.applications.{application}: "
        f"{_excerpt(error)}\n"
        f"Without internet access, download {origin} on a machine that has it and copy it to {cache / fname} "
        f"(keras' cache: ~/.keras/models/, or $KERAS_HOME/models/), "
        f"or copy it anywhere and set `train.weights: path/to/{fname}` in params.yaml."
    )


def _mismatch(path: Path, name: str, cause: str) -> WeightsMismatch:
    return WeightsMismatch(
        f"train.weights: {path} does not fit backbone {name!r}: {cause}\n"
        f"It must hold this backbone without its top (include_top=False), at the same width "
        f"(e.g. keras' *_notop.h5 for it, or `backbone.save_weights(...)` of the same backbone)."
    )


def _stored_variables(path: Path) -> int:
    """Variables in a Keras 3 weights file; optimizer state aside (a compiled model saves it too)."""
    datasets: list[str] = []
    with h5py.File(path, "r") as file:
        file.visititems(lambda key, item: datasets.append(key) if isinstance(item, h5py.Dataset) else None)
    return sum(not key.startswith("optimizer/") for key in datasets)


def _excerpt(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= MAX_CAUSE_CHARS else f"{text[:MAX_CAUSE_CHARS]} ..."

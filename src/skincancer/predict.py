"""Classify new images with the evaluated model at its frozen operating point.

Each image goes through the shard stage's own function (EXIF transpose, reduced-scale decode, crop or
pad, JPEG at the shard quality) and TensorFlow's JPEG decoder, exactly as training and evaluation saw
their images, so a test image scores here what it scored in reports/predictions.csv.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from skincancer.calibration import Calibration
from skincancer.evaluate import predict_images
from skincancer.labels import CLASS_NAMES
from skincancer.metrics import DECIMALS
from skincancer.params import ShardParams
from skincancer.shard import encode_file, encode_job

log = logging.getLogger(__name__)

# what a folder walk picks up (an explicit file is always tried, whatever its name)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm"}
COLUMNS = ["path", "probability", "prediction", "label", "threshold", "error", "score", "prevalence"]


class NoThreshold(ValueError):
    """Neither --threshold nor a metrics.json with the evaluated threshold."""


@dataclass(frozen=True)
class Prepared:
    path: Path
    jpeg: bytes | None
    error: str | None


def image_files(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders walked recursively for images, in a stable (sorted) order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    return found


def decision_threshold(metrics_path: Path, override: float | None) -> float:
    if override is not None:
        return override
    try:
        return float(json.loads(metrics_path.read_text())["threshold"])
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise NoThreshold(
            f"no decision threshold: {metrics_path} is missing or has no 'threshold' ({type(error).__name__}: {error}); "
            "run `dvc repro evaluate` for the evaluated operating point, or pass --threshold"
        ) from None


def read_calibration(metrics_path: Path) -> Calibration:
    """The evaluated calibration (metrics.json's `calibration`); without one, scores are printed as they are."""
    try:
        return Calibration.from_json(json.loads(metrics_path.read_text()).get("calibration"))
    except (FileNotFoundError, ValueError):
        return Calibration("none")


def prepare(path: Path, size: int, shard: ShardParams) -> Prepared:
    """The shard stage's own encode_file; an unreadable file becomes an error row, not a crash."""
    try:
        encoded = encode_file(encode_job(str(path), shard, size))
    except OSError as error:
        return Prepared(path, None, f"unreadable: {error.strerror or error}")
    return Prepared(path, None, encoded) if isinstance(encoded, str) else Prepared(path, encoded.data, None)


def _batches(prepared: Iterator[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    batch: list[Prepared] = []
    for item in prepared:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(
    files: list[Path],
    model: keras.Model,
    threshold: float,
    shard: ShardParams,
    *,
    calibration: Calibration = Calibration("none"),
    tta: int = 1,
    tta_scales: Sequence[float] = (1.0,),
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per file: P(malignant) (the score calibrated as evaluate did, both rounded like predictions.csv),
    the call at `threshold`, or the error."""
    size = int(model.inputs[0].shape[1])
    rows = []
    bar = tqdm(total=len(files), unit="image", disable=not progress or len(files) <= batch_size, leave=False)
    for batch in _batches((prepare(path, size, shard) for path in files), batch_size):
        good = [item for item in batch if item.jpeg is not None]
        probabilities = iter(())
        if good:
            images = tf.data.Dataset.from_tensor_slices([item.jpeg for item in good]).map(
                lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3)
            ).batch(batch_size)
            scores = predict_images(model, images, tta, tta_scales).round(DECIMALS)
            probabilities = iter(zip(scores, calibration.apply(scores).round(DECIMALS), strict=True))
        for item in batch:
            if item.error is not None:
                log.warning("%s: %s", item.path, item.error)
                rows.append({"path": str(item.path), "threshold": threshold, "error": item.error})
                continue
            score, probability = (float(value) for value in next(probabilities))
            called = int(probability >= threshold)
            rows.append({"path": str(item.path), "probability": probability, "prediction": called,
                         "label": CLASS_NAMES[called], "threshold": threshold, "error": "",
                         "score": score, "prevalence": calibration.prevalence})
        bar.update(len(batch))
    bar.close()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"prediction": "Int64"})


def write_predictions(frame: pd.DataFrame, output: Path | None) -> str | None:
    """CSV or JSON by the output's suffix; without an output, the CSV text to print."""
    if output is None:
        return frame.to_csv(index=False)
    if output.suffix.lower() == ".json":
        output.write_text(frame.to_json(orient="records", indent=2) + "\n")
    else:
        frame.to_csv(output, index=False)
    return None


def load_model(path: Path) -> keras.Model:
    import skincancer.models  # noqa: F401  (registers the custom layers)

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro train` (or pass --model)")
    return keras.saving.load_model(path)


def write_explanations(frame: pd.DataFrame, model: keras.Model, shard: ShardParams, out_dir: Path) -> None:
    """One Grad-CAM overlay PNG per classified image, named after it (`<stem>.gradcam.png`)."""
    from skincancer.atomic import atomic_write_bytes
    from skincancer.explain import grad_cam, overlay_png

    size = int(model.inputs[0].shape[1])
    for row in frame[frame["error"] == ""].itertuples():
        prepared = prepare(Path(row.path), size, shard)
        image = tf.io.decode_jpeg(prepared.jpeg, channels=3).numpy()
        title = f"{Path(row.path).name}: p={row.probability:.3f} ({row.label})"
        atomic_write_bytes(out_dir / f"{Path(row.path).stem}.gradcam.png", overlay_png(image, grad_cam(model, image), title))

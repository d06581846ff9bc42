"""Classify new images with the evaluated model at its frozen operating point, as its card says.

Each image goes through the shard stage's own encoding (skincancer.evaluate.inference.prepare: EXIF transpose,
reduced-scale decode, crop or pad, JPEG at the shard quality) and the training pipeline's JPEG decoder,
so a test image scores here what it scored in reports/predictions.csv. Everything it needs to know
(image size, resize, quality, views, calibration, threshold, patient context) comes from the model card, not
params.yaml. A model trained with patient context scores each image with its row of a CSV (skincancer.serve.context);
the output's `context` column then names the fields an image was scored without.

Each image also gets its out-of-distribution score and flag from the card's fit (skincancer.evaluate.ood), from the
same pass as its score: `in_distribution` false, with a warning naming the file, says the image is unlike the
training images and its probability is not to be trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from skincancer.core.atomic import atomic_write_text
from skincancer.core.labels import CLASS_NAMES
from skincancer.core.model_card import ModelCard
from skincancer.evaluate.inference import Prepared, decode, predict_images, prepare
from skincancer.evaluate.metrics import DECIMALS
from skincancer.evaluate.ood import OodFlag, feature_scorer, read_flag, scores_and_features
from skincancer.serve.context import ContextError, ImageContext, check_context, image_context
from skincancer.train.models import CONTEXT_INPUT, IMAGE_INPUT

log = logging.getLogger(__name__)

# what a folder walk picks up (an explicit file is always tried, whatever its name)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm"}
COLUMNS = ["path", "probability", "prediction", "label", "in_distribution", "ood_score", "threshold", "error", "score",
           "prevalence"]
CONTEXT_COLUMN = "context"  # a context model's rows: the fields an image was scored without


def image_files(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, folders walked recursively for images, in a stable (sorted) order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    return found


def _batches(prepared: Iterator[tuple[int, Prepared]], batch_size: int) -> Iterator[list[tuple[int, Prepared]]]:
    batch: list[tuple[int, Prepared]] = []
    for item in prepared:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _inputs(jpegs: list[bytes], vectors: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
    """Decoded images, beside their context vectors for a context model."""
    images = tf.data.Dataset.from_tensor_slices(jpegs).map(decode)
    if vectors is None:
        return images.batch(batch_size)
    return tf.data.Dataset.zip({IMAGE_INPUT: images, CONTEXT_INPUT: tf.data.Dataset.from_tensor_slices(vectors)}).batch(batch_size)


def _context(files: list[Path], model: keras.Model, card: ModelCard, context: ImageContext | None) -> ImageContext | None:
    """The context the model takes: `context` as given, or every field missing (warned) where none was."""
    if check_context(model, card) is None:
        if context is not None:
            raise ContextError(f"{card.path} records no patient context: its model takes the image alone")
        return None
    if context is None:
        context = image_context(files, card, None)
        for warning in context.warnings:
            log.warning("%s", warning)
    return context


def _scored(scorer: keras.Model, flag: OodFlag | None, images: tf.data.Dataset,
            card: ModelCard) -> tuple[np.ndarray, np.ndarray, list[bool | None]]:
    """A batch's scores, out-of-distribution scores and in-distribution flags, at the decimals written (the last
    two empty without a fit)."""
    if flag is None:
        scores = predict_images(scorer, images, card.tta, card.tta_scales).round(DECIMALS)
        return scores, np.full(len(scores), np.nan), [None] * len(scores)
    scores, features = scores_and_features(scorer, images, card.tta, card.tta_scales)
    ood_scores, inside = flag.flag(features)
    return scores.round(DECIMALS), ood_scores, [bool(value) for value in inside]


def _warn_of_outliers(frame: pd.DataFrame, flag: OodFlag | None) -> None:
    """Each image the flag calls unlike the training images, by name, then how many."""
    outliers = frame[frame["in_distribution"].eq(False)]
    for row in outliers.itertuples():
        log.warning("%s: unlike the images the model was trained on (ood_score %.4f above the cut-off %.4f): its "
                    "probability is not to be trusted", row.path, row.ood_score, flag.cutoff)
    if len(outliers):
        log.warning("%d of %d image(s) are out of distribution (in_distribution false)", len(outliers), len(frame))


def predict(
    files: list[Path],
    model: keras.Model,
    card: ModelCard,
    *,
    context: ImageContext | None = None,
    threshold: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per file: P(malignant) (the score calibrated as evaluated, both rounded like predictions.csv),
    the call at the card's threshold (or `threshold`), whether the image is like the training images
    (`in_distribution`, from its `ood_score`), or the error. A context model takes `context` (image_context's, in
    the files' order; without it every field is missing) and adds the `context` column."""
    threshold = card.threshold if threshold is None else threshold
    calibration, preparation = card.calibration, card.preparation
    context = _context(files, model, card, context)
    flag = read_flag(card, "in_distribution and ood_score stay empty")
    scorer = model if flag is None else feature_scorer(model)
    rows = []
    bar = tqdm(total=len(files), unit="image", disable=not progress or len(files) <= batch_size, leave=False)
    for batch in _batches(((index, prepare(path, preparation)) for index, path in enumerate(files)), batch_size):
        good = [(index, item) for index, item in batch if item.jpeg is not None]
        probabilities = iter(())
        if good:
            vectors = None if context is None else context.vectors[[index for index, _ in good]]
            images = _inputs([item.jpeg for _, item in good], vectors, batch_size)
            scores, ood_scores, inside = _scored(scorer, flag, images, card)
            probabilities = iter(zip(scores, calibration.apply(scores).round(DECIMALS), ood_scores, inside, strict=True))
        for index, item in batch:
            if item.error is not None:
                log.warning("%s: %s", item.path, item.error)
                rows.append({"path": str(item.path), "threshold": threshold, "error": item.error})
                continue
            score, probability, ood_score, in_distribution = next(probabilities)
            called = int(probability >= threshold)
            rows.append({"path": str(item.path), "probability": float(probability), "prediction": called,
                         "label": CLASS_NAMES[called], "in_distribution": in_distribution, "ood_score": float(ood_score),
                         "threshold": threshold, "error": "", "score": float(score), "prevalence": calibration.prevalence,
                         **({} if context is None else {CONTEXT_COLUMN: context.notes[index]})})
        bar.update(len(batch))
    bar.close()
    frame = pd.DataFrame(rows, columns=COLUMNS + ([] if context is None else [CONTEXT_COLUMN]))
    frame = frame.astype({"prediction": "Int64", "in_distribution": "boolean", "ood_score": "float64"})
    _warn_of_outliers(frame, flag)
    return frame


def write_predictions(frame: pd.DataFrame, output: Path | None) -> str | None:
    """CSV or JSON by the output's suffix, written whole or not at all; without an output, the CSV text to print."""
    if output is None:
        return frame.to_csv(index=False)
    json_output = output.suffix.lower() == ".json"
    atomic_write_text(output, frame.to_json(orient="records", indent=2) + "\n" if json_output else frame.to_csv(index=False))
    return None


def write_explanations(frame: pd.DataFrame, model: keras.Model, card: ModelCard, out_dir: Path,
                       context: ImageContext | None = None) -> None:
    """One Grad-CAM overlay PNG per classified image, named after it (`<stem>.gradcam.png`); a context model's
    map is of the score with the image's context (`context`, as predict took it)."""
    from skincancer.core.atomic import atomic_write_bytes
    from skincancer.serve.explain import grad_cam, overlay_png

    context = _context([Path(path) for path in frame["path"]], model, card, context)
    for row in frame[frame["error"] == ""].itertuples():
        image = decode(prepare(Path(row.path), card.preparation).jpeg).numpy()
        heat = grad_cam(model, image, None if context is None else context.vectors[row.Index])
        title = f"{Path(row.path).name}: p={row.probability:.3f} ({row.label})"
        atomic_write_bytes(out_dir / f"{Path(row.path).stem}.gradcam.png", overlay_png(image, heat, title))

"""The out-of-distribution flag: how unlike the training images an image is, measured where the classifier looks,
so noise, a flat colour, a page of text or a photo of a cat is not handed a confident P(malignant) in silence.

The measure (`ood_score`) is the Mahalanobis distance of an image's pooled backbone features (the global average
pooling feeding the head, build_classifier's `pool`; an ensemble's members' side by side) from the training images'
features, under probabilistic PCA (Tipping and Bishop, 1999): the COMPONENTS leading directions keep their own
variances and every other direction shares one, the variance they leave. Why this covariance: a backbone has 128
(small_cnn) to 2048 (ResNet50) features for a few thousand training images, so the sample covariance is singular or
nearly so and a plain Mahalanobis distance would divide by its smallest eigenvalues, which are noise. Pooling them
into one variance is a shrinkage (as Ledoit-Wolf shrinks toward the mean eigenvalue) that still counts every
direction: an image far off the training images' subspace is far in the residual term, not projected onto the
subspace and missed. The fit is COMPONENTS x features + features + COMPONENTS + 1 float32 numbers (1.3 MB for
MobileNetV2's 1280 features, a seventh of the model), small enough to ship beside the model and to compute inside an
exported graph, where a full Ledoit-Wolf covariance would be 6.5 MB (59 MB for a 3-fold ensemble) and k nearest
neighbours every training feature. On real ISIC images (benchmarks/real_ood.py, docs/model-quality.md) 256
components flag as many foreign inputs as the full Ledoit-Wolf covariance; 32 miss up to a fifth of the flat colours.

The features are those of the image as prepared (the identity view at full scale), whatever test-time views the
score averages: one pass over the training images fits it, and predict and the exports read them off a view they
compute anyway. The cut-off is a percentile (evaluate.ood.percentile) of the val images' scores: images like the
training ones are flagged at about 100 - percentile per cent, and anything scoring above it is `in_distribution`
false.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from skincancer.core.model_card import CardError, ModelCard, file_sha256
from skincancer.evaluate.inference import DIHEDRAL, Inputs, views
from skincancer.evaluate.metrics import DECIMALS, wilson_interval
from skincancer.train.ensemble import MEAN_LAYER
from skincancer.train.models import on_image

log = logging.getLogger(__name__)

COMPONENTS = 256  # leading directions with their own variance (at most half the training images); the rest share one
MIN_IMAGES = 3  # below this, the training images' spread says nothing
SCORE_IN_WORDS = (
    "Mahalanobis distance of the image's pooled backbone features (the image as prepared, no test-time views) from "
    "the training images' features, under probabilistic PCA: the leading components keep their own variances, the "
    "other directions share the variance they leave"
)
ARRAYS = ("mean", "components", "variances", "residual_variance")
STABLE_DATE = (1980, 1, 1, 0, 0, 0)  # the zip members' time: the same fit writes the same bytes


class OodUnavailable(ValueError):
    """No out-of-distribution measure can be fitted: a model without the pooled features, or too few images."""


# ---------------------------------------------------------------- the features


def _pooling(network: keras.Model) -> keras.layers.Layer | None:
    """The network's own global average pooling that feeds its head (build_classifier's `pool`), if it has one."""
    pools = [layer for layer in network.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return pools[-1] if pools else None


def _networks(model: keras.Model) -> list[keras.Model]:
    """The networks whose pooled features the measure reads: the model, or an ensemble's members in fold order."""
    if _pooling(model) is not None:
        return [model]
    members = [layer for layer in model.layers if isinstance(layer, keras.Model) and _pooling(layer) is not None]
    if members and MEAN_LAYER in {layer.name for layer in model.layers}:
        return members
    raise OodUnavailable(f"model {model.name} pools no features before its output (no GlobalAveragePooling2D layer, "
                         "nor is it an ensemble of models with one): retrain it with `dvc repro train`, which builds one")


def feature_layers(model: keras.Model) -> list[str]:
    """The layers the features come from, as the card records them: `pool`, or `fold<k>/pool` per member."""
    networks = _networks(model)
    if networks == [model]:
        return [_pooling(model).name]
    return [f"{network.name}/{_pooling(network).name}" for network in networks]


def _with_features(network: keras.Model) -> keras.Model:
    """The network with its pooled features as a second output."""
    return keras.Model(network.input, [network.output, _pooling(network).output])


def feature_scorer(model: keras.Model) -> keras.Model:
    """The model with a second output, its pooled features (an ensemble's members' concatenated), on the same
    layers and weights: one pass gives the score and what the out-of-distribution measure reads."""
    networks = _networks(model)
    if networks == [model]:
        return _with_features(model)
    parts = [_with_features(network)(model.input) for network in networks]
    score = model.get_layer(MEAN_LAYER)([part[0] for part in parts])
    return keras.Model(model.input, [score, keras.layers.Concatenate(name="features")([part[1] for part in parts])])


def _own_view(scales: Sequence[float]) -> int | None:
    """Where the image as prepared (the identity at full scale) is among views(tta, scales); None where absent."""
    return list(scales).index(1.0) if 1.0 in scales else None


def scores_and_features(scorer: keras.Model, images: tf.data.Dataset, tta: int = 1,
                        scales: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """inference.predict_images' scores from a feature_scorer, and the features of each image as prepared."""
    scored = views(tta, scales)
    own = _own_view(scales)
    passes = scored if own is not None else [*scored, DIHEDRAL[0]]
    outputs = [scorer.predict(images.map(lambda inputs, view=view: on_image(inputs, view)), verbose=0)
               for view in passes]
    scores = np.mean([score.reshape(-1) for score, _ in outputs[:len(scored)]], axis=0, dtype=np.float64)
    return scores, outputs[len(scored) if own is None else own][1]


def scores_and_features_in_graph(scorer: keras.Model, images: Inputs, tta: int = 1,
                                 scales: Sequence[float] = (1.0,)) -> tuple[tf.Tensor, tf.Tensor]:
    """scores_and_features as TensorFlow ops (the exports' signatures): (batch,) scores, (batch, features)."""
    outputs = [scorer(on_image(images, view), training=False) for view in views(tta, scales)]
    scores = tf.add_n([tf.reshape(tf.cast(score, tf.float32), [-1]) for score, _ in outputs]) / len(outputs)
    own = _own_view(scales)
    features = outputs[own][1] if own is not None else scorer(images, training=False)[1]
    return scores, tf.cast(features, tf.float32)


# ---------------------------------------------------------------- the fit


@dataclass(frozen=True)
class OodFit:
    """Probabilistic PCA of the training images' features, stored in float32 (what evaluate and predict both
    score with, so they agree to the last decimal written)."""

    mean: np.ndarray  # (features,)
    components: np.ndarray  # (k, features), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: np.ndarray  # (), every other direction's

    def score(self, features: np.ndarray) -> np.ndarray:
        """Each image's distance (float64): sqrt(sum of z_i^2 / variance_i + |residual|^2 / residual variance)."""
        mean, components = self.mean.astype(np.float64), self.components.astype(np.float64)
        centred = np.asarray(features, np.float64) - mean
        projected = centred @ components.T
        residual = centred - projected @ components
        return np.sqrt((projected ** 2 / self.variances.astype(np.float64)).sum(axis=1)
                       + (residual ** 2).sum(axis=1) / float(self.residual_variance))

    def score_in_graph(self, features: tf.Tensor) -> tf.Tensor:
        """score as TensorFlow ops, in float32: the fit travels in the exported graph as constants."""
        components = tf.constant(self.components)
        centred = tf.cast(features, tf.float32) - tf.constant(self.mean)
        projected = tf.matmul(centred, components, transpose_b=True)
        residual = centred - tf.matmul(projected, components)
        return tf.sqrt(tf.reduce_sum(projected ** 2 / tf.constant(self.variances), axis=1)
                       + tf.reduce_sum(residual ** 2, axis=1) / tf.constant(self.residual_variance))

    def npz_bytes(self) -> bytes:
        """The arrays as a .npz (np.load reads it), byte-stable: the same fit writes the same file."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name in ARRAYS:
                member = io.BytesIO()
                np.lib.format.write_array(member, getattr(self, name), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=STABLE_DATE), member.getvalue())
        return buffer.getvalue()

    @classmethod
    def read(cls, path: Path) -> OodFit:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return cls(**{name: arrays[name] for name in ARRAYS})
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise CardError(f"{path} is not an out-of-distribution fit ({type(error).__name__}: {error}); rerun "
                            "`dvc repro evaluate` to write it") from None


def fit_ood(features: np.ndarray, components: int = COMPONENTS) -> OodFit:
    """The measure fitted on the training images' features (images x features)."""
    x = np.asarray(features, np.float64)
    n, width = x.shape
    if n < MIN_IMAGES:
        raise OodUnavailable(f"{n} training image(s) cannot fit the out-of-distribution measure (at least "
                             f"{MIN_IMAGES}); give the split more images")
    mean = x.mean(axis=0)
    _, singular, directions = np.linalg.svd(x - mean, full_matrices=False)
    variances = singular ** 2 / (n - 1)
    total = variances.sum()
    if total <= 0:
        raise OodUnavailable(f"the {n} training images' features are all the same: nothing to measure a distance by")
    k = min(components, width - 1, n // 2)  # few images estimate few directions: the rest of their spectrum is noise
    floor = total / width * 1e-6  # a direction the training images never vary in stays finite
    residual_variance = max((total - variances[:k].sum()) / (width - k), floor)
    return OodFit(mean.astype(np.float32), directions[:k].astype(np.float32),
                  np.maximum(variances[:k], floor).astype(np.float32), np.float32(residual_variance))


def cutoff_at(scores: Iterable[float], percentile: float) -> float:
    """The cut-off: `percentile` of the scores (val's), at the decimals scores are written with."""
    return round(float(np.percentile(np.asarray(list(scores), np.float64), percentile)), DECIMALS)


# ---------------------------------------------------------------- the card and the flag


@dataclass(frozen=True)
class OodFlag:
    """The fit and its cut-off, as the card records them: what predict and the exports flag images with."""

    fit: OodFit
    cutoff: float

    def flag(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's ood_score (at the decimals written) and whether it is in distribution (score <= cut-off)."""
        scores = self.fit.score(features).round(DECIMALS)
        return scores, scores <= self.cutoff


def card_record(fit: OodFit, layers: list[str], fitted_on: Sequence[str], chosen_on: str, percentile: float,
                cutoff: float, path: Path) -> dict:
    """The card's `evaluation.ood`: what the score is, where it was fitted and cut, and the file of its arrays
    (beside the card) with that file's SHA-256."""
    return {
        "score": SCORE_IN_WORDS,
        "layers": layers,
        "features": int(fit.mean.shape[0]),
        "components": int(fit.components.shape[0]),
        "fitted_on": list(fitted_on),
        "chosen_on": chosen_on,
        "percentile": percentile,
        "cutoff": cutoff,
        "flag": "in_distribution is false where ood_score > cutoff: the image is unlike the training images, "
                "and its probability is not to be trusted",
        "file": Path(path).name,
        "sha256": file_sha256(path),
    }


def read_flag(card: ModelCard, without_it: str) -> OodFlag | None:
    """The card's fit and cut-off (its file checked by read_card). A card evaluated before the flag gives None,
    with a warning that ends in ``without_it``: what the caller does instead, never silently."""
    record = card.ood
    if record is None:
        log.warning("%s records no out-of-distribution fit (it was evaluated before evaluate made one): %s, so "
                    "nothing tells an image unlike the training images; rerun `dvc repro evaluate`", card.path,
                    without_it)
        return None
    return OodFlag(OodFit.read(card.ood_path), float(record["cutoff"]))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DECIMALS)


def flagged_share(in_distribution: pd.Series) -> dict:
    """How many of a part's images are flagged, with the Wilson interval of that share (null without images)."""
    n, flagged = len(in_distribution), int((~in_distribution.astype(bool)).sum())
    low, high = wilson_interval(flagged, n)
    return {"flagged": _rounded(flagged / n if n else None), "flagged_ci_low": _rounded(low),
            "flagged_ci_high": _rounded(high), "n_flagged": flagged, "n": n}


def ood_metrics(predictions: pd.DataFrame, parts: Sequence[str], percentile: float, cutoff: float) -> dict:
    """metrics.json's `ood`: the percentile, the cut-off, and the share of each part's images flagged."""
    return {"percentile": percentile, "cutoff": cutoff,
            **{part: flagged_share(predictions.loc[predictions["split"] == part, "in_distribution"]) for part in parts}}

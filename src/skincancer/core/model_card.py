"""The model's contract, beside it: what it is, how an image must be prepared for it, what its output
means and, once evaluated, where to decide and how well it did.

Training writes models/train_card.json; evaluate adds its threshold, calibration and headline metrics
as models/card.json, the one file `skincancer predict` and `export` read (no params.yaml). The card
names the model file's SHA-256, so a model and a card from two runs are refused, not combined.
Plain JSON without TensorFlow: the card is read before the model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skincancer.core import paths
from skincancer.core.atomic import atomic_write_text
from skincancer.core.calibration import Calibration
from skincancer.core.labels import CLASS_NAMES
from skincancer.core.params import EvaluateParams, TrainParams
from skincancer.core.patient_context import context_encoding
from skincancer.core.preparation import Preparation, PreparationMissing

CARD_VERSION = 1
# how every image is prepared besides the card's own `input` values (skincancer.core.images, tf.io.decode_jpeg)
PREPARATION = {
    "decode": "full decode at the smallest JPEG DCT scale keeping the side >= image_size (Pillow draft)",
    "orientation": "EXIF orientation applied (upright)",
    "colour": "8-bit RGB: grey and palette expanded, 16-bit scaled, transparency flattened on black",
    "resample": "Lanczos (Pillow LANCZOS, reducing_gap 3)",
    "crop": "centre square, then resized (resize: crop); or fitted inside the square on black (resize: pad)",
    "jpeg_subsampling": "4:4:4",
    "pixels": "uint8 RGB 0..255, the model's own input (its preprocessing is inside it)",
}
HEADLINE = ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "sensitivity", "specificity", "n", "n_malignant")


class CardError(ValueError):
    """A card that is missing, unreadable, unevaluated or not the model's own; the message names both files."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_card_path_for(model_path: Path) -> Path:
    """Where training writes a model's card, beside it (models/train_card.json in the pipeline)."""
    return Path(model_path).with_name(paths.TRAIN_CARD.name)


def card_path_for(model_path: Path) -> Path:
    """Where evaluate writes the evaluated card and `predict` and `export` look for it, beside the model."""
    return Path(model_path).with_name(paths.CARD.name)


OOD_FILE = "ood.npz"  # the out-of-distribution fit's arrays (skincancer.evaluate.ood), too many for the card


def ood_path_for(card_path: Path) -> Path:
    """Where evaluate writes the out-of-distribution fit's arrays, beside the card that records them."""
    return Path(card_path).with_name(OOD_FILE)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    return {package: _version(package) for package in ("skincancer", "keras", "tensorflow")}


def _labels(records: pd.DataFrame, classes: list[str] | None) -> dict:
    """The label each diagnosis of the training data took (labels.malignant, as the split applied it)."""
    mapping = records.groupby("diagnosis")["label"].max().sort_index()
    labels = {
        "classes": list(CLASS_NAMES),  # output index 1 = malignant: the score is P(malignant)
        "malignant_diagnoses": [str(d) for d, label in mapping.items() if label == 1],
        "benign_diagnoses": [str(d) for d, label in mapping.items() if label == 0],
    }
    return labels | ({"diagnosis_head_classes": classes} if classes else {})


def card_input(manifest: dict, manifest_path: Path) -> dict:
    """How an image is prepared for the model, from the shards' manifest: checked before training, so
    shards from an older version fail at once, not after the last epoch."""
    try:
        return Preparation.from_json(manifest, manifest_path).as_json() | PREPARATION
    except PreparationMissing as error:
        raise CardError(str(error)) from None


def training_card(params: TrainParams, card_input: dict, manifest_path: Path, records: pd.DataFrame,
                  model_path: Path, precision: str, classes: list[str] | None = None,
                  context: Sequence[str] = ()) -> dict:
    """The card of a freshly saved model: `card_input` as card_input() gave it, `records` the training
    split's rows (its diagnoses and labels); with patient `context` fields (train.metadata), their encoding,
    which predict and the exports rebuild the model's context input from."""
    return {
        "card_version": CARD_VERSION,
        "model": {"file": Path(model_path).name, "sha256": file_sha256(model_path)},
        "backbone": params.backbone,
        "weights": params.weights,
        "head": params.head,
        "trained_precision": precision,
        "input": card_input,
        "output": "score: the model's uncalibrated P(malignant); evaluation.calibration maps it to a probability",
        "labels": _labels(records, classes),
        "data": {"shards_manifest_sha256": file_sha256(manifest_path)},
        "versions": _versions(),
    } | ({"context": context_encoding(context)} if context else {})


def member(fold: int, path: Path, card_dir: Path, trained_on: tuple[str, ...], stopped_on: str) -> dict:
    """A cross-validation member as the ensemble's card lists it: its file (relative to the card's folder)
    and that file's SHA-256, and the parts it trained and was stopped on."""
    return {"fold": fold, "file": Path(path).relative_to(card_dir).as_posix(), "sha256": file_sha256(path),
            "trained_on": list(trained_on), "stopped_on": stopped_on}


def ensemble_card(member_cards: list[dict], model_path: Path, records: pd.DataFrame, members: list[dict]) -> dict:
    """The card of the fold models' ensemble: what the members share (backbone, weights, head, input, shards,
    versions) from their own cards, the ensemble file's hash, the labels of every image the members trained on
    (`records`), its precision (the members', one value where they agree) and the members."""
    precisions = sorted({card["trained_precision"] for card in member_cards})
    return member_cards[0] | {
        "model": {"file": Path(model_path).name, "sha256": file_sha256(model_path)},
        "trained_precision": ", ".join(precisions),
        "labels": _labels(records, None),
        "folds": len(members),
        "members": members,
    }


GROUP_SECTIONS = ("by_source", "by_band")  # a split's per-kind-of-image figures (skincancer.evaluate.groups)
CALIBRATED_ON = ("the {where} pooled over every source and resolution band: a kind of image whose mean probability "
                 "differs from its malignant share (the report's per-group table) is mis-calibrated by that much")
CHOSEN_ON = {"val": "the validation split",
             "oof": "the out-of-fold predictions (each non-test image scored by the fold model that never trained on it)"}
GROUPING_NAMES = {"source": "source", "band": "resolution band"}  # evaluate.threshold.holds_on groupings, in words


def _headline(figures: dict) -> dict:
    """HEADLINE of a split's figures, and of each source and band beside them."""
    return {key: figures.get(key) for key in HEADLINE} | {
        section: {name: {key: group.get(key) for key in HEADLINE} for name, group in figures[section].items()}
        for section in GROUP_SECTIONS if section in figures
    }


def evaluated_card(training: dict, metrics: dict, params: EvaluateParams, operating_point: dict, ood: dict) -> dict:
    """The training card (its members too, with folds) with the evaluation's decision: threshold, its policy
    and what it was chosen to hold on (`operating_point`: skincancer.evaluate.groups.operating_point),
    calibration and what it was fitted on, the views scores average over (tta), the headline metrics with
    their intervals of each evaluated part (val or the out-of-fold scores, and test), pooled and per kind of
    image, and the out-of-distribution flag (`ood`: skincancer.evaluate.ood.card_record)."""
    where = "out-of-fold predictions" if "oof" in metrics else "validation split"
    return training | {"evaluation": {
        "threshold": metrics["threshold"],
        "threshold_policy": params.threshold.model_dump(mode="json"),
        "operating_point": operating_point,
        "calibration": metrics["calibration"],
        "calibrated_on": CALIBRATED_ON.format(where=where),
        "tta": params.tta,
        "tta_scales": list(params.tta_scales),
        "metrics": {split: _headline(metrics[split]) for split in ("val", "oof", "test") if split in metrics},
        "ood": ood,
    }}


def threshold_in_words(policy: dict, operating_point: dict) -> str:
    """What a threshold promises, from its policy (evaluate.threshold) and what evaluate chose it on: the words
    the report and `skincancer predict` print."""
    where = CHOSEN_ON[operating_point.get("chosen_on", "val")]
    if policy["policy"] == "fixed":
        return "fixed in params.yaml (evaluate.threshold.value)"
    if policy["policy"] == "youden":
        return f"chosen on {where} to maximise sensitivity + specificity (Youden's J)"
    promise = f"chosen on {where} to catch {policy['target']:.0%} of its malignant images"
    grouping = operating_point.get("holds_on", "pooled")
    if grouping == "pooled":
        return f"{promise}, pooled over every source and resolution band, with no promise per kind of image"
    groups = operating_point["groups"]
    held = [name for name, group in groups.items() if group["held"]]
    text = (f"{promise}, pooled and in each {GROUPING_NAMES[grouping]} with at least "
            f"{operating_point['min_malignant']} malignant images there ({', '.join(held) or 'none'})")
    too_few = [f"{name}: {group['n_malignant']}" for name, group in groups.items() if not group["held"]]
    return text + (f"; no promise on {', '.join(too_few)} malignant" if too_few else "")


def write_card(card: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(card, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class ModelCard:
    """A card read back and checked against its model file."""

    document: dict
    path: Path

    @property
    def preparation(self) -> Preparation:
        """How an image is prepared for the model (skincancer.shard.prepare), as the training images were."""
        return Preparation.from_json(self.document["input"], self.path)

    @property
    def evaluation(self) -> dict:
        if "evaluation" not in self.document:
            raise CardError(f"{self.path} is a training card without a threshold or calibration; "
                            "run `dvc repro evaluate` and use models/card.json")
        return self.document["evaluation"]

    @property
    def threshold(self) -> float:
        return float(self.evaluation["threshold"])

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_json(self.evaluation["calibration"])

    @property
    def threshold_in_words(self) -> str:
        """What the card's threshold promises (a card from before operating points: pooled on val; one written
        by hand without a policy: none)."""
        if "threshold_policy" not in self.evaluation:
            return "the card records no threshold policy, so no promise"
        return threshold_in_words(self.evaluation["threshold_policy"], self.evaluation.get("operating_point", {}))

    @property
    def context_fields(self) -> list[str]:
        """The patient context fields the model takes beside the image (the card's context record); [] for an
        image-only model."""
        return list(self.document.get("context", {}).get("fields", []))

    @property
    def ood(self) -> dict | None:
        """The out-of-distribution flag's record (skincancer.evaluate.ood.card_record); None for a card evaluated
        before evaluate fitted one."""
        return self.document.get("evaluation", {}).get("ood")

    @property
    def ood_path(self) -> Path:
        """The file of the out-of-distribution fit's arrays, beside the card."""
        return self.path.with_name(self.ood["file"])

    @property
    def tta(self) -> int:
        return int(self.document.get("evaluation", {}).get("tta", 1))

    @property
    def tta_scales(self) -> tuple[float, ...]:
        return tuple(self.document.get("evaluation", {}).get("tta_scales", [1.0]))


def read_card(card_path: Path, model_path: Path, written_by: str = "evaluate") -> ModelCard:
    """The card, refused unless it names `model_path`'s exact bytes; `written_by`: the stage that writes it."""
    card_path, model_path = Path(card_path), Path(model_path)
    if not model_path.is_file():
        raise CardError(f"{model_path} not found: run `dvc repro train` (or pass --model)")
    if not card_path.is_file():
        raise CardError(f"{card_path} not found: the model card of {model_path} is written by "
                        f"`dvc repro {written_by}` (or pass --card)")
    try:
        document = json.loads(card_path.read_text())
        recorded = document["model"]["sha256"]
        Preparation.from_json(document["input"], card_path)
    except (ValueError, KeyError, TypeError) as error:
        raise CardError(f"{card_path} is not a model card ({type(error).__name__}: {error}); "
                        f"rerun `dvc repro {written_by}` to write it") from None
    if document.get("card_version") != CARD_VERSION:
        raise CardError(f"{card_path} has card_version {document.get('card_version')!r}, this code reads "
                        f"{CARD_VERSION}; rerun `dvc repro {written_by}`")
    if recorded != (actual := file_sha256(model_path)):
        raise CardError(f"{card_path} describes another model than {model_path} (SHA-256 {recorded[:12]}... vs "
                        f"{actual[:12]}...): use the card written with this model, or rerun "
                        f"`dvc repro {written_by}`")
    card = ModelCard(document, card_path)
    if card.ood is not None:
        _check_ood_file(card)
    return card


def _check_ood_file(card: ModelCard) -> None:
    """The out-of-distribution fit beside the card must be the one it records: a flag cut on one fit and
    computed with another would call images unlike the training images, or not, at random."""
    path, recorded = card.ood_path, card.ood["sha256"]
    if not path.is_file():
        raise CardError(f"{path} not found: {card.path} records its out-of-distribution fit there; keep the two "
                        "together, or rerun `dvc repro evaluate` (or `dvc checkout`)")
    if recorded != (actual := file_sha256(path)):
        raise CardError(f"{path} is not the out-of-distribution fit {card.path} records (SHA-256 {recorded[:12]}... "
                        f"vs {actual[:12]}...): use the two written together, or rerun `dvc repro evaluate`")


def check_members(card: ModelCard, models_dir: Path) -> list[Path]:
    """The member files of an ensemble's card (none for a single model), in fold order, each refused unless
    it is there with the bytes the card names: an ensemble scored with another fold's model is not the one
    evaluated."""
    paths = []
    for entry in card.document.get("members", []):
        path = Path(models_dir) / entry["file"]
        if not path.is_file():
            raise CardError(f"{path} not found: member fold{entry['fold']} of the ensemble {card.path} describes; "
                            "rerun `dvc repro train` (or `dvc checkout`)")
        if entry["sha256"] != (actual := file_sha256(path)):
            raise CardError(f"{path} is not member fold{entry['fold']} of the ensemble {card.path} describes "
                            f"(SHA-256 {entry['sha256'][:12]}... vs {actual[:12]}...): rerun `dvc repro train` "
                            "(or `dvc checkout`) so members and ensemble come from one run")
        paths.append(path)
    return paths

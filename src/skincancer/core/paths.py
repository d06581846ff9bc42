"""The pipeline's file contract (mirrors dvc.yaml): one place that names every stage output."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

RAW = Path("data/raw")
INDEX = RAW / "index.parquet"
DUPLICATES = RAW / "duplicates.parquet"  # official duplicate pairs: image_id_1, image_id_2, source
METADATA_CONFLICTS = RAW / "metadata_conflicts.csv"  # source values a fetch.metadata table disagrees with
RESOLVED = Path("data/resolved.json")  # the values of params.yaml's 'auto' settings (skincancer.core.resolved)
SPLIT = Path("data/split")
SPLIT_MANIFEST = SPLIT / "manifest.parquet"
SHARDS = Path("data/shards")
SHARDS_MANIFEST = SHARDS / "manifest.json"
MODELS = Path("models")
MODEL = MODELS / "model.keras"
LIVE = MODELS / "dvclive"  # the DVCLive record of training's epochs (skincancer.train.live)
TRAIN_CARD = MODELS / "train_card.json"  # the model's contract (skincancer.core.model_card), as trained
CARD = MODELS / "card.json"  # and as evaluated: what `skincancer predict` and `export` read
FOLDS_DIR = MODELS / "folds"  # split.folds: one model per fold, model.keras their ensemble (empty otherwise)
TENSORBOARD = Path("logs/train")  # train.tensorboard: true
METRICS = Path("metrics.json")
REPORTS = Path("reports")
SPLIT_SUMMARY = REPORTS / "split.json"
PREDICTIONS = REPORTS / "predictions.csv"  # DVC-cached: read at another revision through dvc.api
SPLITS = ("train", "val", "test")
TEST = "test"


def fold_part(fold: int) -> str:
    """The name of a cross-validation fold's folder under data/split and of its shards."""
    return f"fold{fold}"


def split_parts(folds: int | None) -> tuple[str, ...]:
    """What data/split and data/shards hold: train/val/test, or (split.folds: K) K folds and the test split."""
    return SPLITS if folds is None else (*(fold_part(fold) for fold in range(folds)), TEST)


def parts_named(names: Iterable[str]) -> tuple[str, ...]:
    """The parts a manifest's `split` values belong to, in pipeline order: fold names mean K folds and test."""
    folds = sum(1 for name in set(names) if name.startswith("fold"))
    return split_parts(folds or None)


class MissingInput(FileNotFoundError):
    """A stage ran before the stage that produces its input."""


# stage -> {input it reads: stage that writes it}
STAGE_INPUTS: dict[str, dict[Path, str]] = {
    "resolve": {},
    "fetch": {},
    "split": {INDEX: "fetch"},
    "shard": {SPLIT_MANIFEST: "split"},
    "train": {SHARDS_MANIFEST: "shard"},
    "evaluate": {MODEL: "train", TRAIN_CARD: "train", SHARDS_MANIFEST: "shard"},
}


def require_inputs(stage: str, root: Path = Path(".")) -> None:
    """Fail with the stage to run first instead of a traceback deep inside a reader."""
    for path, producer in STAGE_INPUTS[stage].items():
        if not (root / path).exists():
            raise MissingInput(
                f"{stage}: input {path} not found; run the {producer} stage first "
                f"(`dvc repro {producer}`, or `dvc repro` for the whole pipeline)"
            )

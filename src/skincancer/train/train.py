"""train stage: phase 1 (the head on a frozen backbone, or the whole net from scratch), then optional
phase 2 fine-tuning of the backbone's top layers; the best-validation-AUC model is what is kept."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from skincancer.core.atomic import atomic_dir, atomic_path
from skincancer.core.labels import CLASS_NAMES
from skincancer.core.model_card import card_input, train_card_path_for, training_card, write_card
from skincancer.core.params import TrainParams
from skincancer.core.patient_context import context_columns, unmapped_spellings
from skincancer.train.data import (
    Parts,
    Roles,
    check_image_size,
    context_vectors,
    eval_dataset,
    feature_dataset,
    part_count,
    read_shard_manifest,
    sampling_strata,
    split_records,
    split_targets,
    strata_columns,
    training_dataset,
)
from skincancer.train.diagnosis_classes import DiagnosisClasses, diagnosis_classes
from skincancer.train.hardware import (
    check_devices,
    make_deterministic,
    pick_strategy,
    seeded_construction,
    set_precision,
)
from skincancer.train.live import HISTORY_COLUMNS, LiveEpochs, learning_rate, open_live, replay
from skincancer.train.model_file import save_model
from skincancer.train.models import Classifier, build_classifier, malignant_probability, unfreeze_top
from skincancer.train.multi_worker import is_chief, worker_count
from skincancer.train.train_state import TrainState

if TYPE_CHECKING:
    from dvclive import Live

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """No epoch produced a finite validation AUC (NaN loss, or a learning rate far too high)."""


class SingleClassSplit(ValueError):
    """A split lacks benign or malignant images: AUC, checkpoints and class weights are undefined."""


def class_counts(shards_dir: Path, parts: Parts) -> dict[int, int]:
    manifest = read_shard_manifest(shards_dir)
    return {0: part_count(manifest, parts, "benign"), 1: part_count(manifest, parts, "malignant")}


def require_both_classes(shards_dir: Path, roles: Roles = Roles()) -> None:
    for role, parts in (("train", roles.train), ("val", roles.val)):
        counts = class_counts(shards_dir, parts)
        if not all(counts.values()):
            named = "" if parts == (role,) else f" ({', '.join(parts)})"
            raise SingleClassSplit(
                f"{Path(shards_dir) / 'manifest.json'}: the {role} split{named} has {counts[0]} benign and {counts[1]} "
                "malignant images; training needs both. Fetch more data or check labels.malignant in params.yaml"
            )


def class_weights(shards_dir: Path, imbalance: str, classes: DiagnosisClasses | None = None,
                  parts: Parts = "train") -> dict[int, float] | None:
    """'class_weight': weight each label by n / (2 n_c) of the training parts, so the rare malignant class counts
    as much; a diagnosis class takes its label's weight (the diagnoses within a label keep their natural mix)."""
    if imbalance != "class_weight":
        return None
    counts = class_counts(shards_dir, parts)
    total = sum(counts.values())
    weights = {label: total / (2 * count) for label, count in counts.items()}
    if classes is None:
        return weights
    return {index: weights[label] for index, label in enumerate(classes.labels)}


class _OnMalignant:
    """A binary metric fed P(malignant) and the malignant label of a diagnosis head's output and class index,
    so a diagnosis head's history (and val AUC, which picks the best epoch) means what a binary head's does."""

    def __init__(self, malignant: list[float], **kwargs):
        super().__init__(**kwargs)
        self.malignant = malignant

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = keras.ops.convert_to_tensor(self.malignant, dtype="float32")
        label = keras.ops.take(mask, keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"))
        probability = malignant_probability(keras.ops.cast(y_pred, "float32"), mask)
        return super().update_state(label, probability, sample_weight)


class MalignantAUC(_OnMalignant, keras.metrics.AUC):
    pass


class MalignantPrecision(_OnMalignant, keras.metrics.Precision):
    pass


class MalignantRecall(_OnMalignant, keras.metrics.Recall):
    pass


def compile_for_training(model: keras.Model, learning_rate: float, classes: DiagnosisClasses | None = None) -> None:
    if classes is None:
        loss = keras.losses.BinaryCrossentropy()
        metrics = [keras.metrics.AUC(name="auc"), keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        mask = classes.malignant_mask
        metrics = [MalignantAUC(mask, name="auc"), MalignantPrecision(mask, name="precision"), MalignantRecall(mask, name="recall")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


class SaveBest(keras.callbacks.Callback):
    """Keep the classifier's weights at its best val AUC so far. Unlike ModelCheckpoint it saves the
    full classifier while the head trains alone on cached features, and no optimizer state, which
    differs between phases."""

    def __init__(self, classifier: keras.Model, path: Path, best: float):
        super().__init__()
        self.classifier, self.path, self.best = classifier, path, best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        auc = (logs or {}).get("val_auc", math.nan)
        if math.isfinite(auc) and auc > self.best:
            self.best = auc
            with atomic_path(self.path) as partial, partial.open("wb") as file:
                np.savez(file, *self.classifier.get_weights())


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras writes a backup's weights, then its epoch, into the folder in place: a SIGKILL while it writes leaves a
    truncated weights file that every later resume fails to open, so `dvc repro` fails until someone deletes
    models/.train-state. Here each backup is written beside the folder and swapped in with one rename: a resume
    finds one whole epoch's backup, the one before it, or none."""

    def _save_model(self) -> None:
        with atomic_dir(Path(self.backup_dir)) as staging:
            self.model.save_weights(str(staging / Path(self._weights_path).name))
            (staging / Path(self._training_metadata_path).name).write_text(
                json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


def load_best(classifier: keras.Model, path: Path) -> None:
    with np.load(path) as saved:
        classifier.set_weights([saved[f"arr_{index}"] for index in range(len(saved.files))])


class EpochLog(keras.callbacks.Callback):
    """One INFO line per epoch, where the terminal and the Prefect run log both show it (Keras' own
    progress lines are prints that Prefect never captures)."""

    def __init__(self, phase: int, epochs: int):
        super().__init__()
        self.phase, self.epochs, self.started = phase, epochs, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        rate = learning_rate(self.model)
        log.info("phase %d epoch %d/%d: loss %.4f, auc %.4f, val_auc %.4f, learning rate %.3g, %.1f s", self.phase,
                 epoch + 1, self.epochs, logs.get("loss", float("nan")), logs.get("auc", float("nan")),
                 logs.get("val_auc", float("nan")), rate, time.perf_counter() - self.started)


def _callbacks(params: TrainParams, state: TrainState, phase: int, epochs: int, classifier: keras.Model, best: float,
               tensorboard_dir: Path | None, live: Live | None):
    callbacks = [
        EpochLog(phase, epochs),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.5, patience=params.reduce_lr_patience),
        SaveBest(classifier, state.best_model, best),
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=params.early_stopping_patience),
        keras.callbacks.CSVLogger(state.history(phase), append=True),
        *([LiveEpochs(live, phase, state.steps_before(phase))] if live is not None else []),
        # last: an epoch is only marked done once everything above has recorded it
        AtomicBackupAndRestore(state.backup(phase)),
    ]
    if tensorboard_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(tensorboard_dir / f"phase{phase}"))
    return callbacks


def cached_features(classifier: Classifier, shards_dir: Path, parts: Parts, batch_size: int) -> np.ndarray:
    """The frozen backbone's pooled features, computed once instead of once per epoch."""
    return classifier.features.predict(eval_dataset(shards_dir, parts, batch_size), verbose=0).astype(np.float32)


def _targets(shards_dir: Path, parts: Parts, classes: DiagnosisClasses | None) -> np.ndarray:
    targets = split_targets(shards_dir, parts, classes)
    return targets.astype(np.float32) if classes is None else targets


def validation_batch_size(val_count: int, batch_size: int, replicas: int) -> int:
    """Keras builds its metrics on the first validation batch reduced across replicas, which fails unless
    that batch splits evenly: so it is full, or (a val split smaller than a batch) a multiple of the replicas."""
    return min(batch_size, max(replicas, val_count // replicas * replicas))


def _fit_phase(params: TrainParams, classifier: Classifier, shards_dir: Path, state: TrainState, phase: int,
               batch_size: int, tensorboard_dir: Path | None, classes: DiagnosisClasses | None, roles: Roles,
               live: Live | None) -> None:
    """One phase, resumable from its last finished epoch; leaves the best weights in state.best_model."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync  # called inside the strategy's scope
    val_batch = validation_batch_size(sum(class_counts(shards_dir, roles.val).values()), batch_size, replicas)
    uses_cache = phase == 1 and classifier.pretrained and params.cache_features
    epochs, rate = (params.epochs, params.learning_rate) if phase == 1 else (params.fine_tune_epochs, params.fine_tune_learning_rate)
    if done := state.epochs_done(phase):
        log.info("phase %d: resuming after epoch %d of %d (train.resume)", phase, done, epochs)
    if uses_cache:
        log.info("phase 1 on cached features of the unaugmented images: the frozen backbone runs once over train and val")
        model = classifier.head
        train_ds = feature_dataset(
            cached_features(classifier, shards_dir, roles.train, batch_size), _targets(shards_dir, roles.train, classes),
            batch_size, params.seed,
            strata=sampling_strata(split_records(shards_dir, roles.train), params.imbalance, params.balance),
            context=context_vectors(shards_dir, roles.train, params.metadata),
        )
        val_ds = feature_dataset(cached_features(classifier, shards_dir, roles.val, batch_size),
                                 _targets(shards_dir, roles.val, classes), val_batch,
                                 context=context_vectors(shards_dir, roles.val, params.metadata))
    else:
        model = classifier.model
        train_ds = training_dataset(shards_dir, batch_size, params.seed, params.augment, params.imbalance,
                                    params.balance, classes, roles.train, params.metadata)
        val_ds = eval_dataset(shards_dir, roles.val, val_batch, classes, params.metadata)
    compile_for_training(model, rate, classes)
    model.fit(
        train_ds, validation_data=val_ds, epochs=epochs,
        class_weight=class_weights(shards_dir, params.imbalance, classes, roles.train), shuffle=False, verbose=0,
        callbacks=_callbacks(params, state, phase, epochs, classifier.model, state.best_auc(), tensorboard_dir, live),
    )
    if not state.best_model.exists():
        state.clear()  # nothing worth resuming
        raise TrainingDiverged(
            "no epoch reached a finite validation AUC (NaN loss?); lower train.learning_rate in params.yaml"
        )
    load_best(classifier.model, state.best_model)  # the next phase starts from the best epoch, not the last
    state.finish(phase)


def log_context(shards_dir: Path, roles: Roles, fields: list[str]) -> None:
    """What the patient context loses, said once per run: each spelling the vocabulary does not know among the
    images the model reads (encoded as missing, not silently dropped), and how many training images miss each
    field (the model learns those from the missing flags)."""
    if not fields:
        return
    for field, spellings in unmapped_spellings(split_records(shards_dir, [*roles.train, *roles.val]), fields).items():
        for spelling, count in spellings.items():
            log.warning("patient context: %s %r (%d image(s)) is not a spelling the vocabulary knows: encoded as "
                        "missing; map it in skincancer.core.patient_context if it means a known value",
                        field, spelling, count)
    vectors, columns = context_vectors(shards_dir, roles.train, fields), context_columns(fields)
    missing = [f"{field} {int(vectors[:, columns.index(f'{field}_missing')].sum())}" for field in fields]
    log.info("patient context beside the image (train.metadata): of %d training images, missing %s", len(vectors),
             ", ".join(missing))


def log_balance(records: pd.DataFrame, imbalance: str, balance: str) -> None:
    """What train.balance draws, said once per run: the cells drawn equally often and how many training images
    each holds (a small cell's images repeat within an epoch)."""
    if balance == "none":
        return
    columns = strata_columns(imbalance, balance)
    named = records.assign(label=np.asarray(CLASS_NAMES)[records["label"].to_numpy()])[columns].astype(str)
    counts = named.agg("/".join, axis=1).value_counts().sort_index()
    cells = f"{balance}s" if columns == [balance] else f"{'/'.join(columns)} cells"
    drawn = ", ".join(f"{cell} {count}" for cell, count in counts.items())
    log.info("train.balance %s%s: each of %d %s drawn equally often (training images: %s)", balance,
             " with train.imbalance oversample" if "label" in columns else "", len(counts), cells, drawn)


@contextlib.contextmanager
def _state_root(model_path: Path, chief: bool) -> Iterator[Path]:
    """Where a worker keeps its training state: the chief beside the model, so a killed run resumes;
    any other worker in a private temporary folder, gone with it, so only the chief writes models/."""
    if chief:
        yield model_path.parent / ".train-state"
        return
    with tempfile.TemporaryDirectory(prefix="skincancer-worker-") as private:
        yield Path(private) / ".train-state"


@contextlib.contextmanager
def _live_record(live_dir: Path, state: TrainState, chief: bool) -> Iterator[Live | None]:
    """The chief's DVCLive record, begun with the epochs the state kept (none on a fresh start)."""
    if not chief:
        yield None
        return
    with open_live(live_dir) as live:
        replay(live, state.history_frame([1, 2], kept=True))
        yield live


def train(
    params: TrainParams,
    shards_dir: Path,
    model_path: Path,
    live_dir: Path,
    image_size: int | None = None,
    tensorboard_dir: Path | None = None,
    card_path: Path | None = None,
    roles: Roles = Roles(),
) -> pd.DataFrame:
    """Fit on roles.train, keep the best-validation-AUC (on roles.val) model at model_path, log each epoch to the
    DVCLive record live_dir as it ends, and write the model's training card (card_path, default train_card.json
    beside the model). Returns the per-epoch history.

    image_size: what the shards must hold (params' shard.image_size); None accepts the shards' own.
    In a TF_CONFIG cluster every worker calls this with the same arguments; only the chief writes.
    """
    manifest = check_image_size(shards_dir, image_size) if image_size else read_shard_manifest(shards_dir)
    prepared_as = card_input(manifest, Path(shards_dir) / "manifest.json")
    require_both_classes(shards_dir, roles)
    check_devices()
    strategy = pick_strategy(params.distribute)  # before any op: MultiWorkerMirroredStrategy sets up collectives first
    chief, workers = is_chief(strategy), worker_count(strategy)
    keras.utils.clear_session()  # layer names counted from scratch, as in the stage's own process: same file bytes
    make_deterministic(params.seed)
    policy = set_precision(params.precision)
    batch_size = params.batch_size * strategy.num_replicas_in_sync
    log.info("precision %s, global batch %d (%d per replica)", policy, batch_size, params.batch_size)
    if workers > 1:
        log.info("%s of %d workers%s; train.resume is off across workers (a restarted cluster trains from the start)",
                 "chief" if chief else "a worker", workers, ": writes the outputs" if chief else ": writes nothing shared")
        params = params.model_copy(update={"resume": False})
    classes = diagnosis_classes(split_records(shards_dir, roles.train)) if params.head == "diagnosis" else None
    if classes is not None:
        log.info("diagnosis head: %d classes (%s)", len(classes.names), ", ".join(classes.names))
    log_context(shards_dir, roles, params.metadata)
    log_balance(split_records(shards_dir, roles.train), params.imbalance, params.balance)
    with _state_root(model_path, chief) as root:
        state = TrainState.open(root, params, manifest)
        with _live_record(live_dir, state, chief) as live, strategy.scope():
            with seeded_construction(params.seed):
                classifier = build_classifier(params, manifest["image_size"], classes)
            phases = [1, 2] if params.fine_tune_epochs and classifier.pretrained else [1]
            for phase in phases:
                if phase == 2:
                    unfreeze_top(classifier.backbone, params.fine_tune_layers)
                if state.finished(phase):
                    log.info("phase %d finished in an earlier run: resuming after it", phase)
                    load_best(classifier.model, state.best_model)
                    continue
                _fit_phase(params, classifier, shards_dir, state, phase, batch_size, tensorboard_dir if chief else None,
                           classes, roles, live)
        history = state.history_frame(phases)[HISTORY_COLUMNS]
        if chief:
            with atomic_path(model_path) as partial:
                save_model(classifier.serving, partial)
            card = training_card(params, prepared_as, Path(shards_dir) / "manifest.json", split_records(shards_dir, roles.train),
                                 model_path, str(policy), None if classes is None else list(classes.names),
                                 params.metadata)
            write_card(card, card_path or train_card_path_for(model_path))
        state.clear()
    return history

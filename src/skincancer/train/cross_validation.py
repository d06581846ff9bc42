"""train stage with split.folds: one model per fold, each in its own process on a device slot, then their
ensemble as the model.

Fold k's model trains on the other folds and is stopped on fold k (skincancer.train.fold). Slots
(`orchestration.fold_devices`) each run one fold at a time, side by side: a GPU per slot, or the host's
cores. Finished folds wait in models/.fold-state/fold{k}/ under a fingerprint of the train params and the
shards, so a run that was interrupted (or whose outputs `dvc repro` deleted) trains only the unfinished
folds, and a change to the params trains them all. Once every fold is done: models/folds/fold{k}.keras,
the ensemble at models/model.keras, every fold's epochs in the DVCLive record (`fold{k}/` metrics) and the card
listing the members. While a fold trains, its own record is models/.fold-state/fold{k}/dvclive.

One DVC stage rather than a foreach/matrix stage per fold: K is a param, which a foreach list cannot follow,
and `dvc repro` runs stages one at a time where the folds should share the devices side by side. DVC still
records each member as a file of the models/folds out; the fold state gives the per-fold resume.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Literal

import pandas as pd

from skincancer.core.atomic import atomic_dir, atomic_path, atomic_write_text
from skincancer.core.model_card import ensemble_card, member, write_card
from skincancer.core.params import TrainParams
from skincancer.core.paths import FOLDS_DIR, MODEL, fold_part
from skincancer.train import fold as fold_process
from skincancer.train.data import Roles, check_image_size, read_shard_manifest, split_records
from skincancer.train.ensemble import save_ensemble
from skincancer.train.live import open_live, read_history, replay
from skincancer.train.train import require_both_classes
from skincancer.train.train_state import open_guarded

log = logging.getLogger(__name__)

Slot = int | Literal["cpu"]  # a GPU index as this process sees them, or the host's cores
FOLD_STATE = ".fold-state"
TAIL_LINES = 20


class FoldFailed(RuntimeError):
    """A fold's process ended with an error; the message names the fold and ends with its last lines."""


class NotFoldShards(ValueError):
    """train_folds was given shards written without split.folds."""


def fold_slots(fold_devices: Literal["auto"] | Sequence[Slot]) -> list[Slot]:
    """orchestration.fold_devices as slots: `auto` is one slot per GPU TensorFlow sees, or one on the CPU."""
    if fold_devices != "auto":
        return list(fold_devices)
    import tensorflow as tf

    return list(range(len(tf.config.list_physical_devices("GPU")))) or ["cpu"]


def slot_devices(slot: Slot) -> str:
    """CUDA_VISIBLE_DEVICES for a fold on `slot`: none for the CPU; GPU i counted among the GPUs this process
    may use (its own CUDA_VISIBLE_DEVICES, where set, picks and orders them)."""
    if slot == "cpu":
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(slot)
    ids = [device for device in visible.split(",") if device.strip()]
    if slot >= len(ids):
        raise ValueError(f"orchestration.fold_devices names GPU {slot}, but CUDA_VISIBLE_DEVICES={visible!r} leaves "
                         f"{len(ids)} GPU(s): list indexes below {len(ids)}, cpu, or write auto")
    return ids[slot]


def slot_name(index: int, slot: Slot) -> str:
    return f"slot {index} ({'cpu' if slot == 'cpu' else f'GPU {slot}'})"


@dataclass(frozen=True)
class FoldState:
    """models/.fold-state: a folder per fold, as its process leaves it, kept across interrupted runs."""

    root: Path

    def folder(self, fold: int) -> Path:
        return self.root / fold_part(fold)

    def model(self, fold: int) -> Path:
        return self.folder(fold) / fold_process.MODEL_FILE

    def live(self, fold: int) -> Path:
        return self.folder(fold) / fold_process.LIVE_DIR

    def card(self, fold: int) -> Path:
        return self.folder(fold) / fold_process.CARD_FILE

    def finished(self, fold: int) -> bool:
        """The fold's process wrote all its outputs (the card last)."""
        return self.live(fold).is_dir() and all(path.is_file() for path in (self.model(fold), self.card(fold)))

    def best_val_auc(self, fold: int) -> float:
        return float(read_history(self.live(fold))["val_auc"].max())


def open_fold_state(models_dir: Path, params: TrainParams, manifest: dict) -> FoldState:
    """The fold state of an earlier run of the same train params and shards (train.resume), else an empty one."""
    return FoldState(open_guarded(Path(models_dir) / FOLD_STATE, params, manifest))


@dataclass(frozen=True)
class FoldJob:
    """What every fold's process is given."""

    state: FoldState
    folds: int
    shards_dir: Path
    image_size: int | None
    tensorboard_dir: Path | None

    def command(self, fold: int) -> list[str]:
        command = [sys.executable, "-m", fold_process.__name__, str(self.state.folder(fold).absolute()), str(fold),
                   "--folds", str(self.folds), "--shards", str(Path(self.shards_dir).absolute())]
        if self.image_size:
            command += ["--image-size", str(self.image_size)]
        if self.tensorboard_dir is not None:
            command += ["--tensorboard", str((self.tensorboard_dir / fold_part(fold)).absolute())]
        return command


def _relay(fold: int, line: str) -> None:
    """A fold process's log line in this process's log at the level the fold logged it; other output (TensorFlow's
    C++ banners, a traceback, which FoldFailed quotes) at DEBUG."""
    name, _, message = line.partition(" ")
    level = logging.getLevelNamesMapping().get(name)
    if level is None:
        level, message = logging.DEBUG, line
    log.log(level, "fold %d: %s", fold, message)


def fold_environment(slot: Slot) -> dict[str, str]:
    """A fold process's environment: the slot's devices, and this process's own skincancer first on the path (in a
    DVC experiment's copy of the project, the copy's code rather than the installed workspace's)."""
    library = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")]))
    return {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "CUDA_VISIBLE_DEVICES": slot_devices(slot), "PYTHONPATH": path}


def run_fold(job: FoldJob, fold: int, slot: Slot, slot_label: str, running: set[subprocess.Popen]) -> None:
    """Fold `fold` trained by its own process on `slot`, its output relayed line by line; FoldFailed if it fails."""
    environment = fold_environment(slot)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.perf_counter()
    with subprocess.Popen(job.command(fold), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", env=environment) as process:
        running.add(process)
        log.info("fold %d: started on %s, process %d", fold, slot_label, process.pid)
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            _relay(fold, tail[-1])
    running.discard(process)  # ended: leaving the `with` waited for it
    if process.returncode != 0:
        raise FoldFailed(f"fold {fold} failed on {slot_label} (exit code {process.returncode}); the folds that finished "
                         f"are kept in {job.state.root} for the next run. Its last lines:\n" + "\n".join(tail))
    log.info("fold %d: done on %s in %.1f s, best val AUC %.4f", fold, slot_label, time.perf_counter() - started,
             job.state.best_val_auc(fold))


def run_on_slots(folds: Sequence[int], slots: Sequence[Slot],
                 run: Callable[[int, Slot, str, set[subprocess.Popen]], None]) -> None:
    """Each fold run once, at most one at a time per slot, the slots side by side (a thread each, pulling folds
    from one queue). After a failure (FoldFailed, or a slot that cannot run: an unknown GPU) no fold starts; the
    running ones finish (their work is kept), then the first failure is raised. Interrupted (SIGTERM, Ctrl-C):
    the running folds' processes are stopped."""
    queue: Queue[int] = Queue()
    for fold in folds:
        queue.put(fold)
    failures: list[Exception] = []
    running: set[subprocess.Popen] = set()

    def work(index: int, slot: Slot) -> None:
        while not failures:
            try:
                fold = queue.get_nowait()
            except Empty:
                return
            try:
                run(fold, slot, slot_name(index, slot), running)
            except Exception as failure:  # raised in this thread, reported by the caller's
                failures.append(failure)

    # each thread in a copy of this one's context: a Prefect run's logger context reaches the relayed lines
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, index, slot),
                                name=f"fold-{slot_name(index, slot)}") for index, slot in enumerate(slots)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        for process in list(running):
            process.terminate()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def fold_count(manifest: dict, shards_dir: Path) -> int:
    if "folds" not in manifest:
        raise NotFoldShards(f"{Path(shards_dir) / 'manifest.json'} holds no cross-validation folds (split.folds is "
                            "unset): train one model with skincancer.train.train.train, or set split.folds and "
                            "rerun `dvc repro`")
    return int(manifest["folds"])


def train_folds(
    params: TrainParams,
    shards_dir: Path,
    models_dir: Path,
    live_dir: Path,
    card_path: Path,
    image_size: int | None,
    slots: Sequence[Slot],
    tensorboard_dir: Path | None = None,
) -> pd.DataFrame:
    """Train every unfinished fold on `slots` (fold_slots), then write models_dir/folds/fold{k}.keras, the
    ensemble models_dir/model.keras, every fold's epochs in the DVCLive record live_dir and the ensemble's card.
    Returns the history (first column `fold`)."""
    manifest = check_image_size(shards_dir, image_size) if image_size else read_shard_manifest(shards_dir)
    folds = fold_count(manifest, shards_dir)
    for fold in range(folds):  # every fold's parts checked before any process starts
        require_both_classes(shards_dir, Roles.for_fold(fold, folds))
    state = open_fold_state(models_dir, params, manifest)
    todo = [fold for fold in range(folds) if not state.finished(fold)]
    for fold in sorted(set(range(folds)) - set(todo)):
        log.info("fold %d: resumed: finished in an earlier run of these params and shards (%s), best val AUC %.4f",
                 fold, state.folder(fold), state.best_val_auc(fold))
    for fold in todo:
        state.folder(fold).mkdir(exist_ok=True)
        atomic_write_text(state.folder(fold) / fold_process.PARAMS_FILE, params.model_dump_json())
    job = FoldJob(state, folds, shards_dir, image_size, tensorboard_dir)
    run_on_slots(todo, slots, functools.partial(run_fold, job))
    history = write_outputs(state, folds, Path(shards_dir), Path(models_dir), Path(live_dir), Path(card_path))
    shutil.rmtree(state.root)
    return history


def write_outputs(state: FoldState, folds: int, shards_dir: Path, models_dir: Path, live_dir: Path,
                  card_path: Path) -> pd.DataFrame:
    """The finished folds as the stage's outputs: members (with their training times), ensemble, record, card."""
    members_dir = models_dir / FOLDS_DIR.name
    with atomic_dir(members_dir) as partial:
        for fold in range(folds):
            shutil.copy2(state.model(fold), partial / f"{fold_part(fold)}.keras")
    member_paths = [members_dir / f"{fold_part(fold)}.keras" for fold in range(folds)]
    with atomic_path(models_dir / MODEL.name) as partial:
        save_ensemble(member_paths, partial)
    with open_live(live_dir) as live:
        for fold in range(folds):
            replay(live, read_history(state.live(fold)), prefix=f"{fold_part(fold)}/")
    history = read_history(live_dir)
    members = [member(fold, path, card_path.parent, Roles.for_fold(fold, folds).train, fold_part(fold))
               for fold, path in enumerate(member_paths)]
    member_cards = [json.loads(state.card(fold).read_text()) for fold in range(folds)]
    records = split_records(shards_dir, [fold_part(fold) for fold in range(folds)])
    write_card(ensemble_card(member_cards, models_dir / MODEL.name, records, members), card_path)
    return history

"""Training's per-epoch record, written through DVCLive into models/dvclive/ while training runs: what
`dvc plots`, `dvc exp show` and DVC's VS Code extension read (dvc.yaml's top-level metrics and plots).

One step per epoch, numbered on across the phases, holding the epoch's Keras logs, its phase and learning
rate. A run starts its record afresh and first replays the epochs its training state kept (train_state), so
a resumed run neither repeats nor skips a step, however the last one ended. DVCLive writes no time stamps
(log_metric's default), so an identical retrain writes identical files and dvc.lock stays as it was.
A cross-validated run's record holds each fold's epochs under `fold{k}/`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import pandas as pd

if TYPE_CHECKING:
    from dvclive import Live

HISTORY_COLUMNS = [
    "epoch", "phase", "loss", "auc", "precision", "recall",
    "val_loss", "val_auc", "val_precision", "val_recall", "learning_rate",
]
LOGGED = HISTORY_COLUMNS[1:]  # a step's metrics: the epoch is the step itself
_FOLD = re.compile(r"fold(\d+)/(.+)")


class LiveNeedsACommit(RuntimeError):
    """DVCLive cannot start in a git repository without a commit."""


def open_live(live_dir: Path) -> Live:
    """An empty record at live_dir. dvc.yaml declares its metrics and plots, so DVCLive writes no dvc.yaml of its
    own, makes no experiment of its own (`dvc exp run` makes it) and no report (evaluate's report draws it)."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    except SCMError as error:
        raise LiveNeedsACommit(f"DVCLive cannot log training to {live_dir}: {error}; commit once (`git add -A && "
                               "git commit`) or run outside git") from error


def log_epoch(live: Live, step: int, values: Mapping[str, float], prefix: str = "") -> None:
    live.step = step
    for name in LOGGED:
        if name in values:
            live.log_metric(f"{prefix}{name}", values[name])
    live.next_step()


def replay(live: Live, history: pd.DataFrame, prefix: str = "") -> None:
    """Epochs recorded earlier (a resumed run's kept epochs, or a finished fold's) as steps of `live`."""
    for row in history.to_dict("records"):
        log_epoch(live, int(row["epoch"]), row, prefix)


def learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class LiveEpochs(keras.callbacks.Callback):
    """Each finished epoch of a phase as the next DVCLive step: steps go on from the phases before it."""

    def __init__(self, live: Live, phase: int, first_step: int):
        super().__init__()
        self.live, self.phase, self.first_step = live, phase, first_step

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {"learning_rate": learning_rate(self.model), **(logs or {}), "phase": self.phase}
        log_epoch(self.live, self.first_step + epoch, values)


def read_history(live_dir: Path) -> pd.DataFrame:
    """A record as a table: one row per step (`epoch`), a column per metric; a cross-validated record's rows are
    per fold and step, with a first column `fold`."""
    series = {}
    for path in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        name = path.relative_to(Path(live_dir) / "plots" / "metrics").with_suffix("").as_posix()
        fold, metric = (int(m[1]), m[2]) if (m := _FOLD.fullmatch(name)) else (None, name)
        table = pd.read_csv(path, sep="\t")
        series[(fold, metric)] = table.set_index("step")[path.stem]
    folds = sorted({fold for fold, _ in series}, key=lambda fold: -1 if fold is None else fold)
    frames = []
    for fold in folds:
        frame = pd.DataFrame({metric: values for (at, metric), values in series.items() if at == fold})
        frame = frame.rename_axis("epoch").reset_index()
        frames.append(frame if fold is None else frame.assign(fold=fold))
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY_COLUMNS)
    columns = [column for column in HISTORY_COLUMNS if column in history]
    return history[["fold", *columns]] if "fold" in history else history[columns]

"""models/.train-state/: what an interrupted training needs to continue where it stopped.

Per phase: Keras' BackupAndRestore folder (weights, optimizer and epoch after every finished epoch),
the per-epoch CSV log, and a marker once the phase is complete; across phases the best model so far.
A fingerprint of the params and the shards guards it: a state left by other inputs is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skincancer.core.params import TrainParams

# settings that do not change what is learnt: changing them keeps an interrupted run resumable
_NOT_FINGERPRINTED = {"resume", "tensorboard"}


def fingerprint(params: TrainParams, shards_manifest: dict) -> str:
    inputs = {"train": params.model_dump(mode="json", exclude=_NOT_FINGERPRINTED), "shards": shards_manifest}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def open_guarded(root: Path, params: TrainParams, shards_manifest: dict) -> Path:
    """`root` as left by an earlier run when train.resume is on and that run had the same inputs; else emptied.
    Either way stamped with these inputs' fingerprint."""
    root = Path(root)
    key = fingerprint(params, shards_manifest)
    stamp = root / "fingerprint"
    if not (params.resume and stamp.exists() and stamp.read_text() == key):
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return root


@dataclass(frozen=True)
class TrainState:
    root: Path

    @classmethod
    def open(cls, root: Path, params: TrainParams, shards_manifest: dict) -> TrainState:
        """The state to continue from when train.resume is on and it was left by the same inputs; else a fresh one."""
        return cls(open_guarded(root, params, shards_manifest))

    @property
    def best_model(self) -> Path:
        return self.root / "best.npz"

    def history(self, phase: int) -> Path:
        return self.root / f"phase{phase}.csv"

    def backup(self, phase: int) -> Path:
        return self.root / f"phase{phase}-backup"

    def epochs_done(self, phase: int) -> int:
        """Epochs of the phase BackupAndRestore has saved (its own metadata file)."""
        metadata = self.backup(phase) / "training_metadata.json"
        return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0

    def finished(self, phase: int) -> bool:
        return (self.root / f"phase{phase}.done").exists()

    def finish(self, phase: int) -> None:
        (self.root / f"phase{phase}.done").touch()

    def _phase_log(self, phase: int) -> pd.DataFrame:
        """An epoch logged twice (killed between the log and the backup, then redone) counts once, as redone."""
        if not self.history(phase).exists() or not self.history(phase).stat().st_size:
            return pd.DataFrame()
        return pd.read_csv(self.history(phase)).drop_duplicates("epoch", keep="last").reset_index(drop=True)

    def best_auc(self) -> float:
        """Best validation AUC recorded so far in any phase: the bar a new checkpoint has to beat."""
        logs = [self._phase_log(phase) for phase in (1, 2)]
        values = [auc for log in logs if "val_auc" in log for auc in log["val_auc"] if math.isfinite(auc)]
        return max(values, default=-math.inf) if self.best_model.exists() else -math.inf

    def history_frame(self, phases: list[int], kept: bool = False) -> pd.DataFrame:
        """All phases' epochs, numbered on across phases. kept: only those a resume does not redo (every epoch
        of a finished phase, the unfinished one's up to its last backup)."""
        frames, offset = [], 0
        for phase in phases:
            log = self._phase_log(phase)
            if log.empty:
                continue
            if kept and not self.finished(phase):
                log = log[log["epoch"] < self.epochs_done(phase)].copy()
            log["epoch"] = log["epoch"] + offset
            log.insert(1, "phase", phase)
            frames.append(log)
            offset += len(log)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["epoch", "phase"])

    def steps_before(self, phase: int) -> int:
        """Epochs of the phases before `phase`: where its epochs' numbering goes on from."""
        return sum(len(self._phase_log(earlier)) for earlier in range(1, phase))

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

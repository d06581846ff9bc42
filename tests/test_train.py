"""train: deterministic on CPU, keeps the best-val-AUC model, two phases, feature cache, imbalance,
callbacks, resume after a kill, and MirroredStrategy over two logical CPU devices."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import folder_bytes
from project_copy import ROOT

from skincancer.core.params import AugmentParams, ShardParams, TrainParams
from skincancer.train.data import ShardSpecMismatch, eval_dataset
from skincancer.train.hardware import seeded_construction
from skincancer.train.live import HISTORY_COLUMNS, read_history
from skincancer.train.models import build_backbone
from skincancer.train.train import SingleClassSplit, class_weights, train

FAST = TrainParams(epochs=3, batch_size=16, early_stopping_patience=3, augment=AugmentParams(rotation=0.1))
NO_AUGMENT = AugmentParams(flip=False, rotation=0, zoom=0, color=0)


def val_predictions(model_path: Path, shards: Path) -> np.ndarray:
    images = np.concatenate([x for x, _ in eval_dataset(shards, "val", 64)])
    return keras.saving.load_model(model_path).predict(images, verbose=0)


def pretrained_weights(tmp_path: Path) -> str:
    """A small_cnn backbone's weights file standing in for downloaded ImageNet weights (offline)."""
    path = tmp_path / "backbone.weights.h5"
    with seeded_construction(0):  # the same file whichever tests ran before
        build_backbone("small_cnn", 32, None).save_weights(path)
    return str(path)


def test_training_is_deterministic_and_writes_outputs(tiny_shards, tmp_path):
    first = train(FAST, tiny_shards, tmp_path / "a/model.keras", tmp_path / "a/dvclive", image_size=32)
    second = train(FAST, tiny_shards, tmp_path / "b/model.keras", tmp_path / "b/dvclive", image_size=32)
    pd.testing.assert_frame_equal(first, second)
    assert folder_bytes(tmp_path / "a/dvclive") == folder_bytes(tmp_path / "b/dvclive")  # no time stamps: one hash
    pd.testing.assert_frame_equal(read_history(tmp_path / "a/dvclive"), first, check_dtype=False)
    assert (tmp_path / "a/model.keras").read_bytes() == (tmp_path / "b/model.keras").read_bytes()  # DVC: one hash
    assert (tmp_path / "a/train_card.json").read_bytes() == (tmp_path / "b/train_card.json").read_bytes()
    assert list(first.columns) == HISTORY_COLUMNS  # loss, AUC, precision, recall (+ val_), learning rate
    assert first["epoch"].tolist() == [0, 1, 2] and first["learning_rate"].iloc[0] == pytest.approx(FAST.learning_rate)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dvclive", "model.keras", "train_card.json"]  # no state left
    assert "context" not in json.loads((tmp_path / "a/train_card.json").read_text())  # no train.metadata: no context
    np.testing.assert_array_equal(val_predictions(tmp_path / "a/model.keras", tiny_shards),
                                  val_predictions(tmp_path / "b/model.keras", tiny_shards))


def test_saved_model_is_the_best_validation_epoch(tiny_shards, tmp_path):
    history = train(FAST, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive")
    model = keras.saving.load_model(tmp_path / "model.keras")
    model.compile(metrics=[keras.metrics.AUC(name="auc")])
    auc = model.evaluate(eval_dataset(tiny_shards, "val", 64), return_dict=True, verbose=0)["auc"]
    assert auc == pytest.approx(history["val_auc"].max(), abs=1e-3)
    assert not any("Random" in type(layer).__name__ for layer in model.layers)  # augmentation lives in tf.data


def test_reduce_lr_on_plateau_lowers_the_rate(tiny_shards, tmp_path):
    params = FAST.model_copy(update={"epochs": 6, "reduce_lr_patience": 1, "early_stopping_patience": 6,
                                     "learning_rate": 0.05})
    history = train(params, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive")
    assert history["learning_rate"].is_monotonic_decreasing and history["learning_rate"].min() < 0.05


def test_fine_tuning_keeps_batchnorm_statistics_and_follows_phase_one(tiny_shards, tmp_path):
    weights = pretrained_weights(tmp_path)
    params = FAST.model_copy(update={"weights": weights, "epochs": 2, "fine_tune_epochs": 2, "fine_tune_layers": 6,
                                     "fine_tune_learning_rate": 1e-3, "seed": 3})
    history = train(params, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive")
    assert history["phase"].tolist() == [1, 1, 2, 2] and history["epoch"].tolist() == [0, 1, 2, 3]
    # DVCLive's record: a step per epoch across both phases, with the phase and learning rate
    pd.testing.assert_frame_equal(read_history(tmp_path / "dvclive"), history, check_dtype=False)
    # the saved model is the best epoch's; these params (deterministic on CPU) make it a fine-tuned one
    assert history.loc[history["val_auc"].idxmax(), "phase"] == 2, history
    assert history["learning_rate"].iloc[2] == pytest.approx(params.fine_tune_learning_rate)
    backbone = keras.saving.load_model(tmp_path / "model.keras").get_layer("small_cnn")
    original = build_backbone("small_cnn", 32, weights)
    for trained, source in zip(backbone.layers, original.layers):
        if isinstance(trained, keras.layers.BatchNormalization):  # frozen, in inference mode: all untouched
            for a, b in zip(trained.weights, source.weights, strict=True):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    top_conv = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    source_conv = [layer for layer in original.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    assert not np.array_equal(top_conv.kernel.numpy(), source_conv.kernel.numpy())  # the top was fine-tuned
    first_conv = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)][0]
    np.testing.assert_array_equal(first_conv.kernel.numpy(), original.layers[1].kernel.numpy())  # below: frozen


def test_frozen_phase_trains_the_head_on_cached_features_of_unaugmented_images(tiny_shards, tmp_path, caplog):
    """Linear probe, then fine-tuning (LP-FT): augmentation applies to the phase that trains the backbone."""
    params = FAST.model_copy(update={"weights": pretrained_weights(tmp_path)})
    assert params.augment.active
    with caplog.at_level(logging.INFO, logger="skincancer"):
        history = train(params, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive")
    assert "cached features" in caplog.text
    model = keras.saving.load_model(tmp_path / "model.keras")
    model.compile(loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    auc = model.evaluate(eval_dataset(tiny_shards, "val", 64), return_dict=True, verbose=0)["auc"]
    assert auc == pytest.approx(history["val_auc"].max(), abs=1e-3)  # the head trained on the cache is in the model
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skincancer"):
        train(params.model_copy(update={"cache_features": False}), tiny_shards, tmp_path / "m2.keras", tmp_path / "h2.csv")
    assert "cached features" not in caplog.text  # the backbone runs on augmented images every epoch


def test_imbalance_policies(tiny_shards, tmp_path):
    counts = json.loads((tiny_shards / "manifest.json").read_text())["splits"]["train"]
    weights = class_weights(tiny_shards, "class_weight")
    assert weights[0] * counts["benign"] == pytest.approx(weights[1] * counts["malignant"])
    assert class_weights(tiny_shards, "oversample") is None and class_weights(tiny_shards, "none") is None
    history = train(FAST.model_copy(update={"imbalance": "oversample", "epochs": 1}), tiny_shards,
                    tmp_path / "model.keras", tmp_path / "dvclive")
    assert len(history) == 1 and np.isfinite(history["loss"]).all()


def test_shards_of_another_image_size_are_refused_naming_both(tiny_shards, tmp_path):
    with pytest.raises(ShardSpecMismatch, match=r"32 px.*expects 64 px"):
        train(FAST, tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive", image_size=64)


def test_single_class_training_split_is_refused_before_any_epoch(tiny_shards, tmp_path):
    from skincancer.shard.shard import write_shards

    split_root = tiny_shards.parent / "split"
    manifest = pd.read_parquet(split_root / "manifest.parquet")
    benign_train = manifest[(manifest["split"] != "train") | (manifest["label"] == 0)]
    shards = tmp_path / "shards"
    write_shards(benign_train, split_root, shards, ShardParams(image_size=32, workers=1))
    with pytest.raises(SingleClassSplit, match=r"train split has \d+ benign and 0 malignant"):
        train(FAST, shards, tmp_path / "model.keras", tmp_path / "dvclive")
    assert not (tmp_path / "model.keras").exists()


def test_tensorboard_logs_are_written_when_asked(tiny_shards, tmp_path):
    train(FAST.model_copy(update={"epochs": 1}), tiny_shards, tmp_path / "model.keras", tmp_path / "dvclive",
          tensorboard_dir=tmp_path / "logs")
    assert list((tmp_path / "logs/phase1").rglob("events.out.tfevents.*"))


TRAIN_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from pathlib import Path
from skincancer.core.params import TrainParams
from skincancer.train.train import train
params = TrainParams.model_validate_json(sys.argv[1])
out = Path(sys.argv[3])
train(params, Path(sys.argv[2]), out / "model.keras", out / "dvclive")
"""


def start_training(params: TrainParams, shards: Path, out: Path, *prelude: str, env: dict | None = None) -> subprocess.Popen:
    script = "\n".join(prelude) + TRAIN_SCRIPT
    return subprocess.Popen(
        [sys.executable, "-c", script, params.model_dump_json(), str(shards), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


KILLED_BETWEEN_RECORD_AND_BACKUP = """
import os, signal
from skincancer.train import train as training
class Killed(training.AtomicBackupAndRestore):  # SIGKILL once phase 2's second epoch is recorded, before its backup
    def on_epoch_end(self, epoch, logs=None):
        if str(self.backup_dir).endswith("phase2-backup") and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        super().on_epoch_end(epoch, logs)
training.AtomicBackupAndRestore = Killed
"""


def test_a_killed_training_resumes_from_its_last_finished_epoch_and_its_record_goes_on_step_by_step(
        tiny_shards, tmp_path):
    """Killed in the worst place for the record: the epoch is in DVCLive's files but not in the backup, so the
    rerun trains it again. The record then holds every step once, in both phases, as an unbroken run's would."""
    params = FAST.model_copy(update={"weights": pretrained_weights(tmp_path), "epochs": 3, "fine_tune_epochs": 3,
                                     "fine_tune_layers": 6, "early_stopping_patience": 8})
    run = start_training(params, tiny_shards, tmp_path, KILLED_BETWEEN_RECORD_AND_BACKUP)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == -signal.SIGKILL, output[-3000:]
    before = read_history(tmp_path / "dvclive")
    assert before["epoch"].tolist() == [0, 1, 2, 3, 4] and not (tmp_path / "model.keras").exists()

    rerun = start_training(params, tiny_shards, tmp_path)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert "phase 1 finished in an earlier run" in output and "phase 2: resuming after epoch 1 of 3" in output
    after = read_history(tmp_path / "dvclive")
    assert after["epoch"].tolist() == list(range(6)) and after["phase"].tolist() == [1, 1, 1, 2, 2, 2]
    pd.testing.assert_frame_equal(after.iloc[:4], before.iloc[:4])  # the kept epochs, as they were logged
    summary = json.loads((tmp_path / "dvclive/metrics.json").read_text())
    assert summary["step"] == 5 and summary["phase"] == 2
    assert not (tmp_path / ".train-state").exists()


def test_a_state_left_by_other_params_is_not_resumed(tiny_shards, tmp_path, caplog):
    from skincancer.train.train_state import TrainState, fingerprint

    state = TrainState.open(tmp_path / ".train-state", FAST, {"shards": 1})
    (state.backup(1)).mkdir()
    (state.backup(1) / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    other = FAST.model_copy(update={"seed": 1})
    assert fingerprint(other, {"shards": 1}) != fingerprint(FAST, {"shards": 1})
    assert fingerprint(FAST.model_copy(update={"tensorboard": True}), {"shards": 1}) == fingerprint(FAST, {"shards": 1})
    assert TrainState.open(tmp_path / ".train-state", other, {"shards": 1}).epochs_done(1) == 0
    assert TrainState.open(tmp_path / ".train-state", FAST.model_copy(update={"resume": False}), {"shards": 1}).epochs_done(1) == 0


TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


PER_REPLICA = FAST.model_copy(update={"epochs": 2, "batch_size": 8})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def data_parallel_runs(tiny_shards, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The same global batch 16 in two halves, side by side: one process with MirroredStrategy over two logical
    CPUs, and two worker processes on 127.0.0.1 described by TF_CONFIG (MultiWorkerMirroredStrategy). Each
    worker gets its own output folder and temporary folder."""
    root = tmp_path_factory.mktemp("data-parallel")
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    started = {"mirrored": start_training(PER_REPLICA.model_copy(update={"distribute": "mirrored"}), tiny_shards,
                                          root / "mirrored", TWO_CPUS)}
    for index in range(2):
        (root / f"tmp{index}").mkdir()
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        started[f"worker{index}"] = start_training(
            PER_REPLICA.model_copy(update={"distribute": "auto"}), tiny_shards, root / f"worker{index}",
            env={"TF_CONFIG": json.dumps(config), "TMPDIR": str(root / f"tmp{index}")})
    runs = {}
    for name, process in started.items():
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, (name, output[-3000:])
        runs[name] = (root / name, output)
    return runs


def test_mirrored_strategy_over_two_logical_cpus_scales_the_batch(data_parallel_runs, tiny_shards):
    out, output = data_parallel_runs["mirrored"]
    assert "MirroredStrategy over 2 replica(s)" in output and "global batch 16 (8 per replica)" in output
    history = read_history(out / "dvclive")
    assert len(history) == 2 and np.isfinite(history["val_auc"]).all()
    predictions = val_predictions(out / "model.keras", tiny_shards)
    assert ((predictions > 0) & (predictions < 1)).all()


MULTI_WORKER_TOLERANCE = 1e-5  # P(malignant): the same sums over the same replicas, across processes instead of devices


def test_two_workers_train_what_one_process_over_two_replicas_does_and_only_the_chief_writes(
        data_parallel_runs, tiny_shards):
    """The chief writes the model and history, the other worker nothing, and leaves no temporary state; the
    chief's result is the one-process run's."""
    (chief, chief_output), (other, other_output) = data_parallel_runs["worker0"], data_parallel_runs["worker1"]
    for output in (chief_output, other_output):
        assert "train.distribute auto: KerasMultiWorkerMirrored over 2 replica(s)" in output
    assert "chief of 2 workers: writes the outputs" in chief_output and "writes nothing shared" in other_output
    assert sorted(path.name for path in chief.iterdir()) == ["dvclive", "model.keras", "train_card.json"]
    assert not other.exists()
    assert not list(chief.parent.glob("tmp*/skincancer-worker-*"))  # the other worker's private state went with it

    mirrored, _ = data_parallel_runs["mirrored"]
    pd.testing.assert_frame_equal(read_history(chief / "dvclive"), read_history(mirrored / "dvclive"),
                                  atol=MULTI_WORKER_TOLERANCE)
    np.testing.assert_allclose(val_predictions(chief / "model.keras", tiny_shards),
                               val_predictions(mirrored / "model.keras", tiny_shards), atol=MULTI_WORKER_TOLERANCE)


def test_the_model_file_carries_no_save_time_or_memory_address(tmp_path):
    """Keras writes the save date, the weights entry's time and shared objects' id()s; none reach the file."""
    import json
    import zipfile

    from skincancer.train.model_file import FIXED_TIME, save_model

    with seeded_construction(0):
        model = build_backbone("small_cnn", 32, None)
    save_model(model, tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert {info.date_time for info in archive.infolist()} == {FIXED_TIME}
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
        shared = re.findall(r'"shared_object_id": (\d+)', archive.read("config.json").decode())
    assert shared and max(map(int, shared)) == len(set(shared))  # numbered 1..n, not by address
    loaded = keras.saving.load_model(tmp_path / "a.keras")
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])

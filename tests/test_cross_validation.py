"""Cross-validation: one model per fold, each in its own process on a device slot, trained on the other folds
and stopped on its own; slots side by side; a failed or killed run resumes at the unfinished folds; the
ensemble of the members is the model, and its card refuses a member that is not the one it lists."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from project_copy import ROOT

from skincancer.core.model_card import CardError, check_members, file_sha256, read_card
from skincancer.core.params import AugmentParams, EvaluateParams, ShardParams, SplitParams, TrainParams
from skincancer.core.patient_context import context_encoding
from skincancer.evaluate.evaluate import evaluate
from skincancer.evaluate.inference import load_for_inference, predict_images
from skincancer.ops.lifetime import alive
from skincancer.shard.shard import write_shards
from skincancer.split.split import with_folds
from skincancer.train.cross_validation import FoldFailed, fold_slots, open_fold_state, slot_devices, train_folds
from skincancer.train.data import eval_dataset, read_shard_manifest
from skincancer.train.live import HISTORY_COLUMNS, read_history
from skincancer.train.train import SingleClassSplit

FOLDS = 3
PARAMS = TrainParams(epochs=1, batch_size=8, early_stopping_patience=1,
                     augment=AugmentParams(flip=False, rotation=0, zoom=0, color=0))
OUTPUTS = ("folds/fold0.keras", "folds/fold1.keras", "folds/fold2.keras", "model.keras", "dvclive/metrics.json",
           "dvclive/plots/metrics/fold0/val_auc.tsv", "dvclive/plots/metrics/fold2/loss.tsv", "train_card.json")


def folded(split_root: Path) -> pd.DataFrame:
    """The split stage's K folds (beside its test split) of a sample's 80/10/10 split manifest."""
    return with_folds(pd.read_parquet(split_root / "manifest.parquet"), SplitParams(folds=FOLDS))


def write_fold_shards(split_root: Path, out: Path, manifest: pd.DataFrame | None = None) -> Path:
    """Fold shards at 32 px, of `manifest` (default: the folds of the split manifest under split_root)."""
    write_shards(folded(split_root) if manifest is None else manifest, split_root, out,
                 ShardParams(image_size=32, workers=1))
    return out


@pytest.fixture(scope="module")
def fold_shards(tiny_shards, tmp_path_factory) -> Path:
    return write_fold_shards(tiny_shards.parent / "split", tmp_path_factory.mktemp("fold-shards") / "shards")


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorded() -> Iterator[list[logging.LogRecord]]:
    """The skincancer log records (with their times) of what runs inside."""
    logger, recorder = logging.getLogger("skincancer"), Recorder()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(recorder)
    try:
        yield recorder.records
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


def run_folds(models: Path, shards: Path, slots: list, params: TrainParams = PARAMS) -> list[logging.LogRecord]:
    with recorded() as records:
        train_folds(params, shards, models, models / "dvclive", models / "train_card.json", 32, slots)
    return records


def messages(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records]


def processes(records: list[logging.LogRecord]) -> dict[int, dict]:
    """Per fold: the process the parent started (pid, when), the one that reported itself, and when it was done."""
    found: dict[int, dict] = {}
    for record in records:
        message = record.getMessage()
        if started := re.match(r"fold (\d+): started on (.+), process (\d+)$", message):
            found.setdefault(int(started[1]), {}).update(slot=started[2], pid=int(started[3]), start=record.created)
        elif child := re.match(r"fold (\d+): process (\d+), CUDA_VISIBLE_DEVICES=(.*?): training on (\S+), "
                               r"stopping on (\S+)$", message):
            found[int(child[1])].update(own_pid=int(child[2]), devices=child[3], trained_on=child[4],
                                        stopped_on=child[5])
        elif done := re.match(r"fold (\d+): done on .*, best val AUC", message):
            found[int(done[1])]["end"] = record.created
    return found


@pytest.fixture(scope="module")
def two_slots(fold_shards, tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """One run on two CPU slots: the models folder and the log."""
    models = tmp_path_factory.mktemp("two-slots") / "models"
    return models, run_folds(models, fold_shards, ["cpu", "cpu"])


def test_each_fold_model_trains_on_the_other_folds_and_is_stopped_on_its_own(two_slots, fold_shards):
    models, records = two_slots
    card = json.loads((models / "train_card.json").read_text())
    assert card["folds"] == FOLDS and card["model"]["sha256"] == file_sha256(models / "model.keras")
    for fold, entry in enumerate(card["members"]):
        others = [f"fold{other}" for other in range(FOLDS) if other != fold]
        assert entry == {"fold": fold, "file": f"folds/fold{fold}.keras", "trained_on": others,
                         "stopped_on": f"fold{fold}", "sha256": file_sha256(models / entry["file"])}
        reported = processes(records)[fold]
        assert (reported["trained_on"], reported["stopped_on"]) == ("+".join(others), f"fold{fold}")
    history = read_history(models / "dvclive")
    assert list(history.columns) == ["fold", *HISTORY_COLUMNS] and history["fold"].tolist() == [0, 1, 2]
    for fold in range(FOLDS):  # the kept model is the one whose val AUC, on its own fold, the history shows
        member = keras.saving.load_model(models / f"folds/fold{fold}.keras")
        member.compile(metrics=[keras.metrics.AUC(name="auc")])
        auc = member.evaluate(eval_dataset(fold_shards, f"fold{fold}", 64), return_dict=True, verbose=0)["auc"]
        assert auc == pytest.approx(history.loc[history["fold"] == fold, "val_auc"].max(), abs=1e-3)
    assert sorted(path.name for path in models.iterdir()) == ["dvclive", "folds", "model.keras", "train_card.json"]


def test_two_cpu_slots_train_two_folds_at_once_in_two_processes(two_slots):
    _, records = two_slots
    runs = processes(records)
    first, second = runs[0], runs[1]  # the two slots take folds 0 and 1 at once, fold 2 when one is free
    assert first["pid"] != second["pid"] and os.getpid() not in (first["pid"], second["pid"])
    assert first["start"] < second["end"] and second["start"] < first["end"], runs  # alive at the same time
    assert {first["slot"], second["slot"]} == {"slot 0 (cpu)", "slot 1 (cpu)"}
    for run in runs.values():
        assert run["own_pid"] == run["pid"] and run["devices"] == "''"  # a CPU slot hides every GPU


def test_the_ensemble_is_one_model_scoring_the_mean_of_its_members(two_slots, fold_shards):
    models, _ = two_slots
    card = read_card(models / "train_card.json", models / "model.keras", written_by="train")
    members = check_members(card, models)
    assert members == [models / f"folds/fold{fold}.keras" for fold in range(FOLDS)]
    ensemble = load_for_inference(models / "model.keras")
    assert [layer.name for layer in ensemble.layers] == ["image", "fold0", "fold1", "fold2", "ensemble_mean"]
    assert ensemble.input.dtype == "uint8"
    images = eval_dataset(fold_shards, "test", 16).map(lambda x, _: x)
    scores = predict_images(ensemble, images, tta=2)
    each = [predict_images(load_for_inference(path), images, tta=2) for path in members]
    np.testing.assert_allclose(scores, np.mean(each, axis=0), atol=1e-6)
    assert np.ptp(each, axis=0).max() > 1e-3  # the members differ: the mean is not any one of them


def test_an_ensemble_of_members_trained_in_mixed_precision_scores_in_float32(tmp_path):
    """A GPU slot trains in mixed_float16: the ensemble nests those members, and inference makes all of it float32."""
    from skincancer.train.ensemble import ensemble_of
    from skincancer.train.hardware import seeded_construction
    from skincancer.train.model_file import save_model
    from skincancer.train.models import build_classifier

    paths = []
    try:
        for fold in range(FOLDS):
            keras.mixed_precision.set_global_policy("mixed_float16" if fold else "float32")
            with seeded_construction(fold):
                save_model(build_classifier(PARAMS, 32).serving, path := tmp_path / f"fold{fold}.keras")
            paths.append(path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    save_model(ensemble_of([keras.saving.load_model(path) for path in paths]), tmp_path / "model.keras")
    saved = keras.saving.load_model(tmp_path / "model.keras")
    assert "mixed_float16" in {layer.dtype_policy.name for layer in saved.get_layer("fold1").layers}
    ensemble = load_for_inference(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for member in ensemble.layers[1:4] for layer in member.layers} == {"float32"}
    images = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), np.uint8))
    scores = predict_images(ensemble, images.batch(3))
    each = [predict_images(load_for_inference(path), images.batch(3)) for path in paths]
    np.testing.assert_allclose(scores, np.mean(each, axis=0), atol=1e-6)


def test_a_fold_ensemble_with_patient_context_takes_it_and_its_scores_are_its_members_mean(fold_shards, tmp_path):
    """train.metadata with folds: every member and the ensemble take {"image", "context"}; the card records the
    encoding; evaluate feeds each member its fold's context (out-of-fold) and the ensemble the test images'."""
    fields = ["age", "sex", "site"]
    models = tmp_path / "models"
    run_folds(models, fold_shards, ["cpu"], PARAMS.model_copy(update={"metadata": fields}))
    card = read_card(models / "train_card.json", models / "model.keras", written_by="train")
    assert card.document["context"] == context_encoding(fields)
    ensemble = load_for_inference(models / "model.keras")
    members = [load_for_inference(path) for path in check_members(card, models)]
    for model in (ensemble, *members):
        assert [tensor.name for tensor in model.inputs] == ["image", "context"], model.name

    def inputs(part: str) -> tf.data.Dataset:
        return eval_dataset(fold_shards, part, 16, fields=fields).map(lambda x, _: x)

    each = [predict_images(member, inputs("test"), tta=2) for member in members]
    np.testing.assert_allclose(predict_images(ensemble, inputs("test"), tta=2), np.mean(each, axis=0), atol=1e-6)
    evaluate(EvaluateParams(bootstrap=20, gallery=2, tta=2), models / "model.keras", fold_shards,
             tmp_path / "metrics.json", tmp_path / "reports", card_path=tmp_path / "card.json")
    predictions = pd.read_csv(tmp_path / "reports/predictions.csv")
    for fold, member in enumerate(members):
        scored = predictions.loc[predictions["fold"] == fold, "score"]
        np.testing.assert_allclose(scored, predict_images(member, inputs(f"fold{fold}"), tta=2), atol=2e-6)
    np.testing.assert_allclose(predictions.loc[predictions["split"] == "test", "score"], np.mean(each, axis=0),
                               atol=2e-6)


def test_the_card_refuses_a_member_that_changed_or_is_missing_naming_it(two_slots, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(two_slots[0], models)
    card = read_card(models / "train_card.json", models / "model.keras", written_by="train")
    with (models / "folds/fold1.keras").open("ab") as member:
        member.write(b"\0")
    with pytest.raises(CardError, match=r"folds/fold1\.keras is not member fold1 of the ensemble"):
        check_members(card, models)
    (models / "folds/fold1.keras").unlink()
    with pytest.raises(CardError, match=r"folds/fold1\.keras not found"):
        check_members(card, models)


def test_one_slot_trains_in_turn_a_failed_fold_stops_the_run_and_the_rerun_resumes_it(two_slots, fold_shards,
                                                                                      tmp_path):
    """Fold 1 cannot keep its training state (a file where its folder goes): the run fails naming it, after fold 0
    finished and before fold 2 started. The rerun (the outputs gone, as `dvc repro` leaves them) trains folds 1 and
    2 only, and writes what the uninterrupted two-slot run wrote, byte for byte."""
    models = tmp_path / "models"
    state = open_fold_state(models, PARAMS, read_shard_manifest(fold_shards))
    state.folder(1).mkdir()
    (state.folder(1) / ".train-state").write_text("in the way")
    with recorded() as records, pytest.raises(FoldFailed, match=r"(?s)fold 1 failed on slot 0 \(cpu\).*FileExistsError"):
        train_folds(PARAMS, fold_shards, models, models / "dvclive", models / "train_card.json", 32, ["cpu"])
    runs = processes(records)
    assert sorted(runs) == [0, 1] and runs[0]["end"] < runs[1]["start"]  # one slot: one fold after the other
    assert state.finished(0) and not state.finished(1) and not state.finished(2)
    assert not (models / "model.keras").exists() and not (models / "folds").exists()
    kept = state.model(0).read_bytes(), state.model(0).stat().st_mtime_ns

    (state.folder(1) / ".train-state").unlink()
    rerun = messages(run_folds(models, fold_shards, ["cpu"]))
    assert any(line.startswith("fold 0: resumed: finished in an earlier run") for line in rerun)
    assert not any(line.startswith("fold 0: started") for line in rerun)
    assert ((models / "folds/fold0.keras").read_bytes(), (models / "folds/fold0.keras").stat().st_mtime_ns) == kept
    for output in OUTPUTS:  # the same members, ensemble, history and card whatever the slots and interruptions
        assert (models / output).read_bytes() == (two_slots[0] / output).read_bytes(), output
    assert not state.root.exists()


def test_other_train_params_or_shards_retrain_every_fold(fold_shards, tmp_path):
    models, manifest = tmp_path / "models", read_shard_manifest(fold_shards)

    def finished_after(params: TrainParams, shards_manifest: dict = manifest) -> list[bool]:
        state = open_fold_state(models, PARAMS, manifest)
        for fold in range(FOLDS):  # every fold as its process leaves it
            state.folder(fold).mkdir(exist_ok=True)
            state.live(fold).mkdir(exist_ok=True)
            for path in (state.model(fold), state.card(fold)):
                path.touch()
        reopened = open_fold_state(models, params, shards_manifest)
        return [reopened.finished(fold) for fold in range(FOLDS)]

    assert finished_after(PARAMS) == [True] * FOLDS
    assert finished_after(PARAMS.model_copy(update={"tensorboard": True})) == [True] * FOLDS  # an execution knob
    assert finished_after(PARAMS.model_copy(update={"learning_rate": 0.01})) == [False] * FOLDS
    assert finished_after(PARAMS, manifest | {"skipped": [{"image_id": "x"}]}) == [False] * FOLDS
    assert finished_after(PARAMS.model_copy(update={"resume": False})) == [False] * FOLDS


def test_a_fold_without_both_classes_is_refused_before_any_process_starts(tiny_shards, tmp_path):
    split_root = tiny_shards.parent / "split"
    manifest = folded(split_root)
    benign_fold0 = manifest[(manifest["split"] != "fold0") | (manifest["label"] == 0)]
    shards = write_fold_shards(split_root, tmp_path / "shards", benign_fold0)
    with recorded() as records, pytest.raises(SingleClassSplit, match=r"the val split \(fold0\) has \d+ benign and 0"):
        train_folds(PARAMS, shards, tmp_path / "models", tmp_path / "models/dvclive",
                    tmp_path / "models/train_card.json", 32, ["cpu"])
    assert not any("started" in line for line in messages(records))


def test_slots_name_the_devices_a_fold_process_may_see(monkeypatch):
    assert fold_slots("auto") == ["cpu"]  # no GPU here: one process on the host's cores
    assert fold_slots([1, "cpu", 0]) == [1, "cpu", 0]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert (slot_devices("cpu"), slot_devices(1)) == ("", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # GPU i counts among the GPUs the stage may use
    assert (slot_devices(0), slot_devices(1)) == ("4", "6")
    with pytest.raises(ValueError, match=r"fold_devices names GPU 2, but CUDA_VISIBLE_DEVICES='4,6' leaves 2 GPU"):
        slot_devices(2)


PARENT = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from skincancer.core.params import TrainParams
from skincancer.train.cross_validation import train_folds
models = Path(sys.argv[3])
train_folds(TrainParams.model_validate_json(sys.argv[1]), Path(sys.argv[2]), models, models / "dvclive",
            models / "train_card.json", 32, ["cpu"])
"""


def test_a_killed_run_leaves_no_fold_process_behind(fold_shards, tmp_path):
    """SIGKILL (no cleanup runs) of the process training the folds: the fold it was running stops at once, not
    when it next writes to the closed pipe (a failed log write does not stop it) or when it is done."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, PARAMS.model_dump_json(), str(fold_shards),
                               str(tmp_path / "models")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = []
    for line in parent.stdout:
        lines.append(line)
        if started := re.match(r"fold 0: started on .*, process (\d+)$", line.strip()):
            break
    else:
        pytest.fail("".join(lines[-30:]))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while alive(int(started[1])):
        assert time.monotonic() < deadline, "the fold's process outlived the run that started it"
        time.sleep(0.1)
    fold0 = tmp_path / "models/.fold-state/fold0"
    assert not (fold0 / "model.keras").exists() and not (fold0 / "train_card.json").exists()  # stopped, not done
    assert not (tmp_path / "models/model.keras").exists()


@pytest.fixture(scope="module")
def evaluated_folds(two_slots, fold_shards, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The two-slot ensemble evaluated: its models folder (card.json beside it), the reports folder, the metrics."""
    models = tmp_path_factory.mktemp("fold-eval") / "models"
    shutil.copytree(two_slots[0], models)
    out = models.parent
    metrics = evaluate(EvaluateParams(bootstrap=20, gallery=2), models / "model.keras", fold_shards,
                       out / "metrics.json", out / "reports")
    return models, out, metrics


def test_evaluate_fits_the_decisions_on_out_of_fold_scores_and_reports_each_fold(evaluated_folds, fold_shards):
    """Every non-test image once, scored by its own fold's member; the threshold and calibration from those
    scores; per-fold AUCs in metrics.json and the card; test scored by the ensemble."""
    from skincancer.evaluate.metrics import choose_threshold

    models, out, metrics = evaluated_folds
    predictions = pd.read_csv(out / "reports/predictions.csv")
    oof = predictions[predictions["split"] == "oof"]
    table = pd.read_parquet(fold_shards / "images.parquet")
    assert sorted(oof["image_id"]) == sorted(table.loc[table["split"] != "test", "image_id"])
    parts = dict(zip(table["image_id"], table["split"], strict=True))
    assert all(parts[image] == f"fold{fold:.0f}" for image, fold in zip(oof["image_id"], oof["fold"], strict=True))
    assert predictions.loc[predictions["split"] == "test", "fold"].isna().all()
    assert metrics["threshold"] == pytest.approx(choose_threshold(oof["label"].to_numpy(), oof["probability"].to_numpy(),
                                                                  EvaluateParams().threshold), abs=1e-6)
    assert list(metrics) == ["threshold", "oof", "test", "calibration", "ood"]
    assert list(metrics["oof"]["folds"]) == ["fold0", "fold1", "fold2"]
    assert [fold["n"] for fold in metrics["oof"]["folds"].values()] == oof.groupby("fold").size().tolist()
    card = json.loads((models / "card.json").read_text())
    assert set(card["evaluation"]["metrics"]) == {"oof", "test"} and len(card["members"]) == FOLDS
    report = (out / "reports/report.md").read_text()
    assert "## Folds" in report and "chosen on the out-of-fold predictions" in report


def test_predict_export_and_grad_cam_take_the_ensemble_as_the_model(evaluated_folds, tiny_shards, tmp_path):
    """`skincancer predict` reproduces evaluate's test probabilities with the ensemble; its Grad-CAM is its
    members' mean; the SavedModel's image and bytes signatures (within 1e-5 and 0.02) and TFLite (1e-4) agree."""
    from typer.testing import CliRunner

    from skincancer.cli import app
    from skincancer.serve.explain import grad_cam

    models, out, _ = evaluated_folds
    split_test = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))  # what fold_shards' test holds
    assert len(split_test) >= 10
    result = CliRunner().invoke(app, ["predict", *map(str, split_test), "--model", str(models / "model.keras"),
                                      "--output", str(tmp_path / "ours.csv"), "--explain", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(tmp_path / "ours.csv").assign(image_id=lambda f: f["path"].str.split("/").str[-1].str[:-4])
    reference = pd.read_csv(out / "reports/predictions.csv").query("split == 'test'")
    merged = reference.merge(ours, on="image_id", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(split_test)
    np.testing.assert_allclose(merged["probability_predict"], merged["probability_evaluate"], atol=1e-6)
    assert len(list((tmp_path / "cams").glob("*.gradcam.png"))) == len(split_test)

    ensemble = load_for_inference(models / "model.keras")
    image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    members = [layer for layer in ensemble.layers if isinstance(layer, keras.Model)]
    np.testing.assert_allclose(grad_cam(ensemble, image), np.mean([grad_cam(m, image) for m in members], axis=0),
                               atol=1e-6)

    target = tmp_path / "savedmodel"
    result = CliRunner().invoke(app, ["export", "--model", str(models / "model.keras"), "--output", str(target)])
    assert result.exit_code == 0, result.output
    loaded = tf.saved_model.load(str(target))
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.serve(tf.constant(images)).numpy(),
                               ensemble.predict(images, verbose=0).reshape(-1), atol=1e-5)
    served = loaded.serve_bytes(tf.constant([path.read_bytes() for path in split_test])).numpy()
    assert np.abs(served - ours.set_index("path").loc[list(map(str, split_test)), "score"].to_numpy()).max() <= 0.02

    flatbuffer = tmp_path / "model.tflite"
    result = CliRunner().invoke(app, ["export", "--format", "tflite", "--model", str(models / "model.keras"),
                                      "--output", str(flatbuffer)])
    assert result.exit_code == 0, result.output
    interpreter = tf.lite.Interpreter(model_path=str(flatbuffer))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1),
                               ensemble.predict(images, verbose=0).reshape(-1), atol=1e-4)


def test_evaluate_refuses_a_member_that_is_not_the_one_the_card_lists(evaluated_folds, fold_shards, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(evaluated_folds[0], models)
    with (models / "folds/fold2.keras").open("ab") as member:
        member.write(b"\0")
    with pytest.raises(CardError, match=r"folds/fold2\.keras"):
        evaluate(EvaluateParams(bootstrap=0), models / "model.keras", fold_shards, tmp_path / "m.json", tmp_path / "r")
    assert not (tmp_path / "m.json").exists()

"""predict and export: the evaluated model on new images, at its frozen threshold, and for serving."""

import io
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from skincancer.cli import app
from skincancer.core.model_card import card_path_for, read_card
from skincancer.core.params import AugmentParams, EvaluateParams, TrainParams
from skincancer.evaluate.evaluate import evaluate
from skincancer.evaluate.inference import load_for_inference
from skincancer.serve.predict import image_files, predict
from skincancer.train.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tiny_shards, tmp_path_factory):
    """A briefly trained model, evaluated: model.keras, its cards, metrics.json, reports/predictions.csv."""
    out = tmp_path_factory.mktemp("predict")
    params = TrainParams(epochs=3, batch_size=16, augment=AugmentParams(rotation=0.1))  # ranks val: a Platt fit
    train(params, tiny_shards, out / "model.keras", out / "dvclive")
    evaluate(EvaluateParams(bootstrap=0), out / "model.keras", tiny_shards, out / "metrics.json", out / "reports")
    return out


def _card(evaluated):
    return read_card(card_path_for(evaluated / "model.keras"), evaluated / "model.keras")


def test_predicting_the_test_split_reproduces_evaluate(evaluated, tiny_shards):
    split_root = tiny_shards.parent / "split"
    files = image_files([split_root / "test"])
    card = _card(evaluated)
    threshold = json.loads((evaluated / "metrics.json").read_text())["threshold"]
    assert card.threshold == threshold and card.calibration.method == "platt"
    ours = predict(files, load_for_inference(evaluated / "model.keras"), card, progress=False)
    ours["image_id"] = [p.split("/")[-1].removesuffix(".jpg") for p in ours["path"]]
    reference = pd.read_csv(evaluated / "reports/predictions.csv").query("split == 'test'")
    merged = reference.merge(ours, on="image_id", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(reference) == len(files)
    # the card's preparation, the same JPEG decoder: the same pixels, the same probabilities
    np.testing.assert_allclose(merged["score_predict"], merged["score_evaluate"], atol=1e-6)
    np.testing.assert_allclose(merged["probability_predict"], merged["probability_evaluate"], atol=1e-6)
    assert (ours["prevalence"] == card.calibration.prevalence).all()
    assert (merged["prediction_predict"] == merged["prediction_evaluate"]).all()


def test_cli_classifies_a_folder_reports_bad_files_and_exits_1(evaluated, tiny_shards, tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    originals = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[:3]
    for index, source in enumerate(originals):
        (folder / ("nested" if index else "") / source.name).write_bytes(source.read_bytes())
    (folder / "broken.jpg").write_bytes(originals[0].read_bytes()[:200])  # truncated
    (folder / "notes.txt").write_text("not an image")  # skipped by the folder walk
    result = runner.invoke(app, ["predict", str(folder), "--model", str(evaluated / "model.keras"),
                                 "--output", str(tmp_path / "out.json")])
    assert result.exit_code == 1, result.output
    assert "1 of 4 images could not be classified" in result.output
    rows = {row["path"].split("/")[-1]: row for row in json.loads((tmp_path / "out.json").read_text())}
    assert set(rows) == {"broken.jpg", *(p.name for p in originals)}
    assert rows["broken.jpg"]["error"] and rows["broken.jpg"]["probability"] is None
    threshold = json.loads((evaluated / "metrics.json").read_text())["threshold"]
    for name in (p.name for p in originals):
        row = rows[name]
        assert row["error"] == "" and row["threshold"] == threshold
        assert row["prediction"] == int(row["probability"] >= threshold) and row["label"] in ("benign", "malignant")


def test_threshold_flag_overrides_and_csv_goes_to_stdout(evaluated, tiny_shards):
    image = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[0]
    result = runner.invoke(app, ["predict", str(image), "--model", str(evaluated / "model.keras"), "--threshold", "0"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,probability,prediction,label,in_distribution,ood_score,threshold,error,score,prevalence"
    assert lines[1].startswith(f"{image},") and ",1,malignant," in lines[1]
    (row,) = pd.read_csv(io.StringIO(result.stdout)).itertuples()
    assert row.threshold == 0.0 and row.in_distribution in (True, False) and row.ood_score > 0
    assert "calibrated on val (Platt)" in result.stderr


def test_explain_writes_a_grad_cam_overlay_per_image(evaluated, tiny_shards, tmp_path):
    images = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[:2]
    result = runner.invoke(app, ["predict", *map(str, images), "--model", str(evaluated / "model.keras"),
                                 "--explain", str(tmp_path / "cam")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert written == sorted(f"{p.stem}.gradcam.png" for p in images)
    assert all((tmp_path / "cam" / name).read_bytes().startswith(b"\x89PNG") for name in written)


def test_grad_cam_is_a_unit_heat_map_at_the_image_size(evaluated):
    from skincancer.serve.explain import grad_cam

    image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    heat = grad_cam(load_for_inference(evaluated / "model.keras"), image)
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1 + 1e-6


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_exports_take_uint8_and_agree_with_the_keras_model(evaluated, tmp_path, fmt):
    target = tmp_path / ("model.tflite" if fmt == "tflite" else "savedmodel")
    result = runner.invoke(app, ["export", "--format", fmt, "--model", str(evaluated / "model.keras"), "--output", str(target)])
    assert result.exit_code == 0, result.output
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    expected = keras.saving.load_model(evaluated / "model.keras").predict(images, verbose=0).reshape(-1)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(target))  # kept referenced: its variables live in this object
        served = loaded.serve(tf.constant(images)).numpy()
        np.testing.assert_allclose(served, expected, atol=1e-5)
        assert (target / "card.json").read_text() == card_path_for(evaluated / "model.keras").read_text()
    else:
        interpreter = tf.lite.Interpreter(model_path=str(target))
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
        interpreter.allocate_tensors()
        assert interpreter.get_input_details()[0]["dtype"] == np.uint8
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        served = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1)
        np.testing.assert_allclose(served, expected, atol=1e-4)
        assert (tmp_path / "model.tflite.card.json").is_file()


def test_training_writes_the_models_card_and_evaluate_adds_its_decision(evaluated, tiny_shards):
    from skincancer.core.model_card import file_sha256

    trained = json.loads((evaluated / "train_card.json").read_text())
    card = json.loads((evaluated / "card.json").read_text())
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert trained["model"] == {"file": "model.keras", "sha256": file_sha256(evaluated / "model.keras")}
    assert (trained["backbone"], trained["head"], trained["trained_precision"]) == ("small_cnn", "binary", "float32")
    assert {key: trained["input"][key] for key in ("image_size", "resize", "jpeg_quality", "color_constancy")} == {
        "image_size": 32, "resize": "crop", "jpeg_quality": 92, "color_constancy": "none"}
    assert trained["labels"]["classes"] == ["benign", "malignant"] and "melanoma" in trained["labels"]["malignant_diagnoses"]
    assert trained["data"]["shards_manifest_sha256"] == file_sha256(tiny_shards / "manifest.json")
    assert set(trained["versions"]) == {"skincancer", "keras", "tensorflow"} and trained["versions"]["keras"] == keras.__version__
    assert {key: value for key, value in card.items() if key != "evaluation"} == trained
    evaluation = card["evaluation"]
    assert evaluation["threshold"] == metrics["threshold"] and evaluation["calibration"] == metrics["calibration"]
    assert evaluation["threshold_policy"] == {"policy": "sensitivity", "target": 0.9, "value": 0.5, "holds_on": "pooled",
                                              "min_malignant": 10}
    assert evaluation["operating_point"] == {"chosen_on": "val", "holds_on": "pooled"}
    assert evaluation["metrics"]["test"]["roc_auc"] == metrics["test"]["roc_auc"]
    assert "roc_auc_ci_low" in evaluation["metrics"]["val"]


def _other_model(evaluated, tmp_path):
    """The same architecture, one weight changed: another model file beside no card of its own."""
    model = keras.saving.load_model(evaluated / "model.keras")
    weights = model.get_weights()
    weights[0] = weights[0] + 0.01
    model.set_weights(weights)
    other = tmp_path / "other" / "model.keras"
    other.parent.mkdir()
    model.save(other)
    return other


def test_a_model_with_another_models_card_is_refused_naming_both_and_writing_nothing(evaluated, tiny_shards, tmp_path):
    image = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[0]
    other = _other_model(evaluated, tmp_path)
    card = card_path_for(evaluated / "model.keras")
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(image), "--model", str(other), "--card", str(card), "--output", str(out)])
    assert result.exit_code == 2 and str(card) in result.output and str(other) in result.output
    assert "describes another model" in result.output and not out.exists()
    exported = runner.invoke(app, ["export", "--model", str(other), "--card", str(card), "--output", str(tmp_path / "sm")])
    assert exported.exit_code == 2 and "describes another model" in exported.output and not (tmp_path / "sm").exists()


def test_without_a_card_it_says_which_stage_writes_it_and_needs_no_params_yaml(evaluated, tiny_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml, no metrics.json here: the card is all predict reads
    image = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[0]
    other = _other_model(evaluated, tmp_path)
    result = runner.invoke(app, ["predict", str(image), "--model", str(other)])
    assert result.exit_code == 2 and f"{other.parent / 'card.json'} not found" in result.output
    assert "dvc repro evaluate" in result.output
    training_only = runner.invoke(app, ["predict", str(image), "--model", str(evaluated / "model.keras"),
                                        "--card", str(evaluated / "train_card.json")])
    assert training_only.exit_code == 2 and "training card without a threshold" in training_only.output
    assert runner.invoke(app, ["predict", str(image), "--model", str(evaluated / "model.keras")]).exit_code == 0


def test_a_model_file_from_another_keras_version_is_refused_naming_both_versions(evaluated, tiny_shards, tmp_path):
    import shutil
    import zipfile

    folder = tmp_path / "old"
    folder.mkdir()
    with zipfile.ZipFile(evaluated / "model.keras") as source, zipfile.ZipFile(folder / "model.keras", "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "keras_version": "2.15.0"}).encode()
            if info.filename == "config.json":  # a Keras 2 layer name Keras 3 does not know
                data = data.replace(b'"class_name": "Conv2D"', b'"class_name": "Convolution2DTranspose_v1"', 1)
            target.writestr(info, data)
    from skincancer.core.model_card import file_sha256

    card = json.loads((evaluated / "card.json").read_text())
    card["model"]["sha256"] = file_sha256(folder / "model.keras")
    (folder / "card.json").write_text(json.dumps(card))
    shutil.copy(evaluated / "metrics.json", folder)
    shutil.copy(evaluated / "ood.npz", folder)  # the card records its out-of-distribution fit beside it
    image = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[0]
    result = runner.invoke(app, ["predict", str(image), "--model", str(folder / "model.keras")])
    assert result.exit_code == 2, result.output
    assert "saved by Keras 2.15.0" in result.output and f"this is Keras {keras.__version__}" in result.output


def test_a_file_that_is_not_an_image_is_an_error_row_and_exit_1(evaluated, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["predict", str(notes), "--model", str(evaluated / "model.keras"), "--output", str(out)])
    assert result.exit_code == 1
    (row,) = json.loads(out.read_text())
    assert row["error"] == "not a recognised image format" and row["probability"] is None


def test_a_model_trained_in_mixed_precision_predicts_and_exports_in_float32(tmp_path):
    from skincancer.train.hardware import set_precision
    from skincancer.train.models import build_classifier

    try:
        set_precision("mixed_float16")
        mixed = build_classifier(TrainParams(), 32).serving
    finally:
        set_precision("float32")
    mixed.save(tmp_path / "model.keras")
    loaded = load_for_inference(tmp_path / "model.keras")

    def policies(model):
        found = set()
        for layer in model.layers:
            found.add(layer.dtype_policy.name)
            if isinstance(layer, keras.Model):
                found |= policies(layer)
        return found

    assert "mixed_float16" in policies(mixed) and policies(loaded) == {"float32"}
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), mixed.predict(images, verbose=0), atol=5e-3)


BYTES_TOLERANCE = 0.02  # the bytes signature's score against `skincancer predict`'s, per image


def test_the_bytes_signature_agrees_with_predict_on_every_sample_test_image_in_a_fresh_process(
        evaluated, tiny_shards, tmp_path):
    import subprocess
    import sys

    target = tmp_path / "savedmodel"
    assert runner.invoke(app, ["export", "--model", str(evaluated / "model.keras"), "--output", str(target)]).exit_code == 0
    files = image_files([tiny_shards.parent / "split/test"])
    ours = predict(files, load_for_inference(evaluated / "model.keras"), _card(evaluated), progress=False)
    script = (
        "import json, sys, tensorflow as tf\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "files = [open(path, 'rb').read() for path in sys.argv[2:]]\n"
        "print(json.dumps(loaded.signatures['serve_bytes'](image_bytes=tf.constant(files))['output_0'].numpy().tolist()))\n"
    )
    served = subprocess.run([sys.executable, "-c", script, str(target), *map(str, files)], capture_output=True, text=True,
                            check=True, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    scores = np.asarray(json.loads(served.stdout.strip().splitlines()[-1]))
    gap = np.abs(scores - ours["score"].to_numpy())
    print(f"bytes signature vs predict over {len(files)} test images: max |delta score| {gap.max():.5f}, mean {gap.mean():.5f}")
    assert len(files) >= 10 and gap.max() <= BYTES_TOLERANCE


def test_export_format_is_checked_before_tensorflow_loads():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from skincancer.cli import app\n"
        "try:\n"
        "    app(['export', '--format', 'onnx'])\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code, 'tensorflow' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "exit 2 False" in result.stderr, result.stderr
    assert "'onnx'" in result.stderr and "savedmodel" in result.stderr and "tflite" in result.stderr


def test_the_clis_export_formats_are_the_exporters():
    from skincancer.cli import ExportFormat
    from skincancer.serve.export import EXPORTERS

    assert [member.value for member in ExportFormat] == list(EXPORTERS)


def test_predict_imports_no_stage_module_nor_the_report():
    """One inference path: predict needs neither the evaluate or shard stages, nor the report or its figures
    (Keras imports matplotlib on its own: keras.src.visualization)."""
    import subprocess
    import sys

    script = "import sys, skincancer.cli, skincancer.serve.predict\nprint(sorted(m for m in sys.modules if m.startswith('skincancer.')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(eval(result.stdout.strip().splitlines()[-1]))
    assert "skincancer.evaluate.inference" in loaded
    assert not loaded & {"skincancer.evaluate.evaluate", "skincancer.shard.shard", "skincancer.evaluate.report", "skincancer.evaluate.figures",
                         "skincancer.serve.explain"}

"""predict and export: the evaluated model on new images, at its frozen threshold, and for serving."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from skincancer.cli import app
from skincancer.evaluate import evaluate
from skincancer.params import AugmentParams, EvaluateParams, ShardParams, TrainParams
from skincancer.predict import image_files, load_model, predict, read_calibration
from skincancer.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tiny_shards, tmp_path_factory):
    """A briefly trained model, evaluated: model.keras, metrics.json, reports/predictions.csv."""
    out = tmp_path_factory.mktemp("predict")
    params = TrainParams(epochs=1, batch_size=16, augment=AugmentParams(rotation=0.1))
    train(params, tiny_shards, out / "model.keras", out / "history.csv")
    evaluate(EvaluateParams(bootstrap=0), out / "model.keras", tiny_shards, out / "metrics.json", out / "reports")
    return out


def test_predicting_the_test_split_reproduces_evaluate(evaluated, tiny_shards):
    split_root = tiny_shards.parent / "split"
    files = image_files([split_root / "test"])
    threshold = json.loads((evaluated / "metrics.json").read_text())["threshold"]
    calibration = read_calibration(evaluated / "metrics.json")
    assert calibration.method == "platt"
    ours = predict(files, load_model(evaluated / "model.keras"), threshold, ShardParams(), calibration=calibration,
                   progress=False)
    ours["image_id"] = [p.split("/")[-1].removesuffix(".jpg") for p in ours["path"]]
    reference = pd.read_csv(evaluated / "reports/predictions.csv").query("split == 'test'")
    merged = reference.merge(ours, on="image_id", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(reference) == len(files)
    # the same shard function and JPEG decoder: the same pixels, the same probabilities
    np.testing.assert_allclose(merged["score_predict"], merged["score_evaluate"], atol=1e-6)
    np.testing.assert_allclose(merged["probability_predict"], merged["probability_evaluate"], atol=1e-6)
    assert (ours["prevalence"] == calibration.prevalence).all()
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
                                 "--metrics", str(evaluated / "metrics.json"), "--output", str(tmp_path / "out.json"),
                                 "--params", str(tmp_path / "none.yaml")])
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
    result = runner.invoke(app, ["predict", str(image), "--model", str(evaluated / "model.keras"),
                                 "--metrics", "missing.json", "--threshold", "0"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,probability,prediction,label,threshold,error,score,prevalence"
    assert lines[1].startswith(f"{image},") and ",1,malignant,0.0," in lines[1]
    # no metrics.json, no calibration: the output says its numbers are scores
    assert "uncalibrated scores" in result.stderr and lines[1].endswith(",")


def test_without_a_threshold_anywhere_it_says_what_to_do(evaluated, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(evaluated / "model.keras"),
                                 "--metrics", str(tmp_path / "metrics.json")])
    assert result.exit_code == 2 and "no decision threshold" in result.output and "--threshold" in result.output


def test_explain_writes_a_grad_cam_overlay_per_image(evaluated, tiny_shards, tmp_path):
    images = sorted((tiny_shards.parent / "split/test").rglob("*.jpg"))[:2]
    result = runner.invoke(app, ["predict", *map(str, images), "--model", str(evaluated / "model.keras"),
                                 "--metrics", str(evaluated / "metrics.json"), "--explain", str(tmp_path / "cam")])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert written == sorted(f"{p.stem}.gradcam.png" for p in images)
    assert all((tmp_path / "cam" / name).read_bytes().startswith(b"\x89PNG") for name in written)


def test_grad_cam_is_a_unit_heat_map_at_the_image_size(evaluated):
    from skincancer.explain import grad_cam

    image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    heat = grad_cam(load_model(evaluated / "model.keras"), image)
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1 + 1e-6


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_exports_take_uint8_and_agree_with_the_keras_model(evaluated, tmp_path, fmt):
    target = tmp_path / ("model.tflite" if fmt == "tflite" else "savedmodel")
    result = runner.invoke(app, ["export", "--format", fmt, "--model", str(evaluated / "model.keras"), "--output", str(target)])
    assert result.exit_code == 0, result.output
    images = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    expected = keras.saving.load_model(evaluated / "model.keras").predict(images, verbose=0)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(target))  # kept referenced: its variables live in this object
        served = loaded.serve(tf.constant(images)).numpy()
        np.testing.assert_allclose(served, expected, atol=1e-5)
    else:
        interpreter = tf.lite.Interpreter(model_path=str(target))
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
        interpreter.allocate_tensors()
        assert interpreter.get_input_details()[0]["dtype"] == np.uint8
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), expected, atol=1e-4)


def test_unknown_export_format_is_refused(evaluated):
    result = runner.invoke(app, ["export", "--format", "onnx", "--model", str(evaluated / "model.keras")])
    assert result.exit_code == 2 and "'onnx'" in result.output

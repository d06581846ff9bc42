"""Patient context on the scoring and serving side: `skincancer predict --metadata`, the SavedModel's named
inputs (age, sex, site) encoded in-graph as encode_context encodes them, and TFLite's encoded vector.

The model is a tiny untrained one of the contract training writes: inputs `image` (uint8) and `context` (float32),
the card recording `context: context_encoding(fields)`; its head weighs each context column differently, so a
column out of place or a field read wrongly moves the score.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image
from typer.testing import CliRunner

from skincancer.cli import app
from skincancer.core.model_card import CARD_VERSION, PREPARATION, file_sha256, read_card, write_card
from skincancer.core.params import CONTEXT_FIELDS
from skincancer.core.patient_context import context_columns, context_encoding, encode_context
from skincancer.core.preparation import Preparation
from skincancer.evaluate.inference import decode, load_for_inference, prepare
from skincancer.serve.context import ContextError, check_context, image_context
from skincancer.serve.serving_graph import ContextEncoder
from skincancer.train.models import PixelPreprocessing

runner = CliRunner()
SIZE = 32
BYTES_TOLERANCE = 0.02  # as test_predict: the bytes signature's in-graph preparation against predict's Pillow

# each file, its CSV row (matched by path, name or stem), and the fields it is scored without
CSV = """image,age,sex,anatom_site_general
{folder}/a.jpg,45,male,posterior torso
b.jpg,,female,
ISIC_0000004,70, FEMALE ,Lower Extremity
c.png,30,M,knee
unlisted.jpg,50,male,torso
"""
EXPECTED = {  # file -> (age, sex, site) as the CSV gives them for the model, and the context column
    "a.jpg": ((45.0, "male", "posterior torso"), ""),
    "b.jpg": ((np.nan, "female", ""), "missing: age, site"),
    "ISIC_0000004.jpg": ((70.0, " FEMALE ", "Lower Extremity"), ""),
    "c.png": ((30.0, "M", "knee"), "missing: sex, site"),
    "e.jpg": ((np.nan, "", ""), "missing: age, sex, site"),
}


def _picture(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 40 * seed, dtype=float)], axis=-1)
    return Image.fromarray((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))


def _model(width: int | None) -> keras.Model:
    """preprocess -> nested backbone -> pool -> head, with the context (when `width`) beside the pooled features."""
    image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    pixels = keras.Input((SIZE, SIZE, 3))
    backbone = keras.Model(pixels, keras.layers.Conv2D(4, 3, strides=2, activation="relu")(pixels), name="backbone")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(PixelPreprocessing("unit", name="preprocess")(image)))
    if width is None:
        return keras.Model(image, keras.layers.Dense(1, activation="sigmoid", name="malignant")(pooled))
    context = keras.Input((width,), name="context")
    head = keras.layers.Dense(1, activation="sigmoid", name="malignant")
    model = keras.Model([image, context], head(keras.layers.Concatenate()([pooled, context])))
    kernel, bias = head.get_weights()
    kernel[-width:, 0] = np.linspace(-1.5, 2.0, width)  # every context column its own weight
    head.set_weights([kernel, bias])
    return model


def _save(folder: Path, fields: list[str]) -> Path:
    """model.keras and an evaluated card.json recording `fields` (none: an image-only model)."""
    folder.mkdir(parents=True)
    path = folder / "model.keras"
    _model(len(context_columns(fields)) if fields else None).save(path)
    document = {
        "card_version": CARD_VERSION,
        "model": {"file": path.name, "sha256": file_sha256(path)},
        "input": Preparation(image_size=SIZE).as_json() | PREPARATION,
        "evaluation": {"threshold": 0.5, "calibration": {"method": "none"}, "tta": 2, "tta_scales": [1.0]},
        **({"context": context_encoding(fields)} if fields else {}),
    }
    write_card(document, folder / "card.json")
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """Five tiny images of several sizes and formats, and the CSV beside them."""
    root = tmp_path_factory.mktemp("context")
    folder = root / "photos"
    folder.mkdir()
    for seed, name in enumerate(EXPECTED):
        _picture(seed, 40 + 4 * seed, 36 + 2 * seed).save(folder / name, quality=95)
    metadata = root / "meta.csv"
    metadata.write_text(CSV.format(folder=folder))
    return folder, metadata


@pytest.fixture(scope="module")
def context_model(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("models") / "context", list(CONTEXT_FIELDS))


def _files(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def _by_hand(files: list[Path], model_path: Path) -> np.ndarray:
    """The score the model gives each prepared image with the EXPECTED fields encoded, mean over identity and
    mirror (the card's tta 2)."""
    values = [EXPECTED[file.name][0] for file in files]
    frame = pd.DataFrame(values, columns=["age_approx", "sex", "anatom_site"])
    vectors = encode_context(frame, CONTEXT_FIELDS)
    images = np.stack([decode(prepare(file, Preparation(image_size=SIZE)).jpeg).numpy() for file in files])
    model = keras.saving.load_model(model_path)
    views = [model({"image": view, "context": vectors}).numpy().reshape(-1) for view in (images, images[:, :, ::-1])]
    return np.mean(views, axis=0)


def test_predict_scores_each_image_with_its_csv_row_and_says_what_was_missing(photos, context_model, tmp_path):
    folder, metadata = photos
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(context_model), "--metadata", str(metadata),
                                 "--output", str(out), "--explain", str(tmp_path / "cams")])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, keep_default_na=False)
    files = _files(folder)
    assert [Path(p).name for p in frame["path"]] == [file.name for file in files]
    assert frame["context"].tolist() == [EXPECTED[file.name][1] for file in files]
    np.testing.assert_allclose(frame["score"], _by_hand(files, context_model), atol=1e-6)
    assert "malignant at p >= 0.5000 (the card records no threshold policy, so no promise)" in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {metadata}: sex 'M' (1 image(s)) is not a spelling the model's vocabulary knows: scored as "
        "missing (the card's context.sex.spellings lists the known ones)",
        f"warning: {metadata}: site 'knee' (1 image(s)) is not a spelling the model's vocabulary knows: scored as "
        "missing (the card's context.site.spellings lists the known ones)",
        f"warning: {metadata}: 1 of 5 image(s) have no row and 2 have blank or unknown fields: scored with those "
        "fields missing (the context column names them)",
    ]
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == sorted(f"{f.stem}.gradcam.png" for f in files)


def test_a_context_model_without_metadata_scores_every_field_missing_and_says_so_once(photos, context_model):
    folder, _ = photos
    result = runner.invoke(app, ["predict", str(folder / "a.jpg"), str(folder / "b.jpg"), "--model", str(context_model)])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: the model takes patient context (age, sex, site) and no --metadata was given: every image is "
        "scored with it missing"]
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns)[-2:] == ["prevalence", "context"]
    assert frame["context"].tolist() == ["missing: age, sex, site"] * 2


def test_metadata_for_a_model_without_context_is_refused(photos, tmp_path):
    folder, metadata = photos
    image_only = _save(tmp_path / "plain", [])
    result = runner.invoke(app, ["predict", str(folder / "a.jpg"), "--model", str(image_only), "--metadata", str(metadata)])
    assert result.exit_code == 2
    assert "records no patient context" in result.output and f"would ignore {metadata}" in result.output
    plain = runner.invoke(app, ["predict", str(folder / "a.jpg"), "--model", str(image_only)])
    assert plain.exit_code == 0 and plain.stdout.splitlines()[0].endswith(",score,prevalence")


def test_a_card_and_model_that_disagree_on_the_context_are_refused(context_model, tmp_path):
    card = read_card(context_model.with_name("card.json"), context_model)
    wrong = type(card)({**card.document, "context": context_encoding(["age"])}, card.path)
    with pytest.raises(ContextError, match="2 columns but its model takes a context input of 12 columns"):
        check_context(load_for_inference(context_model), wrong)
    with pytest.raises(ContextError, match="no patient context but its model takes a context input"):
        check_context(load_for_inference(context_model), type(card)({**card.document, "context": None}, card.path))


@pytest.mark.parametrize("fields", [["age", "sex", "site"], ["site"], ["age", "sex"]])
def test_the_in_graph_encoder_is_encode_context(fields):
    sites = ["posterior torso", " Lower Extremity ", "HAND", "acral", "scalp", "knee", "unknown", "", "torso", "genital"]
    sexes = ["male", "FEMALE", " female", "M", "", "unknown", "male", "female", "x", "male"]
    ages = [45, np.nan, 0, 85, 5, np.nan, 120, 33, 60, 15]
    frame = pd.DataFrame({"age_approx": ages, "sex": sexes, "anatom_site": sites})
    encoder = ContextEncoder(json.loads(json.dumps(context_encoding(fields), sort_keys=True)))  # as the card reads back
    assert [spec.name for spec in encoder.input_specs()] == fields
    inputs = {"age": tf.constant(ages, tf.float32), "sex": tf.constant(sexes), "site": tf.constant(sites)}
    np.testing.assert_array_equal(encoder([inputs[field] for field in fields]).numpy(), encode_context(frame, fields))


def _named_inputs(files: list[Path]) -> dict[str, tf.Tensor]:
    """The CSV's fields as a server passes them: ages in years (NaN missing), the strings as written ("" missing)."""
    age, sex, site = zip(*(EXPECTED[file.name][0] for file in files), strict=True)
    return {"age": tf.constant(age, tf.float32), "sex": tf.constant(sex), "site": tf.constant(site)}


@pytest.fixture(scope="module")
def exported(photos, context_model, tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """The context model exported both ways, and predict's scores of the photos with the CSV."""
    from skincancer.serve.predict import predict

    folder, metadata = photos
    out = tmp_path_factory.mktemp("exports")
    for fmt, target in (("savedmodel", out / "savedmodel"), ("tflite", out / "model.tflite")):
        result = runner.invoke(app, ["export", "--format", fmt, "--model", str(context_model), "--output", str(target)])
        assert result.exit_code == 0, result.output
    files = _files(folder)
    card = read_card(context_model.with_name("card.json"), context_model)
    context = image_context(files, card, metadata)
    scores = predict(files, load_for_inference(context_model), card, context=context, progress=False)
    return out, folder, scores.assign(vector=list(context.vectors))


def test_the_savedmodel_takes_the_fields_as_named_inputs_and_agrees_with_predict(exported):
    out, folder, predicted = exported
    files = _files(folder)
    loaded = tf.saved_model.load(str(out / "savedmodel"))
    for name, first in (("serve", "image"), ("serve_bytes", "image_bytes")):
        assert set(loaded.signatures[name].structured_input_signature[1]) == {first, "age", "sex", "site"}
    images = np.stack([decode(prepare(file, Preparation(image_size=SIZE)).jpeg).numpy() for file in files])
    served = loaded.signatures["serve"](image=tf.constant(images), **_named_inputs(files))["output_0"].numpy()
    np.testing.assert_allclose(served, predicted["score"], atol=1e-5)
    contents = tf.constant([file.read_bytes() for file in files])
    from_bytes = loaded.signatures["serve_bytes"](image_bytes=contents, **_named_inputs(files))["output_0"].numpy()
    assert np.abs(from_bytes - predicted["score"].to_numpy()).max() <= BYTES_TOLERANCE
    no_context = {"age": tf.fill([len(files)], np.nan), "sex": tf.fill([len(files)], ""), "site": tf.fill([len(files)], "")}
    assert np.abs(loaded.signatures["serve"](image=tf.constant(images), **no_context)["output_0"].numpy() - served).max() > 1e-3


def test_tflite_takes_the_encoded_vector_and_agrees_with_the_savedmodel(exported):
    out, folder, predicted = exported
    files = _files(folder)
    images = np.stack([decode(prepare(file, Preparation(image_size=SIZE)).jpeg).numpy() for file in files])
    loaded = tf.saved_model.load(str(out / "savedmodel"))
    served = loaded.signatures["serve"](image=tf.constant(images), **_named_inputs(files))["output_0"].numpy()
    interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    runner_ = interpreter.get_signature_runner("serve")
    assert set(runner_.get_input_details()) == {"image", "context"}
    tflite = runner_(image=images, context=np.stack(predicted["vector"]).astype(np.float32))["output_0"]
    np.testing.assert_allclose(tflite.reshape(-1), served, atol=1e-4)
    assert (out / "model.tflite.card.json").is_file()

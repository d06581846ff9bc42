"""The out-of-distribution flag: fitted in evaluate on the training images' pooled features, cut at a percentile of
val's scores, carried by the card, and raised by `skincancer predict` and the SavedModel alike; noise, flat colours,
text and natural photos are flagged, the sample's own test images mostly not."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from skincancer.cli import app
from skincancer.core.model_card import CardError, card_path_for, file_sha256, read_card
from skincancer.core.params import AugmentParams, EvaluateParams, OodParams, TrainParams
from skincancer.evaluate.evaluate import evaluate
from skincancer.evaluate.inference import decode, load_for_inference, predict_images, prepare
from skincancer.evaluate.ood import feature_layers, feature_scorer, fit_ood, scores_and_features
from skincancer.serve.predict import image_files, predict
from skincancer.train.train import train

runner = CliRunner()
PERCENTILE = 90.0
TAIL = 1 - PERCENTILE / 100  # the share of images like the training ones the cut-off flags by construction
FOREIGN_GOAL = 0.95  # the issue's: at least this share of clearly foreign inputs flagged
# natural photographs shipped inside installed packages (scikit-learn's and matplotlib's sample images)
PHOTOS = (Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
          Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg",
          Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
WORDS = ("invoice", "total", "the", "quick", "brown", "fox", "meeting", "agenda", "page", "section", "2024", "report")


# ---------------------------------------------------------------- foreign inputs


def _side(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(48, 400)), int(rng.integers(48, 400))


def _noise(rng: np.random.Generator) -> Image.Image:
    """Uniform RGB noise at a random size."""
    width, height = _side(rng)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _flat(rng: np.random.Generator) -> Image.Image:
    """One colour anywhere in the RGB cube, skin tones included."""
    return Image.new("RGB", _side(rng), tuple(int(value) for value in rng.integers(0, 256, 3)))


def _text(rng: np.random.Generator) -> Image.Image:
    """Lines of words rendered in a random size and colour on a plain background, as a scanned page or a screenshot."""
    background = tuple(int(value) for value in rng.integers(0, 256, 3))
    ink = tuple(255 - value for value in background)
    image = Image.new("RGB", (int(rng.integers(200, 480)), int(rng.integers(200, 480))), background)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(12, 40))
    font = ImageFont.load_default(size=size)
    for line in range(image.height // (size + 4)):
        draw.text((4, 2 + line * (size + 4)), " ".join(rng.choice(WORDS, 6)), fill=ink, font=font)
    return image


def _photo(rng: np.random.Generator) -> Image.Image:
    """A random square crop (30-100% of the short side) of a natural photograph, mirrored half the time."""
    with Image.open(PHOTOS[int(rng.integers(len(PHOTOS)))]) as photo:
        image = photo.convert("RGB")
    side = int(min(image.size) * rng.uniform(0.3, 1.0))
    left, top = int(rng.integers(0, image.width - side + 1)), int(rng.integers(0, image.height - side + 1))
    crop = image.crop((left, top, left + side, top + side))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


FOREIGN_KINDS = {"noise": _noise, "flat_colour": _flat, "text": _text, "natural_photo": _photo}


def foreign_images(folder: Path, per_kind: int, seed: int = 0) -> dict[str, list[Path]]:
    """`per_kind` images of each foreign kind, written to `folder` as JPEG and PNG files in turn: kind -> files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for kind, draw in FOREIGN_KINDS.items():
        for index in range(per_kind):
            path = folder / f"{kind}_{index:03d}.{'png' if index % 2 else 'jpg'}"
            draw(rng).save(path, **({} if index % 2 else {"quality": 90}))
            written.setdefault(kind, []).append(path)
    return written


# ---------------------------------------------------------------- a trained, evaluated model


@pytest.fixture(scope="module")
def evaluated(tiny_shards, tmp_path_factory):
    """A briefly trained small_cnn, evaluated with the flag cut at the 90th percentile of val's scores."""
    out = tmp_path_factory.mktemp("ood")
    train(TrainParams(epochs=3, batch_size=16, augment=AugmentParams(rotation=0.1)), tiny_shards, out / "model.keras",
          out / "dvclive")
    evaluate(EvaluateParams(bootstrap=0, ood=OodParams(percentile=PERCENTILE)), out / "model.keras", tiny_shards,
             out / "metrics.json", out / "reports")
    return out


def _card(out: Path):
    return read_card(card_path_for(out / "model.keras"), out / "model.keras")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, list[Path]]:
    return foreign_images(tmp_path_factory.mktemp("foreign"), per_kind=10)


def test_evaluate_fits_the_flag_on_train_cuts_it_on_val_and_reports_it(evaluated, tiny_shards):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    ood = metrics["ood"]
    assert list(ood) == ["percentile", "cutoff", "val", "test"] and ood["percentile"] == PERCENTILE
    predictions = pd.read_csv(evaluated / "reports/predictions.csv")
    val = predictions[predictions["split"] == "val"]
    # the cut-off is the percentile of val's own scores: at most the tail of val lies above it
    assert ood["cutoff"] == round(float(np.percentile(val["ood_score"], PERCENTILE)), 6)
    assert (predictions["in_distribution"] == (predictions["ood_score"] <= ood["cutoff"])).all()
    assert ood["val"]["n_flagged"] == int((~val["in_distribution"]).sum()) <= np.ceil(TAIL * len(val))
    # test images are like the training ones: their share flagged is not above twice the tail beyond chance (the
    # low end of its Wilson interval, what a dozen test images allow)
    assert ood["test"]["n"] == int((predictions["split"] == "test").sum()) >= 10
    assert ood["test"]["flagged_ci_low"] <= 2 * TAIL
    card = json.loads((evaluated / "card.json").read_text())["evaluation"]["ood"]
    assert {key: card[key] for key in ("layers", "fitted_on", "chosen_on", "percentile", "cutoff", "file")} == {
        "layers": ["pool"], "fitted_on": ["train"], "chosen_on": "val", "percentile": PERCENTILE,
        "cutoff": ood["cutoff"], "file": "ood.npz"}
    assert card["sha256"] == file_sha256(evaluated / "ood.npz") and card["features"] == 128
    report = (evaluated / "reports/report.md").read_text()
    assert "## Out-of-distribution flag" in report and f"**{ood['cutoff']:.4f}**" in report
    assert f"test {ood['test']['flagged']:.1%} (95% CI" in report


def test_predict_flags_noise_flat_colours_text_and_photos_naming_each(evaluated, foreign, caplog):
    """The defect: uniform noise scored p=0.9997, malignant, and nothing said it was no skin at all."""
    files = [path for paths in foreign.values() for path in paths]
    with caplog.at_level(logging.WARNING, logger="skincancer.serve.predict"):
        frame = predict(files, load_for_inference(evaluated / "model.keras"), _card(evaluated), progress=False)
    assert (frame["error"] == "").all()
    frame["kind"] = [Path(path).stem.rsplit("_", 1)[0] for path in frame["path"]]
    flagged = ~frame["in_distribution"].astype(bool)
    print({kind: f"{share:.0%}" for kind, share in flagged.groupby(frame["kind"]).mean().items()})
    assert flagged.mean() >= FOREIGN_GOAL, frame[~flagged][["path", "ood_score"]]
    warned = "\n".join(record.getMessage() for record in caplog.records)
    for path in frame.loc[flagged, "path"]:
        assert f"{path}: unlike the images the model was trained on" in warned
    assert f"{int(flagged.sum())} of {len(frame)} image(s) are out of distribution" in warned


def test_predict_reproduces_evaluates_flags_on_the_test_split(evaluated, tiny_shards):
    files = image_files([tiny_shards.parent / "split/test"])
    ours = predict(files, load_for_inference(evaluated / "model.keras"), _card(evaluated), progress=False)
    ours["image_id"] = [Path(path).stem for path in ours["path"]]
    reference = pd.read_csv(evaluated / "reports/predictions.csv").query("split == 'test'")
    merged = reference.merge(ours, on="image_id", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(files) >= 10
    np.testing.assert_allclose(merged["ood_score_predict"], merged["ood_score_evaluate"], atol=1e-6)
    assert (merged["in_distribution_predict"] == merged["in_distribution_evaluate"]).all()


def test_the_cli_writes_the_flag_in_json_and_csv_and_warns_on_the_terminal(evaluated, foreign, tmp_path):
    import subprocess
    import sys

    noise = foreign["noise"][0]
    result = runner.invoke(app, ["predict", str(noise), "--model", str(evaluated / "model.keras"),
                                 "--output", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "out.json").read_text())
    assert row["in_distribution"] is False and row["ood_score"] > _card(evaluated).ood["cutoff"]
    printed = subprocess.run([sys.executable, "-m", "skincancer.cli", "predict", str(noise), "--model",
                              str(evaluated / "model.keras")], capture_output=True, text=True, check=True)
    header, line = printed.stdout.strip().splitlines()
    assert header == "path,probability,prediction,label,in_distribution,ood_score,threshold,error,score,prevalence"
    assert line.startswith(f"{noise},") and ",False," in line
    assert f"{noise}: unlike the images the model was trained on" in printed.stderr
    assert "1 of 1 image(s) are out of distribution" in printed.stderr


def test_the_savedmodel_returns_the_score_and_the_flag_as_predict_does(evaluated, foreign, tiny_shards, tmp_path):
    target = tmp_path / "savedmodel"
    result = runner.invoke(app, ["export", "--model", str(evaluated / "model.keras"), "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "ood.npz").read_bytes() == (evaluated / "ood.npz").read_bytes()
    card = _card(evaluated)
    files = [*sorted((tiny_shards.parent / "split/test").rglob("*.jpg")), *(p for paths in foreign.values() for p in paths)]
    ours = predict(files, load_for_inference(evaluated / "model.keras"), card, progress=False)
    loaded = tf.saved_model.load(str(target))
    # the uint8 signature on predict's own pixels: the same numbers, to float32's precision
    pixels = tf.stack([decode(prepare(path, card.preparation).jpeg) for path in files])
    served = {name: value.numpy() for name, value in loaded.signatures["serve_ood"](image=pixels).items()}
    np.testing.assert_allclose(served["score"], ours["score"], atol=1e-5)
    np.testing.assert_allclose(served["ood_score"], ours["ood_score"], rtol=1e-4)
    clear = np.abs(ours["ood_score"] - card.ood["cutoff"]) > 1e-3 * card.ood["cutoff"]
    assert clear.mean() > 0.9
    assert (served["in_distribution"][clear] == ours["in_distribution"][clear].astype(bool)).all()
    # the bytes signature prepares the files in-graph, a grey level or so off Pillow's: the same flags
    from_bytes = loaded.signatures["serve_bytes_ood"](image_bytes=tf.constant([p.read_bytes() for p in files]))
    near = np.abs(from_bytes["ood_score"].numpy() - ours["ood_score"]) / ours["ood_score"]
    print(f"serve_bytes_ood vs predict over {len(files)} images: max relative |delta ood_score| {near.max():.4f}")
    assert near.max() < 0.05
    steady = np.abs(ours["ood_score"] - card.ood["cutoff"]) > 0.05 * card.ood["cutoff"]
    assert (from_bytes["in_distribution"].numpy()[steady] == ours["in_distribution"][steady].astype(bool)).all()
    assert np.abs(loaded.serve(pixels).numpy() - ours["score"]).max() < 1e-5  # the score signatures are unchanged


# ---------------------------------------------------------------- the card and its file


def test_a_card_whose_fit_is_missing_or_another_is_refused_naming_both_files(evaluated, foreign, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(evaluated, copy, ignore=shutil.ignore_patterns("reports"))
    image = str(foreign["noise"][0])
    (copy / "ood.npz").write_bytes((copy / "ood.npz").read_bytes() + b"\0")
    changed = runner.invoke(app, ["predict", image, "--model", str(copy / "model.keras")])
    assert changed.exit_code == 2, changed.output
    assert f"{copy / 'ood.npz'} is not the out-of-distribution fit {copy / 'card.json'} records" in changed.output
    (copy / "ood.npz").unlink()
    with pytest.raises(CardError, match=f"{copy / 'ood.npz'} not found: {copy / 'card.json'} records"):
        read_card(copy / "card.json", copy / "model.keras")
    exported = runner.invoke(app, ["export", "--model", str(copy / "model.keras"), "--output", str(tmp_path / "sm")])
    assert exported.exit_code == 2 and "ood.npz not found" in exported.output and not (tmp_path / "sm").exists()


def test_a_card_from_before_the_flag_still_predicts_and_says_nothing_flags_its_images(evaluated, foreign, tmp_path, caplog):
    copy = tmp_path / "models"
    copy.mkdir()
    shutil.copy(evaluated / "model.keras", copy)
    card = json.loads((evaluated / "card.json").read_text())
    del card["evaluation"]["ood"]
    (copy / "card.json").write_text(json.dumps(card))
    with caplog.at_level(logging.WARNING, logger="skincancer.serve.predict"):
        frame = predict(foreign["noise"][:2], load_for_inference(copy / "model.keras"), _card(copy), progress=False)
    assert frame["in_distribution"].isna().all() and frame["ood_score"].isna().all()
    assert frame["score"].notna().all()
    assert any(f"{copy / 'card.json'} records no out-of-distribution fit" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------- the measure


def test_the_score_is_the_mahalanobis_distance_under_probabilistic_pca():
    """Against scikit-learn's PCA precision matrix (the same model when images outnumber features)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 3
    fit = fit_ood(features, components=4)
    pca = PCA(n_components=4).fit(features)
    probe = rng.normal(size=(20, 12)) * 4
    centred = probe - pca.mean_
    expected = np.sqrt(np.einsum("ij,jk,ik->i", centred, pca.get_precision(), centred))
    np.testing.assert_allclose(fit.score(probe), expected, rtol=1e-4)
    assert fit.npz_bytes() == fit_ood(features, components=4).npz_bytes()  # byte-stable: the same fit, the same file


def test_more_features_than_images_still_fit_a_finite_measure():
    """A pretrained backbone's 1280 features for a few hundred training images: the residual shares one variance."""
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(40, 300)))
    features[:, :5] = 0  # features the training images never use
    fit = fit_ood(features)
    assert fit.components.shape == (20, 300)  # at most half as many components as images
    scores = fit.score(np.vstack([features[:5], features[:5] + 5]))
    assert np.isfinite(scores).all() and scores[5:].min() > scores[:5].max()


def test_too_few_training_images_are_refused_saying_so():
    from skincancer.evaluate.ood import OodUnavailable

    with pytest.raises(OodUnavailable, match="2 training image"):
        fit_ood(np.ones((2, 8)))


def test_an_ensemble_reads_each_members_pooled_features_side_by_side_and_scores_as_itself():
    from skincancer.train.ensemble import ensemble_of
    from skincancer.train.hardware import seeded_construction
    from skincancer.train.models import build_classifier

    members = []
    for seed in (1, 2):
        with seeded_construction(seed):
            members.append(build_classifier(TrainParams(seed=seed), 32).serving)
    ensemble = ensemble_of(members)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(3)
    scores, features = scores_and_features(feature_scorer(ensemble), batches, tta=2)
    np.testing.assert_allclose(scores, predict_images(ensemble, batches, tta=2), atol=1e-7)
    pooled = [keras.Model(member.input, member.get_layer("pool").output).predict(images, verbose=0) for member in members]
    np.testing.assert_allclose(features, np.concatenate(pooled, axis=1), atol=1e-6)
    assert feature_layers(ensemble) == ["fold0/pool", "fold1/pool"]


def test_without_a_full_scale_view_the_features_are_still_of_the_image_as_prepared():
    """evaluate.tta_scales [0.5]: the score averages the half-detail views alone, the features come from an extra
    pass of the image itself, in predict and in the exported graph alike."""
    from skincancer.evaluate.ood import scores_and_features_in_graph
    from skincancer.train.hardware import seeded_construction
    from skincancer.train.models import build_classifier

    with seeded_construction(4):
        model = build_classifier(TrainParams(seed=4), 32).serving
    images = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    batches = tf.data.Dataset.from_tensor_slices(images).batch(4)
    scores, features = scores_and_features(feature_scorer(model), batches, tta=2, scales=(0.5,))
    np.testing.assert_allclose(scores, predict_images(model, batches, tta=2, scales=(0.5,)), atol=1e-7)
    own = keras.Model(model.input, model.get_layer("pool").output).predict(images, verbose=0)
    np.testing.assert_allclose(features, own, atol=1e-6)
    in_graph = scores_and_features_in_graph(feature_scorer(model), tf.constant(images), tta=2, scales=(0.5,))
    np.testing.assert_allclose(in_graph[0].numpy(), scores, atol=1e-6)
    np.testing.assert_allclose(in_graph[1].numpy(), own, atol=1e-6)


def test_the_percentile_is_checked_naming_the_key():
    from skincancer.core.params import Params, ParamsError, parse_params

    raw = Params().model_dump(mode="json")
    raw["evaluate"]["ood"] = {"percentile": 30}
    with pytest.raises(ParamsError, match=r"evaluate\.ood\.percentile"):
        parse_params(raw)

"""Patient context on the training side (train.metadata): each image's age, sex and site from the shards' image
table travel with its record through shuffling and oversampling, reach the output beside the pooled image
features (also through the head trained on cached features), are recorded in the card, and evaluate feeds them
as predict_images does by hand. Real shards, a tiny small_cnn, one epoch."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import folder_bytes

from skincancer.core.model_card import read_card
from skincancer.core.params import AugmentParams, EvaluateParams, ShardParams, TrainParams
from skincancer.core.patient_context import context_columns, context_encoding, encode_context
from skincancer.evaluate.evaluate import ContextMismatch, evaluate, predict_split
from skincancer.evaluate.inference import context_width, load_for_inference, predict_images
from skincancer.shard.shard import write_shards
from skincancer.train.data import eval_dataset, feature_dataset, split_records, training_dataset
from skincancer.train.hardware import seeded_construction
from skincancer.train.models import build_backbone
from skincancer.train.train import train

FIELDS = ["age", "sex", "site"]
PARAMS = TrainParams(epochs=1, batch_size=16, early_stopping_patience=1, augment=AugmentParams(rotation=0.1),
                     metadata=FIELDS)
NO_AUGMENT = AugmentParams(flip=False, rotation=0, zoom=0, color=0)
UNMAPPED = {"site": ("knee", 3), "sex": ("M", 2)}  # spellings the vocabulary does not know, and how many train images


@pytest.fixture(scope="module")
def shards(tiny_shards, tmp_path_factory) -> Path:
    """The tiny sample's shards with a few training images' site spelled `knee` and sex `M`."""
    split_root = tiny_shards.parent / "split"
    manifest = pd.read_parquet(split_root / "manifest.parquet")
    for field, (spelling, count) in UNMAPPED.items():
        column = {"site": "anatom_site", "sex": "sex"}[field]
        rows = manifest.index[(manifest["split"] == "train") & manifest[column].notna()][:count]
        manifest.loc[rows, column] = spelling
    out = tmp_path_factory.mktemp("context-shards") / "shards"
    write_shards(manifest, split_root, out, ShardParams(image_size=32, workers=1))
    return out


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """One training run with every field: its folder (model, history, card) and its log."""
    out = tmp_path_factory.mktemp("context-model")
    logger, records = logging.getLogger("skincancer"), []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        train(PARAMS, shards, out / "model.keras", out / "dvclive", image_size=32)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, records


def by_hand(shards: Path, part: str, batch_size: int = 8) -> tf.data.Dataset:
    """{"image", "context"} batches of a part built outside the pipeline: the images as eval_dataset decodes
    them, the context encoded from the image table's rows in the table's order."""
    images = np.concatenate([x for x, _ in eval_dataset(shards, part, 64)])
    context = encode_context(split_records(shards, part), FIELDS)
    return tf.data.Dataset.from_tensor_slices({"image": images, "context": context}).batch(batch_size)


def image_key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def expected_context(shards: Path, part: str) -> dict[str, np.ndarray]:
    """Each image of a part (by its decoded pixels) -> its encoded context row."""
    images = np.concatenate([x for x, _ in eval_dataset(shards, part, 64)])
    context = encode_context(split_records(shards, part), FIELDS)
    return {image_key(image): row for image, row in zip(images, context, strict=True)}


def test_a_context_model_takes_the_image_and_its_context_and_its_card_records_the_encoding(trained):
    out, _ = trained
    model = keras.saving.load_model(out / "model.keras")
    assert [tensor.name for tensor in model.inputs] == ["image", "context"]
    assert (model.inputs[0].dtype, model.inputs[1].dtype) == ("uint8", "float32")
    assert context_width(model) == len(context_columns(FIELDS)) == 12
    assert model.outputs[0].shape == (None, 1)
    card = read_card(out / "train_card.json", out / "model.keras", written_by="train")
    assert card.document["context"] == context_encoding(FIELDS)
    assert card.context_fields == FIELDS


def test_training_says_once_per_unknown_spelling_and_how_many_training_images_miss_each_field(trained, shards):
    _, records = trained
    lines = [record.getMessage() for record in records]
    for field, (spelling, count) in UNMAPPED.items():
        said = [line for line in lines if f"{field} {spelling!r} ({count} image(s)) is not a spelling" in line]
        assert len(said) == 1, lines
    vectors = encode_context(split_records(shards, "train"), FIELDS)
    missing = {field: int(vectors[:, context_columns(FIELDS).index(f"{field}_missing")].sum()) for field in FIELDS}
    assert missing["site"] > missing["sex"] > 0  # the unknown spellings count as missing beside the blank cells
    assert (f"of {len(vectors)} training images, missing age {missing['age']}, sex {missing['sex']}, "
            f"site {missing['site']}") in "\n".join(lines)


def test_missing_and_unknown_fields_are_encoded_as_missing_with_their_flags(shards):
    records = split_records(shards, "train")
    vectors = np.concatenate([x["context"] for x, _ in eval_dataset(shards, "train", 64, fields=FIELDS)])
    columns = context_columns(FIELDS)
    column = {name: vectors[:, columns.index(name)] for name in columns}
    no_age = records["age_approx"].isna().to_numpy()
    assert no_age.any() and (~no_age).any()
    np.testing.assert_array_equal(column["age_missing"], no_age)
    np.testing.assert_array_equal(column["age"][no_age], 0.0)
    np.testing.assert_allclose(column["age"][~no_age], records["age_approx"][~no_age] / 100, rtol=1e-6)
    knee = (records["anatom_site"] == "knee").to_numpy()
    no_site = records["anatom_site"].isna().to_numpy()
    assert knee.sum() == 3 and no_site.any()
    site_values = vectors[:, [columns.index(name) for name in columns if name.startswith("site_") and name != "site_missing"]]
    np.testing.assert_array_equal(column["site_missing"], knee | no_site)
    np.testing.assert_array_equal(site_values.sum(axis=1), ~(knee | no_site))  # one-hot where known, zeros where not
    male = (records["sex"] == "male").to_numpy()
    np.testing.assert_array_equal(column["sex_male"], male)
    np.testing.assert_array_equal(column["sex_missing"], ~male & (records["sex"] != "female").to_numpy())


def test_a_record_the_image_table_lacks_fails_naming_the_table(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    table = pd.read_parquet(copy / "images.parquet")
    table.drop(index=table.index[table["split"] == "val"][:1]).to_parquet(copy / "images.parquet", index=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images\.parquet lacks an image of the shards"):
        list(eval_dataset(copy, "val", 64, fields=FIELDS))


@pytest.mark.parametrize("imbalance", ["oversample", "class_weight"])
def test_each_image_keeps_its_own_context_through_shuffles_and_oversampling(shards, imbalance):
    """The training pipeline interleaves, shuffles and (oversample) repeats records: every image it yields comes
    with the context of that image, not of the record that was next in the table."""
    expected = expected_context(shards, "train")
    assert len(expected) == len(split_records(shards, "train"))  # every image told apart by its pixels

    def contexts(seed: int) -> list[np.ndarray]:
        found = []
        for inputs, _ in training_dataset(shards, 16, seed, augment=NO_AUGMENT, imbalance=imbalance, fields=FIELDS):
            for image, context in zip(inputs["image"].numpy(), inputs["context"].numpy(), strict=True):
                np.testing.assert_array_equal(context, expected[image_key(image)])
                found.append(context)
        return found

    first = contexts(seed=5)
    assert len(first) == len(expected) // 16 * 16
    np.testing.assert_array_equal(first, contexts(seed=5))  # the same seed: the same batches
    assert not np.array_equal(first, contexts(seed=6))  # another seed: another order, each image still its own


def test_cached_features_keep_their_context_through_shuffle_and_oversampling():
    features = np.arange(40, dtype=np.float32).reshape(20, 2)
    context = features[:, :1] * 10  # row i's context says which row it is
    labels = (np.arange(20) % 4 == 0).astype(np.float32)
    batches = feature_dataset(features, labels, 4, seed=1, strata=labels.astype(np.int64), context=context)
    for inputs, target in batches:
        np.testing.assert_array_equal(inputs["context"].numpy()[:, 0], inputs["features"].numpy()[:, 0] * 10)
        np.testing.assert_array_equal(target.numpy(), labels[inputs["features"].numpy()[:, 0].astype(int) // 2])


def test_evaluate_feeds_each_image_its_context_as_predict_images_does_by_hand(trained, shards, tmp_path):
    out, _ = trained
    params = EvaluateParams(bootstrap=20, gallery=2, tta=2)
    evaluate(params, out / "model.keras", shards, tmp_path / "metrics.json", tmp_path / "reports",
             card_path=tmp_path / "card.json")
    predictions = pd.read_csv(tmp_path / "reports/predictions.csv")
    model = load_for_inference(out / "model.keras")
    for part in ("val", "test"):
        expected = predict_images(model, by_hand(shards, part), tta=2)
        np.testing.assert_allclose(predictions.loc[predictions["split"] == part, "score"], expected, atol=2e-6)
    assert json.loads((tmp_path / "card.json").read_text())["context"] == context_encoding(FIELDS)


def test_the_context_reaches_the_output(trained, shards):
    """The same images scored with another sex, age or site score differently."""
    model = load_for_inference(trained[0] / "model.keras")
    records = split_records(shards, "val")
    images = np.concatenate([x for x, _ in eval_dataset(shards, "val", 64)])

    def scores(frame: pd.DataFrame) -> np.ndarray:
        return model.predict({"image": images, "context": encode_context(frame, FIELDS)}, verbose=0).reshape(-1)

    base = scores(records)
    for changed in ({"sex": "female"}, {"sex": "male"}, {"age_approx": 80.0}, {"anatom_site": "palms/soles"}):
        other = scores(records.assign(**changed))
        differs = ~np.isclose(base, other, rtol=0, atol=1e-6)
        column = next(iter(changed))
        moved = records[column].ne(changed[column]).fillna(True).to_numpy(bool)  # the images it changes
        assert moved.any() and differs[moved].all(), changed
        assert not differs[~moved].any(), changed


def test_training_with_context_is_deterministic(trained, shards, tmp_path):
    train(PARAMS, shards, tmp_path / "model.keras", tmp_path / "dvclive", image_size=32)
    for name in ("model.keras", "train_card.json"):
        assert (tmp_path / name).read_bytes() == (trained[0] / name).read_bytes(), name
    assert folder_bytes(tmp_path / "dvclive") == folder_bytes(trained[0] / "dvclive")


def test_the_frozen_phase_trains_the_head_with_context_on_cached_features(shards, tmp_path, caplog):
    """A pretrained backbone: phase 1 trains the head on cached features and the context beside them; the saved
    model, fed the images and their context, has the val AUC the head reached."""
    weights = tmp_path / "backbone.weights.h5"
    with seeded_construction(0):
        build_backbone("small_cnn", 32, None).save_weights(weights)
    params = PARAMS.model_copy(update={"weights": str(weights), "epochs": 2, "learning_rate": 0.01})
    with caplog.at_level(logging.INFO, logger="skincancer"):
        history = train(params, shards, tmp_path / "model.keras", tmp_path / "dvclive", image_size=32)
    assert "cached features" in caplog.text
    model = keras.saving.load_model(tmp_path / "model.keras")
    model.compile(loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
    scored = model.evaluate(eval_dataset(shards, "val", 64, fields=FIELDS), return_dict=True, verbose=0)
    best = history.loc[history["val_auc"].idxmax()]
    assert scored["auc"] == pytest.approx(best["val_auc"], abs=1e-3)
    assert scored["loss"] == pytest.approx(best["val_loss"], rel=1e-4)  # each image's own context, both ways


def test_evaluate_refuses_a_model_whose_context_is_not_the_one_its_card_records(trained, shards):
    model = load_for_inference(trained[0] / "model.keras")
    with pytest.raises(ContextMismatch, match=r"takes a patient context of 12 columns but its card records no patient"):
        predict_split(model, shards, "val")
    with pytest.raises(ContextMismatch, match=r"of 12 columns but its card records \['sex'\] \(3 columns\)"):
        predict_split(model, shards, "val", fields=["sex"])

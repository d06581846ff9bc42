"""The real-data recipe's non-backbone choices (pad, diagnosis head, augmentation, imbalance policy, TTA at two
scales, calibrated output) on the sample: an image and its half-size, JPEG q75 and quarter-turned copies get the
same probability (median |delta p| <= 0.05), while different images get clearly different ones."""

import itertools

import numpy as np
import pytest
import yaml
from conftest import split_sample
from perturbations import MAX_MEDIAN_DELTA, median_abs_delta, write_perturbed_copies
from project_copy import ROOT

from skincancer.core.model_card import card_path_for, read_card
from skincancer.core.params import EvaluateParams, ShardParams, TrainParams
from skincancer.evaluate.evaluate import evaluate
from skincancer.evaluate.inference import load_for_inference
from skincancer.serve.predict import image_files, predict
from skincancer.shard.shard import write_shards
from skincancer.train.train import train


@pytest.fixture(scope="module")
def recipe_model(tmp_path_factory):
    """A small_cnn trained with params/real.yaml's shard, train and evaluate choices but its own backbone and
    size, on 600 sample images (val must be big enough for the calibration to keep images apart: at 400
    the redrawn sample left a median spread between images of 0.09, under the 0.1 this test needs)."""
    recipe = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())
    out = tmp_path_factory.mktemp("robust")
    manifest = split_sample(out, 600, seed=2)
    shard = ShardParams.model_validate({**recipe["shard"], "image_size": 48, "workers": 2})
    write_shards(manifest, out / "split", out / "shards", shard)
    chosen = {key: recipe["train"][key] for key in ("head", "imbalance", "augment", "dropout")}
    params = TrainParams.model_validate({**chosen, "epochs": 8, "batch_size": 16, "early_stopping_patience": 8})
    train(params, out / "shards", out / "model.keras", out / "dvclive")
    evaluate_params = EvaluateParams.model_validate({**recipe["evaluate"], "bootstrap": 0, "gallery": 0})
    evaluate(evaluate_params, out / "model.keras", out / "shards", out / "metrics.json", out / "reports")
    return out, shard, evaluate_params


def test_recipe_predictions_survive_resizing_reencoding_and_rotation(recipe_model, tmp_path):
    out, shard, chosen = recipe_model
    originals = image_files([out / "split" / "test"])
    model, card = load_for_inference(out / "model.keras"), read_card(card_path_for(out / "model.keras"), out / "model.keras")
    # the card carries what predict needs, as sharded and evaluated
    assert (card.tta, card.tta_scales) == (chosen.tta, tuple(chosen.tta_scales))
    assert card.preparation == shard.model_copy(update={"image_size": 48}).preparation()  # every field, as sharded

    def probabilities(files):
        frame = predict(files, model, card, progress=False)
        assert (frame["error"] == "").all()
        return frame["probability"].to_numpy()

    base = probabilities(originals)
    between_images = np.median([abs(a - b) for a, b in itertools.combinations(base, 2)])
    assert between_images > 0.1, "the model must tell images apart for its agreement on copies to mean anything"
    for name, copies in write_perturbed_copies(originals, tmp_path).items():
        delta = median_abs_delta(base, probabilities(copies))
        assert delta <= MAX_MEDIAN_DELTA, (name, delta)
        assert delta < between_images / 4, (name, delta, between_images)

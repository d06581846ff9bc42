"""How an image is prepared is one value: from shard.* to the shards' manifest, the model card and back."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from skincancer.core.params import ShardParams
from skincancer.core.preparation import Preparation, PreparationMissing


def test_every_preparation_field_is_the_shard_param_of_its_name():
    shard = ShardParams(image_size=64, resize="pad", color_constancy="shades_of_gray", jpeg_quality=80, max_pixels=10**6)
    preparation = shard.preparation()
    assert {field.name: getattr(preparation, field.name) for field in fields(Preparation)} == {
        field.name: getattr(shard, field.name) for field in fields(Preparation)}


def test_the_value_round_trips_through_json():
    preparation = ShardParams(image_size=48, resize="pad").preparation()
    assert Preparation.from_json(json.loads(json.dumps(preparation.as_json())), "card.json") == preparation


def test_a_record_missing_a_field_is_refused_naming_the_file_the_field_and_the_stage_to_rerun():
    document = ShardParams().preparation().as_json()
    del document["max_pixels"]
    with pytest.raises(PreparationMissing, match=r"data/shards/manifest.json does not record \['max_pixels'\].*dvc repro shard"):
        Preparation.from_json(document, Path("data/shards/manifest.json"))


def test_the_shards_manifest_records_the_value_the_model_card_reads_back(tiny_shards):
    from skincancer.core.model_card import PREPARATION, card_input

    manifest_path = tiny_shards / "manifest.json"
    written = Preparation.from_json(json.loads(manifest_path.read_text()), manifest_path)
    assert written == ShardParams(image_size=32).preparation()
    card = card_input(json.loads(manifest_path.read_text()), manifest_path)
    assert Preparation.from_json(card, "train_card.json") == written and PREPARATION.items() <= card.items()

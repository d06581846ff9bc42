"""params.yaml is validated up front and errors name the offending key."""

from pathlib import Path

import pytest
import yaml

from skincancer.params import Params, ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_are_valid_and_explicit():
    params = load_params(ROOT / "params.yaml")
    assert params.train.backbone == "small_cnn" and params.train.weights is None
    # every default is spelled out in params.yaml, so `dvc params diff` shows every knob
    assert Params.model_validate(project_params()).model_dump() == params.model_dump()
    assert set(project_params()) == set(Params.model_fields)


@pytest.mark.parametrize(
    ("section", "key", "value", "names"),
    [
        ("train", "epochz", 3, "train.epochz: unknown key"),
        ("train", "epochs", "ten", "train.epochs"),
        ("train", "backbone", "resnet5O", "train.backbone"),
        ("split", "fractions", [0.8, 0.1, 0.2], "split.fractions"),
        ("shard", "resize", "squash", "shard.resize"),
        ("evaluate", "threshold", {"policy": "median"}, "evaluate.threshold.policy"),
        ("fetch", "datasets", ["isic1999"], "fetch.datasets"),
        ("train", "weights", "weights.bin", "train.weights"),
    ],
)
def test_bad_value_names_the_key(tmp_path, section, key, value, names):
    data = project_params()
    data[section][key] = value
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, data))
    assert names in str(error.value)
    assert str(tmp_path / "params.yaml") in str(error.value)


def test_unknown_section_is_named(tmp_path):
    data = project_params() | {"trian": {"epochs": 1}}
    with pytest.raises(ParamsError, match="trian: unknown key"):
        load_params(write(tmp_path, data))


def test_image_size_below_backbone_minimum(tmp_path):
    data = project_params()
    data["train"]["backbone"] = "inception_v3"
    data["shard"]["image_size"] = 64
    with pytest.raises(ParamsError, match="inception_v3's minimum 75"):
        load_params(write(tmp_path, data))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)

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
    # every knob is spelled out in params.yaml, so `dvc params diff` shows every change
    assert json_like(params.model_dump()) == json_like(Params().model_dump())
    assert keys(project_params()) == keys(Params().model_dump())
    assert project_params()["shard"]["image_size"] == "auto"  # resolved to small_cnn's 96 above


def test_the_real_data_recipe_is_a_complete_params_file_that_changes_only_what_its_ablations_back():
    """params/real.yaml replaces params.yaml as a whole; each value it changes has a row in docs/model-quality.md."""
    recipe = yaml.safe_load((ROOT / "params" / "real.yaml").read_text())
    assert keys(recipe) == keys(Params().model_dump())
    params = load_params(ROOT / "params" / "real.yaml")
    changed = {key for key in keys(recipe) if _at(recipe, key) != _at(project_params(), key)}
    assert changed == {
        ".fetch.datasets", ".labels.unknown", ".shard.resize", ".train.backbone", ".train.weights",
        ".train.fine_tune_epochs", ".train.fine_tune_layers", ".train.head", ".train.early_stopping_patience",
        ".train.imbalance", ".evaluate.tta", ".evaluate.tta_scales",
    }
    assert params.shard.image_size == 224 and params.train.head == "diagnosis"
    quality = (ROOT / "docs" / "model-quality.md").read_text()
    for key in ("shard.resize", "train.head", "train.fine_tune_layers", "evaluate.tta", "shard.color_constancy",
                "train.augment", "train.augment.resolution", "train.imbalance", "evaluate.tta_scales"):
        assert f"`{key}" in quality, key


def _at(document: dict, key: str):
    for part in key.strip(".").split("."):
        document = document[part]
    return document


def keys(value, prefix=""):
    if not isinstance(value, dict):
        return {prefix}
    return {key for name, item in value.items() for key in keys(item, f"{prefix}.{name}")}


def json_like(value):
    """Tuples as lists, so YAML and model dumps compare."""
    if isinstance(value, dict):
        return {key: json_like(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_like(item) for item in value]
    return value


@pytest.mark.parametrize(
    ("section", "key", "value", "names"),
    [
        ("train", "epochz", 3, "train.epochz: unknown key"),
        ("train", "epochs", "ten", "train.epochs"),
        ("train", "backbone", "resnet5O", "train.backbone"),
        ("split", "fractions", [0.8, 0.1, 0.2], "split.fractions"),
        ("shard", "resize", "squash", "shard.resize"),
        ("split", "group_by", "doctor_id", "split.group_by"),
        ("evaluate", "threshold", {"policy": "median"}, "evaluate.threshold.policy"),
        ("fetch", "datasets", ["isic1999"], "fetch.datasets"),
        ("train", "weights", "weights.bin", "train.weights"),
        ("fetch", "sources", [{"name": "x", "url": "ftp://h/a.zip", "layout": "isic-cli"}], "fetch.sources.0.url"),
        ("fetch", "sources", [{"name": "x", "url": "file:///a.zip", "layout": "isic2099"}], "fetch.sources.0.layout"),
        ("fetch", "sources", [{"name": "sample", "url": "file:///a.zip", "layout": "isic-cli"}], "names used twice"),
        ("fetch", "sources", [{"name": "x", "url": "https://h/", "layout": "isic2020", "files": ["a.zip"],
                               "sha256": {"b.csv": "0" * 64}}], "sha256 pins files not listed"),
        ("fetch", "datasets", [], "nothing to fetch"),
        ("labels", "malignant", ["melanom"], "'melanom' is not a diagnosis of the vocabulary (skincancer.labels); did you mean 'melanoma'?"),
        ("labels", "malignant", ["MEL"], "write it as 'melanoma'"),
        ("split", "group_by", ["patient_id", "doctor_id"], "split.group_by.1"),
        ("fetch", "metadata", [{"url": "file:///HAM10000_metadata.csv", "layout": "ham"}], "unknown metadata layout 'ham'"),
        ("fetch", "metadata", [{"url": "file:///a/m.csv", "layout": "isic-cli"}, {"url": "https://h/m.csv", "layout": "isic2020"}],
         "fetch.metadata lists two tables named ['m.csv']"),
        ("fetch", "sources", [{"name": "metadata", "url": "file:///a.zip", "layout": "isic-cli"}], "'metadata' is the folder"),
        ("evaluate", "tta_scales", [1.0, 0.5, 0.5], "evaluate.tta_scales: Value error, [1.0, 0.5, 0.5] repeats a scale"),
        ("evaluate", "tta_scales", [1.0, 2.0], "evaluate.tta_scales.1"),
        ("evaluate", "tta_scales", [], "evaluate.tta_scales"),
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


@pytest.mark.parametrize(("written", "keys"), [
    ("patient_id", ("patient_id",)), (None, ()), ("none", ()), ([], ()), (["lesion_id", "patient_id"], ("lesion_id", "patient_id")),
])
def test_group_by_takes_a_list_of_keys(tmp_path, written, keys):
    data = project_params()
    data["split"]["group_by"] = written
    assert load_params(write(tmp_path, data)).split.group_by == keys

"""params.yaml is validated up front and errors name the offending key."""

from pathlib import Path

import pytest
import yaml

from skincancer.core.params import Params, ParamsError, load_params

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
        ".fetch.datasets", ".labels.unknown", ".shard.resize", ".train.backbone", ".train.weights", ".train.epochs",
        ".train.fine_tune_epochs", ".train.fine_tune_layers", ".train.head", ".train.early_stopping_patience",
        ".train.imbalance", ".evaluate.tta", ".evaluate.tta_scales", ".evaluate.threshold.holds_on",
    }
    assert params.shard.image_size == 224 and params.train.head == "diagnosis"
    quality = (ROOT / "docs" / "model-quality.md").read_text()
    for key in ("shard.resize", "train.epochs", "train.head", "train.fine_tune_layers", "evaluate.tta", "shard.color_constancy",
                "train.augment", "train.augment.resolution", "train.imbalance", "evaluate.tta_scales",
                "evaluate.threshold.holds_on", "train.balance"):
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
        ("labels", "malignant", ["melanom"], "'melanom' is not a diagnosis of the vocabulary (skincancer.core.labels); did you mean 'melanoma'?"),
        ("labels", "malignant", ["MEL"], "write it as 'melanoma'"),
        ("split", "group_by", ["patient_id", "doctor_id"], "split.group_by.1"),
        ("fetch", "metadata", [{"url": "file:///HAM10000_metadata.csv", "layout": "ham"}], "unknown metadata layout 'ham'"),
        ("fetch", "metadata", [{"url": "file:///a/m.csv", "layout": "isic-cli"}, {"url": "https://h/m.csv", "layout": "isic2020"}],
         "fetch.metadata lists two tables named ['m.csv']"),
        ("fetch", "sources", [{"name": "metadata", "url": "file:///a.zip", "layout": "isic-cli"}], "'metadata' is the folder"),
        ("evaluate", "tta_scales", [1.0, 0.5, 0.5], "evaluate.tta_scales: [1.0, 0.5, 0.5] repeats a scale"),
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


def _changed(change: dict) -> dict:
    """The project's params with dotted keys set, e.g. {"train.weights": "imagenet"}."""
    data = project_params()
    for dotted, value in change.items():
        section, *keys = dotted.split(".")
        target = data[section]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return data


def _error(tmp_path, change: dict) -> str:
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, _changed(change)))
    return str(error.value)


@pytest.mark.parametrize(("change", "names", "value", "fix"), [
    ({"train.weights": "imagenet"}, "train.weights: 'imagenet', but backbone small_cnn has no ImageNet weights",
     "imagenet", "set it to null or a weights file"),
    ({"train.weights": "nowhere/backbone.weights.h5"}, "train.weights: nowhere/backbone.weights.h5 does not exist",
     "nowhere/backbone.weights.h5", "point it at a no-top"),
    ({"train.fine_tune_epochs": 5}, "train.fine_tune_epochs: 5 fine-tunes a pretrained backbone", "fine_tune_epochs: 5",
     "set fine_tune_epochs: 0, or weights: imagenet"),
    ({"evaluate.tta": 3}, "evaluate.tta: Input should be 1, 2, 4 or 8", "3", "(got 3)"),
    ({"evaluate.tta": True}, "evaluate.tta: true is yes/no, not a number", "true", "write a number"),
    ({"train.epochs": True}, "train.epochs: true is yes/no, not a number", "true", "write a number"),
    ({"shard.jpeg_quality": False}, "shard.jpeg_quality: false is yes/no, not a number", "false", "write a number"),
    ({"evaluate.tta_scales": [True]}, "evaluate.tta_scales.0: true is yes/no, not a number", "true", "write a number"),
    ({"train.epochs": "30"}, "train.epochs: Input should be a valid integer", "'30'", "valid integer"),
    ({"split.fractions": [1, 1, 1]}, "split.fractions: must be three positive numbers summing to 1", "[1",
     "summing to 1"),
    ({"train.backbone": "inception_v3", "shard.image_size": 64}, "  shard.image_size 64 is below inception_v3's minimum 75",
     "64", "set it to at least 75, or auto (299)"),
])
def test_mistakes_are_caught_naming_the_key_the_value_once_and_the_fix(tmp_path, change, names, value, fix):
    message = _error(tmp_path, change)
    assert names in message and fix in message, message
    problems = message.split("\n", 1)[1]  # after the file's name
    assert problems.count(value) == 1, message
    assert "'fetch'" not in message and "backbone': " not in message and "<root>" not in message  # nothing dumped


def test_numbers_keep_their_yaml_types(tmp_path):
    """Strict numbers still take a YAML int where a float is meant, and a float as written."""
    params = load_params(write(tmp_path, _changed({"shard.target_shard_mb": 16, "train.learning_rate": 0.002,
                                                   "split.fractions": [0.8, 0.1, 0.1], "evaluate.tta": 8})))
    assert params.shard.target_shard_mb == 16.0 and isinstance(params.shard.target_shard_mb, float)
    assert params.train.learning_rate == 0.002 and params.evaluate.tta == 8


def test_an_empty_file_or_a_missing_section_is_named_with_the_other_problems(tmp_path):
    from skincancer.core.params import parse_params

    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError) as error:
        load_params(empty)
    assert "missing section(s): fetch, labels, split, shard, train, evaluate, orchestration;" in str(error.value)
    assert "as the params.yaml shipped with the project does" in str(error.value)
    data = project_params()
    del data["evaluate"]
    data["train"]["epochs"] = 0
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, data))
    assert "  missing section(s): evaluate;" in str(error.value) and "train.epochs" in str(error.value)
    with pytest.raises(ParamsError, match="missing section"):  # a document given as a dict is held to the same
        parse_params({"train": project_params()["train"]})


def test_a_section_that_is_not_a_mapping_is_named_not_a_traceback(tmp_path):
    data = project_params() | {"train": 5}
    with pytest.raises(ParamsError, match="train: Input should be a valid dictionary"):
        load_params(write(tmp_path, data))


def test_the_shipped_params_have_nothing_unused():
    from skincancer.core.params import unused_settings

    assert unused_settings(load_params(ROOT / "params.yaml")) == []
    assert unused_settings(load_params(ROOT / "params" / "real.yaml")) == []


def test_augmentation_that_would_never_run_is_warned_about(tmp_path):
    from skincancer.core.params import unused_settings

    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")
    data = project_params()
    data["train"].update(weights=str(weights), cache_features=True, fine_tune_epochs=0)
    data["evaluate"]["calibration"] = {"method": "none", "prevalence": 0.02}
    warnings = unused_settings(load_params(write(tmp_path, data)))
    assert len(warnings) == 2
    assert warnings[0].startswith("train.augment is never applied") and "cache_features: false" in warnings[0]
    assert "evaluate.calibration.prevalence 0.02 is unused with method: none" in warnings[1]
    data["train"]["fine_tune_epochs"] = 3  # augmented while fine-tuning
    assert len(unused_settings(load_params(write(tmp_path, data)))) == 1


@pytest.mark.parametrize(("change", "warning"), [
    ({"train.cache_features": False}, "train.cache_features: false has no effect without train.weights"),
    ({"train.fine_tune_layers": 60}, "train.fine_tune_layers 60 is unused with fine_tune_epochs: 0"),
    ({"evaluate.threshold.policy": "youden", "evaluate.threshold.target": 0.95},
     "evaluate.threshold.target 0.95 is unused with policy: youden"),
    ({"fetch.datasets": ["isic2019"], "fetch.sample.n_images": 100}, "fetch.sample is unused"),
    ({"orchestration.dask_address": "tcp://scheduler:8786", "orchestration.dask_workers": 2},
     "orchestration.dask_workers 2 is unused"),
])
def test_a_changed_setting_that_has_no_effect_is_warned_about_once(tmp_path, change, warning):
    from skincancer.core.params import unused_settings

    warnings = unused_settings(load_params(write(tmp_path, _changed(change))))
    assert len(warnings) == 1 and warnings[0].startswith(warning), warnings


def test_defaults_left_in_place_are_not_warned_about(tmp_path):
    """params.yaml spells every key: a default the setting ignores is not the user's choice."""
    from skincancer.core.params import unused_settings

    change = {"evaluate.threshold.policy": "fixed", "fetch.datasets": ["isic2019"], "orchestration.dask_address": "tcp://h:8786"}
    assert unused_settings(load_params(write(tmp_path, _changed(change)))) == []


def test_every_stage_prints_the_warnings_and_still_runs(tmp_path, monkeypatch, capsys):
    from flows._params import stage_params

    path = write(tmp_path, _changed({"evaluate.calibration": {"method": "none", "prevalence": 0.02}}))
    monkeypatch.setenv("SKINCANCER_PARAMS", str(path))
    assert stage_params("fetch").evaluate.calibration.prevalence == 0.02
    assert "warning: evaluate.calibration.prevalence 0.02 is unused" in capsys.readouterr().err


def test_check_params_prints_the_warnings_and_still_passes(tmp_path):
    from typer.testing import CliRunner

    from skincancer.cli import app

    data = project_params()
    data["evaluate"]["calibration"] = {"method": "none", "prevalence": 0.02}
    result = CliRunner().invoke(app, ["check-params", str(write(tmp_path, data))])
    assert result.exit_code == 0 and "warning: evaluate.calibration.prevalence" in result.stderr
    assert result.stdout.strip().endswith(": ok")


def _source(**fields) -> list[dict]:
    return [{"name": "mine", "url": "https://mirror.example/isic", "layout": "isic-cli", **fields}]


def fetch_refusal(tmp_path: Path, key: str, value: object) -> str:
    """load_params' refusal of the project's params with fetch.<key> set to value."""
    data = project_params()
    data["fetch"][key] = value
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, data))
    return str(error.value)


@pytest.mark.parametrize(("key", "value", "names"), [
    ("sources", _source(files=["../../../x.zip"]), "fetch.sources.0.files: '../../../x.zip' has a '..' component"),
    ("sources", _source(files=["a.zip", "train/../../x.zip"]), "fetch.sources.0.files: 'train/../../x.zip' has a '..'"),
    ("sources", _source(files=["/tmp/x.zip"]), "fetch.sources.0.files: '/tmp/x.zip' is an absolute path"),
    ("sources", _source(files=["C:/x.zip"]), "fetch.sources.0.files: 'C:/x.zip' is an absolute path"),
    ("sources", _source(files=["..\\x.zip"]), "fetch.sources.0.files: '..\\\\x.zip' contains a backslash"),
    ("sources", _source(files=[""]), "fetch.sources.0.files: '' names no file"),
    ("sources", _source(url="https://mirror.example/isic/.."), "fetch.sources.0: url 'https://mirror.example/isic/..': "
     "its last part has a '..' component"),
    ("metadata", [{"url": "https://mirror.example/tables/..", "layout": "isic-cli"}],
     "fetch.metadata.0.url: 'https://mirror.example/tables/..': its file name '..' has a '..' component"),
    ("metadata", [{"url": "https://mirror.example", "layout": "isic-cli"}], "its file name '' names no file"),
])
def test_a_fetch_path_that_would_land_outside_data_raw_is_refused_naming_key_and_value(tmp_path, key, value, names):
    message = fetch_refusal(tmp_path, key, value)
    assert names in message and "data/raw/" in message


@pytest.mark.parametrize(("key", "value", "names"), [
    ("sources", _source(url="https://mirror.example/isic/a.zip", sha256="abc"), "fetch.sources.0.sha256: 'abc' is not a sha256"),
    ("sources", _source(files=["a.zip"], sha256={"a.zip": "g" * 64}), "fetch.sources.0.sha256: pin of 'a.zip': 'ggg"),
    ("metadata", [{"url": "https://mirror.example/m.csv", "layout": "isic-cli", "sha256": "0" * 63}],
     "fetch.metadata.0.sha256: '000"),
])
def test_a_sha256_pin_that_is_not_64_hex_digits_is_refused_up_front(tmp_path, key, value, names):
    message = fetch_refusal(tmp_path, key, value)
    assert names in message and "64 hex digits" in message


def test_check_params_refuses_a_file_outside_data_raw_and_takes_upper_case_pins(tmp_path):
    from typer.testing import CliRunner

    from skincancer.cli import app

    data = project_params()
    data["fetch"]["sources"] = _source(files=["../../../x.zip"])
    result = CliRunner().invoke(app, ["check-params", str(write(tmp_path, data))])
    assert result.exit_code == 2 and "fetch.sources.0.files: '../../../x.zip'" in result.stderr
    data["fetch"]["sources"] = _source(files=["train/x.zip"], sha256={"train/x.zip": "AB" * 32})
    assert load_params(write(tmp_path, data)).fetch.sources[0].sha256 == {"train/x.zip": "ab" * 32}

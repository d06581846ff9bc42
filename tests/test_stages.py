"""Stage scripts fail before any work, with a message that says what to fix."""

import sys

import pytest
import yaml
from project_copy import copy_project, project_env, run


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "project")


def stage(project, name):
    return run([sys.executable, "-m", f"flows.{name}"], project, project_env(project), check=False)


@pytest.mark.parametrize(("name", "missing", "first"), [
    ("split", "data/raw/index.parquet", "fetch"),
    ("shard", "data/split/manifest.parquet", "split"),
    ("train", "data/shards/manifest.json", "shard"),
    ("evaluate", "models/model.keras", "train"),
])
def test_missing_input_names_the_stage_to_run_first(project, name, missing, first):
    result = stage(project, name)
    assert result.returncode == 2
    assert f"{name}: input {missing} not found; run the {first} stage first (`dvc repro {first}`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "output"), [("fetch", "data/raw"), ("resolve", "data/resolved.json")])
def test_bad_params_fail_before_any_work(project, name, output):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["learning_rat"] = 0.1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage(project, name)  # a typo in any section stops every stage
    assert result.returncode == 2
    assert "train.learning_rat: unknown key" in result.stderr
    assert not (project / output).exists()


def test_resolve_writes_the_size_auto_stands_for_and_says_so(project):
    result = stage(project, "resolve")  # the shipped params.yaml: small_cnn, shard.image_size auto
    assert result.returncode == 0, result.stderr
    assert (project / "data/resolved.json").read_text() == '{\n  "shard.image_size": 96\n}\n'
    assert "resolve: shard.image_size 96 (train.backbone small_cnn's input size is 96; 'auto' stands for it)" in result.stdout

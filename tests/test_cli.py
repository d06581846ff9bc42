"""The `skincancer` command: sample, check-params, metrics."""

import json

from typer.testing import CliRunner

from skincancer.cli import app

runner = CliRunner()


def test_sample_writes_both_archive_layouts(tmp_path):
    result = runner.invoke(app, ["sample", str(tmp_path / "out"), "--n-images", "40", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/isic2017-udacity/train.zip").is_file()
    assert (tmp_path / "out/isic2020/ISIC_2020_Training_GroundTruth.csv").is_file()
    assert "isic2020:" in result.output


def test_check_params_names_the_bad_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  seeed: 1\n")
    result = runner.invoke(app, ["check-params", str(path)])
    assert result.exit_code == 2
    assert "split.seeed: unknown key" in result.output


def test_metrics_prints_test_values(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"threshold": 0.25, "val": {}, "test": {"roc_auc": 0.91, "n": 120}}))
    result = runner.invoke(app, ["metrics", str(path)])
    assert result.exit_code == 0
    assert "threshold (chosen on val): 0.2500" in result.output
    assert "test roc_auc  0.9100" in result.output and "test n        120" in result.output
    missing = runner.invoke(app, ["metrics", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "dvc repro" in missing.output


def test_metrics_prints_undefined_values_as_such(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"threshold": 0.5, "val": {}, "test": {"roc_auc": None, "n": 12}}))
    result = runner.invoke(app, ["metrics", str(path)])
    assert result.exit_code == 0 and "test roc_auc  n/a (undefined)" in result.output


def test_diff_report_without_metrics_says_to_run_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["diff-report", "--base", "HEAD"])
    assert result.exit_code == 2 and "run the pipeline first" in result.output


def test_diff_report_against_an_unknown_revision_names_it(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": 0.5, "val": {}, "test": {}}))
    result = runner.invoke(app, ["diff-report", "--base", "no-such-branch"])
    assert result.exit_code == 2 and "'no-such-branch'" in result.output and "--base" in result.output

"""metrics_diff: every metric with old, new and delta, in metrics.json's order, at a fixed precision."""

from skincancer.review.metrics_diff import changes, diff_markdown, flatten

OLD = {"threshold": 0.31, "val": {"roc_auc": 0.9, "n": 100, "precision": None}, "test": {"roc_auc": 0.8, "n": 98}}
NEW = {"threshold": 0.35, "val": {"roc_auc": 0.925, "n": 100, "precision": 0.5}, "test": {"roc_auc": 0.85, "n": 98}}


def test_flatten_keeps_the_files_key_order():
    assert list(flatten(NEW)) == ["threshold", "val.roc_auc", "val.n", "val.precision", "test.roc_auc", "test.n"]


def test_table_rows_old_new_delta_in_order():
    lines = diff_markdown(OLD, NEW).splitlines()
    assert lines[:2] == ["| metric | old | new | delta |", "|---|---:|---:|---:|"]
    assert lines[2:] == [
        "| threshold | 0.3100 | 0.3500 | +0.0400 |",
        "| val.roc_auc | 0.9000 | 0.9250 | +0.0250 |",
        "| val.n | 100 | 100 | +0 |",
        "| val.precision | - | 0.5000 | - |",
        "| test.roc_auc | 0.8000 | 0.8500 | +0.0500 |",
        "| test.n | 98 | 98 | +0 |",
    ]


def test_no_previous_metrics_and_removed_keys():
    assert "| test.roc_auc | - | 0.8500 | - |" in diff_markdown(None, NEW)
    gone = changes({"val": {"old_key": 1.0}}, {"val": {"roc_auc": 0.9}})
    assert [(c.name, c.old, c.new) for c in gone] == [("val.roc_auc", None, 0.9), ("val.old_key", 1.0, None)]


def test_only_changed_rows():
    table = diff_markdown(OLD, NEW, only_changed=True)
    assert "val.n" not in table and "test.n" not in table and "threshold" in table


def test_calibration_rows_show_words_as_they_are_and_numbers_with_their_delta():
    old = {"threshold": 0.3, "calibration": {"method": "none"}}
    new = {"threshold": 0.3, "calibration": {"method": "platt", "slope": 0.9}}
    table = diff_markdown(old, new)
    assert "| calibration.method | none | platt | - |" in table
    assert "| calibration.slope | - | 0.9000 | - |" in table
    assert [c.delta for c in changes(new, new) if c.name.startswith("calibration")] == [None, 0.0]


def test_a_cross_validated_run_shows_its_out_of_fold_section_and_each_fold_against_a_single_model():
    """The PR report's table (and the pipeline's end-of-run diff) of a single-model base against a
    cross-validated change: val's rows end, the oof rows, with each fold's AUC, are new."""
    folded = {"threshold": 0.3, "oof": {"roc_auc": 0.91, "folds": {"fold0": {"roc_auc": 0.9}, "fold1": {"roc_auc": 0.92}},
                                        "fold_roc_auc_mean": 0.91, "fold_roc_auc_sd": 0.014}, "test": {"roc_auc": 0.86}}
    table = diff_markdown(OLD, folded)
    for row in ("| oof.roc_auc | - | 0.9100 | - |", "| oof.folds.fold1.roc_auc | - | 0.9200 | - |",
                "| oof.fold_roc_auc_sd | - | 0.0140 | - |", "| val.roc_auc | 0.9000 | - | - |",
                "| test.roc_auc | 0.8000 | 0.8600 | +0.0600 |"):
        assert row in table, row

"""metrics: agree with scikit-learn on known inputs; the threshold only ever sees validation data."""

import numpy as np
import pytest
from sklearn import metrics as skm

from skincancer import metrics
from skincancer.metrics import METRIC_KEYS, binary_metrics, choose_threshold, evaluation_metrics, partial_auc_above_tpr
from skincancer.params import EvaluateParams, ThresholdParams


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    return y, p


def test_values_match_sklearn(scored):
    y, p = scored
    threshold = 0.5
    values = binary_metrics(y, p, threshold, resamples=200, seed=1)
    predicted = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, predicted).ravel()
    expected = {
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "sensitivity": skm.recall_score(y, predicted),
        "specificity": tn / (tn + fp),
        "precision": skm.precision_score(y, predicted),
        "f1": skm.f1_score(y, predicted),
        "accuracy": skm.accuracy_score(y, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(y, predicted),
        "brier": skm.brier_score_loss(y, p),
    }
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-6), key
    assert list(values) == list(METRIC_KEYS)
    assert values["n"] == 400 and values["n_malignant"] == y.sum()
    assert values["roc_auc_ci_low"] < values["roc_auc"] < values["roc_auc_ci_high"]


def test_known_small_case():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.9])
    values = binary_metrics(y, p, threshold=0.7, resamples=0)
    assert values["roc_auc"] == pytest.approx(7 / 8)
    assert (values["sensitivity"], values["specificity"], values["precision"]) == (1.0, 0.75, pytest.approx(2 / 3))
    # 95% sensitivity needs both positives: threshold 0.7 -> one false positive of four
    assert values["specificity_at_95_sensitivity"] == 0.75


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(5, 50))
    p = rng.integers(0, 5, size=(5, 50)) / 4  # many ties
    expected = [skm.roc_auc_score(row_y, row_p) for row_y, row_p in zip(y, p)]
    assert metrics._auc_from_ranks(y, p) == pytest.approx(expected)


def test_bootstrap_ci_is_seeded():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 100)
    p = rng.random(100)
    assert metrics.bootstrap_auc_ci(y, p, 300, seed=2) == metrics.bootstrap_auc_ci(y, p, 300, seed=2)
    assert metrics.bootstrap_auc_ci(y, p, 300, seed=2) != metrics.bootstrap_auc_ci(y, p, 300, seed=3)


def test_partial_auc_bounds_and_reference():
    y = np.array([0] * 50 + [1] * 50)
    assert partial_auc_above_tpr(y, y.astype(float)) == pytest.approx(0.2)  # perfect: the whole strip
    assert partial_auc_above_tpr(y, 1.0 - y) == pytest.approx(0.0)
    # a random scorer's ROC is the diagonal: area of {tpr >= .8} under it = 0.2 * 0.2 / 2
    rng = np.random.default_rng(0)
    y_big = rng.integers(0, 2, 200_000)
    assert partial_auc_above_tpr(y_big, rng.random(200_000)) == pytest.approx(0.02, abs=2e-3)


def test_sensitivity_policy_reaches_target_on_val(scored):
    y, p = scored
    threshold = choose_threshold(y, p, ThresholdParams(policy="sensitivity", target=0.9))
    assert skm.recall_score(y, p >= threshold) >= 0.9
    # and it is the highest such threshold: any higher candidate misses the target
    higher = np.unique(p[p > threshold])
    assert all(skm.recall_score(y, p >= t) < 0.9 for t in higher)


def test_youden_and_fixed(scored):
    y, p = scored
    t = choose_threshold(y, p, ThresholdParams(policy="youden"))
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    assert t == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    assert choose_threshold(y, p, ThresholdParams(policy="fixed", value=0.37)) == 0.37


def test_threshold_never_depends_on_test_data(scored):
    y, p = scored
    params = EvaluateParams(bootstrap=50)
    val = (y[:200], p[:200])
    base = evaluation_metrics(val, (y[200:], p[200:]), params)
    assert base["threshold"] == pytest.approx(choose_threshold(*val, params.threshold), abs=1e-6)
    rng = np.random.default_rng(9)
    for _ in range(3):  # arbitrary test sets: the operating point stays where validation put it
        other = evaluation_metrics(val, (rng.integers(0, 2, 50), rng.random(50)), params)
        assert other["threshold"] == base["threshold"] and other["val"] == base["val"]
    # and the test sensitivity is measured at exactly that threshold
    y_test, p_test = y[200:], p[200:]
    assert base["test"]["sensitivity"] == pytest.approx(skm.recall_score(y_test, p_test >= base["threshold"]), abs=1e-6)


def test_undefined_metrics_are_null_with_a_warning_never_a_made_up_number(caplog):
    y, p = np.zeros(6, dtype=int), np.array([0.1, 0.2, 0.3, 0.4, 0.7, 0.9])
    values = binary_metrics(y, p, 0.5, resamples=20, split="test")
    for key in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "sensitivity", "balanced_accuracy",
                "specificity_at_95_sensitivity", "pauc_above_80_tpr"):
        assert values[key] is None, key
    assert values["specificity"] == pytest.approx(4 / 6, abs=1e-6) and values["precision"] == 0.0
    assert values["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1]), abs=1e-6)
    assert "test split (6 benign, 0 malignant, 2 called malignant): roc_auc" in caplog.text
    import json

    assert json.loads(json.dumps(values))["roc_auc"] is None  # null in metrics.json, not NaN


def test_no_malignant_calls_leaves_precision_undefined():
    values = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9, resamples=0)
    assert values["precision"] is None and values["sensitivity"] == 0.0 and values["roc_auc"] == 1.0
    assert values["roc_auc_ci_low"] is None  # bootstrap: 0 resamples asked


def test_single_class_validation_falls_back_to_the_fixed_value(caplog):
    policy = ThresholdParams(policy="sensitivity", value=0.42)
    assert choose_threshold(np.zeros(10, dtype=int), np.linspace(0, 1, 10), policy) == 0.42
    assert "val split holds one class only" in caplog.text

"""metrics: agree with scikit-learn on known inputs; the threshold only ever sees validation data."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from skincancer.core.params import EvaluateParams, ThresholdParams
from skincancer.evaluate import metrics
from skincancer.evaluate.metrics import (
    METRIC_KEYS,
    binary_metrics,
    choose_threshold,
    evaluation_metrics,
    partial_auc_above_tpr,
)


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


def test_weighted_auc_equals_sklearn_with_sample_weights_and_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    p = rng.integers(0, 5, 50) / 4  # many ties
    weights = rng.integers(0, 4, size=(5, 50))  # times each image is drawn, 0 included
    expected = [skm.roc_auc_score(y, p, sample_weight=row) for row in weights]
    assert metrics.weighted_auc(y, p, weights) == pytest.approx(expected)
    assert metrics.weighted_auc(y, p, np.ones(50)) == pytest.approx([skm.roc_auc_score(y, p)])
    assert np.isnan(metrics.weighted_auc(y, p, (y == 1)[None])).all()  # a resample of one class: no AUC


def test_bootstrap_ci_is_seeded():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 100)
    p = rng.random(100)
    assert metrics.bootstrap_auc_ci(y, p, 300, seed=2) == metrics.bootstrap_auc_ci(y, p, 300, seed=2)
    assert metrics.bootstrap_auc_ci(y, p, 300, seed=2) != metrics.bootstrap_auc_ci(y, p, 300, seed=3)


def test_group_bootstrap_draws_whole_groups():
    groups = np.array(["c", "a", "b", "a", "c", "c", "d"])  # sizes a 2, b 1, c 3, d 1
    weights = metrics.group_bootstrap_weights(groups, 200, seed=4)
    assert weights.shape == (200, 7)
    for name in np.unique(groups):  # every image of a group is drawn as often as its group
        members = weights[:, groups == name]
        assert (members == members[:, :1]).all(), name
    first_of_each = [list(groups).index(name) for name in "abcd"]
    assert (weights[:, first_of_each].sum(axis=1) == 4).all()  # 4 groups drawn per resample
    assert len({row.tobytes() for row in weights}) > 20  # and they vary (35 ways to draw 4 of 4 groups)


def test_one_image_per_group_is_the_image_bootstrap():
    """Groups of one draw exactly what drawing images does: the same rows, so the same interval."""
    rng = np.random.default_rng(6)
    y, p = rng.integers(0, 2, 80), rng.random(80)
    rows = np.random.default_rng(1).integers(0, 80, size=(500, 80))
    image_aucs = np.array([skm.roc_auc_score(y[r], p[r]) if 0 < y[r].sum() < 80 else np.nan for r in rows])
    expected = np.quantile(image_aucs[np.isfinite(image_aucs)], [0.025, 0.975])
    assert metrics.bootstrap_auc_ci(y, p, 500, seed=1) == pytest.approx(tuple(expected))
    image_ids = np.array([f"ISIC_{i:07d}" for i in rng.permutation(80)])  # any names, in any order
    assert metrics.bootstrap_auc_ci(y, p, 500, seed=1, groups=image_ids) == metrics.bootstrap_auc_ci(y, p, 500, seed=1)


def test_copies_of_an_image_in_its_group_add_no_evidence():
    """Five copies of each image, grouped: the group interval is the one of the originals, the image
    interval pretends five times the evidence and comes out narrower."""
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 2, 60), rng.random(60) * 0.6 + rng.integers(0, 2, 60) * 0.2
    groups = np.array([f"patient{i}" for i in range(60)])
    copies = (np.repeat(y, 5), np.repeat(p, 5))
    original = metrics.bootstrap_auc_ci(y, p, 400, seed=3, groups=groups)
    assert metrics.bootstrap_auc_ci(*copies, 400, seed=3, groups=np.repeat(groups, 5)) == pytest.approx(original, abs=1e-12)
    image_low, image_high = metrics.bootstrap_auc_ci(*copies, 400, seed=3)
    assert image_high - image_low < 0.6 * (original[1] - original[0])


def test_group_interval_is_wider_where_groups_hold_correlated_images():
    """Patients with many images that share a patient-level score shift: resampling images ignores that
    the images of one patient move together."""
    rng = np.random.default_rng(8)
    patients, per_patient = 40, 12
    patient_label = rng.integers(0, 2, patients)
    patient_shift = rng.normal(0, 0.25, patients)
    y = np.repeat(patient_label, per_patient)
    p = 0.3 * y + np.repeat(patient_shift, per_patient) + rng.normal(0, 0.05, patients * per_patient)
    groups = np.repeat(np.arange(patients), per_patient)
    group_low, group_high = metrics.bootstrap_auc_ci(y, p, 1000, seed=0, groups=groups)
    image_low, image_high = metrics.bootstrap_auc_ci(y, p, 1000, seed=0)
    assert group_high - group_low > 2 * (image_high - image_low)
    assert group_low < skm.roc_auc_score(y, p) < group_high


@pytest.mark.parametrize(("successes", "trials"), [(21, 24), (0, 10), (10, 10), (1, 3), (57, 400), (1, 1)])
def test_wilson_interval_matches_scipy(successes, trials):
    expected = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    assert metrics.wilson_interval(successes, trials) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_interval_known_case_and_empty():
    low, high = metrics.wilson_interval(21, 24)  # 87.5%: the textbook 69.0%-95.7%
    assert (round(low, 3), round(high, 3)) == (0.690, 0.957)
    assert metrics.wilson_interval(0, 0) == (None, None)


def test_proportions_carry_wilson_intervals_over_image_counts():
    y = np.array([1] * 24 + [0] * 76)
    p = np.array([0.9] * 21 + [0.1] * 3 + [0.8] * 6 + [0.2] * 70)  # 21 of 24 caught, 70 of 76 cleared
    values = binary_metrics(y, p, 0.5, resamples=0)
    for key, (successes, trials) in {"sensitivity": (21, 24), "specificity": (70, 76), "precision": (21, 27)}.items():
        expected = binomtest(successes, trials).proportion_ci(method="wilson")
        assert values[key] == pytest.approx(successes / trials, abs=1e-6)
        assert (values[f"{key}_ci_low"], values[f"{key}_ci_high"]) == pytest.approx((expected.low, expected.high), abs=1e-6)


def test_paired_difference_tells_a_real_gain_from_noise():
    rng = np.random.default_rng(11)
    patients, per_patient = 150, 3
    y = np.repeat(rng.integers(0, 2, patients), per_patient)
    groups = np.repeat(np.arange(patients), per_patient)
    base = 0.15 * y + rng.normal(0.4, 0.2, len(y))
    better = 0.45 * y + rng.normal(0.4, 0.2, len(y))  # clearly separates the classes better
    jittered = base + rng.normal(0, 0.01, len(y))  # the base model, slightly perturbed
    gain = metrics.paired_auc_difference(y, base, better, groups, 1000, seed=0)
    assert gain.difference == pytest.approx(skm.roc_auc_score(y, better) - skm.roc_auc_score(y, base))
    assert 0 < gain.low < gain.difference < gain.high
    noise = metrics.paired_auc_difference(y, base, jittered, groups, 1000, seed=0)
    assert noise.low < 0 < noise.high
    assert metrics.paired_auc_difference(y, base, better, groups, 1000, seed=0) == gain  # seeded


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
    for key in ("roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "pr_auc", "sensitivity", "sensitivity_ci_low",
                "sensitivity_ci_high", "balanced_accuracy", "specificity_at_95_sensitivity", "pauc_above_80_tpr"):
        assert values[key] is None, key
    assert values["specificity_ci_low"] < values["specificity"] < values["specificity_ci_high"]
    assert values["specificity"] == pytest.approx(4 / 6, abs=1e-6) and values["precision"] == 0.0
    assert values["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1]), abs=1e-6)
    assert "test split (6 benign, 0 malignant, 2 called malignant): roc_auc" in caplog.text
    import json

    assert json.loads(json.dumps(values))["roc_auc"] is None  # null in metrics.json, not NaN


def test_no_malignant_calls_leaves_precision_undefined():
    values = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9, resamples=0)
    assert values["precision"] is None and values["sensitivity"] == 0.0 and values["roc_auc"] == 1.0
    assert values["precision_ci_low"] is None and values["precision_ci_high"] is None
    assert values["sensitivity_ci_low"] == 0.0 and 0 < values["sensitivity_ci_high"] < 1  # 0 of 2: still an interval
    assert values["roc_auc_ci_low"] is None  # bootstrap: 0 resamples asked


def test_single_class_validation_falls_back_to_the_fixed_value(caplog):
    policy = ThresholdParams(policy="sensitivity", value=0.42)
    assert choose_threshold(np.zeros(10, dtype=int), np.linspace(0, 1, 10), policy) == 0.42
    assert "val split holds one class only" in caplog.text

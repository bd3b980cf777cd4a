"""Headline metrics, per-class rates and their bootstrap intervals against scikit-learn on known inputs."""

import numpy as np
import pytest
from sklearn import metrics as skm

import workbench  # noqa: F401  (JAX backend before anything imports keras)
from workbench import metrics as M
from workbench.params import EvaluateParams


def _model_outputs(n, k=4, seed=0, sharp=2.0):
    """Seeded labels and probabilities of a noisy but informative 'model' (synthetic, for metric checks)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += sharp
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_per_class_rates_match_sklearn():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    pred = np.array([0, 1, 1, 1, 0, 2, 1, 1, 0, 1])  # class 3 is never predicted: PPV undefined
    r = M.per_class_rates(y, pred, 4)
    labels = [0, 1, 2, 3]
    np.testing.assert_allclose(r["sensitivity"], skm.recall_score(y, pred, labels=labels, average=None))
    np.testing.assert_allclose(r["f1"], skm.f1_score(y, pred, labels=labels, average=None, zero_division=0.0))
    ppv = skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    np.testing.assert_allclose(r["ppv"], ppv)
    assert np.isnan(r["ppv"][3])
    for c in labels:  # specificity = recall of "not c"; NPV = precision of "not c"
        assert r["specificity"][c] == pytest.approx(skm.recall_score(y != c, pred != c))
        assert r["npv"][c] == pytest.approx(skm.precision_score(y != c, pred != c))
    assert r["support"].tolist() == [2, 3, 2, 3]
    # by hand, class 1: tp 2 (#2, #3), fn 1 (#4), fp 4 (#1, #6, #7, #9), tn 3
    assert (r["sensitivity"][1], r["specificity"][1], r["ppv"][1], r["npv"][1]) == \
        pytest.approx((2 / 3, 3 / 7, 2 / 6, 3 / 4))


@pytest.mark.parametrize("task,k", [("multi-class", 5), ("binary-class", 2)])
def test_headline_point_and_bootstrap_vector_match_sklearn(task, k):
    y, p = _model_outputs(600, k=k, seed=1, sharp=1.0)
    p[:150] = np.round(p[:150], 1)  # ties, as float32 softmax outputs often have
    p = p / p.sum(1, keepdims=True)
    pt = M.headline_point(y, p, task)
    pred = (p[:, 1] > 0.5).astype(int) if task == "binary-class" else p.argmax(1)
    assert pt["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    auc = skm.roc_auc_score(y, p[:, 1]) if task == "binary-class" else skm.roc_auc_score(y, p, multi_class="ovr")
    assert pt["auc"] == pytest.approx(auc)
    assert pt["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    # the fast vector used inside the bootstrap gives the same numbers, element by element
    v = M.headline_vector(y, p, task)
    ref = np.concatenate([[pt["acc"], pt["auc"], pt["balanced_acc"]],
                          *[pt["per_class_rates"][r] for r in M.PER_CLASS_RATES]])
    assert len(v) == 3 + 5 * k
    np.testing.assert_allclose(v, ref, atol=1e-12, equal_nan=True)


def test_bootstrap_vector_with_undefined_rates_and_missing_class():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    p = np.tile([0.7, 0.2, 0.1], (8, 1))  # always predicts class 0
    v = M.headline_vector(y, p)
    pt = M.headline_point(y, p)
    ref = np.concatenate([[pt["acc"], pt["auc"], pt["balanced_acc"]],
                          *[pt["per_class_rates"][r] for r in M.PER_CLASS_RATES]])
    np.testing.assert_allclose(v, ref, equal_nan=True)
    assert np.isnan(pt["per_class_rates"]["ppv"][1])  # never predicted: undefined, not 0


def test_intervals_contain_the_estimate_and_narrow_with_more_samples():
    widths = {}
    for n in (200, 2000):
        y, p = _model_outputs(n, seed=2)
        r = M.headline_intervals(y, p, n_resamples=200, seed=0)
        for key in ("acc", "auc", "balanced_acc"):
            lo, hi = r[f"{key}_ci95"]
            assert lo <= r[key] <= hi, (n, key, lo, r[key], hi)
            widths[(n, key)] = hi - lo
        for name, row in r["per_class_rates"].items():
            for v, (lo, hi) in zip(row["value"], row["ci95"]):
                assert lo <= v <= hi, (n, name)
        assert r["bootstrap"]["n_resamples"] == 200 and "stratified" in r["bootstrap"]["method"]
    for key in ("acc", "auc", "balanced_acc"):
        assert widths[(2000, key)] < 0.6 * widths[(200, key)], key  # ~1/sqrt(10) ≈ 0.32 expected


def test_intervals_are_seeded():
    y, p = _model_outputs(300, seed=3)
    a = M.headline_intervals(y, p, n_resamples=100, seed=7)
    b = M.headline_intervals(y, p, n_resamples=100, seed=7)
    c = M.headline_intervals(y, p, n_resamples=100, seed=8)
    assert a["acc_ci95"] == b["acc_ci95"] and a["auc_ci95"] == b["auc_ci95"]
    assert a["auc_ci95"] != c["auc_ci95"]


def test_default_resamples_at_least_1000():
    assert EvaluateParams().n_resamples >= 1000


def test_paired_gain():
    y, p = _model_outputs(400, seed=4)
    same = M.paired_gain(y, p, p.copy(), n_resamples=100)
    assert same["acc_gain"] == 0 and same["acc_gain_ci95"] == [0.0, 0.0]
    better = np.eye(4)[y] * 0.5 + p * 0.5  # moves every image towards its true class
    g = M.paired_gain(y, p, better, n_resamples=200)
    assert g["acc"] == pytest.approx(skm.accuracy_score(y, better.argmax(1)))
    assert g["acc_gain"] == pytest.approx(g["acc"] - skm.accuracy_score(y, p.argmax(1)))
    assert g["acc_gain"] > 0 and g["acc_gain_ci95"][0] > 0  # the paired interval excludes no gain


def test_threshold_for_sensitivity_on_val_reported_on_test():
    rng = np.random.default_rng(5)
    y_val, y_test = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    s_val = np.clip(0.3 * y_val + rng.normal(0.35, 0.2, 500), 0, 1)
    s_test = np.clip(0.3 * y_test + rng.normal(0.35, 0.2, 500), 0, 1)
    op = M.operating_point(y_val, s_val, y_test, s_test, 0.9, n_resamples=200)
    t = op["threshold"]
    assert op["reached"] and op["val_sensitivity"] >= 0.9
    assert skm.recall_score(y_val, s_val >= t) == pytest.approx(op["val_sensitivity"])
    # the highest such threshold: the next higher score on val no longer reaches the target
    higher = s_val[s_val > t]
    if len(higher):
        assert skm.recall_score(y_val, s_val >= higher.min()) < 0.9
    assert op["test"]["sensitivity"] == pytest.approx(skm.recall_score(y_test, s_test >= t))
    assert op["test"]["specificity"] == pytest.approx(skm.recall_score(1 - y_test, s_test < t))
    assert op["test"]["ppv"] == pytest.approx(skm.precision_score(y_test, s_test >= t))
    lo, hi = op["test"]["sensitivity_ci95"]
    assert lo <= op["test"]["sensitivity"] <= hi


def test_curves_summary_matches_sklearn():
    y, p = _model_outputs(300, seed=6)
    c = M.curves_summary(y, p)
    for k in range(4):
        assert c["roc_auc"][k] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        assert c["average_precision"][k] == pytest.approx(skm.average_precision_score(y == k, p[:, k]))


@pytest.mark.parametrize("value,ci,where", [(0.90, [0.91, 0.95], "above"), (0.96, [0.91, 0.95], "below"),
                                            (0.93, [0.91, 0.95], "overlaps"), (0.95, [0.91, 0.95], "overlaps")])
def test_interval_position(value, ci, where):
    assert M.interval_position(value, ci) == where

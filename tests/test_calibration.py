"""Calibration: ECE by hand, temperature scaling fixes a deliberately over-confident model, calibration.json."""

import json

import numpy as np
import pytest

import workbench  # noqa: F401
from workbench import calibration as C
from workbench.errors import WorkbenchError
from workbench.runs import Run


def _overconfident(n, k=5, seed=0, factor=3.0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated); the 'model' reports softmax(factor·z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in true_p])
    over = np.exp(factor * z) / np.exp(factor * z).sum(1, keepdims=True)
    return y, over


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    # 2 bins: [0.5, 1] holds all four (conf 0.9, 0.8, 0.7, 0.6; correct 1, 0, 1, 1): |0.75 - 0.75| = 0
    assert C.ece(probs, y, n_bins=2) == pytest.approx(0.0)
    # 10 bins: 0.9 → bin 9 (acc 1), 0.8 → bin 8 (acc 0), 0.7 → bin 7 (acc 1), 0.6 → bin 6 (acc 1)
    assert C.ece(probs, y, n_bins=10) == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)
    rel = C.reliability(probs, y, n_bins=10)
    assert sum(rel["count"]) == 4 and rel["accuracy"][8] == 0.0 and rel["confidence"][9] == pytest.approx(0.9)


def test_temperature_scaling_reduces_ece_of_overconfident_model():
    y_val, p_val = _overconfident(2000, seed=1)
    y_test, p_test = _overconfident(2000, seed=2)
    r = C.evaluate(p_val, y_val, p_test, y_test, n_bins=15, n_resamples=200, seed=0)
    assert r["temperature"] == pytest.approx(3.0, rel=0.15)  # recovers the over-sharpening factor
    assert r["ece"] > 0.08
    assert r["ece_after_temperature"] < 0.4 * r["ece"]
    assert r["nll_after_temperature"] < r["nll"]
    lo, hi = r["ece_ci95"]
    assert lo <= r["ece"] <= hi
    assert r["ece_after_temperature_ci95"][1] < lo  # the intervals do not overlap
    # arg-max is unchanged by a temperature: accuracy is untouched
    assert (C.apply_temperature(p_test, r["temperature"]).argmax(1) == p_test.argmax(1)).all()


def test_calibration_json_round_trip_and_write_once(tmp_path):
    y, p = _overconfident(500, seed=3)
    r = C.evaluate(p, y, p, y)
    run = Run(path=tmp_path, stage="evaluate")
    C.save(run, r)
    doc = json.loads((tmp_path / C.CALIBRATION_FILE).read_text())
    assert doc["fitted_on"] == "val" and doc["n_fit"] == 500
    assert C.load_temperature(tmp_path) == pytest.approx(r["temperature"])
    with pytest.raises(WorkbenchError, match="write-once"):
        C.save(run, r)
    assert C.load_temperature(tmp_path / "elsewhere") is None


# --- multi-label: one temperature per label on the sigmoid logit ------------------------------------------------
ML = "multi-label, binary-class"


def _multilabel_miscalibrated(n, factors=(3.0, 1.0, 0.5), seed=0):
    """Labels drawn from sigmoid(z) per label (so sigmoid(z) is calibrated); the 'model' reports
    sigmoid(factor_l · z): over-confident (3), calibrated (1), under-confident (0.5)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, len(factors)))
    y = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return y, 1 / (1 + np.exp(-z * np.asarray(factors)))


def test_per_label_temperatures_recover_each_labels_miscalibration():
    y_val, p_val = _multilabel_miscalibrated(3000, seed=1)
    y_test, p_test = _multilabel_miscalibrated(3000, seed=2)
    r = C.evaluate(p_val, y_val, p_test, y_test, n_bins=15, n_resamples=100, seed=0, task=ML)
    assert r["task"] == ML and len(r["temperature"]) == 3
    np.testing.assert_allclose(r["temperature"], [3.0, 1.0, 0.5], rtol=0.15)
    assert r["fit"]["method"] == "temperature per label" and r["fit"]["labels_not_fitted"] == []
    assert r["nll_after_temperature"] < r["nll"] and r["fit"]["nll_after"] < r["fit"]["nll_before"]
    before, after = r["ece_per_label"], r["ece_after_temperature_per_label"]
    assert r["ece"] == pytest.approx(np.mean(before)) and r["ece_after_temperature"] == pytest.approx(np.mean(after))
    assert before[0] > 0.08 and after[0] < 0.4 * before[0] and after[2] < before[2]
    lo, hi = r["ece_ci95"]
    assert lo <= r["ece"] <= hi and r["ece_after_temperature_ci95"][1] < lo
    assert len(r["ece_per_label_ci95"]) == 3 and "unstratified" in r["bootstrap"]["method"]
    calibrated = C.apply_temperature(p_test, r["temperature"], ML)
    assert ((calibrated > 0.5) == (p_test > 0.5)).all()  # a temperature never flips a decision
    assert C.nll(p_test, y_test, r["temperature"], ML) == pytest.approx(r["nll_after_temperature"])


def test_multilabel_ece_is_the_binary_ece_of_each_label():
    y, p = _multilabel_miscalibrated(500, seed=3)
    p[:20, 1] = 0.5  # decided absent, confidence 0.5
    per = C.ece_per_label(p, y, n_bins=10)
    for c in range(3):  # the softmax ECE of the two-column [1 - p, p] is the same number
        assert per[c] == pytest.approx(C.ece(np.stack([1 - p[:, c], p[:, c]], 1), y[:, c], n_bins=10), abs=1e-12)
    assert C.ece(p, y, 10, task=ML) == pytest.approx(np.mean(per))
    rel = C.reliability(p, y, 10, task=ML)
    assert len(rel["per_label"]) == 3 and sum(rel["count"]) == 1500
    for c in range(3):
        ref = C.reliability(np.stack([1 - p[:, c], p[:, c]], 1), y[:, c], 10)
        assert rel["per_label"][c]["count"] == ref["count"]
        np.testing.assert_allclose(rel["per_label"][c]["accuracy"], ref["accuracy"], equal_nan=True)


def test_apply_temperature_multilabel():
    _, p = _multilabel_miscalibrated(50, seed=4)
    np.testing.assert_allclose(C.apply_temperature(p, [1.0, 1.0, 1.0], ML), p, atol=1e-9)
    np.testing.assert_allclose(C.apply_temperature(p, 2.0, ML), C.apply_temperature(p, [2.0, 2.0, 2.0], ML))
    t = [2.0, 1.0, 0.5]
    z = np.log(p / (1 - p))
    np.testing.assert_allclose(C.apply_temperature(p, t, ML), 1 / (1 + np.exp(-z / np.array(t))), atol=1e-12)
    np.testing.assert_allclose(C.apply_temperature(p, t), C.apply_temperature(p, t, ML))  # a list means multi-label
    with pytest.raises(WorkbenchError, match="one positive temperature per label"):
        C.apply_temperature(p, [1.0, 2.0], ML)


def test_label_with_one_class_on_val_keeps_temperature_one():
    y, p = _multilabel_miscalibrated(400, seed=5)
    y[:, 1] = 0
    fit = C.fit_temperature(p, y, task=ML)
    assert fit["labels_not_fitted"] == [1] and fit["temperature"][1] == 1.0
    assert fit["temperature"][0] == pytest.approx(3.0, rel=0.3)


def test_multilabel_calibration_json_round_trip_and_old_format(tmp_path):
    y, p = _multilabel_miscalibrated(500, seed=6)
    r = C.evaluate(p, y, p, y, task=ML)
    C.save(Run(path=tmp_path / "ml", stage="evaluate"), r)
    doc = json.loads((tmp_path / "ml" / C.CALIBRATION_FILE).read_text())
    assert doc["task"] == ML and doc["method"] == "temperature per label" and len(doc["test_ece_after_per_label"]) == 3
    t = C.load_temperature(tmp_path / "ml")
    assert isinstance(t, list) and t == pytest.approx(r["temperature"])
    # a calibration.json written before multi-label support (no task, one float) still reads as a float
    old = tmp_path / "old"
    old.mkdir()
    (old / C.CALIBRATION_FILE).write_text(json.dumps({"method": "temperature", "temperature": 1.7,
                                                      "model": "model.keras", "fitted_on": "val", "n_fit": 10}))
    assert C.load_temperature(old) == 1.7
    (old / C.CALIBRATION_FILE).write_text('{"temperature": "warm"}')
    with pytest.raises(WorkbenchError, match="calibration"):
        C.load_temperature(old)
    (old / C.CALIBRATION_FILE).write_text('{"temperature": [1.0, -2.0]}')
    with pytest.raises(WorkbenchError, match="positive"):
        C.load_temperature(old)


def test_single_label_results_name_their_task_and_keep_the_float_format(tmp_path):
    y, p = _overconfident(300, k=4, seed=7)
    r = C.evaluate(p, y, p, y, task="ordinal-regression")
    assert r["task"] == "ordinal-regression" and isinstance(r["temperature"], float)
    C.save(Run(path=tmp_path, stage="evaluate"), r)
    assert isinstance(C.load_temperature(tmp_path), float)


def test_one_hundred_classes_calibrate():
    y_val, p_val = _overconfident(3000, k=100, seed=8)
    y_test, p_test = _overconfident(3000, k=100, seed=9)
    y_test[y_test == 3] = 4  # a class absent from test
    r = C.evaluate(p_val, y_val, p_test, y_test, n_resamples=20)
    assert r["temperature"] == pytest.approx(3.0, rel=0.2) and r["ece_after_temperature"] < r["ece"]


def test_multilabel_ece_intervals_are_those_of_bootstrap_ci():
    y, p = _multilabel_miscalibrated(400, seed=10)
    r = C.evaluate(p, y, p, y, n_bins=10, n_resamples=40, seed=2, task=ML)
    after = C.apply_temperature(p, r["temperature"], ML)

    def vec(a, b, c):
        e, f = C.ece_per_label(b, a, 10), C.ece_per_label(c, a, 10)
        return np.array([np.mean(e), np.mean(f), *e, *f])
    from workbench.metrics import bootstrap_ci
    ref = bootstrap_ci(vec, y, p, after, n_resamples=40, seed=2)
    assert r["ece_ci95"] == pytest.approx([ref["low"][0], ref["high"][0]], abs=1e-12)
    assert r["ece_after_temperature_ci95"] == pytest.approx([ref["low"][1], ref["high"][1]], abs=1e-12)
    assert r["ece_per_label_ci95"][2] == pytest.approx([ref["low"][4], ref["high"][4]], abs=1e-12)

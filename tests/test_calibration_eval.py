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

"""Probability calibration: expected calibration error and temperature scaling.

Models output softmax probabilities; ``log(p)`` are logits up to a constant, so temperature scaling is
``softmax(log(p) / T)``. The temperature is fitted on val (minimum negative log-likelihood) and saved
beside the model as ``calibration.json``; downstream stages use ``load_temperature(run_dir)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

CALIBRATION_FILE = "calibration.json"
_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    return softmax(logits / float(temperature), axis=1)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Temperature minimising val NLL (bounded search over log T in [-3, 3])."""
    labels = np.asarray(labels).reshape(-1)
    res = minimize_scalar(lambda lt: nll(probs, labels, np.exp(lt)), bounds=(-3.0, 3.0), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return {"method": "temperature", "temperature": t, "fitted_on": "val", "n": int(len(labels)),
            "nll_before": nll(probs, labels, 1.0), "nll_after": nll(probs, labels, t)}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins over [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels).reshape(-1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin mean confidence, accuracy and count (for the reliability diagram)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels).reshape(-1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out = {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
    return out


def load_temperature(run_dir) -> float | None:
    """The temperature saved with a run's model, or None when the run has no calibration."""
    p = Path(run_dir) / CALIBRATION_FILE
    if not p.is_file():
        return None
    return float(json.loads(p.read_text())["temperature"])

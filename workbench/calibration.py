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


def evaluate(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
             n_bins: int = 15, n_resamples: int = 0, seed: int = 0) -> dict:
    """Fit the temperature on val, apply it to test; test ECE, NLL and reliability bins before and after.

    With ``n_resamples`` > 0 the two test ECEs get seeded, class-stratified bootstrap intervals too."""
    from .metrics import bootstrap_ci
    fit = fit_temperature(val_probs, val_labels)
    t = fit["temperature"]
    test_labels = np.asarray(test_labels).reshape(-1)
    after = apply_temperature(test_probs, t)
    out = {"temperature": t, "fit": fit, "n_bins": n_bins,
           "ece": ece(test_probs, test_labels, n_bins), "ece_after_temperature": ece(after, test_labels, n_bins),
           "nll": nll(test_probs, test_labels), "nll_after_temperature": nll(test_probs, test_labels, t),
           "reliability": reliability(test_probs, test_labels, n_bins),
           "reliability_after_temperature": reliability(after, test_labels, n_bins)}
    if n_resamples:
        boot = bootstrap_ci(lambda y, p, q: np.array([ece(p, y, n_bins), ece(q, y, n_bins)]), test_labels,
                            np.asarray(test_probs, dtype=np.float64), after, n_resamples=n_resamples, seed=seed)
        out["ece_ci95"] = [boot["low"][0], boot["high"][0]]
        out["ece_after_temperature_ci95"] = [boot["low"][1], boot["high"][1]]
    return out


def save(run, result: dict, model_file: str = "model.keras") -> Path:
    """Write ``calibration.json`` beside the model (write-once): the temperature, where it was fitted and
    what it did on val and test. ``load_temperature(run_dir)`` reads it back."""
    doc = {"method": "temperature", "temperature": result["temperature"], "model": model_file,
           "fitted_on": result["fit"]["fitted_on"], "n_fit": result["fit"]["n"],
           "val_nll_before": result["fit"]["nll_before"], "val_nll_after": result["fit"]["nll_after"],
           "test_ece_before": result["ece"], "test_ece_after": result["ece_after_temperature"],
           "n_bins": result["n_bins"],
           "usage": "calibrated probabilities = softmax(log(p) / temperature), see workbench.calibration"}
    return run.write_json(CALIBRATION_FILE, doc)

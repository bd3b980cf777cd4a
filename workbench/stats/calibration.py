"""Probability calibration: expected calibration error and temperature scaling.

binary / multi-class / ordinal-regression (softmax head): ``log(p)`` are logits up to a constant, so
temperature scaling is ``softmax(log(p) / T)`` with one temperature T.

multi-label (independent sigmoids): one temperature per label l on that label's logit
``z = log(p / (1 - p))``: ``sigmoid(z / T_l)``, each fitted on val by minimum binary NLL (bounded search
over log T in [-3, 3], as the softmax one). A label with one class only on val has nothing to fit against
and keeps T = 1 (listed in ``labels_not_fitted``). The ECE of a multi-label model is the mean over labels of
the binary ECE of each label's decision (present if p > 0.5) at its confidence max(p, 1 - p); per-label
ECEs and reliability bins come with it.

The temperature(s) are fitted on val and saved beside the model as ``calibration.json``; downstream stages
use ``load_temperature(run_dir)`` (a float, or a list of floats for multi-label) and
``apply_temperature(probs, t, task)``.

Pure numpy / scipy (no Keras, JAX or matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from ..core.errors import WorkbenchError
from ..core.tasks import MULTILABEL as MULTI_LABEL
from ..core.tasks import is_multilabel

CALIBRATION_FILE = "calibration.json"
_EPS = 1e-12


def _multilabel(task: str | None, temperature=None) -> bool:
    """The task's kind; with ``task`` None, a vector of temperatures means multi-label."""
    if task is None:
        return temperature is not None and np.ndim(temperature) > 0
    return is_multilabel(task)


def _logit(probs) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _label_temperatures(temperature, n_labels: int) -> np.ndarray:
    t = np.asarray(temperature, dtype=np.float64)
    t = np.full(n_labels, float(t)) if t.ndim == 0 else t.reshape(-1)
    if t.shape != (n_labels,) or not (np.isfinite(t).all() and (t > 0).all()):
        raise WorkbenchError(f"temperature has {t.size} values for {n_labels} labels; a multi-label model needs one "
                             "positive temperature per label (calibration.json from the evaluate stage)")
    return t


def apply_temperature(probs: np.ndarray, temperature, task: str | None = None) -> np.ndarray:
    """Calibrated probabilities. Softmax tasks: ``softmax(log(p) / T)`` with one float T. multi-label:
    ``sigmoid(logit(p) / T_l)`` per label with a vector of L temperatures (a single float applies to all).
    ``task`` None: a vector of temperatures is taken as multi-label, a float as softmax."""
    if _multilabel(task, temperature):
        probs = np.asarray(probs, dtype=np.float64)
        return expit(_logit(probs) / _label_temperatures(temperature, probs.shape[1])[None, :])
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    return softmax(logits / float(temperature), axis=1)


def _binary_nll(logit: np.ndarray, y: np.ndarray, temperature) -> np.ndarray:
    """Mean binary NLL per column of sigmoid(logit / T) against 0/1 ``y`` (numerically stable)."""
    z = logit / temperature
    return np.logaddexp(0.0, np.where(y.astype(bool), -z, z)).mean(0)


def nll(probs: np.ndarray, labels: np.ndarray, temperature=1.0, task: str | None = None) -> float:
    """Mean negative log-likelihood of the labels. multi-label: mean over labels of each label's binary NLL."""
    if _multilabel(task, temperature):
        probs = np.asarray(probs, dtype=np.float64)
        t = _label_temperatures(temperature, probs.shape[1])
        return float(_binary_nll(_logit(probs), np.asarray(labels), t[None, :]).mean())
    labels = np.asarray(labels).reshape(-1)
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def _checked(probs, labels, task: str, what: str = "val"):
    from .metrics import as_labels, as_probs
    p = as_probs(probs, task, f"{what}_probs")
    return p, as_labels(labels, p, task, f"{what}_labels")


def fit_temperature_per_label(probs: np.ndarray, labels: np.ndarray) -> dict:
    """multi-label: for each label the temperature minimising its val binary NLL (bounded search over
    log T in [-3, 3]); a label with one class only on val keeps T = 1 (``labels_not_fitted``)."""
    probs, labels = _checked(probs, labels, MULTI_LABEL)
    z = _logit(probs)
    temps, skipped = [], []
    for c in range(probs.shape[1]):
        y = labels[:, c]
        if y.all() or not y.any():
            temps.append(1.0)
            skipped.append(c)
            continue
        res = minimize_scalar(lambda lt: float(_binary_nll(z[:, c], y, np.exp(lt))), bounds=(-3.0, 3.0),
                              method="bounded", options={"xatol": 1e-4})
        temps.append(float(np.exp(res.x)))
    t = np.asarray(temps)
    before, after = _binary_nll(z, labels, 1.0), _binary_nll(z, labels, t[None, :])
    return {"method": "temperature per label", "task": MULTI_LABEL, "temperature": temps, "fitted_on": "val",
            "n": int(len(labels)), "nll_before": float(before.mean()), "nll_after": float(after.mean()),
            "nll_before_per_label": before.tolist(), "nll_after_per_label": after.tolist(),
            "labels_not_fitted": skipped}


def fit_temperature(probs: np.ndarray, labels: np.ndarray, task: str = "multi-class") -> dict:
    """Temperature minimising val NLL (bounded search over log T in [-3, 3]); multi-label: one per label
    (``fit_temperature_per_label``)."""
    if _multilabel(task):
        return fit_temperature_per_label(probs, labels)
    labels = np.asarray(labels).reshape(-1)
    res = minimize_scalar(lambda lt: nll(probs, labels, np.exp(lt)), bounds=(-3.0, 3.0), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return {"method": "temperature", "temperature": t, "fitted_on": "val", "n": int(len(labels)),
            "nll_before": nll(probs, labels, 1.0), "nll_after": nll(probs, labels, t)}


def _label_decisions(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """multi-label: each label decision's confidence max(p, 1 - p) and whether it (p > 0.5) is right."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.maximum(probs, 1.0 - probs), (probs > 0.5) == np.asarray(labels).astype(bool)


def _binned(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column and bin (equal width over [0, 1]): count, summed confidence, summed correctness, each (C, B)."""
    n, c = conf.shape
    code = np.minimum((conf * n_bins).astype(int), n_bins - 1) + np.arange(c)[None, :] * n_bins
    size = c * n_bins
    count = np.bincount(code.ravel(), minlength=size).reshape(c, n_bins)
    s_conf = np.bincount(code.ravel(), weights=conf.ravel(), minlength=size).reshape(c, n_bins)
    s_corr = np.bincount(code.ravel(), weights=correct.ravel().astype(np.float64), minlength=size).reshape(c, n_bins)
    return count, s_conf, s_corr


def _ece_columns(conf: np.ndarray, correct: np.ndarray, n_bins: int):
    """``ece(w)``: the ECE of every column when image i counts ``w[i]`` times (bootstrap weights; ones for
    the plain number): sum over bins of |weighted correct - weighted confidence| / total weight."""
    n, c = conf.shape
    code = (np.minimum((conf * n_bins).astype(int), n_bins - 1) + np.arange(c)[None, :] * n_bins).ravel()
    gap = correct.astype(np.float64) - conf

    def ece_w(w: np.ndarray) -> np.ndarray:
        s = np.bincount(code, weights=(w[:, None] * gap).ravel(), minlength=c * n_bins).reshape(c, n_bins)
        total = w.sum()
        return np.abs(s).sum(1) / total if total > 0 else np.full(c, np.nan)
    return ece_w


def ece_per_label(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[float]:
    """multi-label: per label, the binary ECE of its decision (present if p > 0.5) at confidence max(p, 1 - p);
    the same number as ``ece`` of the two-column softmax ``[1 - p, p]`` against that label's 0/1 column."""
    conf, correct = _label_decisions(probs, labels)
    return _ece_columns(conf, correct, n_bins)(np.ones(len(conf))).tolist()


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, task: str = "multi-class") -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins over [0, 1].

    multi-label: the mean over labels of ``ece_per_label`` (each label's binary ECE of its decision at
    confidence max(p, 1 - p)), so every label weighs the same whatever its prevalence."""
    if _multilabel(task):
        return float(np.mean(ece_per_label(probs, labels, n_bins)))
    probs = np.asarray(probs, dtype=np.float64)
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels).reshape(-1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def _reliability_multilabel(probs, labels, n_bins: int) -> dict:
    conf, correct = _label_decisions(probs, labels)
    count, s_conf, s_corr = _binned(conf, correct, n_bins)

    def bins(cnt, sc, sa):
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"confidence": np.where(cnt > 0, sc / cnt, np.nan).tolist(),
                    "accuracy": np.where(cnt > 0, sa / cnt, np.nan).tolist(), "count": cnt.astype(int).tolist()}
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(),
            **bins(count.sum(0), s_conf.sum(0), s_corr.sum(0)),
            "pooled": "the bins above pool every label decision (images x labels); per_label: one set per label",
            "per_label": [bins(count[c], s_conf[c], s_corr[c]) for c in range(conf.shape[1])]}


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, task: str = "multi-class") -> dict:
    """Per-bin mean confidence, accuracy and count (for the reliability diagram).

    multi-label: the bins of the label decisions at confidence max(p, 1 - p): ``confidence``, ``accuracy``,
    ``count`` pool all images × labels (the diagram), ``per_label`` holds the same three lists per label."""
    if _multilabel(task):
        return _reliability_multilabel(probs, labels, n_bins)
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


def load_temperature(run_dir) -> float | list[float] | None:
    """The temperature saved with a run's model: a float (softmax tasks; also every calibration.json written
    before multi-label support), a list of floats, one per label (multi-label), or None when the run has no
    calibration. Pass it to ``apply_temperature`` with the run's task."""
    p = Path(run_dir) / CALIBRATION_FILE
    if not p.is_file():
        return None
    try:
        t = json.loads(p.read_text())["temperature"]
        if isinstance(t, list):
            out = [float(v) for v in t]
            ok = len(out) > 0 and all(np.isfinite(v) and v > 0 for v in out)
        else:
            out = float(t)
            ok = np.isfinite(out) and out > 0
    except (ValueError, KeyError, TypeError) as e:
        raise WorkbenchError(f"{p} is not a readable calibration file ({type(e).__name__}: {e}); rerun the evaluate "
                             "stage into a new run, or set calibrate false") from None
    if not ok:
        raise WorkbenchError(f"{p}: temperature {t!r} is not a positive number (or list of them); rerun the evaluate "
                             "stage into a new run, or set calibrate false")
    return out


def _evaluate_multilabel(val_probs, val_labels, test_probs, test_labels, n_bins: int, n_resamples: int,
                         seed: int) -> dict:
    fit = fit_temperature_per_label(val_probs, val_labels)
    t = fit["temperature"]
    test_probs, test_labels = _checked(test_probs, test_labels, MULTI_LABEL, "test")
    if test_probs.shape[1] != len(t):
        raise WorkbenchError(f"test_probs has {test_probs.shape[1]} labels but val_probs {len(t)}; both must come "
                             "from the same model")
    after = apply_temperature(test_probs, t, MULTI_LABEL)
    per, per_after = ece_per_label(test_probs, test_labels, n_bins), ece_per_label(after, test_labels, n_bins)
    out = {"task": MULTI_LABEL, "temperature": t, "fit": fit, "n_bins": n_bins,
           "ece": float(np.mean(per)), "ece_after_temperature": float(np.mean(per_after)),
           "ece_per_label": per, "ece_after_temperature_per_label": per_after,
           "nll": nll(test_probs, test_labels, 1.0, MULTI_LABEL),
           "nll_after_temperature": nll(test_probs, test_labels, t, MULTI_LABEL),
           "reliability": reliability(test_probs, test_labels, n_bins, MULTI_LABEL),
           "reliability_after_temperature": reliability(after, test_labels, n_bins, MULTI_LABEL)}
    if n_resamples:
        # the resamples of bootstrap_ci (images, unstratified), evaluated on resample weights: no copies
        from .metrics import bootstrap_weighted
        n_labels = len(t)
        before_w = _ece_columns(*_label_decisions(test_probs, test_labels), n_bins)
        after_w = _ece_columns(*_label_decisions(after, test_labels), n_bins)

        def vec(w):
            a, b = before_w(w), after_w(w)
            return np.concatenate([[a.mean(), b.mean()], a, b])
        boot = bootstrap_weighted(vec, test_labels, len(test_labels), n_resamples, seed)
        lo, hi = boot["low"], boot["high"]
        out["ece_ci95"] = [lo[0], hi[0]]
        out["ece_after_temperature_ci95"] = [lo[1], hi[1]]
        out["ece_per_label_ci95"] = [[lo[2 + c], hi[2 + c]] for c in range(n_labels)]
        out["ece_after_temperature_per_label_ci95"] = [[lo[2 + n_labels + c], hi[2 + n_labels + c]]
                                                       for c in range(n_labels)]
        out["bootstrap"] = {"n_resamples": n_resamples, "seed": seed, "method": boot["method"]}
    return out


def evaluate(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
             n_bins: int = 15, n_resamples: int = 0, seed: int = 0, task: str = "multi-class") -> dict:
    """Fit the temperature on val, apply it to test; test ECE, NLL and reliability bins before and after.

    With ``n_resamples`` > 0 the two test ECEs get seeded, class-stratified bootstrap intervals too.

    Keys: ``task``, ``temperature``, ``fit`` (``fit_temperature``), ``n_bins``, ``ece``,
    ``ece_after_temperature``, ``nll``, ``nll_after_temperature``, ``reliability``,
    ``reliability_after_temperature``; with resamples ``ece_ci95``, ``ece_after_temperature_ci95``.
    multi-label adds ``ece_per_label`` and ``ece_after_temperature_per_label`` (``ece`` is their mean), with
    resamples their ``..._ci95`` lists ([low, high] per label) and ``bootstrap`` (images resampled
    unstratified); ``temperature`` is then the list of per-label temperatures and the reliability dicts
    carry ``per_label`` bins."""
    if _multilabel(task):
        return _evaluate_multilabel(val_probs, val_labels, test_probs, test_labels, n_bins, n_resamples, seed)
    from .metrics import bootstrap_ci
    fit = fit_temperature(val_probs, val_labels)
    t = fit["temperature"]
    test_labels = np.asarray(test_labels).reshape(-1)
    after = apply_temperature(test_probs, t)
    out = {"task": task, "temperature": t, "fit": fit, "n_bins": n_bins,
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
    what it did on val and test. ``load_temperature(run_dir)`` reads it back.

    multi-label: ``temperature`` is the list of per-label temperatures, ``method`` "temperature per label",
    plus ``labels_not_fitted`` and the per-label test ECEs. The single-temperature format is unchanged
    (``task`` added), so calibration.json files of older runs read the same."""
    fit = result["fit"]
    doc = {"method": fit.get("method", "temperature"), "task": result.get("task", "multi-class"),
           "temperature": result["temperature"], "model": model_file,
           "fitted_on": fit["fitted_on"], "n_fit": fit["n"],
           "val_nll_before": fit["nll_before"], "val_nll_after": fit["nll_after"],
           "test_ece_before": result["ece"], "test_ece_after": result["ece_after_temperature"],
           "n_bins": result["n_bins"],
           "usage": "calibrated probabilities = softmax(log(p) / temperature), see workbench.calibration"}
    if result.get("task") == MULTI_LABEL:
        doc.update(labels_not_fitted=fit["labels_not_fitted"], test_ece_before_per_label=result["ece_per_label"],
                   test_ece_after_per_label=result["ece_after_temperature_per_label"],
                   usage="per label l: calibrated p = sigmoid(logit(p) / temperature[l]), logit(p) = log(p / (1 - p)); "
                         "see workbench.calibration.apply_temperature(probs, temperature, task)")
    return run.write_json(CALIBRATION_FILE, doc)

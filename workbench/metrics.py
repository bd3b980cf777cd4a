"""Metrics on top of scikit-learn: the MedMNIST ACC/AUC protocol, per-class tables, operating points."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def medmnist_acc_auc(y_true: np.ndarray, probs: np.ndarray, task: str = "multi-class") -> dict:
    """ACC and AUC as the official MedMNIST evaluator computes them.

    multi-class / ordinal: ACC of the arg-max; AUC = mean over classes of the one-vs-rest ROC AUC of
    that class's score (sklearn's ``multi_class='ovr', average='macro'``). binary: AUC of the positive
    class's score, ACC at threshold 0.5 on it. Classes absent from ``y_true`` have no AUC and are left
    out of the mean (reported in ``auc_classes_skipped``).
    """
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if task == "binary-class":
        score = probs[:, -1]
        acc = float(np.mean((score > 0.5).astype(int) == y_true))
        auc = float(skm.roc_auc_score(y_true, score)) if len(np.unique(y_true)) == 2 else float("nan")
        return {"acc": acc, "auc": auc, "n": int(len(y_true)), "auc_classes_skipped": []}
    k = probs.shape[1]
    aucs, skipped = [], []
    for c in range(k):
        pos = y_true == c
        if pos.all() or not pos.any():
            skipped.append(c)
            continue
        aucs.append(skm.roc_auc_score(pos, probs[:, c]))
    return {
        "acc": float(skm.accuracy_score(y_true, probs.argmax(1))),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "n": int(len(y_true)),
        "auc_classes_skipped": skipped,
    }


def per_class_table(y_true, y_pred, class_names: list[str]) -> pd.DataFrame:
    """Precision / recall / F1 / support per class (scikit-learn), plus macro and weighted averages."""
    labels = list(range(len(class_names)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision of a never-predicted class → 0, as sklearn
        rep = skm.classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                        output_dict=True, zero_division=0)
    rows = {name: rep[name] for name in class_names}
    rows["macro avg"] = rep["macro avg"]
    rows["weighted avg"] = rep["weighted avg"]
    df = pd.DataFrame(rows).T[["precision", "recall", "f1-score", "support"]]
    df["support"] = df["support"].astype(int)
    return df


def confusion(y_true, y_pred, num_classes: int, normalize: str | None = None) -> np.ndarray:
    return skm.confusion_matrix(y_true, y_pred, labels=list(range(num_classes)), normalize=normalize)


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict:
    """Lowest confidence threshold whose accepted set (confidence ≥ t) has precision ≥ target.

    Among thresholds reaching the target, the one with the largest coverage is chosen. If none
    reaches it, ``threshold`` is +inf (nothing is auto-accepted) and ``reached`` is False.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, corr_sorted = confidence[order], correct[order]
    cum_prec = np.cumsum(corr_sorted) / np.arange(1, len(order) + 1)
    # only cut between distinct confidence values (ties are accepted together)
    last_of_tie = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    ok = np.flatnonzero((cum_prec >= target) & last_of_tie)
    if len(ok) == 0:
        return {"threshold": float("inf"), "reached": False, "val_precision": float("nan"),
                "val_coverage": 0.0, "target_precision": float(target), "n_val": int(len(order))}
    i = ok[-1]
    return {"threshold": float(conf_sorted[i]), "reached": True, "val_precision": float(cum_prec[i]),
            "val_coverage": float((i + 1) / len(order)), "target_precision": float(target),
            "n_val": int(len(order))}


def precision_coverage(accepted: np.ndarray, correct: np.ndarray) -> dict:
    accepted = np.asarray(accepted, dtype=bool)
    correct = np.asarray(correct, dtype=bool)
    n_acc = int(accepted.sum())
    return {"precision": float(correct[accepted].mean()) if n_acc else float("nan"),
            "coverage": float(n_acc / len(accepted)) if len(accepted) else float("nan"),
            "n_accepted": n_acc, "n": int(len(accepted))}


def bootstrap_ci(metric, y_true: np.ndarray, *arrays: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                 stratify: bool = True, confidence: float = 0.95) -> dict:
    """Seeded (stratified by ``y_true``) percentile bootstrap interval of ``metric(y_true, *arrays)``.

    ``metric`` may return a float or an array (e.g. a per-class vector): intervals are elementwise.
    Resamples on which the metric is undefined (NaN, or raises ValueError, e.g. one class only) are
    dropped and counted in ``n_failed``.
    """
    y_true = np.asarray(y_true).reshape(-1)
    arrays = tuple(np.asarray(a) for a in arrays)
    estimate = np.asarray(metric(y_true, *arrays), dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    strata = [np.flatnonzero(y_true == c) for c in np.unique(y_true)] if stratify else [np.arange(n)]
    samples, failed = [], 0
    for _ in range(int(n_resamples)):
        idx = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = np.asarray(metric(y_true[idx], *(a[idx] for a in arrays)), dtype=np.float64)
        except ValueError:
            failed += 1
            continue
        samples.append(v)
    samples = np.array(samples)
    lo_q, hi_q = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = np.nanpercentile(samples, lo_q, axis=0) if len(samples) else np.full_like(estimate, np.nan)
        high = np.nanpercentile(samples, hi_q, axis=0) if len(samples) else np.full_like(estimate, np.nan)
    as_out = (lambda a: float(a)) if estimate.ndim == 0 else (lambda a: a.tolist())
    return {"estimate": as_out(estimate), "low": as_out(low), "high": as_out(high),
            "n_resamples": int(n_resamples), "n_failed": failed, "confidence": confidence,
            "method": "percentile bootstrap" + (", stratified by class" if stratify else "")}

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


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, target: float,
                            guarantee: float = 0.0) -> dict:
    """Lowest confidence threshold whose accepted set (confidence ≥ t) has precision ≥ target.

    ``guarantee`` = 0: the val point estimate. Among thresholds whose val precision reaches the
    target, the one with the largest coverage is chosen. Taking the best of many noisy cuts is
    optimistic: on new images the precision lands below the target about half the time.

    ``guarantee`` = g > 0: Learn-then-Test (Angelopoulos et al. 2021) with fixed-sequence testing.
    The cuts are visited from the most to the least confident. At each cut the null hypothesis
    "the error rate of the accepted set is above 1 - target" is tested with an exact binomial test
    at level 1 - g, and the walk stops at the first cut that fails. The chosen threshold then has
    precision ≥ target on new images exchangeable with these with probability ≥ g. The order of
    the cuts does not depend on the labels. The walk starts at the first cut with enough images to
    pass with zero errors (``n_min``), so an empty or tiny top set does not end it at once.

    If no cut qualifies, ``threshold`` is +inf (nothing is auto-accepted) and ``reached`` is False.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, corr_sorted = confidence[order], correct[order]
    n = np.arange(1, len(order) + 1)
    n_correct = np.cumsum(corr_sorted)
    cum_prec = n_correct / n
    # only cut between distinct confidence values (ties are accepted together)
    last_of_tie = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    info = {"target_precision": float(target), "n_val": int(len(order)), "guarantee": float(guarantee)}
    if guarantee > 0:
        from scipy.stats import binom
        delta, alpha = 1.0 - float(guarantee), 1.0 - float(target)
        # zero errors in n images rejects "error rate ≥ alpha" when (1 - alpha)^n ≤ delta
        n_min = int(np.ceil(np.log(delta) / np.log1p(-alpha))) if 0 < alpha < 1 else len(order) + 1
        info.update(method="learn-then-test", n_min=n_min)
        cuts = np.flatnonzero(last_of_tie & (n >= n_min))
        errors = n[cuts] - n_correct[cuts]
        passed = binom.cdf(errors, n[cuts], alpha) <= delta if alpha > 0 else np.zeros(len(cuts), bool)
        ok = cuts[np.logical_and.accumulate(passed)]  # fixed sequence: up to the first failed test
    else:
        info.update(method="point estimate")
        ok = np.flatnonzero((cum_prec >= target) & last_of_tie)
    if len(ok) == 0:
        return {"threshold": float("inf"), "reached": False, "val_precision": float("nan"), "val_coverage": 0.0,
                **info}
    i = ok[-1]
    return {"threshold": float(conf_sorted[i]), "reached": True, "val_precision": float(cum_prec[i]),
            "val_coverage": float((i + 1) / len(order)), **info}


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


# --- headline metrics with intervals, per-class one-vs-rest rates, operating points -------------------------

PER_CLASS_RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


def predicted_labels(probs: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """The decision of the MedMNIST protocol: score of the positive class > 0.5 (binary), else arg-max."""
    probs = np.asarray(probs)
    if task == "binary-class":
        return (probs[:, -1] > 0.5).astype(np.int64)
    return probs.argmax(1)


def per_class_rates(y_true, y_pred, num_classes: int) -> pd.DataFrame:
    """One-vs-rest sensitivity (recall), specificity, PPV (precision), NPV and F1 per class, with support.

    scikit-learn's ``precision_recall_fscore_support`` and ``multilabel_confusion_matrix``; a rate whose
    denominator is zero (e.g. the PPV of a class never predicted) is undefined and reported as NaN, not 0.
    """
    labels = list(range(num_classes))
    y_true = np.asarray(y_true).reshape(-1)
    ppv, sens, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                                  zero_division=np.nan)
    mcm = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp, fn = mcm[:, 0, 0].astype(float), mcm[:, 0, 1].astype(float), mcm[:, 1, 0].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
    return pd.DataFrame({"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "f1": f1,
                         "support": support.astype(int)})


def headline_point(y_true, probs, task: str = "multi-class") -> dict:
    """Point estimates with scikit-learn: ACC and macro OvR AUC (MedMNIST protocol), balanced accuracy, and
    the per-class rates (``per_class_rates``) as lists in class order."""
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    pred = predicted_labels(probs, task)
    out = medmnist_acc_auc(y_true, probs, task)
    out["balanced_acc"] = float(skm.balanced_accuracy_score(y_true, pred))
    rates = per_class_rates(y_true, pred, probs.shape[1])
    out["per_class_rates"] = {c: rates[c].tolist() for c in rates.columns}
    return out


def _rank_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of every column (Mann-Whitney U with mid-ranks for ties; NaN when a class has no
    positives or no negatives): the same number as ``roc_auc_score(y == c, probs[:, c])``."""
    from scipy.stats import rankdata
    n, k = probs.shape
    pos = y_true[:, None] == np.arange(k)
    n_pos = pos.sum(0).astype(float)
    n_neg = n - n_pos
    ranks = rankdata(probs, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def headline_vector(y_true: np.ndarray, probs: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """``[acc, auc, balanced_acc, sensitivity×K, specificity×K, ppv×K, npv×K, f1×K]`` in plain numpy.

    The bootstrap evaluates this on every resample. The formulas are those of ``headline_point`` (which
    uses scikit-learn); they are rewritten here because scikit-learn's input validation costs ~50 ms per
    call on BloodMNIST's 3,421 × 8 test probabilities, so 1,000 resamples would take about a minute on
    2 cores, against ~7 s here. tests/test_metrics_intervals.py checks both agree to 1e-12.
    """
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    pred = predicted_labels(probs, task)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    support, predicted, n = cm.sum(1), cm.sum(0), cm.sum()
    fn, fp = support - tp, predicted - tp
    tn = n - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(support > 0, tp / support, np.nan)
        ppv = np.where(predicted > 0, tp / predicted, np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    aucs = _rank_auc(y_true, probs)
    if task == "binary-class":
        auc = aucs[-1]
    else:
        auc = np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan
    bal = np.nanmean(sens[support > 0]) if (support > 0).any() else np.nan
    return np.concatenate([[tp.sum() / n, auc, bal], sens, spec, ppv, npv, f1])


def _finite(v):
    """NaN → None so metrics.json stays strict JSON (undefined values are null)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_finite(x) for x in v]
    v = float(v)
    return v if np.isfinite(v) else None


def headline_intervals(y_true, probs, task: str = "multi-class", n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> dict:
    """Point estimates (scikit-learn) and seeded, class-stratified percentile-bootstrap intervals of ACC,
    macro OvR AUC, balanced accuracy and every per-class rate; one resample set for all of them."""
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    point = headline_point(y_true, probs, task)
    boot = bootstrap_ci(lambda y, p: headline_vector(y, p, task), y_true, probs, n_resamples=n_resamples,
                        seed=seed, confidence=confidence)
    low, high = np.asarray(boot["low"]), np.asarray(boot["high"])
    out = {"acc": point["acc"], "acc_ci95": _finite([low[0], high[0]]),
           "auc": point["auc"], "auc_ci95": _finite([low[1], high[1]]),
           "balanced_acc": point["balanced_acc"], "balanced_acc_ci95": _finite([low[2], high[2]]),
           "n": point["n"], "auc_classes_skipped": point["auc_classes_skipped"]}
    rates = {}
    for j, name in enumerate(PER_CLASS_RATES):
        sl = slice(3 + j * k, 3 + (j + 1) * k)
        rates[name] = {"value": _finite(point["per_class_rates"][name]),
                       "ci95": [_finite([lo, hi]) for lo, hi in zip(low[sl], high[sl])]}
    out["per_class_rates"] = rates
    out["support"] = point["per_class_rates"]["support"]
    out["bootstrap"] = {k_: boot[k_] for k_ in ("n_resamples", "n_failed", "confidence", "method")} | {"seed": seed}
    return out


def paired_gain(y_true, probs_base, probs_new, task: str = "multi-class", n_resamples: int = 1000,
                seed: int = 0, confidence: float = 0.95) -> dict:
    """ACC and AUC of ``probs_new`` and their gain over ``probs_base`` on the same images, with paired
    bootstrap intervals (both evaluated on the same resamples, so the gain's interval is not the
    difference of two independent intervals)."""
    def vec(y, a, b):
        va, vb = headline_vector(y, a, task)[:2], headline_vector(y, b, task)[:2]
        return np.concatenate([vb, vb - va])
    boot = bootstrap_ci(vec, y_true, np.asarray(probs_base, dtype=np.float64),
                        np.asarray(probs_new, dtype=np.float64), n_resamples=n_resamples, seed=seed,
                        confidence=confidence)
    new = medmnist_acc_auc(y_true, probs_new, task)
    base = medmnist_acc_auc(y_true, probs_base, task)
    lo, hi = boot["low"], boot["high"]
    return {"acc": new["acc"], "acc_ci95": _finite([lo[0], hi[0]]), "auc": new["auc"],
            "auc_ci95": _finite([lo[1], hi[1]]),
            "acc_gain": new["acc"] - base["acc"], "acc_gain_ci95": _finite([lo[2], hi[2]]),
            "auc_gain": new["auc"] - base["auc"], "auc_gain_ci95": _finite([lo[3], hi[3]]),
            "n_resamples": boot["n_resamples"], "seed": seed}


def threshold_for_sensitivity(y_true, score, target: float) -> dict:
    """Highest threshold on ``score`` (positive if score ≥ t) whose sensitivity reaches ``target``: the
    most specific operating point that still finds the target share of positives (chosen on val)."""
    y_true = np.asarray(y_true).reshape(-1)
    if len(np.unique(y_true)) != 2:
        return {"threshold": float("nan"), "reached": False, "target_sensitivity": float(target)}
    fpr, tpr, thr = skm.roc_curve(y_true, score, drop_intermediate=False)
    ok = np.flatnonzero((tpr >= target) & np.isfinite(thr))
    i = ok[0] if len(ok) else int(np.argmax(tpr * np.isfinite(thr)))
    return {"threshold": float(thr[i]), "reached": bool(len(ok)), "target_sensitivity": float(target),
            "val_sensitivity": float(tpr[i]), "val_specificity": float(1 - fpr[i]), "n_val": int(len(y_true))}


def binary_rates_vector(y_true, score, threshold: float) -> np.ndarray:
    """[sensitivity, specificity, PPV, NPV] of ``score ≥ threshold`` for class 1 (NaN where undefined)."""
    y_true = np.asarray(y_true).reshape(-1)
    pred = (np.asarray(score) >= threshold).astype(np.int64)
    r = per_class_rates(y_true, pred, 2).iloc[1]
    return np.array([r["sensitivity"], r["specificity"], r["ppv"], r["npv"]], dtype=np.float64)


def operating_point(y_val, score_val, y_test, score_test, target_sensitivity: float, n_resamples: int = 1000,
                    seed: int = 0) -> dict:
    """Binary task: threshold chosen on val for the target sensitivity, rates on test with intervals."""
    choice = threshold_for_sensitivity(y_val, score_val, target_sensitivity)
    t = choice["threshold"]
    names = ("sensitivity", "specificity", "ppv", "npv")
    test = {}
    if np.isfinite(t):
        boot = bootstrap_ci(lambda y, s: binary_rates_vector(y, s, t), y_test, np.asarray(score_test),
                            n_resamples=n_resamples, seed=seed)
        for j, name in enumerate(names):
            test[name] = _finite(boot["estimate"][j])
            test[f"{name}_ci95"] = _finite([boot["low"][j], boot["high"][j]])
    return {**choice, "test": test, "rule": "positive if score of class 1 >= threshold"}


def curves_summary(y_true, probs) -> dict:
    """Per-class one-vs-rest ROC AUC and average precision (area under the PR curve), scikit-learn."""
    y_true = np.asarray(y_true).reshape(-1)
    out = {"roc_auc": [], "average_precision": [], "prevalence": []}
    for c in range(probs.shape[1]):
        pos = y_true == c
        defined = pos.any() and not pos.all()
        out["roc_auc"].append(float(skm.roc_auc_score(pos, probs[:, c])) if defined else None)
        out["average_precision"].append(float(skm.average_precision_score(pos, probs[:, c])) if defined else None)
        out["prevalence"].append(float(pos.mean()) if len(pos) else None)
    return out


def interval_position(value: float, ci: list | tuple) -> str:
    """Where our interval lies relative to a reference value: 'above', 'overlaps' or 'below'."""
    lo, hi = ci
    if lo is None or hi is None or not np.isfinite(value):
        return "undefined"
    if lo > value:
        return "above"
    if hi < value:
        return "below"
    return "overlaps"

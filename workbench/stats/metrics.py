"""Metrics on top of scikit-learn: the MedMNIST ACC/AUC protocol, per-class tables, operating points.

Tasks (the data card's ``task``):

- ``"binary-class"`` and ``"multi-class"`` (2 to 100+ classes): labels (N,) or (N, 1) ints in 0..K-1,
  probabilities (N, K) of a softmax head.
- ``"ordinal-regression"``: labels as multi-class (grades 0..K-1), reported by the MedMNIST protocol as
  multi-class (arg-max ACC, macro one-vs-rest AUC) plus the mean absolute error of the arg-max grade and
  the quadratic-weighted Cohen's kappa (``ordinal_metrics``).
- ``"multi-label, binary-class"``: labels (N, L) in {0, 1}, probabilities (N, L) of independent sigmoids;
  each label is decided present when its probability is > 0.5 (``predicted_labels``).

Pure numpy / scipy / scikit-learn (no Keras, JAX or matplotlib).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..core.errors import WorkbenchError
from ..core.tasks import BINARY, MULTILABEL as MULTI_LABEL, ORDINAL, TASKS  # noqa: F401  (the task names live in tasks.py)
from ..core.tasks import check as check_task
from ..core.tasks import is_multilabel  # noqa: F401


def as_probs(probs, task: str, name: str = "probs") -> np.ndarray:
    """(N, K) float64 probabilities; a binary task also accepts the positive class's score alone, (N,)."""
    p = np.asarray(probs, dtype=np.float64)
    if task == BINARY and (p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1)):
        p = p.reshape(-1)
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < (1 if task == MULTI_LABEL else 2):
        raise WorkbenchError(f"{name} has shape {p.shape}; expected (images, classes) with at least 2 classes "
                             "(or (images, labels) for a multi-label task)")
    if not np.isfinite(p).all():
        raise WorkbenchError(f"{name} contains NaN or infinite values; check the model's outputs")
    return p


def as_labels(y_true, probs: np.ndarray, task: str, name: str = "y_true") -> np.ndarray:
    """Labels checked against ``probs``: (N,) int64 in 0..K-1, or (N, L) int64 in {0, 1} for multi-label."""
    y = np.asarray(y_true)
    n, k = probs.shape
    if task == MULTI_LABEL:
        if y.ndim == 1 and k == 1:
            y = y.reshape(-1, 1)
        if y.shape != (n, k):
            raise WorkbenchError(f"{name} has shape {y.shape} but the probabilities {probs.shape}; a multi-label "
                                 "task needs one 0/1 column per label, (images, labels), in the same order")
        if y.size and not np.isin(y, (0, 1)).all():
            raise WorkbenchError(f"{name} holds values other than 0 and 1; a multi-label task needs a 0/1 matrix")
        return y.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise WorkbenchError(f"{name} has shape {np.shape(y_true)} but the probabilities {probs.shape}; a {task} "
                             "task needs one class index per image, (images,) or (images, 1)")
    if y.size and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= k):
        raise WorkbenchError(f"{name} holds values outside the class indices 0..{k - 1} of the {k} probability "
                             "columns; check that the labels and the model's classes match")
    return y.astype(np.int64)


def _inputs(y_true, probs, task: str) -> tuple[np.ndarray, np.ndarray]:
    check_task(task)
    p = as_probs(probs, task)
    return as_labels(y_true, p, task), p


def medmnist_acc_auc(y_true: np.ndarray, probs: np.ndarray, task: str = "multi-class") -> dict:
    """ACC and AUC as the official MedMNIST evaluator (``medmnist/evaluator.py``, getACC / getAUC) computes them.

    multi-class / ordinal: ACC of the arg-max; AUC = mean over classes of the one-vs-rest ROC AUC of
    that class's score (sklearn's ``multi_class='ovr', average='macro'``). binary: AUC of the positive
    class's score (the last column, or a 1-D score), ACC at threshold 0.5 on it (score > 0.5).
    multi-label: ACC = mean over labels of ``accuracy_score(y[:, l], probs[:, l] > 0.5)``, AUC = mean over
    labels of ``roc_auc_score(y[:, l], probs[:, l])``. The threshold is strict (> 0.5) as in MedMNIST v2/v3;
    the v1 evaluator used ≥ 0.5, which differs only for a probability of exactly 0.5.

    Where the official evaluator raises (a class or label with one class only in ``y_true``), that class
    or label has no AUC and is left out of the mean, and its index is listed in ``auc_classes_skipped``
    (label indices for multi-label). Otherwise the numbers are the evaluator's.
    """
    y_true, probs = _inputs(y_true, probs, task)
    if task == MULTI_LABEL:
        pred = probs > 0.5
        aucs, skipped = [], []
        for c in range(probs.shape[1]):
            col = y_true[:, c]
            if col.all() or not col.any():
                skipped.append(c)
                continue
            aucs.append(skm.roc_auc_score(col, probs[:, c]))
        accs = [skm.accuracy_score(y_true[:, c], pred[:, c]) for c in range(probs.shape[1])]
        return {"acc": float(np.mean(accs)) if len(y_true) else float("nan"),
                "auc": float(np.mean(aucs)) if aucs else float("nan"),
                "n": int(len(y_true)), "auc_classes_skipped": skipped}
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
    """The (K, K) confusion matrix (rows: true class). For a multi-label ``y_true`` ((N, L), L > 1) the
    (L, 2, 2) one-vs-rest matrices of scikit-learn's ``multilabel_confusion_matrix`` ([[tn, fp], [fn, tp]]
    per label), normalised per label like ``confusion_matrix`` when ``normalize`` is given."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        mcm = skm.multilabel_confusion_matrix(y_true, np.asarray(y_pred), labels=list(range(num_classes)))
        if normalize is None:
            return mcm
        mcm = mcm.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            axis = {"true": 2, "pred": 1, "all": (1, 2)}[normalize]
            out = mcm / mcm.sum(axis=axis, keepdims=True)
        return np.nan_to_num(out)  # as confusion_matrix: an empty row or column normalises to 0
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


def _strata(y_true: np.ndarray, stratify: bool) -> list[np.ndarray]:
    """Index sets resampled separately: one per class (stratified), or all images. A label matrix
    (multi-label, (N, L) with L > 1) has no single class per image: its images are resampled unstratified."""
    n = len(y_true)
    if stratify and y_true.ndim == 1:
        return [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    return [np.arange(n)]


def _resample_indices(strata: list[np.ndarray], n_resamples: int, seed: int):
    """Seeded bootstrap resamples (image indices, drawn with replacement within each stratum)."""
    rng = np.random.default_rng(seed)
    for _ in range(int(n_resamples)):
        yield np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])


def _labels_for_resampling(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    return y if (y.ndim == 2 and y.shape[1] > 1) else y.reshape(-1)


def _percentile_interval(samples: list, estimate: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    samples = np.array(samples)
    lo_q, hi_q = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    if not len(samples):
        return np.full_like(estimate, np.nan), np.full_like(estimate, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an entry undefined on every resample → NaN
        return np.nanpercentile(samples, lo_q, axis=0), np.nanpercentile(samples, hi_q, axis=0)


def _method(y_true: np.ndarray, stratify: bool) -> str:
    if not stratify:
        return "percentile bootstrap"
    if y_true.ndim == 2:
        return "percentile bootstrap, images resampled unstratified (multi-label: no single class per image)"
    return "percentile bootstrap, stratified by class"


def _accepted_precision(y, pred, accepted):
    accepted = accepted.astype(bool)
    return float((pred[accepted] == y[accepted]).mean()) if accepted.any() else float("nan")


def _accepted_coverage(y, accepted):
    return float(accepted.astype(bool).mean())


def accepted_precision_coverage(labels, pred, accepted, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Precision and coverage of an auto-accepted set against ground truth, with 95 % bootstrap intervals
    (seeded percentile bootstrap, stratified by the true class): what the annotate stage reports."""
    labels, pred, accepted = np.asarray(labels), np.asarray(pred), np.asarray(accepted, dtype=bool)
    out = precision_coverage(accepted, pred == labels)
    acc = accepted.astype(np.int8)
    p = bootstrap_ci(_accepted_precision, labels, pred, acc, n_resamples=n_resamples, seed=seed)
    c = bootstrap_ci(_accepted_coverage, labels, acc, n_resamples=n_resamples, seed=seed)
    out["precision_ci95"] = [p["low"], p["high"]]
    out["coverage_ci95"] = [c["low"], c["high"]]
    out["bootstrap"] = {"n_resamples": n_resamples, "method": p["method"], "seed": seed}
    return out


def bootstrap_ci(metric, y_true: np.ndarray, *arrays: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                 stratify: bool = True, confidence: float = 0.95) -> dict:
    """Seeded (stratified by ``y_true``) percentile bootstrap interval of ``metric(y_true, *arrays)``.

    ``metric`` may return a float or an array (e.g. a per-class vector): intervals are elementwise.
    Resamples on which the metric is undefined (NaN, or raises ValueError, e.g. one class only) are
    dropped and counted in ``n_failed``. A multi-label ``y_true`` ((N, L), L > 1) has no class to stratify
    by: its images (rows) are resampled unstratified, and ``method`` says so.
    """
    y_true = _labels_for_resampling(y_true)
    arrays = tuple(np.asarray(a) for a in arrays)
    estimate = np.asarray(metric(y_true, *arrays), dtype=np.float64)
    samples, failed = [], 0
    for idx in _resample_indices(_strata(y_true, stratify), n_resamples, seed):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = np.asarray(metric(y_true[idx], *(a[idx] for a in arrays)), dtype=np.float64)
        except ValueError:
            failed += 1
            continue
        samples.append(v)
    low, high = _percentile_interval(samples, estimate, confidence)
    as_out = (lambda a: float(a)) if estimate.ndim == 0 else (lambda a: a.tolist())
    return {"estimate": as_out(estimate), "low": as_out(low), "high": as_out(high),
            "n_resamples": int(n_resamples), "n_failed": failed, "confidence": confidence,
            "method": _method(y_true, stratify)}


def bootstrap_weighted(vector, y_true: np.ndarray, n: int, n_resamples: int, seed: int, stratify: bool = True,
                        confidence: float = 0.95) -> dict:
    """``bootstrap_ci`` for a metric written on resample weights: ``vector(w)`` gets each image's multiplicity
    in the resample (``np.bincount`` of the resampled indices). The resamples are those of ``bootstrap_ci``
    with the same seed (same generator, same draws), so the intervals are the same; only faster, since
    no resampled copy of the arrays is built and nothing is sorted again."""
    y_true = _labels_for_resampling(y_true)
    estimate = np.asarray(vector(np.ones(n)), dtype=np.float64)
    samples = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for idx in _resample_indices(_strata(y_true, stratify), n_resamples, seed):
            samples.append(np.asarray(vector(np.bincount(idx, minlength=n).astype(np.float64)), dtype=np.float64))
    low, high = _percentile_interval(samples, estimate, confidence)
    return {"estimate": estimate.tolist(), "low": low.tolist(), "high": high.tolist(),
            "n_resamples": int(n_resamples), "n_failed": 0, "confidence": confidence,
            "method": _method(y_true, stratify)}


# --- headline metrics with intervals, per-class one-vs-rest rates, operating points -------------------------

PER_CLASS_RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")
# multi-label: the rates of each label's present/absent decision (probability > 0.5), its accuracy and ROC AUC
PER_LABEL_RATES = PER_CLASS_RATES + ("accuracy", "auc")
HEADLINE = ("acc", "auc", "balanced_acc")
MULTILABEL_HEADLINE = HEADLINE + ("exact_match",)
ORDINAL_METRICS = ("mae", "qwk")


def predicted_labels(probs: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """The decision of the MedMNIST protocol: score of the positive class > 0.5 (binary), each label's
    probability > 0.5 (multi-label: an (N, L) int64 0/1 matrix), else the arg-max (N,)."""
    probs = np.asarray(probs)
    if task == MULTI_LABEL:
        return (probs > 0.5).astype(np.int64)
    if task == "binary-class":
        return (probs[:, -1] > 0.5).astype(np.int64) if probs.ndim == 2 else (probs > 0.5).astype(np.int64)
    return probs.argmax(1)


def _rates(tp, fp, fn, tn) -> tuple[np.ndarray, ...]:
    """Sensitivity, specificity, PPV, NPV and F1 from one-vs-rest counts (NaN where the denominator is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return sens, spec, ppv, npv, f1


def per_class_rates(y_true, y_pred, num_classes: int) -> pd.DataFrame:
    """One-vs-rest sensitivity (recall), specificity, PPV (precision), NPV and F1 per class, with support.

    scikit-learn's ``multilabel_confusion_matrix`` counts (``_rates``); a rate whose
    denominator is zero (e.g. the PPV of a class never predicted) is undefined and reported as NaN, not 0.
    """
    labels = list(range(num_classes))
    y_true = np.asarray(y_true).reshape(-1)
    sens, spec, ppv, npv, f1, support = _one_vs_rest_rates(y_true, y_pred, labels)
    return pd.DataFrame({"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "f1": f1,
                         "support": support.astype(int)})


def _one_vs_rest_rates(y_true, y_pred, labels):
    """Per class (or label) of ``labels``: ``_rates`` of scikit-learn's one-vs-rest confusion matrices, and
    the support (images of that class)."""
    mcm = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels).astype(float)
    tn, fp, fn, tp = mcm[:, 0, 0], mcm[:, 0, 1], mcm[:, 1, 0], mcm[:, 1, 1]
    return (*_rates(tp, fp, fn, tn), tp + fn)


def per_label_rates(y_true, y_pred, probs=None) -> pd.DataFrame:
    """Multi-label: per label, the rates of its present/absent decision (sensitivity, specificity, PPV, NPV,
    F1, as ``per_class_rates``), its accuracy and, given ``probs``, its ROC AUC; ``support`` = images with
    the label present. scikit-learn throughout; an undefined rate or AUC (one class only) is NaN."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n_labels = y_true.shape[1]
    labels = list(range(n_labels))
    sens, spec, ppv, npv, f1, support = _one_vs_rest_rates(y_true, y_pred, labels)
    acc = [skm.accuracy_score(y_true[:, c], y_pred[:, c]) if len(y_true) else np.nan for c in labels]
    auc = [skm.roc_auc_score(y_true[:, c], probs[:, c]) if probs is not None and 0 < y_true[:, c].sum() < len(y_true)
           else np.nan for c in labels]
    return pd.DataFrame({"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "f1": f1,
                         "accuracy": np.asarray(acc, float), "auc": np.asarray(auc, float),
                         "support": support.astype(int)})


def ordinal_metrics(y_true, probs) -> dict:
    """Ordinal regression (grades 0..K-1): mean absolute error of the arg-max grade and quadratic-weighted
    Cohen's kappa, scikit-learn (``mean_absolute_error``, ``cohen_kappa_score(weights="quadratic")``).

    The kappa is given ``labels=range(K)``: scikit-learn's weights are the squared distance between the
    *positions* in its label list, and without ``labels`` that list holds only the grades present, so a
    grade absent from both truth and prediction would shrink the distances between the others. The kappa is
    NaN when undefined (e.g. truth and prediction both one grade only)."""
    y_true, probs = _inputs(y_true, probs, ORDINAL)
    k = probs.shape[1]
    pred = probs.argmax(1)
    if not len(y_true):
        return {"mae": float("nan"), "qwk": float("nan"), "n": 0, "prediction": "arg-max grade"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa → NaN (replace_undefined_by)
        qwk = skm.cohen_kappa_score(y_true, pred, labels=np.arange(k), weights="quadratic")
    return {"mae": float(skm.mean_absolute_error(y_true, pred)), "qwk": float(qwk), "n": int(len(y_true)),
            "prediction": "arg-max grade"}


def headline_point(y_true, probs, task: str = "multi-class") -> dict:
    """Point estimates with scikit-learn: ACC and macro OvR AUC (MedMNIST protocol), balanced accuracy, and
    the per-class rates (``per_class_rates``) as lists in class order.

    ordinal-regression adds ``mae`` and ``qwk`` (``ordinal_metrics``). multi-label: ACC/AUC as MedMNIST
    (``medmnist_acc_auc``), ``balanced_acc`` = mean over labels of each label's balanced accuracy
    (``balanced_accuracy_score(y[:, l], pred[:, l])``), ``exact_match`` = share of images whose every label
    decision is right (``accuracy_score`` on the label matrix), and ``per_class_rates`` holds the rates of
    ``per_label_rates`` (``PER_LABEL_RATES`` and ``support``), one entry per label."""
    y_true, probs = _inputs(y_true, probs, task)
    pred = predicted_labels(probs, task)
    out = medmnist_acc_auc(y_true, probs, task)
    if task == MULTI_LABEL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a label with one class only: the mean recall of that class
            bal = [skm.balanced_accuracy_score(y_true[:, c], pred[:, c]) for c in range(probs.shape[1])]
        out["balanced_acc"] = float(np.mean(bal)) if len(y_true) else float("nan")
        out["exact_match"] = float(skm.accuracy_score(y_true, pred)) if len(y_true) else float("nan")
        rates = per_label_rates(y_true, pred, probs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": their recall is left out
            out["balanced_acc"] = float(skm.balanced_accuracy_score(y_true, pred))
        rates = per_class_rates(y_true, pred, probs.shape[1])
        if task == ORDINAL:
            out.update({m: ordinal_metrics(y_true, probs)[m] for m in ORDINAL_METRICS})
    out["per_class_rates"] = {c: rates[c].tolist() for c in rates.columns}
    return out


def _rank_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of every column (Mann-Whitney U with mid-ranks for ties; NaN when a class has no
    positives or no negatives): the same number as ``roc_auc_score(y == c, probs[:, c])``. A 0/1 label
    matrix ``y_true`` (multi-label) gives each column's ``roc_auc_score(y[:, c], probs[:, c])``."""
    from scipy.stats import rankdata
    n, k = probs.shape
    pos = y_true.astype(bool) if y_true.ndim == 2 else y_true[:, None] == np.arange(k)
    n_pos = pos.sum(0).astype(float)
    n_neg = n - n_pos
    ranks = rankdata(probs, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def _multilabel_vector(tp, fp, fn, tn, n, aucs, exact) -> np.ndarray:
    sens, spec, ppv, npv, f1 = _rates(tp, fp, fn, tn)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp + tn) / n
        bal = np.nanmean(np.stack([sens, spec]), axis=0) if n else np.full(len(tp), np.nan)
    return np.concatenate([[acc.mean(), _nanmean(aucs), bal.mean(), exact / n if n else np.nan],
                           sens, spec, ppv, npv, f1, acc, aucs])


def headline_vector(y_true: np.ndarray, probs: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """``[acc, auc, balanced_acc, sensitivity×K, specificity×K, ppv×K, npv×K, f1×K]`` in plain numpy.

    multi-label: ``[acc, auc, balanced_acc, exact_match]`` then ``PER_LABEL_RATES`` ×L each
    (sensitivity, specificity, ppv, npv, f1, accuracy, auc), as ``headline_point``.

    The formulas are those of ``headline_point`` (which uses scikit-learn); they are rewritten here
    because scikit-learn's input validation costs ~50 ms per call on BloodMNIST's 3,421 × 8 test
    probabilities. The bootstrap of ``headline_intervals`` evaluates the same formulas on resample weights
    (``_engine``); tests/test_metrics_intervals.py and tests/test_metrics_tasks.py check all three agree to 1e-12.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if task == MULTI_LABEL:
        y = np.asarray(y_true).reshape(probs.shape).astype(bool)
        pred = probs > 0.5
        tp, fp = (pred & y).sum(0).astype(float), (pred & ~y).sum(0).astype(float)
        fn, tn = (~pred & y).sum(0).astype(float), (~pred & ~y).sum(0).astype(float)
        return _multilabel_vector(tp, fp, fn, tn, float(len(y)), _rank_auc(y, probs),
                                  float((pred == y).all(1).sum()))
    y_true = np.asarray(y_true).reshape(-1)
    k = probs.shape[1]
    pred = predicted_labels(probs, task)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k).astype(float)
    tp = np.diag(cm)
    support, predicted, n = cm.sum(1), cm.sum(0), cm.sum()
    fn, fp = support - tp, predicted - tp
    tn = n - tp - fn - fp
    sens, spec, ppv, npv, f1 = _rates(tp, fp, fn, tn)
    aucs = _rank_auc(y_true, probs)
    if task == "binary-class":
        auc = aucs[-1]
    else:
        auc = np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan
    bal = np.nanmean(sens[support > 0]) if (support > 0).any() else np.nan
    return np.concatenate([[tp.sum() / n, auc, bal], sens, spec, ppv, npv, f1])


# --- the bootstrap's fast path: every metric as a function of resample weights ---------------------------------
# A bootstrap resample is a multiplicity per image (how often it was drawn). Counts are then weighted sums
# (confusion matrix: np.bincount with weights; multi-label: w @ indicators) and a ROC AUC is a weighted
# Mann-Whitney U over each column sorted once, so no resample is copied or sorted again. At N = 20,000 this is
# ~10× faster than recomputing ``headline_vector`` on resampled copies, for K = 100 classes or L = 14 labels.

def _weighted_auc(scores: np.ndarray, targets: np.ndarray):
    """``auc(w)``: the ROC AUC of every column of ``scores`` against the 0/1 ``targets`` (same shape) when
    image i counts ``w[i]`` times; mid-rank ties as ``roc_auc_score``; NaN without positives or negatives.

    Each column is sorted once and cut into groups of tied scores. For weights w, with P_g and N_g the
    weighted positives and negatives of group g, U = sum over positives i of w_i (negatives in lower groups
    of its column + N_g(i) / 2) and AUC = U / (P N). Only the full per-column cumulative sum touches all
    N × C entries; the rest runs over the positive entries. Integer weights keep every sum exact."""
    n, c = scores.shape
    if n == 0:
        return lambda w: np.full(c, np.nan)
    order = np.argsort(scores.T, axis=1, kind="stable")  # (C, N): one contiguous row per column
    s = np.take_along_axis(scores.T, order, 1)
    t = np.take_along_axis(np.asarray(targets, dtype=bool).T, order, 1).ravel()
    new = np.ones((c, n), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    new = new.ravel()
    starts = np.flatnonzero(new)  # flat index of each tie group's first element
    col_first = np.searchsorted(starts // n, np.arange(c))  # each column's first group
    pos_flat = np.flatnonzero(t)  # the positive entries, in sorted order
    pos_group = (np.cumsum(new) - 1)[pos_flat]
    pos_col, order = pos_flat // n, order.ravel()
    pos_image = order[pos_flat]
    no_ties = len(starts) == n * c
    del s, t, new

    def auc(w: np.ndarray) -> np.ndarray:
        ws = w[order]
        g_all = ws if no_ties else np.add.reduceat(ws, starts)
        w_pos = w[pos_image]
        g_neg = g_all - np.bincount(pos_group, weights=w_pos, minlength=len(g_all))
        excl = np.cumsum(g_neg) - g_neg  # negatives in all earlier groups, earlier columns included
        below = excl[pos_group] - excl[col_first][pos_col]  # ... in lower groups of the same column
        u = np.bincount(pos_col, weights=w_pos * (below + 0.5 * g_neg[pos_group]), minlength=c)
        n_pos = np.bincount(pos_col, weights=w_pos, minlength=c)
        n_neg = w.sum() - n_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return auc


def _qwk_from_confusion(cm: np.ndarray, sq: np.ndarray) -> float:
    """Quadratic-weighted kappa from a (weighted) confusion matrix, as ``cohen_kappa_score``."""
    n = cm.sum()
    if n <= 0:
        return float("nan")
    den = (sq * np.outer(cm.sum(1), cm.sum(0)) / n).sum()
    return float(1.0 - (sq * cm).sum() / den) if den > 0 else float("nan")


def _single_label_engine(y: np.ndarray, probs: np.ndarray, task: str):
    n, k = probs.shape
    code = y * k + predicted_labels(probs, task)
    if task == BINARY:
        auc_f = _weighted_auc(probs[:, -1:], (y == k - 1)[:, None])
    else:
        auc_f = _weighted_auc(probs, y[:, None] == np.arange(k))
    dist = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]).astype(np.float64)

    def vector(w: np.ndarray) -> np.ndarray:
        cm = np.bincount(code, weights=w, minlength=k * k).reshape(k, k)
        tp = np.diag(cm)
        support, predicted, n_w = cm.sum(1), cm.sum(0), cm.sum()
        fn, fp = support - tp, predicted - tp
        tn = n_w - tp - fn - fp
        sens, spec, ppv, npv, f1 = _rates(tp, fp, fn, tn)
        aucs = auc_f(w)
        auc = aucs[-1] if task == BINARY else _nanmean(aucs)
        bal = np.nanmean(sens[support > 0]) if (support > 0).any() else np.nan
        parts = [[tp.sum() / n_w, auc, bal], sens, spec, ppv, npv, f1]
        if task == ORDINAL:
            parts.append([(cm * dist).sum() / n_w, _qwk_from_confusion(cm, dist ** 2)])
        return np.concatenate(parts)
    return vector


def _multilabel_engine(y: np.ndarray, probs: np.ndarray):
    n_labels = y.shape[1]
    yb, pb = y.astype(bool), probs > 0.5
    # one matrix-vector product gives every count: [tp×L, positives×L, predicted×L, exact match]
    indicators = np.concatenate([(yb & pb).T, yb.T, pb.T, (yb == pb).all(1)[None, :]]).astype(np.float64)
    auc_f = _weighted_auc(probs, yb)

    def vector(w: np.ndarray) -> np.ndarray:
        # einsum, not ``@``: a BLAS matrix-vector product leaves OpenBLAS threads spinning after each call,
        # which slowed every following numpy call of the loop about fourfold on 2 cores
        counts = np.einsum("ij,j->i", indicators, w)
        tp, pos, pp = counts[:n_labels], counts[n_labels:2 * n_labels], counts[2 * n_labels:3 * n_labels]
        n_w = w.sum()
        fn, fp = pos - tp, pp - tp
        return _multilabel_vector(tp, fp, fn, n_w - pos - fp, n_w, auc_f(w), counts[-1])
    return vector


def _engine(y: np.ndarray, probs: np.ndarray, task: str):
    """``vector(w)``: ``headline_vector`` (plus ``[mae, qwk]`` for ordinal-regression) on resample weights."""
    return _multilabel_engine(y, probs) if task == MULTI_LABEL else _single_label_engine(y, probs, task)


def _finite(v):
    """NaN → None so metrics.json stays strict JSON (undefined values are null)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_finite(x) for x in v]
    v = float(v)
    return v if np.isfinite(v) else None


def headline_intervals(y_true, probs, task: str = "multi-class", n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> dict:
    """Point estimates (scikit-learn) and seeded percentile-bootstrap intervals of ACC, macro AUC, balanced
    accuracy and every per-class rate; one resample set for all of them.

    Keys: ``acc``, ``auc``, ``balanced_acc`` each with ``<key>_ci95`` = [low, high]; ``n``;
    ``auc_classes_skipped``; ``per_class_rates`` = {rate: {"value": [per class], "ci95": [[low, high], ...]}}
    for ``PER_CLASS_RATES``; ``support`` (images per class); ``bootstrap`` {n_resamples, n_failed, confidence,
    method, seed}; ``task``. Undefined values (NaN) are None.

    binary / multi-class: resamples stratified by class. ordinal-regression: the same, plus ``mae``,
    ``mae_ci95``, ``qwk``, ``qwk_ci95`` (``ordinal_metrics``) on the same resamples.

    multi-label: images (rows of the label matrix) are resampled with replacement, unstratified: an image
    carries L labels at once, so there is no one class to stratify by. A resample in which a label has no
    positive (or no negative) leaves that label's AUC and the rates needing them undefined on that resample;
    they are left out of that entry's percentiles (macro AUC: mean over the labels defined in the resample,
    as for the point estimate). Adds ``exact_match`` and ``exact_match_ci95``; ``per_class_rates`` holds one
    entry per label for ``PER_LABEL_RATES`` (sensitivity, specificity, ppv, npv, f1, accuracy, auc);
    ``support`` = images with the label present; ``auc_classes_skipped`` lists label indices.
    """
    y_true, probs = _inputs(y_true, probs, task)
    k = probs.shape[1]
    point = headline_point(y_true, probs, task)
    boot = bootstrap_weighted(_engine(y_true, probs, task), y_true, len(y_true), n_resamples, seed,
                               confidence=confidence)
    low, high = np.asarray(boot["low"]), np.asarray(boot["high"])
    head = MULTILABEL_HEADLINE if task == MULTI_LABEL else HEADLINE
    rate_names = PER_LABEL_RATES if task == MULTI_LABEL else PER_CLASS_RATES
    out = {}
    for j, name in enumerate(head):
        out[name] = point[name]
        out[f"{name}_ci95"] = _finite([low[j], high[j]])
    out.update(n=point["n"], auc_classes_skipped=point["auc_classes_skipped"])
    rates = {}
    for j, name in enumerate(rate_names):
        sl = slice(len(head) + j * k, len(head) + (j + 1) * k)
        rates[name] = {"value": _finite(point["per_class_rates"][name]),
                       "ci95": [_finite([lo, hi]) for lo, hi in zip(low[sl], high[sl])]}
    out["per_class_rates"] = rates
    out["support"] = point["per_class_rates"]["support"]
    if task == ORDINAL:
        end = len(head) + len(rate_names) * k
        for j, name in enumerate(ORDINAL_METRICS):
            out[name] = point[name]
            out[f"{name}_ci95"] = _finite([low[end + j], high[end + j]])
    out["bootstrap"] = {k_: boot[k_] for k_ in ("n_resamples", "n_failed", "confidence", "method")} | {"seed": seed}
    out["task"] = task
    return out


def paired_gain(y_true, probs_base, probs_new, task: str = "multi-class", n_resamples: int = 1000,
                seed: int = 0, confidence: float = 0.95) -> dict:
    """ACC and AUC of ``probs_new`` and their gain over ``probs_base`` on the same images, with paired
    bootstrap intervals (both evaluated on the same resamples, so the gain's interval is not the
    difference of two independent intervals). Resampling as ``headline_intervals`` (stratified by class;
    multi-label: images unstratified)."""
    y_true, probs_base = _inputs(y_true, probs_base, task)
    probs_new = as_probs(probs_new, task, "probs_new")
    if probs_new.shape != probs_base.shape:
        raise WorkbenchError(f"probs_new has shape {probs_new.shape} but probs_base {probs_base.shape}; both must "
                             "be predictions of the same images and classes")
    base_f, new_f = _engine(y_true, probs_base, task), _engine(y_true, probs_new, task)

    def vec(w):
        va, vb = base_f(w)[:2], new_f(w)[:2]
        return np.concatenate([vb, vb - va])
    boot = bootstrap_weighted(vec, y_true, len(y_true), n_resamples, seed, confidence=confidence)
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


def curves_summary(y_true, probs, task: str | None = None) -> dict:
    """Per-class one-vs-rest ROC AUC and average precision (area under the PR curve), scikit-learn.

    Multi-label (``task`` "multi-label, binary-class", or a 0/1 label matrix with ``task`` None): the same
    per label, of ``probs[:, l]`` against ``y_true[:, l]``; ``prevalence`` = share of images with the label."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    multilabel = task == MULTI_LABEL or (task is None and y_true.ndim == 2 and y_true.shape[1] > 1)
    if multilabel:
        y_true, probs = _inputs(y_true, probs, MULTI_LABEL)
    else:
        y_true = y_true.reshape(-1)
    out = {"roc_auc": [], "average_precision": [], "prevalence": []}
    for c in range(probs.shape[1]):
        pos = y_true[:, c] == 1 if multilabel else y_true == c
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


# --- multi-label auto-accept: one threshold per label on the confidence of its present/absent decision -------

def _multilabel_decisions(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each label's decision (present if p > 0.5) and its confidence max(p, 1 - p)."""
    return probs > 0.5, np.maximum(probs, 1.0 - probs)


def multilabel_precision_coverage(y_true, probs, thresholds) -> dict:
    """Multi-label: precision and coverage of the accepted label decisions.

    The decision on label l of an image is present (p > 0.5) or absent; it is accepted when its confidence
    max(p, 1 - p) ≥ ``thresholds[l]`` (+inf: never). Returns ``per_label`` rows {label, precision, coverage,
    n_accepted, n} (precision = share of accepted decisions that are right), the same over all label
    decisions (``precision``, ``coverage``, ``n_accepted``, ``n`` = images × labels), ``all_accepted`` (share
    of images whose every label decision is accepted), ``n_all_accepted``, ``all_accepted_precision`` (share
    of those images with every label right) and ``n_images``. ``y_true`` None (unlabelled pool): coverage
    only, precisions NaN."""
    probs = as_probs(probs, MULTI_LABEL)
    n, n_labels = probs.shape
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.shape != (n_labels,) or np.isnan(thr).any():
        raise WorkbenchError(f"thresholds has {thr.size} values but the probabilities {n_labels} labels; give one "
                             "threshold per label (multilabel_thresholds(...)['thresholds'])")
    decision, conf = _multilabel_decisions(probs)
    accepted = conf >= thr[None, :]
    if y_true is None:
        correct = np.zeros_like(accepted)
    else:
        correct = decision == as_labels(y_true, probs, MULTI_LABEL).astype(bool)
    rows = []
    for c in range(n_labels):
        r = precision_coverage(accepted[:, c], correct[:, c])
        rows.append({"label": c, **r} | ({"precision": float("nan")} if y_true is None else {}))
    overall = precision_coverage(accepted.ravel(), correct.ravel())
    every = accepted.all(1)
    whole = precision_coverage(every, correct.all(1))
    if y_true is None:
        overall["precision"] = whole["precision"] = float("nan")
    return {"per_label": rows, **overall, "all_accepted": whole["coverage"], "n_all_accepted": whole["n_accepted"],
            "all_accepted_precision": whole["precision"], "n_images": int(n)}


def multilabel_thresholds(val_probs, val_labels, target_precision: float, guarantee: float = 0.0) -> dict:
    """Multi-label auto-accept thresholds, one per label, chosen on val.

    Per label l the decision is present/absent at 0.5 and its confidence is max(p, 1 - p); the threshold is
    ``threshold_for_precision(confidence, decision == truth, target_precision, guarantee)`` on val (the
    val point estimate for ``guarantee`` 0, Learn-then-Test with that probability otherwise). +inf: none of
    that label's decisions is auto-accepted (target not reached).

    Returns ``per_label`` rows {label, threshold, reached, n_val, val_precision, val_coverage} (plus
    ``n_min`` with a guarantee), ``thresholds`` (the vector, label order), ``target_precision``,
    ``guarantee``, ``method``, and what the thresholds give on val over all label decisions
    (``val_precision``, ``val_coverage``, ``val_all_accepted`` = share of val images whose every label
    decision is accepted)."""
    val_probs = as_probs(val_probs, MULTI_LABEL, "val_probs")
    y = as_labels(val_labels, val_probs, MULTI_LABEL, "val_labels")
    decision, conf = _multilabel_decisions(val_probs)
    correct = decision == y.astype(bool)
    rows, method = [], None
    for c in range(val_probs.shape[1]):
        ch = threshold_for_precision(conf[:, c], correct[:, c], target_precision, guarantee)
        method = ch["method"]
        row = {"label": c, "threshold": ch["threshold"], "reached": ch["reached"], "n_val": ch["n_val"],
               "val_precision": ch["val_precision"], "val_coverage": ch["val_coverage"]}
        if "n_min" in ch:
            row["n_min"] = ch["n_min"]
        rows.append(row)
    thr = [r["threshold"] for r in rows]
    achieved = multilabel_precision_coverage(y, val_probs, thr)
    return {"target_precision": float(target_precision), "guarantee": float(guarantee),
            "method": method or ("learn-then-test" if guarantee > 0 else "point estimate"),
            "decision": "label present if p > 0.5; confidence max(p, 1 - p)",
            "per_label": rows, "thresholds": thr, "val_precision": achieved["precision"],
            "val_coverage": achieved["coverage"], "val_all_accepted": achieved["all_accepted"]}


# ---------------------------------------------------------------------- auto-accept thresholds (annotate)
def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, target: float, mode: str = "per-class",
                         min_class_val: int = 20, guarantee: float = 0.0) -> dict:
    """Thresholds on the top-1 confidence, one per predicted class, chosen on labelled data (val, or a
    labelled random sample of a pool: workbench.certify).

    ``mode`` "global": one threshold for all classes (``threshold_for_precision``).
    ``mode`` "per-class": for each class c, the lowest threshold at which the predictions of class c with
    confidence ≥ it reach ``target`` precision, so the accepted set reaches it overall too. A class predicted
    fewer than ``min_class_val`` times uses the global threshold. With a ``guarantee`` the same applies to a
    class with fewer predictions than the test needs (``n_min``). A class whose predictions never reach the
    target gets +inf, so none of it is auto-accepted.

    ``guarantee`` > 0 makes each threshold a Learn-then-Test choice: precision ≥ target on new images like
    these with that probability. Per class, that holds for each tested class, which has fewer images to test
    on, so it covers less; "global" is the default (bench/results/annotate.md compares the rules).
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == np.asarray(labels).reshape(-1)
    glob = threshold_for_precision(conf, correct, target, guarantee)
    min_n = max(min_class_val, glob.get("n_min", 0))
    rows = []
    for c in range(probs.shape[1]):
        m = pred == c
        if mode == "global" or m.sum() < min_n:
            rows.append({"class": c, "threshold": glob["threshold"], "reached": glob["reached"],
                         "source": "global" if mode == "global" else f"global (only {int(m.sum())} predictions)",
                         "n_val": int(m.sum())})
            continue
        ch = threshold_for_precision(conf[m], correct[m], target, guarantee)
        rows.append({"class": c, "threshold": ch["threshold"], "reached": ch["reached"], "source": "class",
                     "n_val": int(m.sum()), "val_precision": ch["val_precision"], "val_coverage": ch["val_coverage"]})
    thr = np.array([r["threshold"] for r in rows])
    acc = conf >= thr[pred] if len(pred) else np.zeros(0, bool)
    achieved_val = precision_coverage(acc, correct)
    return {"mode": mode, "target_precision": float(target), "guarantee": float(guarantee), "global": glob,
            "per_class": rows,
            "thresholds": thr.tolist(), "val_precision": achieved_val["precision"],
            "val_coverage": achieved_val["coverage"]}


def multilabel_choice(probs, labels, target: float, guarantee: float = 0.0) -> dict:
    """``multilabel_thresholds`` in the shape of ``per_class_thresholds`` (one row per label)."""
    ml = multilabel_thresholds(probs, labels, target, guarantee)
    rows = [{"class": r["label"], "threshold": r["threshold"], "reached": r["reached"], "source": "label",
             "n_val": r["n_val"], "val_precision": r.get("val_precision"), "val_coverage": r.get("val_coverage")}
            for r in ml["per_label"]]
    pc = multilabel_precision_coverage(labels, probs, ml["thresholds"])
    finite = [t for t in ml["thresholds"] if np.isfinite(t)]
    return {"mode": "per-label", "target_precision": float(target), "guarantee": float(guarantee),
            "global": {"threshold": float(min(finite)) if finite else float("inf"), "target_precision": float(target)},
            "per_class": rows, "thresholds": list(ml["thresholds"]), "val_precision": pc["precision"],
            "val_coverage": pc["coverage"], "val_all_labels_accepted": pc["all_accepted"]}


def auto_accept_thresholds(probs, labels, task: str, target: float, mode: str = "global", min_class_val: int = 20,
                           guarantee: float = 0.0, exclude=None) -> dict:
    """The auto-accept thresholds of any task, chosen on labelled items (val, or a pool's certification
    sample). ``exclude``: a mask of items that can never be auto-accepted whatever their confidence (the
    out-of-distribution gate): they are left out of the choice, so the threshold certifies exactly the set
    that will be accepted (confidence at or above it and not excluded). ``n_excluded`` records how many."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    keep = np.ones(len(probs), bool) if exclude is None else ~np.asarray(exclude, bool)
    if task == MULTI_LABEL:
        choice = multilabel_choice(probs[keep], labels[keep], target, guarantee)
    else:
        choice = per_class_thresholds(probs[keep], labels.reshape(-1)[keep], target, mode, min_class_val, guarantee)
    choice["n_excluded"] = int((~keep).sum())
    choice["n_labelled"] = int(len(probs))
    return choice


def n_required(target: float, guarantee: float, errors: int = 0) -> int:
    """The fewest accepted, labelled items with which Learn-then-Test (exact binomial test at level
    1 - guarantee) certifies precision ≥ ``target`` when ``errors`` of them are wrong: the smallest n with
    P(Binomial(n, 1 - target) ≤ errors) ≤ 1 - guarantee. 0.99 at 0.9: 230 with no error, 388 with one,
    531 with two."""
    from scipy.stats import binom
    alpha, delta = 1.0 - float(target), 1.0 - float(guarantee)
    if not 0 < alpha < 1 or not 0 < delta < 1:
        raise WorkbenchError(f"n_required: target ({target}) and guarantee ({guarantee}) must be in (0, 1)")
    n = max(int(errors) + 1, int(np.ceil(np.log(delta) / np.log1p(-alpha))))
    while binom.cdf(errors, n, alpha) > delta:
        n += 1
    return n


def clopper_pearson(k: int, n: int, confidence: float = 0.95, side: str = "two") -> tuple[float, float]:
    """Exact binomial interval of a proportion k/n: two-sided at ``confidence``, or (side "lower") the
    one-sided lower bound with upper 1.0. (nan, nan) for n = 0."""
    from scipy.stats import beta
    if n <= 0:
        return float("nan"), float("nan")
    a = 1.0 - confidence if side == "lower" else (1.0 - confidence) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = 1.0 if side == "lower" else (float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0)
    return lo, hi

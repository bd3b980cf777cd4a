"""Is the pool like val? A label-free check that decides whether val's thresholds may vouch for a pool.

The annotate stage chooses its auto-accept thresholds on val (Learn-then-Test): the promised precision holds
on new images *exchangeable with val*. ``check`` compares the pool with val using only what is known without
the pool's labels (the model's probabilities on val and on the pool, val's labels, and where given each item's
out-of-distribution flag) and says whether they differ by more than a harmless amount:

- ``confidence``: the per-item confidence distributions (top-1 probability; multi-label: the mean over labels
  of max(p, 1 - p)). Effect: the Kolmogorov-Smirnov distance D.
- ``predicted_classes``: the predicted-class counts (multi-label: one 2 x 2 table per label of the
  predicted-positive rate). Effect: Cohen's w, bias-corrected (``_chi2_effect``).
- ``accept_share`` (when thresholds are given): the share of items at or above their auto-accept threshold.
- ``doc``: the difference of mean confidences (Guillory et al. 2021). It is *not* turned into an accuracy
  estimate: under a shift the confidence is what cannot be trusted (BloodMNIST made 20 % darker: mean
  confidence 0.92, accuracy 0.31).
- ``ood_share`` (when OOD flags are given): the share of items beyond val's out-of-distribution quantile
  (workbench.neighbours), i.e. feature-space novelty the confidences may not show.

Decision: **minimum-effect tests**. Each test's null hypothesis is "the pool differs from val by at most the
floor" (not "no difference"), tested at level ``alpha`` with Holm's correction over the tests; ``fired`` is
True when any null is rejected. A plain test of no difference fires on any pool that is large enough, as
every real pool differs a little (BloodMNIST's test split is 1 point harder than its val split, on which the
model was early-stopped); a rule "significant and effect ≥ floor" fires at random on small pools, where the
effect estimate is noisy. A minimum-effect test fires only when the data show, with confidence 1 - alpha, a
difference larger than the floor, at every pool size: false alarms stay below alpha wherever the true
difference is below the floor. The floors (``FLOORS``) were chosen on a design set of exchangeable pools of
every embedded dataset (bench/certify.py; results in bench/results/certify.md) and checked on a separate
evaluation set.

When the check fires, val cannot vouch for the pool; the annotate stage then certifies on the pool itself
(workbench.certify: a labelled random sample) instead of accepting nothing.

Small pools: a test whose p-value cannot be computed validly is reported with ``computed`` False and its reason
and never fires. The z-tests need ``min_items`` items on each side; the chi-square test needs expected counts of
at least ``MIN_EXPECTED`` (rare classes are merged, see ``_merge_rare``).

Pure numpy/scipy: no Keras, JAX or matplotlib.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..core.errors import WorkbenchError

MULTI_LABEL = "multi-label, binary-class"
TASKS = ("binary-class", "multi-class", "ordinal-regression", MULTI_LABEL)
ALPHA = 0.01
# Floors of the minimum-effect tests: the largest difference between a pool and val treated as harmless.
# Chosen on the design pools of bench/certify.py (make bench-certify; bench/results/certify.md, part 1): per
# test, the smallest floor at which it fires alone on at most 1 % of the exchangeable pools of every
# (dataset, model, source, size): 100-5,000 images from val ∪ test and from test alone, BloodMNIST, BreastMNIST
# and RetinaMNIST, demo models of seeds 0 and 1. They are small: at these sizes the difference between val
# (which chose the model's epoch and temperature) and new images of the same kind stays within the tests' own
# noise, which the minimum-effect tests already account for. A pool that differs by more is not refused: it
# is certified on its own labelled sample (workbench.certify). Checked, unchanged, on separate evaluation pools
# and a third model (part 2 of the same report).
FLOORS = {"confidence": 0.005, "predicted_classes": 0.0, "accept_share": 0.015, "doc": 0.003, "ood_share": 0.005}
FLOORS_SOURCE = "bench/certify.py design pools (bench/results/certify.md, part 1)"
EFFECTS = {"confidence": "KS D", "predicted_classes": "Cohen's w", "accept_share": "share difference",
           "doc": "difference of mean confidences", "ood_share": "share difference"}
MIN_ITEMS = 30      # z-tests (normal approximation) need this many items on each side
MIN_EXPECTED = 5.0  # Cochran's rule for the chi-square approximation


# ---------------------------------------------------------------------- inputs
def _array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise WorkbenchError(f"shift.check: {name} must be a numeric array") from None
    return a


def _validate(val_probs, val_labels, pool_probs, task: str):
    if task not in TASKS:
        raise WorkbenchError(f"shift.check: unknown task {task!r} (parameter task); choose one of {', '.join(TASKS)}")
    vp, pp = _array(val_probs, "val_probs"), _array(pool_probs, "pool_probs")
    for name, a in (("val_probs", vp), ("pool_probs", pp)):
        if a.ndim != 2 or a.shape[1] < 1:
            raise WorkbenchError(f"shift.check: {name} must be (N, classes or labels), got shape {a.shape}")
        if a.size and (not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6):
            raise WorkbenchError(f"shift.check: {name} must hold probabilities in [0, 1] (finite)")
    if vp.shape[1] != pp.shape[1]:
        raise WorkbenchError(f"shift.check: val_probs has {vp.shape[1]} columns but pool_probs has {pp.shape[1]}: "
                             "predict both with the same model")
    if task != MULTI_LABEL and vp.shape[1] < 2:
        raise WorkbenchError(f"shift.check: task {task!r} needs one probability column per class (at least 2)")
    if len(vp) == 0:
        raise WorkbenchError("shift.check: val_probs is empty: the comparison needs val predictions")
    y = np.asarray(val_labels)
    if task == MULTI_LABEL:
        if y.shape != vp.shape or not np.isin(y, (0, 1)).all():
            raise WorkbenchError(f"shift.check: multi-label val_labels must be 0/1 of shape {vp.shape}, got {y.shape}")
    else:
        y = y.reshape(-1)
        if len(y) != len(vp):
            raise WorkbenchError(f"shift.check: {len(y)} val_labels for {len(vp)} val_probs rows")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= vp.shape[1]:
            raise WorkbenchError(f"shift.check: val_labels must be class indices in 0..{vp.shape[1] - 1}")
    return np.clip(vp, 0, 1), y.astype(np.int64), np.clip(pp, 0, 1)


def _thresholds(thresholds, n_cols: int) -> np.ndarray | None:
    """None, one number, or one per class (multi-class: per predicted class; multi-label: per label);
    the dict of ``annotate.per_class_thresholds`` is accepted too."""
    if thresholds is None:
        return None
    if isinstance(thresholds, dict):
        thresholds = thresholds.get("thresholds")
    t = _array(thresholds, "thresholds").reshape(-1)
    if t.size == 1:
        t = np.full(n_cols, t[0])
    if t.size != n_cols or np.isnan(t).any():
        raise WorkbenchError(f"shift.check: thresholds must be one number or {n_cols} (one per column), got {t.size}")
    return t


# ---------------------------------------------------------------------- per-item quantities
def label_confidence(probs: np.ndarray) -> np.ndarray:
    """Multi-label: the confidence of each label's decision, max(p, 1 - p), shape (N, L)."""
    return np.maximum(probs, 1.0 - probs)


def item_confidence(probs: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """One confidence per item: the top-1 probability, or (multi-label) the mean per-label confidence.
    Multi-label uses one number per image because an image's labels are not independent draws: testing
    the N x L values as if they were would overstate the sample size."""
    probs = np.asarray(probs, dtype=np.float64)
    return label_confidence(probs).mean(1) if task == MULTI_LABEL else probs.max(1)


def val_accuracy(probs: np.ndarray, labels: np.ndarray, task: str = "multi-class") -> float:
    """Arg-max accuracy; multi-label: the mean over labels of the accuracy at p > 0.5 (MedMNIST protocol)."""
    if task == MULTI_LABEL:
        return float(((probs > 0.5) == (labels == 1)).mean())
    return float((probs.argmax(1) == labels).mean())


def accepted_share(probs: np.ndarray, thresholds: np.ndarray, task: str = "multi-class") -> np.ndarray:
    """Per item: 1.0 when auto-accepted (top-1 confidence at or above its predicted class's threshold), else 0;
    multi-label: the share of the item's labels whose confidence max(p, 1 - p) reaches that label's threshold."""
    if task == MULTI_LABEL:
        return (label_confidence(probs) >= thresholds[None, :]).mean(1)
    return (probs.max(1) >= thresholds[probs.argmax(1)]).astype(np.float64)


# ---------------------------------------------------------------------- tests
def _result(name: str, test: str, **kw) -> dict:
    out = {"name": name, "test": test, "effect_name": EFFECTS[name.split("[")[0]], "computed": True,
           "statistic": None, "p_value": None, "effect": None, "note": ""}
    out.update(kw)
    return out


def _not_computed(name: str, test: str, note: str, **kw) -> dict:
    return _result(name, test, computed=False, note=note, **kw)


def _ks(cv: np.ndarray, cp: np.ndarray, floor: float) -> dict:
    name, test = "confidence", "two-sample Kolmogorov-Smirnov, minimum effect"
    if len(cp) == 0:
        return _not_computed(name, test, "the pool is empty")
    r = stats.ks_2samp(cp, cv, alternative="two-sided", method="auto")
    d = float(r.statistic)
    # H0: the distributions differ by at most the floor (D ≤ floor). The observed D exceeds the true one by at
    # most the sup of the two empirical processes' difference, whose tail is Kolmogorov's (asymptotically).
    scale = np.sqrt(len(cv) * len(cp) / (len(cv) + len(cp)))
    p = float(stats.kstwobign.sf((d - floor) * scale)) if d > floor else 1.0
    return _result(name, test, statistic=d, p_value=min(1.0, p), p_no_difference=float(r.pvalue), effect=d,
                   n_val=int(len(cv)), n_pool=int(len(cp)),
                   pool_median=float(np.median(cp)), val_median=float(np.median(cv)),
                   pool_q10=float(np.quantile(cp, 0.1)), val_q10=float(np.quantile(cv, 0.1)),
                   pool_mean=float(cp.mean()), val_mean=float(cv.mean()))


def _se(xv: np.ndarray, xp: np.ndarray) -> float:
    return float(np.sqrt(xv.var(ddof=1) / len(xv) + xp.var(ddof=1) / len(xp)))


def _z_min_effect(xv: np.ndarray, xp: np.ndarray, floor: float) -> tuple[float, float, float, float]:
    """(difference mean(pool) - mean(val), z, p) for H0: |difference| ≤ floor, with the unpooled standard error
    (under the alternative the two variances differ). Also the plain test of no difference (pooled variance:
    under that null the samples are exchangeable) as a third value."""
    diff = float(xp.mean() - xv.mean())
    se = _se(xv, xp)
    excess = abs(diff) - floor
    if se <= 0:
        p = 0.0 if excess > 0 else 1.0
        z = float("inf") if excess > 0 else 0.0
    else:
        z = excess / se
        p = float(min(1.0, stats.norm.sf(z) + stats.norm.sf((abs(diff) + floor) / se)))
    both = np.concatenate([xv, xp])
    var = both.var(ddof=1)
    p0 = 1.0 if var <= 0 else float(2 * stats.norm.sf(abs(diff) / np.sqrt(var * (1 / len(xv) + 1 / len(xp)))))
    return diff, z, p, p0


def _doc(cv: np.ndarray, cp: np.ndarray, acc: float, min_items: int, floor: float) -> dict:
    name, test = "doc", "difference of mean confidences (z-test, minimum effect)"
    base = {"val_accuracy": acc, "val_mean_confidence": float(cv.mean())}
    if len(cp) < min_items or len(cv) < min_items:
        return _not_computed(name, test, f"needs at least {min_items} items on each side (pool {len(cp)}, "
                             f"val {len(cv)})", **base)
    diff, z, p, p0 = _z_min_effect(cv, cp, floor)
    # no accuracy estimate: under a shift the model's confidence is exactly what cannot be trusted (20 % darker
    # BloodMNIST cells: mean confidence said 0.92, the accuracy was 0.31)
    return _result(name, test, statistic=z, p_value=p, p_no_difference=p0, effect=abs(diff), difference=diff,
                   se=_se(cv, cp), pool_mean_confidence=float(cp.mean()), **base)


def _share_test(name: str, test: str, av: np.ndarray, ap: np.ndarray, min_items: int, floor: float, **kw) -> dict:
    if len(ap) < min_items or len(av) < min_items:
        return _not_computed(name, test, f"needs at least {min_items} items on each side (pool {len(ap)}, "
                             f"val {len(av)})")
    diff, z, p, p0 = _z_min_effect(av, ap, floor)
    return _result(name, test, statistic=z, p_value=p, p_no_difference=p0, effect=abs(diff), difference=diff,
                   se=_se(av, ap), pool_share=float(ap.mean()), val_share=float(av.mean()), **kw)


def _accept_share(av: np.ndarray, ap: np.ndarray, min_items: int, nothing_accepted: bool, floor: float) -> dict:
    name, test = "accept_share", "difference of auto-accepted shares (z-test, minimum effect)"
    if nothing_accepted:
        return _not_computed(name, test, "every threshold is +inf (nothing is auto-accepted): nothing to compare")
    return _share_test(name, test, av, ap, min_items, floor)


def _ood_share(fv: np.ndarray, fp: np.ndarray, min_items: int, floor: float, quantile: float | None) -> dict:
    name, test = "ood_share", "difference of out-of-distribution shares (z-test, minimum effect)"
    return _share_test(name, test, fv.astype(np.float64), fp.astype(np.float64), min_items, floor,
                       val_quantile=quantile)


def _merge_rare(table: np.ndarray, min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, list[list[int]]]:
    """Merge the columns (classes) of a 2 x K count table whose expected count in either row is below
    ``min_expected`` into one "other" column. The rarest classes go first; if the merged column is
    still short, the next rarest class joins it. Classes never predicted are dropped. Returns the
    merged table and the class indices in each column. With up to 100 classes and a few hundred
    images most classes are rare: the test then compares the frequent classes and "the rest"."""
    totals = table.sum(0)
    n, rows = table.sum(), table.sum(1)
    if n == 0 or rows.min() == 0:
        return table[:, :0], []
    scale = rows.min() / n  # the smaller row's expected count is totals * scale
    cols = [c for c in np.argsort(totals, kind="stable") if totals[c] > 0]
    rare = [c for c in cols if totals[c] * scale < min_expected]
    keep = [c for c in cols if totals[c] * scale >= min_expected]
    if rare:
        while totals[rare].sum() * scale < min_expected and keep:
            rare.append(keep.pop(0))
    groups = [[int(c)] for c in sorted(keep)] + ([sorted(int(c) for c in rare)] if rare else [])
    merged = np.stack([table[:, g].sum(1) for g in groups], axis=1) if groups else table[:, :0]
    if rare and totals[rare].sum() * scale < min_expected:  # everything together is still too little
        return table[:, :0], []
    return merged, groups


def _chi2_effect(chi2: float, df: int, n_val: int, n_pool: int, table: np.ndarray) -> dict:
    """Effect sizes of a 2 x k homogeneity test. ``w``: Cohen's w of the two distributions,
    sqrt(sum_j (pool_j - val_j)^2 / both_j), estimated as sqrt(max(0, chi2 - df) * (1/n_val + 1/n_pool)):
    chi2 - df removes the null's expected chi2 (so 100 sparse classes do not read as a shift), and the
    factor makes it independent of the sample sizes. Cramér's V (bias-corrected, Bergsma 2013) depends
    on the ratio of the sizes too (a 20-image pool caps it near 0.1 whatever the shift): reported only."""
    n = n_val + n_pool
    w = float(np.sqrt(max(0.0, chi2 - df) * (1.0 / n_val + 1.0 / n_pool)))
    k, r = table.shape[1], 2
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    kc, rc = k - (k - 1) ** 2 / (n - 1), r - (r - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    v = float(np.sqrt(phi2 / denom)) if denom > 0 else 0.0
    shares = table / table.sum(1, keepdims=True)
    return {"w": w, "cramers_v": v, "tvd": float(0.5 * np.abs(shares[1] - shares[0]).sum())}


def _chi2_min_effect(chi2: float, df: int, n_val: int, n_pool: int, floor: float) -> float:
    """p of H0: Cohen's w ≤ floor. Under a true w the statistic is about noncentral chi-square with df degrees
    and noncentrality w² n_val n_pool / (n_val + n_pool); the least favourable null is w = floor."""
    lam = floor ** 2 * n_val * n_pool / (n_val + n_pool)
    return float(stats.ncx2.sf(chi2, df, lam) if lam > 0 else stats.chi2.sf(chi2, df))


def _predicted_classes(vp: np.ndarray, pp: np.ndarray, names: list[str], floor: float) -> dict:
    name, test = "predicted_classes", "chi-square test of homogeneity, minimum effect (rare classes merged)"
    k = vp.shape[1]
    cv = np.bincount(vp.argmax(1), minlength=k)
    cp = np.bincount(pp.argmax(1), minlength=k) if len(pp) else np.zeros(k, int)
    table = np.stack([cv, cp])
    merged, groups = _merge_rare(table)
    sv, sp = cv / max(cv.sum(), 1), cp / max(cp.sum(), 1)
    j = int(np.argmax(np.abs(sp - sv)))
    top = {"class": j, "class_name": names[j], "pool_share": float(sp[j]), "val_share": float(sv[j])}
    if merged.shape[1] < 2:
        return _not_computed(name, test, f"too few predictions for a chi-square test (expected counts of at least "
                             f"{MIN_EXPECTED:g} per cell; pool {int(cp.sum())}, val {int(cv.sum())})", largest=top)
    chi2, p0, df, _ = stats.chi2_contingency(merged, correction=False)
    eff = _chi2_effect(float(chi2), int(df), int(cv.sum()), int(cp.sum()), merged)
    n_merged = sum(len(g) for g in groups if len(g) > 1)
    p = _chi2_min_effect(float(chi2), int(df), int(cv.sum()), int(cp.sum()), floor)
    return _result(name, test, statistic=float(chi2), p_value=p, p_no_difference=float(p0), effect=eff["w"], df=int(df),
                   n_val=int(cv.sum()), n_pool=int(cp.sum()),
                   cramers_v=eff["cramers_v"], tvd=eff["tvd"], cells=len(groups), classes_merged=n_merged,
                   largest=top)


def _predicted_positive(vp: np.ndarray, pp: np.ndarray, label: int, names: list[str], floor: float) -> dict:
    """Multi-label: 2 x 2 test of one label's predicted-positive rate (p > 0.5), val vs pool."""
    name, test = f"predicted_classes[{names[label]}]", "chi-square test of homogeneity, minimum effect (2 x 2, one label)"
    pos_v, pos_p = int((vp[:, label] > 0.5).sum()), int((pp[:, label] > 0.5).sum())
    table = np.array([[pos_v, len(vp) - pos_v], [pos_p, len(pp) - pos_p]])
    top = {"class": label, "class_name": names[label], "pool_share": pos_p / max(len(pp), 1),
           "val_share": pos_v / len(vp)}
    expected = np.outer(table.sum(1), table.sum(0)) / max(table.sum(), 1)
    if len(pp) == 0 or expected.min() < MIN_EXPECTED:
        return _not_computed(name, test, f"expected counts below {MIN_EXPECTED:g} (pool {len(pp)} items)", largest=top)
    chi2, p0, df, _ = stats.chi2_contingency(table, correction=False)
    eff = _chi2_effect(float(chi2), int(df), len(vp), len(pp), table)
    p = _chi2_min_effect(float(chi2), int(df), len(vp), len(pp), floor)
    return _result(name, test, statistic=float(chi2), p_value=p, p_no_difference=float(p0), effect=eff["w"], df=int(df),
                   n_val=int(len(vp)), n_pool=int(len(pp)),
                   cramers_v=eff["cramers_v"], tvd=eff["tvd"], label=label, largest=top)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (valid under any dependence between the tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out.tolist()


# ---------------------------------------------------------------------- reasons
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _reason(t: dict) -> str:
    tail = f"[{t['effect_name']} {t['effect']:.3f} > floor {t['floor']:.3f}, adjusted p = {_p(t['p_adjusted'])}]"
    name = t["name"].split("[")[0]
    if name == "confidence":
        # confidences pile up near 1, so the mean and the 10th percentile say more than the median
        nums = (f"mean {t['pool_mean']:.3f} vs {t['val_mean']:.3f}, 10th percentile {t['pool_q10']:.3f} vs "
                f"{t['val_q10']:.3f}")
        if t["pool_mean"] < t["val_mean"]:
            return f"the model is less sure of the pool than of val: confidence {nums} {tail}"
        return f"the model's confidence on the pool is distributed differently from val: {nums} {tail}"
    if name == "predicted_classes":
        top = t["largest"]
        what = "predicted-positive rate" if "[" in t["name"] else "share of predictions"
        return (f"the predicted classes differ: {what} of '{top['class_name']}' {_pct(top['pool_share'])} on the pool "
                f"vs {_pct(top['val_share'])} on val (the largest difference) {tail}")
    if name == "accept_share":
        way = "fewer" if t["difference"] < 0 else "more"
        return (f"{way} pool items clear the auto-accept threshold than val items: {_pct(t['pool_share'])} vs "
                f"{_pct(t['val_share'])} {tail}")
    if name == "ood_share":
        return (f"more pool items lie outside the training data's feature space than val items: "
                f"{_pct(t['pool_share'])} beyond val's {t.get('val_quantile') or 0.99:.0%} out-of-distribution "
                f"quantile vs {_pct(t['val_share'])} of val {tail}")
    way = "less" if t["difference"] < 0 else "more"
    return (f"the model is on average {way} confident on the pool than on val: mean confidence "
            f"{t['pool_mean_confidence']:.3f} vs {t['val_mean_confidence']:.3f} (not an accuracy estimate: under a "
            f"shift the confidence itself may be wrong) {tail}")


# ---------------------------------------------------------------------- the check
def check(val_probs, val_labels, pool_probs, thresholds=None, task: str = "multi-class", alpha: float = ALPHA,
          floors: dict | None = None, min_items: int = MIN_ITEMS, class_names: list[str] | None = None,
          val_ood=None, pool_ood=None, ood_quantile: float | None = None) -> dict:
    """Compare the pool with val before auto-accepting with val's thresholds (see the module docstring).

    ``val_probs`` (N_val, K) and ``pool_probs`` (N_pool, K): the same model's probabilities, calibrated the
    way the thresholds were chosen; ``val_labels`` (N_val,) class indices, or (N_val, L) 0/1 for
    ``task`` "multi-label, binary-class". ``thresholds``: the auto-accept thresholds (one number, one per
    class / label, or a threshold choice dict), or None to skip that test. ``val_ood``, ``pool_ood``: 0/1
    per item, beyond the out-of-distribution threshold (workbench.neighbours; ``ood_quantile`` of val), or None
    to skip that test.

    Returns ``fired`` (True: the pool differs from val by more than a floor, so val cannot vouch for it),
    ``status`` ("shift", "no shift detected" or "too little data"), ``reasons`` (one sentence per test that
    fired), ``differs`` (the names of those tests), ``notes`` (tests that could not be computed), ``tests``
    (each with statistic, p_value (minimum effect), p_no_difference, p_adjusted, effect, floor, fired) and
    ``settings``.
    """
    vp, vy, pp = _validate(val_probs, val_labels, pool_probs, task)
    if not 0 < alpha < 1:
        raise WorkbenchError(f"shift.check: alpha must be in (0, 1), got {alpha}")
    fl = dict(FLOORS)
    if floors:
        unknown = set(floors) - set(FLOORS)
        if unknown:
            raise WorkbenchError(f"shift.check: unknown floor(s) {sorted(unknown)}; choose among {sorted(FLOORS)}")
        fl.update({k: float(v) for k, v in floors.items()})
    k = vp.shape[1]
    names = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise WorkbenchError(f"shift.check: {len(names)} class_names for {k} probability columns")
    thr = _thresholds(thresholds, k)

    cv, cp = item_confidence(vp, task), item_confidence(pp, task)
    acc = val_accuracy(vp, vy, task)
    tests = [_ks(cv, cp, fl["confidence"])]
    if task == MULTI_LABEL:
        tests += [_predicted_positive(vp, pp, j, names, fl["predicted_classes"]) for j in range(k)]
    else:
        tests.append(_predicted_classes(vp, pp, names, fl["predicted_classes"]))
    if thr is not None:
        tests.append(_accept_share(accepted_share(vp, thr, task), accepted_share(pp, thr, task), min_items,
                                   not np.isfinite(thr).any(), fl["accept_share"]))
    tests.append(_doc(cv, cp, acc, min_items, fl["doc"]))
    if val_ood is not None and pool_ood is not None:
        fv, fp = np.asarray(val_ood, bool).reshape(-1), np.asarray(pool_ood, bool).reshape(-1)
        if len(fv) != len(vp) or len(fp) != len(pp):
            raise WorkbenchError(f"shift.check: val_ood/pool_ood need one flag per item ({len(vp)}, {len(pp)}), got "
                                 f"{len(fv)}, {len(fp)}")
        tests.append(_ood_share(fv, fp, min_items, fl["ood_share"], ood_quantile))

    done = [t for t in tests if t["computed"]]
    for t, p_adj in zip(done, holm([t["p_value"] for t in done])):
        t["p_adjusted"] = p_adj
    for t in tests:
        t["floor"] = fl[t["name"].split("[")[0]]
        t.setdefault("p_adjusted", None)
        t["fired"] = bool(t["computed"] and t["p_adjusted"] <= alpha)
    fired = any(t["fired"] for t in tests)
    reasons = [_reason(t) for t in tests if t["fired"]]
    notes = [f"{t['name']}: not tested, {t['note']}" for t in tests if not t["computed"]]
    small = len(pp) < min_items
    if small:
        notes.insert(0, f"too little data: the pool has {len(pp)} item(s); the check needs at least {min_items} "
                        "to compare it with val (only the tests it could compute were run)")
    status = "shift" if fired else ("too little data" if small else "no shift detected")
    return {
        "fired": fired, "status": status, "reasons": reasons, "notes": notes, "tests": tests,
        "differs": sorted({t["name"].split("[")[0] for t in tests if t["fired"]}),
        "n_val": int(len(vp)), "n_pool": int(len(pp)), "val_accuracy": acc,
        "settings": {"task": task, "alpha": float(alpha), "correction": "holm", "floors": fl,
                     "floors_source": FLOORS_SOURCE, "min_items": int(min_items), "min_expected": MIN_EXPECTED,
                     "thresholds_given": thr is not None, "ood_given": val_ood is not None and pool_ood is not None,
                     "rule": "a test fires when, at Holm-adjusted level alpha, the pool differs from val by more "
                             "than its floor (a minimum-effect test: H0 is 'the difference is at most the floor')"},
    }


def message(result: dict) -> str:
    """One line for the report: what was found and what it means for auto-accept."""
    if result["fired"]:
        return (f"pool differs from val ({len(result['reasons'])} test(s)): val's thresholds cannot vouch for it. "
                f"{result['reasons'][0]}")
    if result["status"] == "too little data":
        return f"too little data to compare the pool with val ({result['n_pool']} pool items)"
    return f"no shift detected between the pool ({result['n_pool']} items) and val ({result['n_val']} items)"


def p_at_floor(test: dict, floor: float) -> float:
    """A test's minimum-effect p-value recomputed for another floor from what ``check`` recorded (the benchmark
    that chooses the floors evaluates many floors on the same pools)."""
    if not test["computed"]:
        return 1.0
    name = test["name"].split("[")[0]
    if name == "confidence":
        d, scale = test["effect"], np.sqrt(test["n_val"] * test["n_pool"] / (test["n_val"] + test["n_pool"]))
        return float(stats.kstwobign.sf((d - floor) * scale)) if d > floor else 1.0
    if name == "predicted_classes":
        return _chi2_min_effect(test["statistic"], test["df"], test["n_val"], test["n_pool"], floor)
    d, se = test["effect"], test["se"]
    if se <= 0:
        return 0.0 if d > floor else 1.0
    return float(min(1.0, stats.norm.sf((d - floor) / se) + stats.norm.sf((d + floor) / se)))

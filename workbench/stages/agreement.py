"""Several annotators on one pool: agreement, consensus and annotator quality (no widgets, no Keras).

Consensus and annotator quality come from cleanlab's multi-annotator API: CROWDLAB
(``cleanlab.multiannotator.get_label_quality_multiannotator``; Goh, Tkachenko & Mueller 2022), which
weighs each annotator and the model's out-of-sample probabilities by their estimated quality. Where a
label must not depend on the model (the certification sample), the consensus is cleanlab's majority
vote without the model (``get_majority_vote_label`` with no ``pred_probs``).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


from ..data.review import seeded_global_rng, majority_vote  # noqa: E402,F401  (defined beside the review logs)


# ---------------------------------------------------------------------- the annotations of a pool
@dataclass
class Annotations:
    """The human labels of a pool: one row per item labelled by at least one annotator.

    ``labels``: (items, annotators) float, the class index or NaN (not labelled by that annotator); for a
    multi-label task (items, annotators, labels) float 0/1 or NaN. ``blind``: (items, annotators) True where
    the label was given without the model's label shown."""
    items: list[str]
    annotators: list[str]
    labels: np.ndarray
    blind: np.ndarray
    class_names: list[str]
    task: str = "multi-class"
    sources: np.ndarray | None = None     # (items, annotators) label_source of each label (blind, accepted, ...)
    times: np.ndarray | None = None       # (items, annotators) when it was given

    @property
    def multilabel(self) -> bool:
        from ..data.review import is_multilabel
        return is_multilabel(self.task)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> np.ndarray:
        """Annotations per item."""
        lab = self.labels[:, :, 0] if self.multilabel else self.labels
        return (~np.isnan(lab)).sum(1)


def collect(decisions: dict, class_names: list[str], task: str = "multi-class") -> Annotations:
    """``review.pool_decisions`` (annotator -> item -> Decision) as an ``Annotations`` table (skips left out)."""
    from ..data.review import is_multilabel, label_source_of, labelled
    names = sorted(n for n, decs in decisions.items() if labelled(decs))
    given = {n: labelled(decisions[n]) for n in names}
    items = sorted({i for n in names for i in given[n]})
    pos = {i: r for r, i in enumerate(items)}
    multi = is_multilabel(task)
    shape = (len(items), len(names), len(class_names)) if multi else (len(items), len(names))
    labels = np.full(shape, np.nan)
    blind = np.zeros((len(items), len(names)), dtype=bool)
    sources = np.full((len(items), len(names)), "", dtype=object)
    times = np.full((len(items), len(names)), "", dtype=object)
    for a, n in enumerate(names):
        for i, d in given[n].items():
            r = pos[i]
            sources[r, a] = label_source_of(d)
            times[r, a] = d.time
            if multi:
                labels[r, a] = 0
                labels[r, a, list(d.labels or ())] = 1
            else:
                labels[r, a] = float(d.label)
            blind[r, a] = bool(d.blind)
    return Annotations(items, names, labels, blind, list(class_names), task, sources, times)


# ---------------------------------------------------------------------- statistics (kept libraries)
def _table(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    t = np.zeros((k, k))
    np.add.at(t, (a.astype(int), b.astype(int)), 1)
    return t


def cohen_kappa(a, b, k: int, weights: str | None = None) -> float:
    """Cohen's kappa of two raters' labels (class indices 0..k-1) with ``statsmodels.stats.inter_rater``;
    ``weights`` "quadratic" or "linear" for ordinal classes. NaN with fewer than 2 items or no variation
    to correct for."""
    from statsmodels.stats.inter_rater import cohens_kappa
    a, b = np.asarray(a), np.asarray(b)
    if len(a) < 2:
        return float("nan")
    t = _table(a, b, k)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = cohens_kappa(t, wt=weights, return_results=False) if weights else \
            cohens_kappa(t, return_results=False)
    return float(kappa)


def _fleiss_rows(m: np.ndarray) -> np.ndarray:
    """The rows Fleiss' kappa uses: items rated by the same number of annotators (it needs that), the most
    common number of at least two (ties: the larger)."""
    n = (~np.isnan(m)).sum(1)
    if not (n >= 2).any():
        return np.zeros(len(m), dtype=bool)
    values, counts = np.unique(n[n >= 2], return_counts=True)
    r = values[np.flatnonzero(counts == counts.max()).max()]
    return n == r


def fleiss_kappa(m: np.ndarray, k: int) -> float:
    """Fleiss' kappa (``statsmodels.stats.inter_rater.fleiss_kappa``) of an (items, annotators) label
    matrix whose rows all have the same number (≥ 2) of labels."""
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss
    if len(m) < 2:
        return float("nan")
    counts = np.stack([(m == c).sum(1) for c in range(k)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_fleiss(counts, method="fleiss"))


def _ordinal_distance(values: np.ndarray):
    """Krippendorff's ordinal metric for nltk: δ²(c, k) = (Σ_{g between c and k} n_g − (n_c + n_k)/2)², n_g the
    frequencies of the pairable values (Krippendorff 2011, "Computing Krippendorff's alpha-reliability")."""
    uniq, freq = np.unique(values, return_counts=True)
    n = dict(zip(uniq.tolist(), freq.tolist()))
    cum = np.cumsum(freq)
    at = {v: i for i, v in enumerate(uniq.tolist())}

    def distance(c, k):
        if c == k:
            return 0.0
        i, j = sorted((at[c], at[k]))
        between = cum[j] - (cum[i - 1] if i else 0)
        return float(between - (n[c] + n[k]) / 2.0) ** 2

    return distance


def krippendorff_alpha(m: np.ndarray, level: str = "nominal") -> float:
    """Krippendorff's alpha of an (items, annotators) label matrix with NaN for missing labels (items with
    fewer than two labels are not pairable and drop out), by ``nltk.metrics.agreement.AnnotationTask``:
    ``level`` "nominal" (binary distance), "ordinal" (Krippendorff's rank metric) or "interval"."""
    from nltk.metrics.agreement import AnnotationTask
    from nltk.metrics.distance import binary_distance, interval_distance
    m = np.asarray(m, dtype=float)
    keep = (~np.isnan(m)).sum(1) >= 2
    m = m[keep]
    rows, cols = np.nonzero(~np.isnan(m))
    if len(m) < 1 or len(np.unique(m[rows, cols])) < 2:
        return float("nan")   # nothing pairable, or one value only: alpha is undefined
    values = m[rows, cols].astype(int)
    if level == "nominal":
        distance = binary_distance
    elif level == "ordinal":
        distance = _ordinal_distance(values)
    elif level == "interval":
        distance = interval_distance
    else:
        raise ValueError(f"level {level!r}")
    data = [(str(c), str(r), int(v)) for r, c, v in zip(rows, cols, values)]
    return float(AnnotationTask(data=data, distance=distance).alpha())


def _ci(values, level: float = 0.95) -> list | None:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) < 10:
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 100 - 50 * (1 - level)])
    return [round(float(lo), 4), round(float(hi), 4)]


_SAMPLES: dict | None = None   # when a dict: bootstrap() also keeps its resampled values here, by seed


def bootstrap(stat, n: int, resamples: int, seed: int) -> list | None:
    """95 % percentile interval of ``stat(rows)`` over ``resamples`` resamples of the ``n`` items (rows
    drawn with replacement; the same seed draws the same rows); None when too few resamples give a finite
    value."""
    if n < 2 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    if _SAMPLES is not None:
        _SAMPLES[seed] = values
    return _ci(values)


@contextmanager
def _keep_samples():
    global _SAMPLES
    old, _SAMPLES = _SAMPLES, {}
    try:
        yield _SAMPLES
    finally:
        _SAMPLES = old


def specific_agreement(m: np.ndarray, c) -> tuple[float, int]:
    """Specific (per-class) agreement on class ``c`` over all pairs of annotators of each item: 2·(pairs
    that both say c) / (pairs where the first says c + pairs where the second says c): the chance that,
    when one reader says c, another reader of the item says c too (Uebersax 1982; Cicchetti & Feinstein
    1990). Returns (agreement, number of pairs involving c)."""
    both = either = 0
    for row in m:
        v = row[~np.isnan(row)]
        if len(v) < 2:
            continue
        n_c = int((v == c).sum())
        both += n_c * (n_c - 1)                 # ordered pairs both c
        either += n_c * (len(v) - 1)            # ordered pairs whose first is c
    return (float(both / either) if either else float("nan")), int(either)


def between_confusion(m: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts of the labels that two annotators gave the same item, over every pair of annotators
    and every item both labelled; symmetric (each unordered pair is counted in both orders)."""
    out = np.zeros((k, k))
    M = m.shape[1]
    for a in range(M):
        for b in range(M):
            if a == b:
                continue
            both = ~np.isnan(m[:, a]) & ~np.isnan(m[:, b])
            out += _table(m[both, a], m[both, b], k)
    return out


def _pairwise(m: np.ndarray, names: list[str], k: int, weights, level: str, resamples: int, seed: int) -> list[dict]:
    out = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = ~np.isnan(m[:, a]) & ~np.isnan(m[:, b])
            x, y = m[both, a].astype(int), m[both, b].astype(int)
            entry = {"annotators": [names[a], names[b]], "n_items": int(both.sum()),
                     "percent_agreement": round(float((x == y).mean()), 4) if both.any() else None,
                     "cohen_kappa": _r(cohen_kappa(x, y, k, weights)),
                     "cohen_kappa_ci95": bootstrap(lambda r: cohen_kappa(x[r], y[r], k, weights), len(x), resamples,
                                                   seed + 17 * a + b),
                     "confusion": _table(x, y, k).astype(int).tolist()}
            if weights:
                entry["weights"] = weights
            out.append(entry)
    return out


def _r(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _mean_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return _r(float(np.mean(vals))) if vals else None


def agreement_stats(m: np.ndarray, names: list[str], k: int, ordinal: bool = False, resamples: int = 1000,
                    seed: int = 0, class_names: list[str] | None = None) -> dict:
    """Agreement of an (items, annotators) label matrix (NaN: not labelled): Fleiss' kappa, Krippendorff's
    alpha (nominal, and ordinal for ordinal classes), pairwise Cohen's kappa (quadratic weights for
    ordinal classes), each with a 95 % bootstrap interval over items; per-class specific agreement and
    one-vs-rest alpha; the confusion between annotators."""
    level = "ordinal" if ordinal else "nominal"
    weights = "quadratic" if ordinal else None
    multi = (~np.isnan(m)).sum(1) >= 2
    mm = m[multi]
    rows = _fleiss_rows(mm)
    fm = mm[rows]
    per_item = int((~np.isnan(fm)).sum(1)[0]) if len(fm) else 0
    out = {
        "n_items_multiply_labelled": int(multi.sum()),
        "fleiss_kappa": {"value": _r(fleiss_kappa(fm, k)),
                         "ci95": bootstrap(lambda r: fleiss_kappa(fm[r], k), len(fm), resamples, seed + 1),
                         "n_items": int(len(fm)), "annotators_per_item": per_item,
                         "note": "items labelled by the same number of annotators (Fleiss' kappa needs it); nominal"},
        "krippendorff_alpha": {"value": _r(krippendorff_alpha(mm, level)), "level": level,
                               "ci95": bootstrap(lambda r: krippendorff_alpha(mm[r], level), len(mm), resamples, seed + 2),
                               "n_items": int(len(mm))},
        "pairwise": _pairwise(mm, names, k, weights, level, resamples, seed + 3),
    }
    if ordinal:
        out["krippendorff_alpha_nominal"] = {
            "value": _r(krippendorff_alpha(mm, "nominal")),
            "ci95": bootstrap(lambda r: krippendorff_alpha(mm[r], "nominal"), len(mm), resamples, seed + 4)}
    names_k = class_names or [str(c) for c in range(k)]
    per_class = []
    for c in range(k):
        sa, pairs = specific_agreement(mm, c)
        onevsrest = np.where(np.isnan(mm), np.nan, (mm == c).astype(float))
        per_class.append({"class": c, "name": names_k[c], "specific_agreement": _r(sa), "pairs": pairs,
                          "krippendorff_alpha_one_vs_rest": _r(krippendorff_alpha(onevsrest, "nominal"))})
    out["per_class"] = per_class
    out["between_confusion"] = between_confusion(mm, k).astype(int).tolist()
    return out


# ---------------------------------------------------------------------- consensus and annotator quality
def _consensus_single(m: np.ndarray, probs: np.ndarray, names: list[str]) -> tuple:
    """CROWDLAB on an (items, annotators) matrix of class indices (every row labelled at least once) and the
    model's out-of-sample probabilities (items, K). Returns (per-item DataFrame: consensus_label,
    consensus_quality, num_annotations, annotator_agreement; per-annotator DataFrame: annotator_quality,
    agreement_with_consensus, worst_class, num_examples_labeled; info)."""
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator
    from cleanlab.rank import get_label_quality_scores
    n = (~np.isnan(m)).sum(1)
    probs = np.clip(np.asarray(probs, dtype=float), 1e-12, None)
    probs = probs / probs.sum(1, keepdims=True)
    if m.shape[1] >= 2 and (n >= 2).any():
        df = pd.DataFrame(m, columns=names)
        with warnings.catch_warnings(), seeded_global_rng(0):   # its majority vote breaks last ties at random
            warnings.simplefilter("ignore")
            res = get_label_quality_multiannotator(df, probs, verbose=False, return_weights=True)
        items = res["label_quality"][["consensus_label", "consensus_quality_score", "num_annotations",
                                      "annotator_agreement"]].rename(columns={"consensus_quality_score":
                                                                               "consensus_quality"})
        stats = res["annotator_stats"].reindex(names)
        info = {"method": "CROWDLAB (cleanlab.multiannotator.get_label_quality_multiannotator, best_quality "
                          "consensus, the model's out-of-sample probabilities)",
                "model_weight": _r(res["model_weight"]),
                "annotator_weight": {a: _r(w) for a, w in zip(names, np.ravel(res["annotator_weight"]))}}
        return items.reset_index(drop=True), stats, info
    # nobody's label can be checked against another's: each item's one label, scored against the model
    first = np.array([row[~np.isnan(row)][0] for row in m], dtype=int)
    quality = get_label_quality_scores(first, probs) if len(first) else np.zeros(0)
    items = pd.DataFrame({"consensus_label": first, "consensus_quality": quality, "num_annotations": n,
                          "annotator_agreement": np.where(n >= 1, 1.0, np.nan)})
    stats = pd.DataFrame({"annotator_quality": np.nan, "agreement_with_consensus": np.nan, "worst_class": np.nan,
                          "num_examples_labeled": (~np.isnan(m)).sum(0)}, index=names)
    info = {"method": "single reading: no item was labelled by two annotators, so the consensus is each item's "
                      "one label and its quality cleanlab's label quality score against the model; annotator "
                      "quality needs items read twice (parameter overlap)"}
    return items, stats, info


def consensus(ann: Annotations, probs: np.ndarray) -> tuple:
    """Consensus label, its quality and the number of annotations per item, and each annotator's quality
    (cleanlab's CROWDLAB; ``probs``: the model's out-of-sample probabilities of ``ann.items``). Multi-label:
    CROWDLAB per label (the label present or not, against the model's probability of it); an item's
    consensus is the set of labels found present, its quality the lowest of its labels', an annotator's
    quality the mean over labels. Returns (items DataFrame indexed by id, annotators DataFrame, info)."""
    import pandas as pd
    if not ann.items:
        return (pd.DataFrame(columns=["consensus_label", "consensus_quality", "num_annotations", "annotator_agreement"]),
                pd.DataFrame(), {"method": "no annotations"})
    if not ann.multilabel:
        items, stats, info = _consensus_single(ann.labels, probs, ann.annotators)
        items.index = ann.items
        items["consensus_label"] = items["consensus_label"].astype(int)
        items["consensus_class"] = [ann.class_names[c] for c in items["consensus_label"]]
        return items, stats, info
    per = []
    for j in range(ann.num_classes):
        p = np.asarray(probs, dtype=float)[:, j]
        per.append(_consensus_single(ann.labels[:, :, j], np.stack([1 - p, p], 1), ann.annotators))
    present = np.stack([it["consensus_label"].to_numpy() for it, _, _ in per], 1).astype(int)
    quality = np.stack([it["consensus_quality"].to_numpy() for it, _, _ in per], 1)
    items = pd.DataFrame({"consensus_label": [";".join(str(j) for j in np.flatnonzero(r)) for r in present],
                          "consensus_quality": quality.min(1), "num_annotations": ann.counts(),
                          "annotator_agreement": np.mean([it["annotator_agreement"].to_numpy() for it, _, _ in per], 0)},
                         index=ann.items)
    items["consensus_class"] = [";".join(ann.class_names[j] for j in np.flatnonzero(r)) for r in present]
    items["weakest_label"] = [ann.class_names[j] for j in quality.argmin(1)]
    stats = pd.DataFrame({"annotator_quality": np.nanmean([s["annotator_quality"].to_numpy(dtype=float) for _, s, _ in per], 0),
                          "agreement_with_consensus": np.nanmean(
                              [s["agreement_with_consensus"].to_numpy(dtype=float) for _, s, _ in per], 0),
                          "num_examples_labeled": (~np.isnan(ann.labels[:, :, 0])).sum(0)}, index=ann.annotators)
    info = {"method": per[0][2]["method"] + "; per label (multi-label), item quality = its weakest label's"}
    return items, stats, info


def majority(ann: Annotations, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model-free majority vote per item (multi-label: per label): (labels, tied)."""
    if ann.multilabel:
        votes, tied = zip(*[majority_vote(ann.labels[:, :, j], 2, seed + j) for j in range(ann.num_classes)])
        return np.stack(votes, 1), np.any(np.stack(tied, 1), 1)
    return majority_vote(ann.labels, ann.num_classes, seed)


# ---------------------------------------------------------------------- model versus people
def _versus(x: np.ndarray, y: np.ndarray, k: int, weights, resamples: int, seed: int) -> dict:
    x, y = np.asarray(x, dtype=int), np.asarray(y, dtype=int)
    return {"n_items": int(len(x)), "percent_agreement": _r(float((x == y).mean())) if len(x) else None,
            "cohen_kappa": _r(cohen_kappa(x, y, k, weights)),
            "cohen_kappa_ci95": bootstrap(lambda r: cohen_kappa(x[r], y[r], k, weights), len(x), resamples, seed)}


def model_versus(ann: Annotations, model: np.ndarray, cons: np.ndarray, vote: np.ndarray, tied: np.ndarray,
                 ordinal: bool, resamples: int, seed: int) -> dict:
    """The model's prediction (``model``, per item of ``ann``) against each annotator (all their labels, and
    the blind ones alone: a label given with the model's shown leans towards it), against the consensus
    (which CROWDLAB draws partly from the model itself) and against the model-free majority of items read
    at least twice (ties left out). Multi-label: per label, then the mean."""
    weights = "quadratic" if ordinal else None
    if ann.multilabel:
        per = [model_versus(Annotations(ann.items, ann.annotators, ann.labels[:, :, j], ann.blind, ["0", "1"]),
                            model[:, j], cons[:, j], vote[:, j], tied, False, 0, seed + j)
               for j in range(ann.num_classes)]
        out = {"note": "multi-label: each label as a yes/no decision; kappa and agreement are means over labels "
                       "(no intervals)",
               "per_label": {ann.class_names[j]: p for j, p in enumerate(per)}}

        def mean(a, part, key):
            return _mean_or_none([p["annotators"][a][part][key] for p in per])

        out["annotators"] = {a: {part: {key: mean(a, part, key) for key in ("percent_agreement", "cohen_kappa")}
                                 for part in ("all", "blind")} for a in ann.annotators}
        return out
    k = ann.num_classes
    out = {"annotators": {}}
    for a, name in enumerate(ann.annotators):
        has = ~np.isnan(ann.labels[:, a])
        blind = has & ann.blind[:, a]
        out["annotators"][name] = {
            "all": _versus(model[has], ann.labels[has, a], k, weights, resamples, seed + a),
            "blind": _versus(model[blind], ann.labels[blind, a], k, weights, resamples, seed + 100 + a)}
    out["consensus"] = _versus(model, cons, k, weights, resamples, seed + 200)
    out["consensus"]["note"] = "CROWDLAB's consensus weighs the model's own probabilities in: this agreement is optimistic"
    read_twice = (ann.counts() >= 2) & ~tied
    out["majority_of_readers"] = _versus(model[read_twice], vote[read_twice], k, weights, resamples, seed + 300)
    out["majority_of_readers"]["note"] = "items read by two or more annotators whose majority is not a tie; model-free"
    if weights:
        out["weights"] = weights
    return out


def multilabel_agreement(labels: np.ndarray, names: list[str], label_names: list[str], resamples: int = 1000,
                         seed: int = 0) -> dict:
    """Agreement of a multi-label (items, annotators, labels) 0/1 matrix: ``agreement_stats`` per label (a
    yes/no decision each), and at the top the mean over the labels that vary, with a 95 % interval from the
    same item resamples for every label."""
    per, samples = {}, []
    for j, name in enumerate(label_names):
        with _keep_samples() as kept:
            st = agreement_stats(labels[:, :, j], names, 2, resamples=resamples, seed=seed,
                                 class_names=["absent", "present"])
        per[name] = st
        samples.append(kept)

    def mean_of(get, seed_key):
        vals = [get(st) for st in per.values()]
        ok = [j for j, v in enumerate(vals) if v is not None]
        value = _r(float(np.mean([vals[j] for j in ok]))) if ok else None
        draws = [samples[j][seed_key] for j in ok if seed_key in samples[j]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a resample where no label varies: NaN, dropped
            ci = _ci(np.nanmean(np.stack(draws), 0)) if draws and len(draws) == len(ok) else None
        return {"value": value, "ci95": ci, "labels_averaged": len(ok)}

    out = {"fleiss_kappa": mean_of(lambda st: st["fleiss_kappa"]["value"], seed + 1),
           "krippendorff_alpha": {**mean_of(lambda st: st["krippendorff_alpha"]["value"], seed + 2), "level": "nominal"},
           "pairwise": []}
    first = next(iter(per.values()))
    for p, pair in enumerate(first["pairwise"]):
        a, b = (names.index(x) for x in pair["annotators"])
        entry = mean_of(lambda st, p=p: st["pairwise"][p]["cohen_kappa"], seed + 3 + 17 * a + b)
        out["pairwise"].append({"annotators": pair["annotators"], "n_items": pair["n_items"],
                                "cohen_kappa": entry["value"], "cohen_kappa_ci95": entry["ci95"],
                                "percent_agreement": _mean_or_none([st["pairwise"][p]["percent_agreement"]
                                                                    for st in per.values()])})
    out["n_items_multiply_labelled"] = first["n_items_multiply_labelled"]
    out["note"] = "multi-label: every statistic per label (a yes/no decision), the top-level values their mean"
    out["per_label"] = {name: {k: v for k, v in st.items() if k != "between_confusion"} for name, st in per.items()}
    out["per_class"] = [{"class": j, "name": name, "specific_agreement": per[name]["per_class"][1]["specific_agreement"],
                         "pairs": per[name]["per_class"][1]["pairs"],
                         "krippendorff_alpha_one_vs_rest": per[name]["krippendorff_alpha"]["value"]}
                        for j, name in enumerate(label_names)]
    out["between_confusion"] = {name: per[name]["between_confusion"] for name in label_names}
    return out


# ---------------------------------------------------------------------- a pool: agreement.json, consensus.csv
AGREEMENT_JSON, CONSENSUS_CSV, ADJUDICATION_CSV = "agreement.json", "consensus.csv", "adjudication_queue.csv"
CONFUSION_PNG = "agreement_confusion.png"
ADJUDICATE_BELOW = 0.5   # consensus quality under which an item goes to adjudication (also: readers disagreeing)


def pool_annotations(pool_dir, extra_logs=()) -> tuple[Annotations, dict]:
    """Every annotator's labels on an annotated pool (from its review logs) and the pool's facts
    (summary, class names, task, the model's probabilities and ids)."""
    from pathlib import Path

    from ..core.errors import WorkbenchError
    from ..data.review import pool_decisions, read_log, review_logs
    from ..core.runs import pool_dirs
    pool_dir = Path(pool_dir)
    found = [] if (pool_dir / "annotation_summary.json").is_file() else pool_dirs(pool_dir)
    if len(found) == 1:   # a run with one annotated pool stands for it
        pool_dir = found[0]
    for name in ("annotation_summary.json", "pool_predictions.npz"):
        if not (pool_dir / name).is_file():
            raise WorkbenchError(f"{pool_dir} has no {name}: give the directory of an annotated pool "
                                 "(RUN/annotate/<pool>, the last line the annotate stage prints)")
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    with np.load(pool_dir / "pool_predictions.npz", allow_pickle=False) as z:
        probs, ids = z["probs"].astype(np.float64), [str(i) for i in z["ids"]]
    logs = [*review_logs(pool_dir / "review"), *[Path(p) for p in extra_logs]]
    headers = [read_log(p).header or {} for p in logs]
    class_names = next((h["class_names"] for h in headers if h.get("class_names")), None)
    if class_names is None and logs:
        from ..model.runload import load
        class_names = list(load(pool_dir.parent.parent).class_names)
    task = summary.get("task") or next((h.get("task") for h in headers if h.get("task")), "multi-class")
    decisions = pool_decisions(pool_dir / "review", extra_logs, pool_id=summary.get("pool_id"),
                               model_hash=summary.get("model_hash"))
    ann = collect(decisions, class_names or [], task)
    return ann, {"summary": summary, "probs": probs, "ids": ids, "logs": [str(p) for p in logs], "pool_dir": pool_dir}


def pool_labels(pool_dir, extra_logs=()):
    """The pool's human labels for an export, one row per item someone labelled (index: id): ``label`` (the
    consensus: the class index; multi-label the label indices joined by ``;``), ``consensus_quality``,
    ``num_annotations``, ``annotators`` (names joined by ``;``), ``label_source`` ("consensus" where two
    or more annotators labelled the item, else that label's own source: accepted, corrected or blind) and
    ``decided_at`` (the latest label's time)."""
    import pandas as pd
    from pathlib import Path
    ann, facts = pool_annotations(pool_dir, extra_logs)
    cols = ["label", "consensus_quality", "num_annotations", "annotators", "label_source", "decided_at"]
    if not ann.items:
        return pd.DataFrame(columns=cols)
    pos = {i: k for k, i in enumerate(facts["ids"])}
    probs = facts["probs"][[pos[i] for i in ann.items]]
    items, _, info = consensus(ann, probs)
    lab = ann.labels if not ann.multilabel else ann.labels[:, :, 0]
    has = ~np.isnan(lab)
    out = pd.DataFrame({
        "label": items["consensus_label"].to_numpy(),
        "consensus_quality": items["consensus_quality"].to_numpy(dtype=float).round(6),
        "num_annotations": has.sum(1),
        "annotators": [";".join(a for a, h in zip(ann.annotators, row) if h) for row in has],
        "label_source": ["consensus" if h.sum() >= 2 else ann.sources[r][h][0] for r, h in enumerate(has)],
        "decided_at": [max(ann.times[r][h]) for r, h in enumerate(has)]}, index=ann.items)
    out.attrs.update({"method": info.get("method", ""), "annotators": ann.annotators, "pool_dir": str(Path(facts["pool_dir"]))})
    return out


def _write_atomic(path, text: str) -> None:
    import os
    from pathlib import Path
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def analyse(pool_dir, resamples: int = 1000, seed: int = 0, adjudicate_below: float = ADJUDICATE_BELOW,
            write: bool = True, extra_logs=()) -> dict:
    """Agreement, consensus and annotator quality of an annotated pool's reviews. With ``write``: the pool
    directory gets ``agreement.json``, ``consensus.csv`` (id, consensus_label, consensus_quality,
    num_annotations, …), ``adjudication_queue.csv`` (items whose readers disagree or whose consensus quality
    is below ``adjudicate_below``, lowest quality first: for a third reader, blind; ``queue="adjudication"``)
    and ``agreement_confusion.png`` (the confusion between annotators). These are derived from the review
    logs and rewritten each time (the logs are the record)."""
    import pandas as pd
    from pathlib import Path

    from datetime import datetime, timezone

    from ..core.runs import strict_json
    ann, facts = pool_annotations(pool_dir, extra_logs)
    pool_dir = Path(facts["pool_dir"])
    summary = facts["summary"]
    pos = {i: k for k, i in enumerate(facts["ids"])}
    probs = facts["probs"][[pos[i] for i in ann.items]] if ann.items else facts["probs"][:0]
    ordinal = summary.get("task") == "ordinal-regression"
    result = {"pool_dir": str(pool_dir), "task": ann.task, "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "logs": facts["logs"],
              "annotators": ann.annotators, "n_items_labelled": len(ann.items),
              "n_annotations": int(ann.counts().sum()) if ann.items else 0,
              "items_by_number_of_annotations": {str(int(c)): int(n) for c, n in
                                                 zip(*np.unique(ann.counts(), return_counts=True))} if ann.items else {},
              "bootstrap": {"resamples": resamples, "seed": seed, "unit": "item"}}
    if len(ann.annotators) < 2 or not (ann.counts() >= 2).any():
        result["note"] = ("agreement needs items labelled by two or more annotators: open the pool under several "
                          "names, with a blind overlap (parameter overlap) or the certification queue")
    if ann.multilabel:
        result.update(multilabel_agreement(ann.labels, ann.annotators, ann.class_names, resamples, seed))
    else:
        result.update(agreement_stats(ann.labels, ann.annotators, ann.num_classes, ordinal, resamples, seed,
                                      ann.class_names))
    items, stats, info = consensus(ann, probs)
    vote, tied = majority(ann, seed) if ann.items else (np.zeros(0, int), np.zeros(0, bool))
    if ann.items:
        if ann.multilabel:
            model = (probs > 0.5).astype(int)
            cons = np.zeros_like(model)
            for r, text in enumerate(items["consensus_label"]):
                cons[r, [int(j) for j in str(text).split(";") if j != ""]] = 1
        else:
            model, cons = probs.argmax(1), items["consensus_label"].to_numpy(dtype=int)
        result["model_vs"] = model_versus(ann, model, cons, vote, tied, ordinal, resamples, seed + 500)
        result["model_vs"]["probabilities"] = ("out-of-sample: the pool is the run's train split, on which the model "
                                               "was trained: its agreement and its CROWDLAB weight are optimistic"
                                               if summary.get("pool") == "train" else
                                               "out-of-sample (pool_predictions.npz: the pool was not trained on)")
    disagree = np.zeros(len(ann.items), dtype=bool)
    if ann.items:
        lab = ann.labels.reshape(len(ann.items), len(ann.annotators), -1)
        for r in range(len(ann.items)):
            given = [tuple(x) for x in lab[r] if not np.isnan(x).any()]
            disagree[r] = len(set(given)) > 1
    items["readers_disagree"] = disagree
    items["majority_tied"] = tied if ann.items else []
    low = items["consensus_quality"].to_numpy(dtype=float) < adjudicate_below
    adjudicate = items[disagree | low].sort_values("consensus_quality", kind="stable")
    reasons = ["readers disagree" + (f"; consensus quality < {adjudicate_below}" if q < adjudicate_below else "")
               if d else f"consensus quality < {adjudicate_below}"
               for d, q in zip(adjudicate["readers_disagree"], adjudicate["consensus_quality"])]
    result["consensus"] = {**info, "n_items": len(items),
                           "mean_quality": _r(float(items["consensus_quality"].mean())) if len(items) else None,
                           "majority_ties": int(np.sum(tied)) if ann.items else 0}
    result["annotator_quality"] = {
        a: {"quality": _r(float(row["annotator_quality"])) if pd.notna(row["annotator_quality"]) else None,
            "agreement_with_consensus": _r(float(row["agreement_with_consensus"]))
            if pd.notna(row["agreement_with_consensus"]) else None,
            "worst_class": (ann.class_names[int(row["worst_class"])] if pd.notna(row.get("worst_class", np.nan))
                            and not ann.multilabel else None),
            "n_labelled": int(row["num_examples_labeled"])}
        for a, row in stats.iterrows()} if len(stats) else {}
    result["adjudication"] = {"n_items": int(len(adjudicate)), "below_quality": adjudicate_below,
                              "rule": "items whose readers disagree, or whose consensus quality is below the "
                                      "threshold; read blind by a third reader (queue 'adjudication')",
                              "file": ADJUDICATION_CSV}
    table = items.reset_index(names="id")[["id", "consensus_label", "consensus_quality", "num_annotations",
                                           "consensus_class", "annotator_agreement", "readers_disagree"]]
    table["consensus_quality"] = table["consensus_quality"].astype(float).round(6)
    adj = adjudicate.reset_index(names="id")[["id", "consensus_label", "consensus_quality", "num_annotations"]]
    adj = adj.assign(reason=reasons)
    result["_tables"] = (table, adj)
    if write:
        _write_atomic(pool_dir / CONSENSUS_CSV, table.to_csv(index=False))
        _write_atomic(pool_dir / ADJUDICATION_CSV, adj.to_csv(index=False))
        fig = confusion_figure(result, ann)
        if fig is not None:
            import matplotlib.pyplot as plt
            fig.savefig(pool_dir / CONFUSION_PNG, dpi=110, bbox_inches="tight")
            plt.close(fig)
            result["figure"] = CONFUSION_PNG
        doc = {k: v for k, v in result.items() if not k.startswith("_")}
        _write_atomic(pool_dir / AGREEMENT_JSON, json.dumps(strict_json(doc), indent=1) + "\n")
    return result


def confusion_figure(result: dict, ann: Annotations):
    """The confusion between annotators (every pair's labels of the items both read, both orders; rows
    normalised), or for a multi-label task the agreement per label; None without items read twice."""
    import matplotlib.pyplot as plt
    if not (ann.counts() >= 2).any() if ann.items else True:
        return None
    if ann.multilabel:
        names = list(result["per_label"])
        vals = [result["per_label"][n]["krippendorff_alpha"]["value"] for n in names]
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.2))
        ax.bar(range(len(names)), [np.nan if v is None else v for v in vals], color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("Krippendorff's alpha")
        ax.set_title(f"Agreement per label ({len(ann.annotators)} annotators)")
        ax.axhline(0, color="k", lw=0.5)
        return fig
    conf = np.asarray(result["between_confusion"], dtype=float)
    k = len(conf)
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = min(12, max(4, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{c + 1} {str(n)[:14]}" for c, n in enumerate(ann.class_names)]
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=7 if k > 12 else 8)
    ax.set_yticks(range(k), labels, fontsize=7 if k > 12 else 8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("another annotator's label")
    ax.set_ylabel("one annotator's label")
    ax.set_title(f"Confusion between annotators ({len(ann.annotators)} annotators, "
                 f"{int((ann.counts() >= 2).sum())} items read twice or more)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    return fig


def _fmt(entry: dict | None, key: str = "value") -> str:
    if not entry or entry.get(key) is None:
        return "—"
    ci = entry.get("ci95") if key == "value" else entry.get(f"{key}_ci95")
    return f"{entry[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def text_table(result: dict) -> str:
    """The agreement of ``analyse`` as plain-text tables (what ``workbench agreement`` prints)."""
    lines = [f"{len(result['annotators'])} annotator(s), {result['n_items_labelled']} item(s) labelled, "
             f"{result.get('n_items_multiply_labelled', 0)} read by two or more"]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    lines += ["", "statistic                      value [95% CI]",
              f"Fleiss' kappa                  {_fmt(result.get('fleiss_kappa'))}",
              f"Krippendorff's alpha ({result.get('krippendorff_alpha', {}).get('level', 'nominal')})"
              .ljust(31) + _fmt(result.get("krippendorff_alpha"))]
    if result.get("krippendorff_alpha_nominal"):
        lines.append("Krippendorff's alpha (nominal)".ljust(31) + _fmt(result["krippendorff_alpha_nominal"]))
    for p in result.get("pairwise", []):
        lines.append(f"Cohen's kappa {p['annotators'][0]} / {p['annotators'][1]}".ljust(31)
                     + _fmt(p, "cohen_kappa") + f"  (n {p['n_items']})")
    if result.get("annotator_quality"):
        lines += ["", "annotator            quality  agrees with consensus  labelled"]
        for a, q in result["annotator_quality"].items():
            lines.append(f"{a[:20]:20s} {'—' if q['quality'] is None else format(q['quality'], '.3f'):>7s}  "
                         f"{'—' if q['agreement_with_consensus'] is None else format(q['agreement_with_consensus'], '.3f'):>21s}"
                         f"  {q['n_labelled']:8d}")
    mv = result.get("model_vs", {})
    if mv.get("annotators"):
        lines += ["", "model versus          all labels: agreement / kappa     blind labels only"]
        for a, v in mv["annotators"].items():
            al, bl = v["all"], v["blind"]
            lines.append(f"{a[:20]:20s}  {_pct(al)}   {_pct(bl)}")
        if mv.get("consensus"):
            lines.append(f"{'consensus':20s}  {_pct(mv['consensus'])}")
        if mv.get("majority_of_readers"):
            lines.append(f"{'majority of readers':20s}  {_pct(mv['majority_of_readers'])}")
    c = result.get("consensus", {})
    lines += ["", f"consensus: {c.get('n_items', 0)} item(s), mean quality "
                  f"{'—' if c.get('mean_quality') is None else format(c['mean_quality'], '.3f')}; "
                  f"adjudication queue: {result['adjudication']['n_items']} item(s)"]
    return "\n".join(lines)


def _pct(v: dict) -> str:
    if not v or v.get("percent_agreement") is None:
        return "—".ljust(30)
    kappa = "—" if v.get("cohen_kappa") is None else f"{v['cohen_kappa']:.3f}"
    n = f" (n {v['n_items']})" if "n_items" in v else ""
    return f"{v['percent_agreement']:.3f} / {kappa}{n}".ljust(30)


def report(pool_dir, resamples: int = 1000, seed: int = 0):
    """Agreement for a report (the annotate notebook): the text tables and the confusion figure of
    ``analyse`` (written to the pool directory as well), or a note when nobody has labelled the pool yet."""
    import base64
    from pathlib import Path

    from ..core.viz import Markdown
    ann, facts = pool_annotations(pool_dir)
    pool_dir = Path(facts["pool_dir"])
    if not ann.items:
        return Markdown(f"**Agreement between annotators:** no review of `{pool_dir.name}` yet. Once two or more "
                        "annotators have labelled it (each under their own name; a blind overlap, parameter "
                        f"`overlap`, or the certification sample gives items read by all), `workbench agreement "
                        f"{pool_dir}` prints and writes it (`agreement.json`, `consensus.csv`).")
    res = analyse(pool_dir, resamples=resamples, seed=seed, write=False)   # a report writes nothing in the pool
    img = ""
    fig = confusion_figure(res, ann)
    if fig is not None:
        import io

        import matplotlib.pyplot as plt
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        img = f"\n\n![confusion between annotators](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
    return Markdown(f"**Agreement between annotators** (`{pool_dir}`; `workbench agreement` writes the same to "
                    f"`agreement.json`, `consensus.csv`, `adjudication_queue.csv`)\n\n```\n{text_table(res)}\n```{img}")

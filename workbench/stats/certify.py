"""Certify auto-accept on the pool itself: when val cannot vouch for a pool, a labelled random sample of the
pool can.

Thresholds chosen on val promise the target precision only on images exchangeable with val. When the shift
check (workbench.shift) says a pool differs from val, or the user asks for it (``certify pool``), the annotate
stage certifies on the pool instead:

1. **The sample.** A seeded uniform random sample of the pool's *candidate region*: the items that could be
   auto-accepted at all, i.e. those val's thresholds would accept and the OOD gate lets through (the whole pool
   when val reaches no threshold). Items outside it are never auto-accepted on this route, so a label spent on
   one of them could not help certify anything; every label goes where the decision is. The sample is the
   region's items in the order of a seeded random permutation of the pool (seeded by the stage's ``seed`` and the
   pool's content fingerprint: the same pool gives the same order on every run), written to
   ``certification_queue.csv`` (column ``id``, ``rank`` 1 = label first). Any prefix of it is a uniform random
   sample of the region, so labelling the queue from the top keeps the sample exchangeable with the rest of the
   region, and a longer queue later (``certify_size``) extends the same sample instead of drawing another.
2. **Its size.** Learn-then-Test certifies precision ≥ target at probability ``guarantee`` only from enough
   *accepted* labelled items: at least ``n_required`` (0.99 at 0.9: 230 when none of them is wrong, 388 with
   one error, 531 with two; ``cost_of_errors``). The walk starts at the most confident sample items, so the queue
   holds ``n_required(0) / TOP_SHARE`` items (288 for 0.99 at 0.9): certification at the first cut needs the
   sample's most confident 80 % to be free of errors, and the walk goes lower while the test keeps passing.
3. **Labelling, blind.** The reviewer labels the queue without seeing the model's prediction
   (workbench.widgets ``queue="certification"``), or brings a CSV (``id,label``; label a class index or
   name; multi-label: names or indices joined by ``;``) or a review export.
4. **Certification** (``certify_pool``): the same Learn-then-Test procedure as on val
   (``metrics.auto_accept_thresholds``), on the labelled sample. Items of the queue left unlabelled before the
   last labelled one count as *wrong* (a skipped item may be a hard one: dropping it would bias the sample
   toward easy images). Labels of items outside the queue are kept as final labels but never enter the test
   (they are not a random sample). The thresholds then apply to the rest of the pool; the labelled items
   keep their human labels (status ``labelled``).

One test per pool: the guarantee is that of a single certification. Certifying the same pool again with a
longer queue after a failed attempt is a second look at the data; the stage counts earlier attempts in the
trained run and reports the guarantee that remains (Bonferroni: 1 - k (1 - guarantee) after k attempts).

Pure numpy/pandas/scipy: no Keras.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as _metrics
from ..core import tasks as _tasks
from ..core.errors import WorkbenchError

ROUTES = ("auto", "pool")          # the ``certify`` parameter
QUEUE_FILE = "certification_queue.csv"
TOP_SHARE = 0.8                    # the queue is n_required(0) / TOP_SHARE: its most confident 80 % must hold no error
LABELLED = "labelled"              # status of the items labelled by a person (the certification sample)
SEP = ";"


# ---------------------------------------------------------------------- the sample
def order(pool_id: str, n_items: int, seed: int) -> np.ndarray:
    """A seeded uniform random permutation of the pool's positions; the same for the same pool content and
    seed on any machine (numpy's PCG64 stream from a hash of both)."""
    digest = hashlib.sha256(f"certify|{pool_id}|{int(seed)}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.permutation(int(n_items))


def cost_of_errors(target: float, guarantee: float, max_errors: int = 3) -> list[dict]:
    """Accepted labelled items needed for each number of errors among them (``metrics.n_required``)."""
    rows, base = [], _metrics.n_required(target, guarantee, 0)
    for e in range(max_errors + 1):
        n = _metrics.n_required(target, guarantee, e)
        rows.append({"errors": e, "accepted_labels_needed": n, "extra_over_no_error": n - base})
    return rows


def queue_size(target: float, guarantee: float, n_region: int, requested: int = 0) -> dict:
    """How many items to label: ``requested`` when given (> 0), else ``n_required(0) / TOP_SHARE``; never more
    than the candidate region holds."""
    need = _metrics.n_required(target, guarantee, 0)
    auto = int(math.ceil(need / TOP_SHARE))
    n = int(requested) if requested > 0 else auto
    return {"size": int(min(n, n_region)), "requested": int(requested), "auto_size": auto,
            "n_required_no_error": need, "region_size": int(n_region), "whole_region": n >= n_region}


def region(probs: np.ndarray, thresholds, task: str, exclude=None) -> np.ndarray:
    """The candidate region: items the given thresholds (val's) would accept and the OOD gate lets through; all
    items the gate lets through when no threshold is finite (val reaches none)."""
    probs = np.asarray(probs, dtype=np.float64)
    thr = np.asarray(thresholds, dtype=np.float64)
    keep = np.ones(len(probs), bool) if exclude is None else ~np.asarray(exclude, bool)
    if not np.isfinite(thr).any() or not len(probs):
        return keep
    if _tasks.is_multilabel(task):
        conf = np.maximum(probs, 1 - probs)
        return keep & (conf >= thr[None, :]).all(1)
    return keep & (probs.max(1) >= thr[probs.argmax(1)])


def sample(pool_id: str, in_region: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The certification sample: the region's items in the order of the pool's seeded permutation, first
    ``size`` (positions into the pool)."""
    perm = order(pool_id, len(in_region), seed)
    return perm[np.asarray(in_region, bool)[perm]][:int(size)]


def write_queue(path: Path, ids: list[str], positions: np.ndarray) -> Path:
    """``certification_queue.csv``: the sample's ids in their random order (``rank`` 1 = label first)."""
    pd.DataFrame({"rank": np.arange(1, len(positions) + 1), "id": [ids[i] for i in positions]}).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------- labels given by people
def _parse_label(value, class_names: list[str], task: str, where: str):
    names = {n: i for i, n in enumerate(class_names)}
    lower = {n.lower(): i for i, n in enumerate(class_names)}

    def one(tok: str) -> int:
        tok = tok.strip()
        if tok in names:
            return names[tok]
        if tok.lower() in lower:
            return lower[tok.lower()]
        try:
            f = float(tok)
            if not f.is_integer():
                raise ValueError
            i = int(f)
        except ValueError:
            raise WorkbenchError(f"{where}: label {tok!r} is neither a class name nor a class index 0.."
                                 f"{len(class_names) - 1}; fix the row") from None
        if not 0 <= i < len(class_names):
            raise WorkbenchError(f"{where}: class index {i} is out of range 0..{len(class_names) - 1}")
        return i

    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
    if _tasks.is_multilabel(task):
        present = sorted({one(t) for t in text.split(SEP) if t.strip()})
        vec = np.zeros(len(class_names), np.int64)
        vec[present] = 1
        return vec
    if not text:
        raise WorkbenchError(f"{where}: empty label; give a class name or index (or drop the row)")
    return one(text)


def read_labels(source, ids: list[str], class_names: list[str], task: str) -> dict:
    """Labels given by people for pool items: ``{id: class index}`` (multi-label: ``{id: 0/1 vector}``).

    ``source``: a CSV with columns ``id`` and ``label`` (label: a class index or name; multi-label: several
    joined by ``;``), a review export directory or its ``annotations.csv`` (only the rows a person decided,
    ``label_source`` accepted or corrected, are read: auto-accepted rows are the model's own labels), or a
    DataFrame with those columns. Unknown ids, unknown classes and contradictory duplicates are one-line
    errors naming the file and the row."""
    if isinstance(source, pd.DataFrame):
        df, where = source.copy(), "certification labels"
    else:
        path = Path(str(source)).expanduser()
        if path.is_dir():
            path = path / "annotations.csv"
        where = f"certify_labels {path}"
        if not path.is_file():
            raise WorkbenchError(f"{where}: file not found; give a CSV with columns id,label or a review export "
                                 "directory (parameter certify_labels)")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise WorkbenchError(f"{where}: not a readable CSV ({type(e).__name__}); give columns id,label") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "label_source" in df.columns:        # a review export: people's decisions only
        # "blind": labelled without the model's label (the certification queue, the overlap). Not "consensus":
        # CROWDLAB's consensus of several readers weighs the model in; their model-free majority comes from the
        # pool directory itself (review.certification_labels)
        df = df[df["label_source"].isin(["accepted", "corrected", "blind", "certification"])]
        if _tasks.is_multilabel(task) and "labels" in df.columns:
            df = df.assign(label=df["labels"])
        elif "label_class" in df.columns and "label" not in df.columns:
            df = df.assign(label=df["label_class"])
    missing = [c for c in ("id", "label") if c not in df.columns]
    if missing:
        raise WorkbenchError(f"{where}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'});"
                             " the CSV needs columns id,label")
    known = set(ids)
    out: dict = {}
    for row_no, (item, value) in enumerate(zip(df["id"].astype(str), df["label"]), start=2):
        item = item.strip()
        if item not in known:
            raise WorkbenchError(f"{where}, row {row_no}: id {item!r} is not an item of this pool; the ids are those "
                                 "of annotations.csv (e.g. from certification_queue.csv)")
        lab = _parse_label(value, class_names, task, f"{where}, row {row_no}")
        if item in out and not np.array_equal(np.asarray(out[item]), np.asarray(lab)):
            raise WorkbenchError(f"{where}, row {row_no}: id {item!r} has two different labels; keep one row per id")
        out[item] = lab
    if not out:
        raise WorkbenchError(f"{where}: no labelled rows; label the certification queue first")
    return out


# ---------------------------------------------------------------------- certification on the sample
def sample_in_queue(queue_positions: np.ndarray, labelled_positions: set[int]) -> dict:
    """The part of the queue that counts: its prefix up to the last labelled item. Returns the counted
    positions, those labelled, and those skipped (inside the prefix, no label: counted as wrong)."""
    q = np.asarray(queue_positions, dtype=int)
    is_lab = np.array([int(p) in labelled_positions for p in q], dtype=bool)
    if not is_lab.any():
        return {"counted": q[:0], "labelled": q[:0], "skipped": q[:0], "prefix": 0}
    last = int(np.flatnonzero(is_lab)[-1]) + 1
    prefix = q[:last]
    return {"counted": prefix, "labelled": prefix[is_lab[:last]], "skipped": prefix[~is_lab[:last]], "prefix": last}


def _wrong_prediction(probs_row: np.ndarray, task: str) -> np.ndarray:
    """A label guaranteed to differ from the model's decision (a skipped item counts as an error)."""
    if _tasks.is_multilabel(task):
        return 1 - (probs_row > 0.5).astype(np.int64)
    return int((np.argmax(probs_row) + 1) % len(probs_row))


def certify_pool(probs: np.ndarray, labels: dict, ids: list[str], queue_positions: np.ndarray, task: str,
                 target: float, guarantee: float, mode: str = "global", min_class_val: int = 20,
                 exclude=None, in_region=None) -> dict:
    """Thresholds chosen on the labelled certification sample with Learn-then-Test (``guarantee`` > 0 required:
    without it there is nothing to certify). ``labels``: ``read_labels`` output (any pool items);
    ``exclude``: the items never auto-accepted (out-of-distribution gate), left out of the test as on val;
    ``in_region``: the candidate region the queue was drawn from (recorded: only its items may be accepted).

    Returns the threshold choice (``metrics.auto_accept_thresholds``) plus ``certification``: sizes, the
    precision and coverage on the sample with exact intervals, the one-sided lower bound at ``guarantee``,
    and ``reached``."""
    if not guarantee > 0:
        raise WorkbenchError("certifying on the pool needs a guarantee > 0 (parameter guarantee): with 0 the "
                             "thresholds would be a point estimate on a few hundred labels")
    pos_of = {i: k for k, i in enumerate(ids)}
    labelled_pos = {pos_of[i] for i in labels}
    part = sample_in_queue(queue_positions, labelled_pos)
    counted = part["counted"]
    probs = np.asarray(probs, dtype=np.float64)
    y = [labels[ids[p]] if p in labelled_pos else _wrong_prediction(probs[p], task) for p in counted]
    y = np.asarray(y) if len(y) else (np.zeros((0, probs.shape[1]), np.int64) if _tasks.is_multilabel(task)
                                     else np.zeros(0, np.int64))
    ex = None if exclude is None else np.asarray(exclude, bool)[counted]
    choice = _metrics.auto_accept_thresholds(probs[counted], y, task, target, mode, min_class_val, guarantee, ex)
    thr = np.asarray(choice["thresholds"], dtype=np.float64)
    keep = np.ones(len(counted), bool) if ex is None else ~ex
    if _tasks.is_multilabel(task):
        decision = probs[counted] > 0.5
        conf = np.maximum(probs[counted], 1 - probs[counted])
        acc = (conf >= thr[None, :]) & keep[:, None]
        right = decision == (y == 1)
        k_ok, n_acc = int((acc & right).sum()), int(acc.sum())
        item_correct = right.all(1)
    else:
        pred, conf = probs[counted].argmax(1), probs[counted].max(1)
        acc = (conf >= thr[pred]) & keep if len(counted) else np.zeros(0, bool)
        right = pred == y
        k_ok, n_acc = int((acc & right).sum()), int(acc.sum())
        item_correct = right
    lo, hi = _metrics.clopper_pearson(k_ok, n_acc, 0.95)
    lower = _metrics.clopper_pearson(k_ok, n_acc, guarantee, side="lower")[0]
    n_items = len(counted)
    acc_k = int(np.sum(item_correct))
    a_lo, a_hi = _metrics.clopper_pearson(acc_k, n_items, 0.95)
    outside = sorted(set(labelled_pos) - set(int(p) for p in counted))
    choice["certification"] = {
        "certified_by": "pool",
        "method": "Learn-then-Test on a uniform random sample of the pool's candidate region (the items val's "
                  "thresholds and the OOD gate would let through)",
        "region_size": None if in_region is None else int(np.sum(in_region)),
        "queue_size": int(len(queue_positions)), "n_labels": int(len(part["labelled"])),
        "n_counted": int(n_items), "n_skipped_counted_wrong": int(len(part["skipped"])),
        "n_labels_outside_queue": int(len(outside)),
        "reached": bool(np.isfinite(thr).any()),
        "n_accepted_in_sample": n_acc, "n_errors_accepted_in_sample": n_acc - k_ok,
        "sample_precision": float(k_ok / n_acc) if n_acc else float("nan"),
        "sample_precision_ci95": [lo, hi], "precision_lower_bound": lower,
        "precision_lower_bound_level": float(guarantee),
        "sample_coverage": float((acc.all(1) if acc.ndim == 2 else acc).mean()) if n_items else 0.0,
        "sample_accuracy": float(acc_k / n_items) if n_items else float("nan"), "sample_accuracy_ci95": [a_lo, a_hi],
    }
    return choice


def attempts_guarantee(guarantee: float, attempts: int) -> float:
    """What a guarantee g is worth after ``attempts`` certifications of the same pool (Bonferroni)."""
    return max(0.0, 1.0 - attempts * (1.0 - guarantee))

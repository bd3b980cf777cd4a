"""Annotate stage: a trained model labels an unlabeled pool; predictions whose confidence passes a
threshold chosen on val for a target precision are auto-accepted, the rest need review.

Writes ``annotations.csv`` (index, predicted label and class, confidence, status) and
``annotation_summary.json``. The pool's labels, when the split has them, are never shown to the
model; they are used only afterwards to report the precision and coverage achieved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as _metrics
from . import runs as _runs
from . import train as _train
from .evaluate import predict
from .params import AnnotateParams

AUTO, REVIEW = "auto-accepted", "needs-review"


def open_stage(params: AnnotateParams):
    run = _runs.open_stage("annotate", params, upstream=_runs.TRAIN_ARTIFACTS)
    model, ds, tp = _train.reload(run)
    _runs.add_provenance(run, data=ds.describe())
    if params.pool_split == "val":
        print("warning: the pool is the val split, on which the threshold is also chosen: "
              "the achieved precision below is optimistic")
    return run, model, ds, tp


def choose_threshold(model, ds, params: AnnotateParams) -> tuple[dict, np.ndarray, np.ndarray]:
    """Pick the confidence threshold on val for the target precision; returns (choice, conf, correct)."""
    probs = predict(model, ds.images["val"], params.batch_size, desc="predict val")
    conf, correct = probs.max(1), probs.argmax(1) == ds.labels["val"]
    choice = _metrics.threshold_for_precision(conf, correct, params.target_precision)
    if not choice["reached"]:
        print(f"warning: no threshold reaches precision {params.target_precision} on val: nothing is auto-accepted")
    return choice, conf, correct


def label_pool(run: _runs.Run, model, ds, params: AnnotateParams, choice: dict) -> pd.DataFrame:
    """Predict the pool (images only) and write annotations.csv."""
    pool = ds.images[params.pool_split]
    probs = predict(model, pool, params.batch_size, desc=f"predict pool ({params.pool_split})")
    pred, conf = probs.argmax(1), probs.max(1)
    status = np.where(conf >= choice["threshold"], AUTO, REVIEW)
    table = pd.DataFrame({
        "index": np.arange(len(pool)), "split": params.pool_split, "predicted_label": pred,
        "predicted_class": [ds.class_names[i] for i in pred], "confidence": np.round(conf, 6), "status": status,
    })
    table.to_csv(run.file("annotations.csv"), index=False)
    return table


def summarise(run: _runs.Run, ds, params: AnnotateParams, choice: dict, table: pd.DataFrame) -> dict:
    accepted = (table["status"] == AUTO).to_numpy()
    summary = {"pool_split": params.pool_split, "pool_size": int(len(table)), "threshold": choice,
               "n_auto_accepted": int(accepted.sum()), "n_needs_review": int((~accepted).sum()),
               "coverage": float(accepted.mean()), "pool_labels_known": ds.labels.get(params.pool_split) is not None}
    if summary["pool_labels_known"]:
        correct = table["predicted_label"].to_numpy() == ds.labels[params.pool_split]
        summary["achieved"] = _metrics.precision_coverage(accepted, correct)
    run.write_json("annotation_summary.json", summary)
    return summary


def gallery(table: pd.DataFrame, ds, params: AnnotateParams, status: str):
    """Auto-accepted: a seeded random sample; needs-review: the least confident first. Where the pool's
    labels are known, captions are green (right) or red (wrong, with the true class)."""
    from .viz import image_grid
    sub = table[table["status"] == status]
    n = params.gallery_size
    if status == REVIEW:
        idx = sub.sort_values("confidence", kind="stable").index.to_numpy()[:n]
    else:
        rng = np.random.default_rng(params.seed)
        idx = np.sort(rng.choice(sub.index.to_numpy(), size=min(n, len(sub)), replace=False))
    truth = ds.labels.get(params.pool_split)
    caps, colors = [], []
    for i in idx:
        row = table.loc[i]
        cap, color = f"#{i} {str(row['predicted_class'])[:12]}\n{row['confidence']:.3f}", "black"
        if truth is not None:
            ok = truth[i] == row["predicted_label"]
            color = "green" if ok else "red"
            cap += "" if ok else f" (true: {ds.class_names[truth[i]][:10]})"
        caps.append(cap)
        colors.append(color)
    title = f"{status}: {len(sub)} of {len(table)} (showing {len(idx)})"
    return image_grid(ds.images[params.pool_split][idx], caps, ncols=8, title=title, caption_colors=colors, cell=1.5)


def run(params: AnnotateParams) -> dict:
    r, model, ds, _ = open_stage(params)
    choice, _, _ = choose_threshold(model, ds, params)
    table = label_pool(r, model, ds, params, choice)
    return {"run_dir": str(r.path), **summarise(r, ds, params, choice, table)}

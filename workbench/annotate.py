"""Annotate stage: a trained model labels an unlabelled pool.

1. **Pool**: any unlabelled image set, as a ``Pool`` (images + stable item ids; ground truth only when
   known, never shown to the model). ``split_pool`` makes one from a dataset split; other loaders
   (image folders, DICOM) only need to build a ``Pool``.
2. **Auto-accept**: confidence thresholds (global or per predicted class) chosen on val for a target
   precision, with a Learn-then-Test guarantee by default (calibrated probabilities when the run has
   a temperature); where the pool's labels are known, the precision and
   coverage achieved with bootstrap intervals.
3. **Ranking**: the needs-review items ordered by an uncertainty strategy (``workbench.active``) into
   ``review_queue.csv``.
4. **Label audit**: confident learning over the train split (``workbench.audit``) → ``label_issues.csv``.
5. **Review**: ``open_review`` gives a resumable ``review.ReviewSession`` over the queue; the widget
   (``workbench.widgets``) is its UI; ``export_review`` writes the labels for ``10_train -p extra_labels``.

Artifacts: ``annotations.csv``, ``annotation_summary.json``, ``pool_predictions.npz``,
``review_queue.csv``, ``label_issues.csv``, ``review/decisions.jsonl`` (append-only), ``review/export-*/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as _metrics
from . import runs as _runs
from . import train as _train
from .errors import WorkbenchError
from .evaluate import predict
from .params import AnnotateParams

AUTO, REVIEW = "auto-accepted", "needs-review"
ANNOTATION_COLUMNS = ["index", "split", "predicted_label", "predicted_class", "confidence", "status", "id", "threshold"]


# ---------------------------------------------------------------------- pools
@dataclass
class Pool:
    """Images to annotate. ``ids`` are stable, unique item names (e.g. ``test:17`` or a file path);
    ``labels`` is the ground truth when it exists (only for reporting); ``source`` says where the
    images come from (recorded in exports, checked by ``10_train -p extra_labels``)."""
    name: str
    images: np.ndarray
    ids: list[str]
    labels: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != len(self.images):
            raise WorkbenchError(f"pool {self.name}: {len(self.ids)} ids for {len(self.images)} images")
        if len(set(self.ids)) != len(self.ids):
            raise WorkbenchError(f"pool {self.name}: item ids are not unique")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise WorkbenchError(f"pool {self.name}: {len(self.labels)} labels for {len(self.images)} images")
        self._id = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pool_id(self) -> str:
        """Fingerprint of the images and ids (not of the hidden labels): a review log belongs to one pool."""
        if self._id is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.ids).encode())
            h.update(str(self.images.shape).encode() + str(self.images.dtype).encode())
            h.update(np.ascontiguousarray(self.images).tobytes())
            self._id = h.hexdigest()[:16]
        return self._id


def split_pool(ds, split: str) -> Pool:
    """A dataset split as a pool; its labels are kept aside as ground truth for reporting only."""
    if split not in ds.images:
        raise WorkbenchError(f"dataset {ds.name} has no split {split!r} (parameter pool_split)")
    return Pool(name=f"{ds.name}:{split}", images=ds.images[split], ids=[f"{split}:{i}" for i in range(len(ds.images[split]))],
                labels=ds.labels.get(split), source={"kind": "dataset-split", "dataset": ds.name,
                                                      "dataset_md5": ds.md5, "split": split, "notes": list(ds.notes)})


def model_hash(run_dir) -> str:
    from .data import file_md5
    return file_md5(Path(run_dir) / "model.keras")


# ---------------------------------------------------------------------- stage
def open_stage(params: AnnotateParams):
    run = _runs.open_stage("annotate", params, upstream=_runs.TRAIN_ARTIFACTS)
    model, ds, tp = _train.reload(run)
    _runs.add_provenance(run, data=ds.describe())
    if params.pool_split == "val":
        print("warning: the pool is the val split, on which the thresholds are also chosen: "
              "the achieved precision below is optimistic")
    return run, model, ds, tp


def load_pool(ds, params: AnnotateParams) -> Pool:
    return split_pool(ds, params.pool_split)


def temperature(run: _runs.Run, params: AnnotateParams) -> float | None:
    """The run's fitted temperature (evaluate stage) when ``calibrate`` is on, else None."""
    from .calibration import load_temperature
    if not params.calibrate:
        print("uncalibrated probabilities (parameter calibrate is off)")
        return None
    t = load_temperature(run.path)
    print(f"calibrated probabilities: temperature {t:.4f} (calibration.json)" if t else
          "uncalibrated probabilities: the run has no calibration.json (the evaluate stage writes it)")
    return t


def probabilities(model, images: np.ndarray, params: AnnotateParams, temp: float | None, desc: str) -> np.ndarray:
    from .calibration import apply_temperature
    p = predict(model, images, params.batch_size, desc=desc)
    return apply_temperature(p, temp) if temp else p


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, target: float, mode: str = "per-class",
                         min_class_val: int = 20, guarantee: float = 0.0) -> dict:
    """Thresholds on the top-1 confidence, one per predicted class, chosen on labelled (val) data.

    ``mode`` "global": one threshold for all classes (``metrics.threshold_for_precision``).
    ``mode`` "per-class": for each class c, the lowest threshold at which the val predictions of
    class c with confidence ≥ it reach ``target`` precision, so the accepted set reaches it overall
    too. A class predicted fewer than ``min_class_val`` times on val uses the global threshold. With a
    ``guarantee`` the same applies to a class with fewer predictions than the test needs (``n_min``).
    A class whose predictions never reach the target gets +inf, so none of it is auto-accepted.

    ``guarantee`` > 0 makes each threshold a Learn-then-Test choice: precision ≥ target on new
    images like val with that probability. Per class, that holds for each tested class. On 28 px
    BloodMNIST with 10 % of the labels, the two rules compare as follows (1,712 val images; 40
    exchangeable val/pool splits; bench/annotate.py):
    - per-class point estimates missed 0.99 in 38 % of the splits;
    - global with guarantee 0.9 missed it in 5 %, at coverage 0.78;
    - per-class with the guarantee reached only 0.66 coverage, since each class has fewer val images to test on.
    So "global" is the default.
    """
    conf, pred = probs.max(1), probs.argmax(1)
    correct = pred == np.asarray(labels).reshape(-1)
    glob = _metrics.threshold_for_precision(conf, correct, target, guarantee)
    min_n = max(min_class_val, glob.get("n_min", 0))
    rows = []
    for c in range(probs.shape[1]):
        m = pred == c
        if mode == "global" or m.sum() < min_n:
            rows.append({"class": c, "threshold": glob["threshold"], "reached": glob["reached"],
                         "source": "global" if mode == "global" else f"global (only {int(m.sum())} val predictions)",
                         "n_val": int(m.sum())})
            continue
        ch = _metrics.threshold_for_precision(conf[m], correct[m], target, guarantee)
        rows.append({"class": c, "threshold": ch["threshold"], "reached": ch["reached"], "source": "class",
                     "n_val": int(m.sum()), "val_precision": ch["val_precision"], "val_coverage": ch["val_coverage"]})
    thr = np.array([r["threshold"] for r in rows])
    acc = conf >= thr[pred]
    achieved = _metrics.precision_coverage(acc, correct)
    return {"mode": mode, "target_precision": float(target), "guarantee": float(guarantee), "global": glob,
            "per_class": rows,
            "thresholds": thr.tolist(), "val_precision": achieved["precision"], "val_coverage": achieved["coverage"]}


def choose_thresholds(model, ds, params: AnnotateParams, temp: float | None = None) -> tuple[dict, np.ndarray]:
    """Per-class (or global) thresholds on val; returns (choice, val probabilities)."""
    probs = probabilities(model, ds.images["val"], params, temp, "predict val")
    choice = per_class_thresholds(probs, ds.labels["val"], params.target_precision, params.thresholds,
                                  params.min_class_val, params.guarantee)
    choice["temperature"] = temp
    if not np.isfinite(choice["thresholds"]).any():
        how = (f" with probability {params.guarantee} (parameter 'guarantee'; a lower one, or more val images, "
               f"lets the test pass)") if params.guarantee else ""
        print(f"warning: no threshold reaches precision {params.target_precision} on val{how}: nothing is "
              "auto-accepted")
    return choice, probs


def thresholds_table(choice: dict, class_names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(choice["per_class"])
    df.insert(1, "class_name", [class_names[c] for c in df["class"]])
    return df.set_index("class")


def label_pool(run: _runs.Run, model, pool: Pool, ds, params: AnnotateParams, choice: dict,
               temp: float | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Predict the pool (images only): annotations.csv and pool_predictions.npz; returns (table, probs)."""
    probs = probabilities(model, pool.images, params, temp, f"predict pool ({pool.name})")
    pred, conf = probs.argmax(1), probs.max(1)
    thr = np.asarray(choice["thresholds"])[pred]
    status = np.where(conf >= thr, AUTO, REVIEW)
    split = pool.source.get("split", pool.name)
    table = pd.DataFrame({
        "index": np.arange(len(pool)), "split": split, "predicted_label": pred,
        "predicted_class": [ds.class_names[i] for i in pred], "confidence": np.round(conf, 6), "status": status,
        "id": pool.ids, "threshold": np.round(thr, 6),
    })
    table.to_csv(run.file("annotations.csv"), index=False)
    np.savez_compressed(run.file("pool_predictions.npz"), probs=probs.astype(np.float32),
                        ids=np.array(pool.ids, dtype="U"), pool_id=np.array(pool.pool_id, dtype="U"))
    return table, probs


def _precision(y, pred, accepted):
    accepted = accepted.astype(bool)
    return float((pred[accepted] == y[accepted]).mean()) if accepted.any() else float("nan")


def _coverage(y, accepted):
    return float(accepted.astype(bool).mean())


def achieved(labels: np.ndarray, pred: np.ndarray, accepted: np.ndarray, n_resamples: int = 1000,
             seed: int = 0) -> dict:
    """Precision and coverage of the auto-accepted set against ground truth, with 95 % bootstrap
    intervals (seeded percentile bootstrap, stratified by the true class)."""
    accepted = np.asarray(accepted, dtype=bool)
    out = _metrics.precision_coverage(accepted, pred == labels)
    acc = accepted.astype(np.int8)
    p = _metrics.bootstrap_ci(_precision, labels, pred, acc, n_resamples=n_resamples, seed=seed)
    c = _metrics.bootstrap_ci(_coverage, labels, acc, n_resamples=n_resamples, seed=seed)
    out["precision_ci95"] = [p["low"], p["high"]]
    out["coverage_ci95"] = [c["low"], c["high"]]
    out["bootstrap"] = {"n_resamples": n_resamples, "method": p["method"], "seed": seed}
    return out


def summarise(run: _runs.Run, pool: Pool, params: AnnotateParams, choice: dict, table: pd.DataFrame) -> dict:
    accepted = (table["status"] == AUTO).to_numpy()
    summary = {"pool": pool.name, "pool_split": pool.source.get("split"), "pool_id": pool.pool_id,
               "pool_size": int(len(table)), "model_hash": model_hash(run.path),
               "threshold": {**choice["global"], "mode": choice["mode"]},
               "thresholds": {"mode": choice["mode"], "per_class": choice["per_class"],
                              "val_precision": choice["val_precision"], "val_coverage": choice["val_coverage"]},
               "temperature": choice.get("temperature"), "target_precision": params.target_precision,
               "guarantee": params.guarantee,
               "n_auto_accepted": int(accepted.sum()), "n_needs_review": int((~accepted).sum()),
               "coverage": float(accepted.mean()), "pool_labels_known": pool.labels is not None}
    if pool.labels is not None:
        summary["achieved"] = achieved(pool.labels, table["predicted_label"].to_numpy(), accepted,
                                       params.bootstrap, params.seed)
    run.write_json("annotation_summary.json", summary)
    return summary


def achieved_table(summary: dict) -> pd.DataFrame:
    a = summary.get("achieved")
    if not a:
        return pd.DataFrame({"note": ["the pool's labels are unknown: nothing to compare with"]})
    return pd.DataFrame({
        "estimate": [a["precision"], a["coverage"]],
        "95% CI low": [a["precision_ci95"][0], a["coverage_ci95"][0]],
        "95% CI high": [a["precision_ci95"][1], a["coverage_ci95"][1]],
        "target / val": [summary["target_precision"], summary["thresholds"]["val_coverage"]],
    }, index=["precision of auto-accepted", "coverage (auto-accepted / pool)"])


# ---------------------------------------------------------------------- ranking
def rank_for_review(run: _runs.Run, model, pool: Pool, table: pd.DataFrame, probs: np.ndarray, ds,
                    params: AnnotateParams, train_params, temp: float | None = None) -> pd.DataFrame:
    """Rank the needs-review items by ``params.strategy`` (most useful first) into review_queue.csv."""
    from . import active
    from . import augment as _augment
    need = np.flatnonzero((table["status"] == REVIEW).to_numpy())
    transform = None
    if params.strategy == "tta":
        transform = _augment.build(train_params.augment, params.seed, n_channels=pool.images.shape[-1])
    if len(need):
        res = active.uncertainty(params.strategy, model, pool.images[need],
                                 probs=None if params.strategy in active.STOCHASTIC else probs[need],
                                 transform=transform, n_passes=params.n_passes, seed=params.seed,
                                 batch_size=params.batch_size, temperature=temp)
        order = active.rank(res["score"])
        scores = res["score"][order]
        need = need[order]
    else:
        scores = np.zeros(0)
    p = probs[need]
    second = np.argsort(-p, axis=1)[:, 1] if p.shape[1] > 1 and len(p) else np.zeros(len(p), int)
    queue = pd.DataFrame({
        "rank": np.arange(1, len(need) + 1), "id": [pool.ids[i] for i in need], "index": need,
        "predicted_label": table["predicted_label"].to_numpy()[need],
        "predicted_class": table["predicted_class"].to_numpy()[need],
        "confidence": table["confidence"].to_numpy()[need], "strategy": params.strategy,
        "score": np.round(scores, 6), "second_label": second,
        "second_class": [ds.class_names[c] for c in second],
        "second_prob": np.round(p[np.arange(len(p)), second], 6) if len(p) else np.zeros(0),
    })
    queue.to_csv(run.file("review_queue.csv"), index=False)
    return queue


# ---------------------------------------------------------------------- label audit
def audit_labels(run: _runs.Run, ds, train_params, params: AnnotateParams) -> pd.DataFrame | None:
    """Confident learning over the train split with cross-validated probabilities → label_issues.csv."""
    from . import audit
    from . import augment as _augment
    from . import models as _models
    if params.audit_folds == 0:
        print("label audit skipped (audit_folds 0)")
        return None
    tp = train_params
    images, labels = ds.images["train"], ds.labels["train"]
    counts = np.bincount(labels, minlength=ds.num_classes)
    if counts[counts > 0].min() < params.audit_folds:
        # too few labelled images for cross-validation: the rest of the stage is still useful
        reason = (f"a class has only {int(counts[counts > 0].min())} train image(s), fewer than the "
                  f"{params.audit_folds} folds of the audit (parameter audit_folds)")
        print(f"warning: label audit skipped: {reason}")
        run.write_json("label_audit.json", {"skipped": True, "reason": reason, "split": "train"})
        return None

    def build():
        return _models.build(tp.model, ds.input_shape, ds.num_classes, width=tp.width, dropout=tp.dropout)

    def transform(seed):
        return _augment.build(tp.augment, seed, n_channels=ds.input_shape[-1])

    probs, folds = audit.cross_val_probs(images, labels, build, folds=params.audit_folds, epochs=params.audit_epochs,
                                         seed=params.seed, transform_factory=transform, batch_size=tp.batch_size,
                                         learning_rate=tp.learning_rate)
    issues = audit.issues_table(audit.find_issues(labels, probs), ds.class_names, "train")
    issues.to_csv(run.file("label_issues.csv"), index=False)
    np.savez_compressed(run.file("audit_probs.npz"), probs=probs.astype(np.float32), folds=folds, labels=labels)
    oof_acc = float((probs.argmax(1) == labels).mean())
    run.write_json("label_audit.json", {
        "method": "confident learning (cleanlab find_label_issues, prune_by_noise_rate, ranked by self_confidence)",
        "split": "train", "n": int(len(labels)), "folds": params.audit_folds, "epochs": params.audit_epochs,
        "out_of_sample_acc": oof_acc, "n_issues": int(len(issues)),
        "issue_rate": float(len(issues) / len(labels))})
    print(f"label audit: {len(issues)} of {len(labels)} train labels flagged "
          f"(out-of-sample accuracy {oof_acc:.3f}, {params.audit_folds} folds x {params.audit_epochs} epochs)")
    return issues


def audit_gallery(issues: pd.DataFrame | None, ds, params: AnnotateParams):
    from . import audit
    if issues is None:
        return None
    return audit.gallery(issues, ds.images["train"], n=params.gallery_size)


# ---------------------------------------------------------------------- galleries
def gallery(table: pd.DataFrame, pool: Pool, ds, params: AnnotateParams, status: str):
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
    truth = pool.labels
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
    return image_grid(pool.images[idx], caps, ncols=8, title=title, caption_colors=colors, cell=1.5)


# ---------------------------------------------------------------------- review
def default_log(run_dir) -> Path:
    return Path(run_dir) / "review" / "decisions.jsonl"


@dataclass
class ReviewInputs:
    pool: Pool
    table: pd.DataFrame      # annotations.csv
    queue: pd.DataFrame      # review_queue.csv
    probs: np.ndarray        # pool probabilities (pool order)
    class_names: list[str]
    run_dir: Path
    params: dict             # params/annotate.json
    session: object = None   # review.ReviewSession once opened
    task: str = "multi-class"

    # compatibility shim (engineer F): what workbench.widgets reads; the lead's streamed pools replace it
    @property
    def ids(self) -> list[str]:
        return self.pool.ids

    def display(self, positions) -> np.ndarray:
        return self.pool.images[np.asarray(positions, dtype=int)]

    model_input = display


def review_inputs(run_dir, pool: Pool | None = None) -> ReviewInputs:
    """What a review of an annotated run needs, read back from its run directory (nothing is written)."""
    run_dir = Path(run_dir)
    _runs.require(run_dir, ("annotations.csv", "review_queue.csv", "pool_predictions.npz", "params/annotate.json"),
                  "annotate")
    ap = json.loads((run_dir / "params" / "annotate.json").read_text())
    table = pd.read_csv(run_dir / "annotations.csv", dtype={"id": str})
    queue = pd.read_csv(run_dir / "review_queue.csv", dtype={"id": str})
    with np.load(run_dir / "pool_predictions.npz", allow_pickle=False) as z:
        probs, ids, saved_pool_id = z["probs"], z["ids"].tolist(), str(z["pool_id"])
    tp = _train._params_from_run(_runs.Run(run_dir, "annotate"))
    from .data import load_dataset
    ds = load_dataset(tp.dataset, size=tp.size, max_per_split=tp.max_per_split, seed=tp.seed)
    if pool is None:
        pool = split_pool(ds, ap["pool_split"])
    if pool.pool_id != saved_pool_id or pool.ids != ids:
        raise WorkbenchError(f"the pool's images changed since {run_dir} was annotated (pool {pool.pool_id}, "
                             f"annotated {saved_pool_id}): restore the data or annotate again in a new run")
    return ReviewInputs(pool, table, queue, probs, list(ds.class_names), run_dir, ap, task=ds.task)


def open_review(run_dir, annotator: str = "", log: str | Path = "", pool: Pool | None = None) -> ReviewInputs:
    """A resumable review session over an annotated run's review_queue.csv (see workbench.review)."""
    from .review import ReviewSession
    inputs = review_inputs(run_dir, pool)
    t = inputs.table
    predicted = dict(zip(t["id"].astype(str), t["predicted_label"].astype(int)))
    inputs.session = ReviewSession(
        log_path=Path(log) if log else default_log(inputs.run_dir), queue=inputs.queue["id"].astype(str).tolist(),
        predicted=predicted, class_names=inputs.class_names, pool_id=inputs.pool.pool_id,
        model_hash=model_hash(inputs.run_dir), annotator=annotator,
        meta={"run_dir": str(inputs.run_dir), "strategy": inputs.params.get("strategy")})
    return inputs


def export_review(inputs: ReviewInputs, out_dir: str | Path | None = None, include_auto: bool = True) -> dict:
    """annotations.csv + annotations_coco.json + labelled.npz in a new ``review/export-<UTC time>/``."""
    from .review import export
    if out_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = inputs.run_dir / "review" / f"export-{stamp}"
        k = 2
        while Path(out_dir).exists():
            out_dir = inputs.run_dir / "review" / f"export-{stamp}-{k}"
            k += 1
    return export(inputs.session, inputs.table, Path(out_dir), images=inputs.pool.images,
                  source={**inputs.pool.source, "run_dir": str(inputs.run_dir)}, include_auto=include_auto)


def run(params: AnnotateParams) -> dict:
    """The whole stage without a notebook (the notebook calls the same steps one per cell)."""
    r, model, ds, tp = open_stage(params)
    pool = load_pool(ds, params)
    temp = temperature(r, params)
    choice, _ = choose_thresholds(model, ds, params, temp)
    table, probs = label_pool(r, model, pool, ds, params, choice, temp)
    summary = summarise(r, pool, params, choice, table)
    rank_for_review(r, model, pool, table, probs, ds, params, tp, temp)
    audit_labels(r, ds, tp, params)
    return {"run_dir": str(r.path), **summary}

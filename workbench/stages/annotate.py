"""Annotate stage: a trained model labels a pool of new, unlabelled images.

1. **Pool** (``pool``): a split of the training dataset, a folder of images (searched recursively; PNG,
   JPEG, TIFF, DICOM; no labels needed) or a MedMNIST-style ``.npz`` (workbench.pools). Items keep
   stable ids (the path relative to the pool root; a DICOM frame adds ``#<frame>``); files are streamed
   in batches through the run's own input path (workbench.inputs: channels, size and resize policy,
   DICOM window, preprocessing); unreadable files are listed in ``rejected.csv``, duplicates in
   ``duplicates.csv``; DICOM headers are de-identified before anything is read from them. An optional
   labels CSV (``labels_csv``) is used only to report precision and coverage, never shown to the model.
2. **Auto-accept**: confidence thresholds (global or per predicted class; per label for multi-label
   tasks) chosen for a target precision with a Learn-then-Test guarantee by default, on calibrated
   probabilities when the run has a temperature. An item whose out-of-distribution score lies beyond val's
   99th percentile is never auto-accepted (``ood_gate``); the ``reason`` column says why each item is where it is.
3. **Who vouches** (workbench.shift, workbench.certify): val's thresholds hold only for pools like val. The
   pool is compared with val without its labels (minimum-effect tests: confidences, predicted classes,
   accepted share, out-of-distribution share). When it differs (``certify auto``) or always (``certify
   pool``), a seeded random sample of the pool is written to ``certification_queue.csv``, labelled blind in the
   review widget (or given as a CSV), and ``certify_labels`` chooses the thresholds on it by the same
   Learn-then-Test procedure: the rest of the pool is then certified, and the labelled items keep their
   people's labels. ``annotation_summary.json`` records ``certification`` (certified_by val, pool or none; the
   labels spent; the precision interval; the coverage). ``on_shift accept`` uses val's thresholds anyway.
4. **Ranking**: the needs-review items ordered by an uncertainty strategy (workbench.active) into
   ``review_queue.csv``.
5. **Label audit**: confident learning over the train split (workbench.audit) → ``label_issues.csv``.
6. **Review**: ``open_review`` gives a resumable ``review.ReviewSession`` over the queue; the widget
   (workbench.widgets) is its UI; ``export_review`` writes the labels (with their images) for
   ``10_train -p extra_labels``.

Each annotated pool gets its own write-once directory inside the trained run,
``RUN/annotate/<pool>/`` (a second pool, or the same pool again, never overwrites an earlier one):
``30_annotate.ipynb/.html``, ``params/annotate.json``, ``provenance.json``, ``annotations.csv``,
``annotation_summary.json``, ``pool_predictions.npz``, ``rejected.csv``, ``duplicates.csv``,
``review_queue.csv``, ``certification_queue.csv`` (when the pool certifies itself), ``label_issues.csv``,
``review/`` (the annotators' append-only logs, ``export-*/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import cells as _cells
from ..stats import metrics as _metrics
from ..model import predict as _predict
from ..model import runload as _runload
from ..core import runs as _runs
from ..core import tasks as _tasks
from ..model.embeddings import Features, pool_features, split_features
from ..core.errors import WorkbenchError
from ..model.neighbours import KNN_K, NEAR_DUPLICATE, OOD_QUANTILE, Index, OODScorer, knn_vote, near_duplicate_pairs
from ..core.params import AnnotateParams

AUTO, REVIEW, LABELLED = "auto-accepted", "needs-review", "labelled"   # labelled: by a person (certification sample)
QUEUE_FILE = "certification_queue.csv"   # workbench.certify.QUEUE_FILE
ANNOTATION_COLUMNS = ["index", "id", "predicted_label", "predicted_class", "confidence", "status", "threshold",
                      "reason", "label", "certified_by", "in_certification_sample"]
POOLS_DIR = _runs.POOLS_DIR
pool_dirs = _runs.pool_dirs
SEP = ";"   # joins the labels of a multi-label prediction (as workbench.review's exports do)


# ---------------------------------------------------------------------- where a pool's results go
def _trained_dir(params: AnnotateParams) -> Path:
    return Path(params.run_dir).expanduser().resolve() if params.run_dir else _runs.latest_run()


def new_pool_dir(run_dir, slug: str) -> Path:
    """A new, empty ``RUN/annotate/<slug>[-k]/`` (write-once: never an existing one)."""
    root = Path(run_dir) / POOLS_DIR
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10000):
        path = root / (slug if k == 1 else f"{slug}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise WorkbenchError(f"cannot create a new pool directory under {root}")


def _open_pool(params: AnnotateParams, trained):
    from ..data.pools import open_pool
    # a split pool starts from the raw images: it runs them through the input path itself, and raw() (the
    # review's display, the exports) stays the images as they are
    ds = trained.dataset(raw=True) if params.pool in ("train", "val", "test") else None
    return open_pool(params.pool, dataset=ds, labels_csv=params.labels_csv, on_error=params.on_error,
                     allow_burned_in=params.allow_burned_in, class_names=trained.class_names)


def prepare_output(params: AnnotateParams) -> Path:
    """Create the pool's new directory before anything runs (the CLI calls this to know where the
    executed notebook goes); checks the run and the pool first."""
    trained = _runload.load(_trained_dir(params))
    pool = _open_pool(params, trained)
    return new_pool_dir(trained.path, pool.slug)


def open_stage(params: AnnotateParams):
    """Load the trained run, open the pool, open the pool's new directory (params + provenance).
    Returns (run: the pool directory, trained run, pool)."""
    trained = _runload.load(_trained_dir(params))
    spec = trained.input.with_resize(params.resize)
    pool = _open_pool(params, trained)
    out = Path(params.out_dir).expanduser().resolve() if params.out_dir else new_pool_dir(trained.path, pool.slug)
    if out.parent.parent != trained.path or out.parent.name != POOLS_DIR:
        raise WorkbenchError(f"parameter 'out_dir' = {out} is not a pool directory of {trained.path} "
                             f"({trained.path / POOLS_DIR}/<pool>): leave it empty")
    out.mkdir(parents=True, exist_ok=True)
    run = _runs.open_stage("annotate", params, path=out)   # refuses a directory that already holds results
    _runs.add_provenance(run, trained_run=str(trained.path), model_hash=trained.model_hash,
                         input=spec.to_dict(), pool={"name": pool.name, "kind": pool.kind, "source": pool.source})
    if params.pool == "val":
        print("warning: the pool is the val split, on which the thresholds are also chosen: "
              "the achieved precision below is optimistic")
    return run, trained, pool


def input_spec(trained, params: AnnotateParams):
    """The run's input path for this pool (``resize`` may choose another policy for images of another size)."""
    return trained.input.with_resize(params.resize)


def scan_pool(run: _runs.Run, trained, pool, params: AnnotateParams):
    """Read every item once (streamed): ids, content hashes, rejected files and duplicates are final
    after it; rejected.csv and duplicates.csv are written. Returns a one-row summary table."""
    pool.scan(input_spec(trained, params))
    pool.write_rejected(run.file("rejected.csv"))
    pool.write_duplicates(run.file("duplicates.csv"))
    n_dup = sum(len(g) - 1 for g in pool.duplicates)
    info = {"pool": pool.name, "kind": pool.kind, "items": len(pool), "rejected": len(pool.rejected),
            "duplicate items": n_dup, "pool id": pool.pool_id,
            "labels known (reporting only)": pool.labels is not None}
    if getattr(pool, "pseudonymised", 0):
        info["ids pseudonymised (paths held identifying values)"] = int(pool.pseudonymised)
    if pool.rejected:
        print(f"{len(pool.rejected)} file(s) rejected (listed with reasons in rejected.csv)")
    return pd.DataFrame({"value": info})


def rejected_table(pool, n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(pool.rejected[:n], columns=["id", "reason"])


# ---------------------------------------------------------------------- thresholds on val
def temperature(trained, params: AnnotateParams):
    """The run's fitted temperature(s) (evaluate stage) when ``calibrate`` is on, else None."""
    if not params.calibrate:
        print("uncalibrated probabilities (parameter calibrate is off)")
        return None
    t = trained.temperature()
    if t is None:
        print("uncalibrated probabilities: the run has no calibration.json (the evaluate stage writes it)")
    else:
        shown = f"{t:.4f}" if not isinstance(t, list) else f"{len(t)} per-label temperatures"
        print(f"calibrated probabilities: temperature {shown} (calibration.json)")
    return t


per_class_thresholds = _metrics.per_class_thresholds     # moved to workbench.metrics (kept here for callers)


def val_predictions(trained, params: AnnotateParams, temp=None) -> np.ndarray:
    """Val probabilities, calibrated as the pool's will be. They belong to the run, not to a pool: computed once
    per model and val split and kept in RUN/cache/ (every later pool reads them back)."""
    from ..model.embeddings import split_id
    path = _runs.run_cache_path(trained.path, "val-predictions", {"model": trained.model_hash,
                                                                  "val": split_id(trained, "val")}).with_suffix(".npz")
    arrays, hit = _runs.cached_arrays(path, lambda: {"probs": _predict.predict(
        trained.model, trained.dataset().images["val"], params.batch_size, desc="predict val")})
    if hit:
        print(f"val predictions of this model read from the run's cache ({path.name})")
    return _predict.calibrated(np.asarray(arrays["probs"], dtype=np.float64), temp, trained.task)


def ood_gates(fx, params: AnnotateParams) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(val, pool) masks of the items never auto-accepted: out-of-distribution score beyond val's 99th
    percentile (workbench.neighbours), or None when ``ood_gate`` is off."""
    if not params.ood_gate or fx is None:
        return None, None
    thr = fx.ood_threshold
    return np.asarray(fx.val_ood > thr), np.asarray(fx.ood > thr)


def choose_thresholds(trained, params: AnnotateParams, temp=None, val_probs=None, exclude=None) -> tuple[dict, np.ndarray]:
    """Thresholds chosen on val (global or per predicted class; per label for multi-label tasks); val items in
    ``exclude`` (the OOD gate) are left out, so the guarantee covers exactly what will be accepted. Returns
    (choice, val probabilities)."""
    ds = trained.dataset()
    probs = val_predictions(trained, params, temp) if val_probs is None else val_probs
    choice = _metrics.auto_accept_thresholds(probs, ds.labels["val"], trained.task, params.target_precision,
                                             params.thresholds, params.min_class_val, params.guarantee, exclude)
    choice["temperature"] = temp
    if not np.isfinite(choice["thresholds"]).any():
        how = (f" with probability {params.guarantee} (parameter 'guarantee'; a lower one, or more val images, "
               f"lets the test pass)") if params.guarantee else ""
        print(f"warning: no threshold reaches precision {params.target_precision} on val{how}: val cannot vouch for "
              "any auto-accept")
    return choice, probs


def thresholds_table(choice: dict, class_names: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(choice["per_class"])
    df.insert(1, "class_name", [class_names[c] for c in df["class"]])
    return df.set_index("class")


# ---------------------------------------------------------------------- the pool's predictions
def predict_pool(run: _runs.Run, trained, pool, params: AnnotateParams, temp=None) -> np.ndarray:
    """Probabilities of every pool item (streamed in batches, never all images in memory), calibrated like
    val; saved as pool_predictions.npz with the ids and the pool's fingerprint."""
    probs = _predict.predict_stream(trained.model, pool.batches(input_spec(trained, params), params.batch_size), len(pool),
                                    params.batch_size, desc=f"predict pool ({pool.name})")
    probs = _predict.calibrated(probs, temp, trained.task)
    np.savez_compressed(run.file("pool_predictions.npz"), probs=probs.astype(np.float32),
                        ids=np.array(pool.ids, dtype="U"), pool_id=np.array(pool.pool_id, dtype="U"))
    return probs


# ---------------------------------------------------------------------- the pool in feature space
# kNN second opinion, out-of-distribution score, near-duplicates of train images (workbench.embeddings,
# workbench.neighbours): per-item columns of annotations.csv and the ``knn``/``ood``/``train_near_duplicates``
# blocks of annotation_summary.json.
def _decided(probs: np.ndarray, task: str) -> np.ndarray:
    return _tasks.decide(probs, task)


def _label_text(row, task: str, sep: str = ";") -> str | int:
    if _tasks.is_multilabel(task):
        return sep.join(str(j) for j in np.flatnonzero(np.asarray(row)))
    return int(row)


@dataclass
class PoolFeatures:
    """What the features say about an annotated pool (workbench.annotate uses ``columns`` and ``summary``)."""
    train: Features
    val: Features
    pool: Features
    task: str
    class_names: list[str]
    k: int
    knn_probs: np.ndarray
    knn_label: np.ndarray
    model_label: np.ndarray
    ood: np.ndarray
    val_ood: np.ndarray
    near: object                     # pandas DataFrame: train_near_duplicates.csv
    threshold: float = NEAR_DUPLICATE
    extra: dict = field(default_factory=dict)
    knn_idx: np.ndarray | None = None     # (N, k) train indices of each pool item's nearest neighbours
    knn_sims: np.ndarray | None = None    # (N, k) their centred cosine similarities

    @property
    def knn_agree(self) -> np.ndarray:
        if _tasks.is_multilabel(self.task):
            return (self.knn_label == self.model_label).all(1)
        return self.knn_label == self.model_label

    @property
    def ood_threshold(self) -> float:
        return float(np.quantile(self.val_ood, OOD_QUANTILE)) if len(self.val_ood) else float("inf")

    @property
    def ood_flag(self) -> np.ndarray:
        return self.ood > self.ood_threshold

    def columns(self) -> dict:
        """Per-item columns appended to annotations.csv: the kNN label, whether it agrees with the model,
        the OOD score."""
        return {"knn_label": [_label_text(r, self.task) for r in self.knn_label],
                "knn_agree": self.knn_agree, "ood_score": np.round(self.ood, 6)}

    def summary(self, table, pool, n_resamples: int = 1000, seed: int = 0, auto: str = "auto-accepted") -> dict:
        """``knn``, ``ood`` and ``train_near_duplicates`` for annotation_summary.json."""
        accepted = (table["status"] == auto).to_numpy()
        agree = self.knn_agree
        knn = {"k": self.k, "metric": "cosine similarity of centred embeddings",
               "layer": self.train.layer, "agreement": float(agree.mean()) if len(agree) else None,
               "agreement_auto_accepted": float(agree[accepted].mean()) if accepted.any() else None,
               "n_auto_accepted_and_agree": int((accepted & agree).sum())}
        labels = getattr(pool, "labels", None)
        if labels is not None:
            y = np.asarray(labels)
            known = (y >= 0).all(1) if y.ndim == 2 else y >= 0
            if known.any():
                if _tasks.is_multilabel(self.task):   # item-level: the whole label set right
                    yy = np.array([";".join(map(str, np.flatnonzero(r))) for r in y[known]])
                    pred = np.array([";".join(map(str, np.flatnonzero(r))) for r in self.model_label[known]])
                    codes = {v: i for i, v in enumerate(sorted(set(yy) | set(pred)))}
                    yy = np.array([codes[v] for v in yy])
                    pred = np.array([codes[v] for v in pred])
                else:
                    yy, pred = y[known].reshape(-1), self.model_label[known]
                knn["achieved"] = {
                    "model": _metrics.accepted_precision_coverage(yy, pred, accepted[known], n_resamples, seed),
                    "model_and_knn_agree": _metrics.accepted_precision_coverage(yy, pred, (accepted & agree)[known], n_resamples, seed),
                    "n_labelled": int(known.sum()),
                    "what": "multi-label: item-level, the whole label set right" if _tasks.is_multilabel(self.task)
                            else "precision of the auto-accepted labels"}
        q = (0.5, 0.9, 0.99)
        order = np.argsort(-self.ood, kind="stable")[:10]
        ood = {"method": "Mahalanobis: smallest squared distance to a train class mean, shared covariance "
                         "(Lee et al. 2018)", "reference": "val split (in distribution)",
               "threshold": self.ood_threshold, "threshold_quantile_of_val": OOD_QUANTILE,
               "val_quantiles": {str(x): float(np.quantile(self.val_ood, x)) for x in q} if len(self.val_ood) else {},
               "pool_quantiles": {str(x): float(np.quantile(self.ood, x)) for x in q} if len(self.ood) else {},
               "pool_mean": float(self.ood.mean()) if len(self.ood) else None,
               "n_flagged": int(self.ood_flag.sum()),
               "share_flagged": float(self.ood_flag.mean()) if len(self.ood) else None,
               "expected_share_if_like_val": 1 - OOD_QUANTILE,
               "most_unusual": [{"id": self.pool.ids[i] if self.pool.ids else str(i), "score": float(self.ood[i])}
                                for i in order],
               "column": "ood_score (annotations.csv)"}
        near = {"threshold": self.threshold, "n_pairs": int(len(self.near)),
                "n_pool_items": int(self.near["id"].nunique()) if len(self.near) else 0,
                "csv": "train_near_duplicates.csv",
                "metric": "cosine similarity of centred embeddings to the nearest train images"}
        return {"knn": knn, "ood": ood, "train_near_duplicates": near}


def features_of(run, trained, pool, params, pool_probs: np.ndarray, k: int = KNN_K,
                  threshold: float = NEAR_DUPLICATE) -> PoolFeatures:
    """Train, val and pool embeddings (cached in the trained run), the kNN second opinion, OOD scores and
    near-duplicates of pool items in the train split (``train_near_duplicates.csv`` in the pool directory)."""
    import pandas as pd
    spec = trained.input.with_resize(getattr(params, "resize", ""))    # the stage's input path for this pool
    bs = getattr(params, "batch_size", 512)
    ds = trained.dataset()
    tr, va = split_features(trained, "train", bs), split_features(trained, "val", bs)
    po = pool_features(trained, pool, spec, bs)
    index = Index(tr.embeddings, ds.labels["train"])
    sims, idx = index.search(po.embeddings, k, progress=len(po) > 20000)
    kk = idx.shape[1]
    knn_probs, knn_label = knn_vote(index.labels, idx, sims, len(trained.class_names), trained.task)
    scorer = OODScorer(tr.embeddings, ds.labels["train"], trained.task)
    ood, val_ood = scorer.scores(po.embeddings), scorer.scores(va.embeddings)
    rows, cols, s = near_duplicate_pairs(sims, idx, threshold)
    ytr = ds.labels["train"]
    near = pd.DataFrame({
        "id": [pool.ids[i] for i in rows], "index": rows.astype(int), "train_index": cols.astype(int),
        "train_id": [f"train:{j}" for j in cols],
        "train_label": [_label_text(ytr[j], trained.task) for j in cols],
        "similarity": np.round(s.astype(np.float64), 6)}).sort_values(["similarity", "index"], ascending=[False, True],
                                                                      kind="stable")
    near.to_csv(run.file("train_near_duplicates.csv"), index=False)
    model_label = _decided(np.asarray(pool_probs), trained.task)
    fx = PoolFeatures(train=tr, val=va, pool=po, task=trained.task, class_names=list(trained.class_names), k=kk,
                      knn_probs=knn_probs, knn_label=knn_label, model_label=model_label, ood=ood, val_ood=val_ood,
                      near=near, threshold=threshold, knn_idx=idx, knn_sims=sims)
    print(f"features: kNN (k = {kk}) agrees with the model on {fx.knn_agree.mean():.3f} of the pool; "
          f"{int(fx.ood_flag.sum())} item(s) above val's {OOD_QUANTILE:.0%} OOD quantile; "
          f"{near['id'].nunique() if len(near) else 0} item(s) with a train near-duplicate (cosine ≥ {threshold})")
    return fx


def ood_gallery(fx: PoolFeatures, pool, trained, n: int = 24):
    """The pool's most unusual items (highest OOD score first)."""
    from ..data.inputs import conform
    from ..core.viz import image_grid
    order = np.argsort(-fx.ood, kind="stable")[:n]
    caps = [f"{str(fx.pool.ids[i])[-14:]}\nOOD {fx.ood[i]:.3f}" + (" ⚑" if fx.ood_flag[i] else "") for i in order]
    colors = ["red" if fx.ood_flag[i] else "black" for i in order]
    images = conform(pool.raw(order), display_spec(trained)) if len(order) else np.zeros((0, 1, 1, 1), np.uint8)
    return image_grid(images, caps, ncols=8, cell=1.5, caption_colors=colors,
                      title=f"Most unusual pool items (OOD score; red: above val's {OOD_QUANTILE:.0%} quantile "
                            f"{fx.ood_threshold:.3f}; {int(fx.ood_flag.sum())} of {len(fx.ood)} flagged)")


def agreement_table(summary: dict):
    """Auto-accept precision and coverage with and without the kNN agreement rule (labels known)."""
    import pandas as pd
    knn = summary.get("knn") or {}
    a = knn.get("achieved")
    if not a:
        return pd.DataFrame({"note": [f"kNN agrees with the model on {knn.get('agreement', float('nan')):.3f} of the "
                                      "pool; the pool's labels are unknown, so precision cannot be measured"]})

    def ci(v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]" if v and v[0] is not None and v[1] is not None else "undefined"
    rows = {}
    for name, key in (("model (auto-accept rule)", "model"), ("model and kNN agree", "model_and_knn_agree")):
        r = a[key]
        rows[name] = {"precision": f"{r['precision']:.4f}" if np.isfinite(r["precision"]) else "undefined",
                      "precision 95% CI": ci(r["precision_ci95"]), "coverage": f"{r['coverage']:.4f}",
                      "coverage 95% CI": ci(r["coverage_ci95"]), "accepted": r["n_accepted"]}
    return pd.DataFrame(rows).T


def check_shift(run: _runs.Run, trained, val_probs: np.ndarray, pool_probs: np.ndarray, choice: dict,
                params: AnnotateParams, fx=None) -> dict:
    """Compare the pool with val (workbench.shift): may val's thresholds vouch for this pool?"""
    from ..stats import shift as _shift
    ds = trained.dataset()
    vg, pg = (None, None) if fx is None else (fx.val_ood > fx.ood_threshold, fx.ood > fx.ood_threshold)
    res = _shift.check(val_probs, ds.labels["val"], pool_probs, thresholds=np.asarray(choice["thresholds"]),
                       task=trained.task, class_names=trained.class_names, val_ood=vg, pool_ood=pg,
                       ood_quantile=OOD_QUANTILE)
    res["message"] = _shift.message(res)
    print(f"shift check: {res['message']}")
    return res


# ---------------------------------------------------------------------- who vouches: val or the pool
def _expected_coverage(pool_probs: np.ndarray, choice: dict, task: str, gate) -> float:
    """The share of the pool that val's thresholds would accept (no labels needed)."""
    thr = np.asarray(choice["thresholds"], dtype=np.float64)
    if not np.isfinite(thr).any() or not len(pool_probs):
        return 0.0
    if _tasks.is_multilabel(task):
        ok = (_tasks.confidence(pool_probs, task) >= thr[None, :]).all(1)
    else:
        ok = pool_probs.max(1) >= thr[pool_probs.argmax(1)]
    if gate is not None:
        ok &= ~np.asarray(gate, bool)
    return float(ok.mean())


def _certification_labels(params: AnnotateParams, pool, trained):
    """``certify_labels`` read: a CSV, a review export, or an earlier pool directory whose certification
    queue was labelled in the review widget (workbench.review.certification_labels)."""
    from ..stats import certify as _certify
    src = Path(params.certify_labels).expanduser()
    if src.is_dir() and (src / _certify.QUEUE_FILE).is_file() and not (src / "annotations_coco.json").is_file():
        from ..data import review as _review
        if not hasattr(_review, "certification_labels"):
            raise WorkbenchError(f"certify_labels {src}: reading the review widget's certification labels needs "
                                 "workbench.review.certification_labels; export the review and pass the export")
        frame = _review.certification_labels(src)
        return _certify.read_labels(frame, pool.ids, trained.class_names, trained.task), str(src)
    return _certify.read_labels(src, pool.ids, trained.class_names, trained.task), str(src)


def _previous_attempts(trained, pool, run) -> int:
    """Certifications of this pool (same content) by this model before this one (pool directories of the run)."""
    n = 0
    for d in pool_dirs(trained.path):
        if Path(d) == Path(run.path):
            continue
        f = Path(d) / "annotation_summary.json"
        try:
            doc = json.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            continue
        c = doc.get("certification") or {}
        if doc.get("pool_id") == pool.pool_id and c.get("certified_by") == "pool" and c.get("n_labels"):
            n += 1
    return n


def certify(run: _runs.Run, trained, pool, pool_probs: np.ndarray, choice: dict, shift: dict,
            params: AnnotateParams, fx=None) -> dict:
    """Who vouches for the auto-accept thresholds (parameter ``certify``; workbench.certify):

    - ``val``: the thresholds chosen on val, when the shift check did not fire (or ``on_shift accept``);
    - ``pool``: when the check fired (``certify auto``) or always (``certify pool``). The seeded random sample
      is written to ``certification_queue.csv``; with ``certify_labels`` the thresholds are chosen on it by
      Learn-then-Test and apply to the rest of the pool; without, nothing is auto-accepted yet and the report
      says how many images to label.

    Returns the routing: ``route``, ``certified_by`` (val, pool or none), ``choice`` (the thresholds used),
    ``labels`` (id → label of the items labelled by a person), ``queue``, ``message`` and what it costs."""
    from ..stats import certify as _certify
    val_gate, pool_gate = ood_gates(fx, params)
    fired = bool(shift and shift["fired"])
    adapted = getattr(params, "adapt", "none") != "none"
    if params.certify == "pool":
        route, why = "pool", "certify pool: the pool's own labelled sample vouches for the thresholds"
    elif adapted:
        # val's thresholds were chosen for the model before adaptation: only the pool can vouch for the adapted one
        route, why = "pool", (f"the model was adapted to this pool (-p adapt {params.adapt}): val's thresholds belong "
                              "to the model before adaptation")
    elif fired and params.on_shift == "review":
        route, why = "pool", "the shift check fired: val cannot vouch for this pool"
    else:
        route = "val"
        why = ("the shift check fired but on_shift accept applies val's thresholds anyway (no guarantee here)"
               if fired else "no shift detected: val vouches for the thresholds")
    cost = _certify.cost_of_errors(params.target_precision, params.guarantee) if params.guarantee > 0 else []
    out = {"route": route, "reason": why, "labels": {}, "queue": [], "cost_of_errors": cost,
           "expected_coverage": _expected_coverage(pool_probs, choice, trained.task, pool_gate),
           "n_ood_gated": int(np.sum(pool_gate)) if pool_gate is not None else 0}
    if route == "val":
        out.update(certified_by="val", choice=choice,
                   message=f"thresholds chosen on val ({why})")
        if params.certify_labels:
            labels, src = _certification_labels(params, pool, trained)
            out.update(labels=labels, labels_source=src)
        return out
    if not params.guarantee > 0:
        raise WorkbenchError("certifying on the pool needs a guarantee > 0 (parameter guarantee); set e.g. "
                             "-p guarantee 0.9, or -p on_shift accept to use val's point estimate anyway")
    in_region = _certify.region(pool_probs, choice["thresholds"], trained.task, pool_gate)
    size = _certify.queue_size(params.target_precision, params.guarantee, int(in_region.sum()), params.certify_size)
    queue = _certify.sample(pool.pool_id, in_region, size["size"], params.seed)
    _certify.write_queue(run.file(_certify.QUEUE_FILE), pool.ids, queue)
    out.update(queue=[pool.ids[i] for i in queue], queue_positions=queue, size=size, region=in_region)
    never = {**choice, "thresholds": [float("inf")] * len(choice["thresholds"])}
    if not params.certify_labels:
        n = size["size"]
        out.update(certified_by="none", choice=never,
                   message=(f"{why}. Label these {n} images (certification_queue.csv, in its order; drawn at random "
                            f"from the {int(in_region.sum())} items val's thresholds would accept: "
                            f"widgets.review_run(POOL_DIR, queue='certification') shows them blind), then run "
                            f"annotate again with -p certify_labels: the items the sample certifies are then "
                            f"auto-accepted at precision ≥ {params.target_precision} with probability "
                            f"{params.guarantee}. Nothing is auto-accepted until then."))
        print(f"certification: {out['message']}")
        return out
    labels, src = _certification_labels(params, pool, trained)
    attempts = _previous_attempts(trained, pool, run) + 1
    pc = _certify.certify_pool(pool_probs, labels, pool.ids, queue, trained.task, params.target_precision,
                               params.guarantee, params.thresholds, params.min_class_val, pool_gate, in_region)
    pc["temperature"] = choice.get("temperature")
    c = pc["certification"]
    c.update(attempt=attempts, guarantee_after_attempts=_certify.attempts_guarantee(params.guarantee, attempts),
             labels_source=src)
    if c["reached"]:
        msg = (f"certified on the pool: {c['n_labels']} labelled sample items; of the {c['n_accepted_in_sample']} "
               f"the thresholds accept, {c['n_errors_accepted_in_sample']} wrong; precision ≥ "
               f"{c['precision_lower_bound']:.4f} with probability {params.guarantee}")
    else:
        more = next((r for r in cost if r["errors"] == c["n_errors_accepted_in_sample"] + 1), None)
        msg = (f"not certified: {c['n_labels']} labelled sample items (of the queue's {c['queue_size']}) cannot vouch "
               f"for precision {params.target_precision} with probability {params.guarantee}; nothing auto-accepted"
               + (f". With the errors seen, about {more['accepted_labels_needed']} accepted labelled items are needed: "
                  f"pass a larger -p certify_size and label the longer queue" if more else ""))
    if attempts > 1:
        msg += (f" (attempt {attempts} on this pool: the guarantee of one test, {params.guarantee}, is worth "
                f"{c['guarantee_after_attempts']:.2f} after {attempts} looks)")
    out.update(certified_by="pool" if c["reached"] else "none", choice=pc, labels=labels, labels_source=src,
               message=msg)
    print(f"certification: {msg}")
    return out


def route_banner(cert: dict, shift: dict):
    """Who vouches for the auto-accept, and what to do next, for the top of the report."""
    from ..core.viz import Markdown
    reasons = "".join(f"> - {r}\n" for r in (shift or {}).get("reasons", []))
    notes = "".join(f"\n- {n}" for n in (shift or {}).get("notes", []))
    if cert["route"] == "val":
        head = f"**Certified by val.** {cert['message']}."
        if shift and shift["fired"]:
            head = ("> ## ⚠ The pool differs from val\n>\n" + reasons
                    + f">\n> {cert['message']}. The precision guarantee does not hold here.")
        return Markdown(head + (f"\n\n**Shift check:** {shift['message']}{notes}" if shift and not shift["fired"] else ""))
    cost = "".join(f"\n| {r['errors']} | {r['accepted_labels_needed']} |" for r in cert["cost_of_errors"])
    table = ("\n\nWhat each error costs (accepted labelled items Learn-then-Test needs):\n\n| errors among them | "
             "accepted labelled items needed |\n| --- | --- |" + cost) if cost else ""
    head = "## Certify on the pool\n\n"
    if shift and shift["fired"]:
        head += "The pool differs from val, so val's thresholds cannot vouch for it:\n\n" + reasons.replace("> ", "") + "\n"
    c = cert.get("choice", {}).get("certification")
    body = f"**{cert['message']}**"
    if c:
        body += (f"\n\nSample: {c['n_labels']} labels ({c['n_skipped_counted_wrong']} skipped items of the queue "
                 f"counted as wrong); accuracy of the model on the sample {c['sample_accuracy']:.3f} (95 % CI "
                 f"{c['sample_accuracy_ci95'][0]:.3f}-{c['sample_accuracy_ci95'][1]:.3f}); precision of the accepted "
                 f"sample items {c['sample_precision']:.4f} (95 % CI {c['sample_precision_ci95'][0]:.4f}-"
                 f"{c['sample_precision_ci95'][1]:.4f}).")
    return Markdown(head + body + table + notes)


# ---------------------------------------------------------------------- decisions
REASONS = {"accepted": "confidence at or above the threshold", "below": "confidence below the threshold",
           "ood": "out of distribution: OOD score beyond val's 99th percentile (never auto-accepted)",
           "awaiting": "awaiting certification on the pool (label certification_queue.csv)",
           "not_certified": "the pool's sample did not certify the target precision",
           "labelled": "labelled by a person (certification sample)", "no_threshold": "no threshold reaches the target",
           "outside_region": "outside the region the certification sample was drawn from (below val's threshold)"}


def decide(run: _runs.Run, trained, pool, probs: np.ndarray, cert: dict, params: AnnotateParams,
           extra: dict | None = None, fx=None) -> pd.DataFrame:
    """Status of every item → annotations.csv (ids, predicted label and class name, confidence, status,
    threshold, reason). ``auto-accepted`` when its confidence reaches the threshold that ``cert`` chose (val's or
    the pool sample's) and it is not out of distribution (``ood_gate``); ``labelled`` when a person labelled it
    (the certification sample; column ``label``); else ``needs-review``. Multi-label: a label decision is
    accepted when its confidence reaches its label's threshold; an item is auto-accepted when all are.
    ``extra``: more per-item columns appended at the end (features_of: knn_label, knn_agree, ood_score)."""
    choice = cert["choice"]
    thr_all = np.asarray(choice["thresholds"], dtype=np.float64)
    _, gate = ood_gates(fx, params)
    gate = np.zeros(len(pool), bool) if gate is None else np.asarray(gate, bool)
    names = trained.class_names
    labels = cert.get("labels") or {}
    labelled = np.array([i in labels for i in pool.ids], dtype=bool)
    if _tasks.is_multilabel(trained.task):
        pred = _tasks.decide(probs, trained.task)
        conf = _tasks.confidence(probs, trained.task)
        accepted = conf >= thr_all[None, :]
        weakest = np.argmin(conf - np.where(np.isfinite(thr_all), thr_all, 2.0)[None, :], axis=1)
        above = accepted.all(1)
        table = pd.DataFrame({
            "index": np.arange(len(pool)), "id": pool.ids,
            "predicted_label": [SEP.join(str(j) for j in np.flatnonzero(r)) for r in pred],
            "predicted_class": [SEP.join(names[j] for j in np.flatnonzero(r)) for r in pred],
            "confidence": np.round(conf.min(1), 6), "threshold": np.round(thr_all[weakest], 6),
            "labels_accepted": accepted.sum(1),
            "labels_to_review": [SEP.join(names[j] for j in np.flatnonzero(~r)) for r in accepted],
        })
        table["predicted_labels"] = table["predicted_class"]
        human = [SEP.join(str(j) for j in np.flatnonzero(labels[i])) if i in labels else "" for i in pool.ids]
    else:
        pred, conf = probs.argmax(1), probs.max(1)
        thr = thr_all[pred]
        above = conf >= thr
        table = pd.DataFrame({
            "index": np.arange(len(pool)), "id": pool.ids, "predicted_label": pred,
            "predicted_class": [names[i] for i in pred], "confidence": np.round(conf, 6),
            "threshold": np.round(thr, 6),
        })
        human = [str(int(labels[i])) if i in labels else "" for i in pool.ids]
    region = cert.get("region")
    inside = np.ones(len(pool), bool) if region is None else np.asarray(region, bool)   # pool route: the sample's region
    auto = above & ~gate & ~labelled & inside
    status = np.where(labelled, LABELLED, np.where(auto, AUTO, REVIEW))
    finite = np.isfinite(thr_all).any()
    if cert.get("certified_by") == "none" and "certification" not in choice:
        why_not = REASONS["awaiting"]
    elif cert.get("certified_by") == "none":
        why_not = REASONS["not_certified"]
    else:
        why_not = REASONS["below"] if finite else REASONS["no_threshold"]
    reason = np.where(labelled, REASONS["labelled"], np.where(auto, REASONS["accepted"],
                      np.where(gate & above, REASONS["ood"],
                               np.where(above & ~inside, REASONS["outside_region"], why_not))))
    table.insert(table.columns.get_loc("threshold"), "status", status)
    table["reason"] = reason
    table["label"] = human
    table["certified_by"] = cert.get("certified_by", "val")
    table["in_certification_sample"] = np.isin(np.arange(len(pool)), np.asarray(cert.get("queue_positions", []), int))
    for name, values in (extra or {}).items():
        table[name] = values
    table.to_csv(run.file("annotations.csv"), index=False)
    return table


achieved = _metrics.accepted_precision_coverage   # precision and coverage with intervals, where labels are known


def _certification_summary(cert: dict, params: AnnotateParams, table: pd.DataFrame, choice_val: dict) -> dict:
    c = dict(cert.get("choice", {}).get("certification") or {})
    accepted = (table["status"] == AUTO).to_numpy()
    rest = (table["status"] != LABELLED).to_numpy()
    out = {"certified_by": cert["certified_by"], "route": cert["route"], "reason": cert["reason"],
           "message": cert["message"], "n_labels": int(len(cert.get("labels") or {})),
           "coverage": float(accepted.mean()) if len(accepted) else 0.0,
           "coverage_of_unlabelled": float(accepted[rest].mean()) if rest.any() else 0.0,
           "target_precision": params.target_precision, "guarantee": params.guarantee,
           "n_ood_gated": cert.get("n_ood_gated", 0), "expected_coverage_with_val_thresholds": cert["expected_coverage"],
           "cost_of_errors": cert["cost_of_errors"]}
    if cert["route"] == "pool":
        out.update(queue_file=QUEUE_FILE, queue_size=len(cert["queue"]), queue_sizing=cert.get("size"))
    if c:
        out.update({k: v for k, v in c.items() if k != "certified_by"})
        out["precision_interval"] = {"lower_bound": c.get("precision_lower_bound"),
                                     "level": c.get("precision_lower_bound_level"),
                                     "sample_ci95": c.get("sample_precision_ci95")}
    elif cert["certified_by"] == "val":
        v = _val_precision_interval(choice_val, params)
        out["precision_interval"] = v
    return out


def _val_precision_interval(choice: dict, params: AnnotateParams) -> dict:
    """The Learn-then-Test lower bound behind val's threshold (global rule), where it can be read back."""
    g = choice.get("global") or {}
    n = g.get("n_val", 0)
    cov, prec = g.get("val_coverage", 0.0), g.get("val_precision")
    if not n or prec is None or not np.isfinite(prec or np.nan):
        return {"lower_bound": None, "level": params.guarantee, "val_precision": prec}
    n_acc = int(round(cov * n))
    k = int(round(prec * n_acc))
    lo = _metrics.clopper_pearson(k, n_acc, params.guarantee, side="lower")[0] if params.guarantee > 0 else None
    return {"lower_bound": lo, "level": params.guarantee, "val_precision": prec, "n_val_accepted": n_acc,
            "val_ci95": list(_metrics.clopper_pearson(k, n_acc, 0.95))}


def summarise(run: _runs.Run, trained, pool, params: AnnotateParams, cert: dict, table: pd.DataFrame,
              probs: np.ndarray, shift: dict | None, extra: dict | None = None, val_choice: dict | None = None) -> dict:
    choice = cert["choice"]
    accepted = (table["status"] == AUTO).to_numpy()
    labelled = (table["status"] == LABELLED).to_numpy()
    summary = {"pool": pool.name, "pool_kind": pool.kind, "pool_source": pool.source, "pool_id": pool.pool_id,
               "pool_size": int(len(table)), "rejected": len(pool.rejected),
               "duplicates": sum(len(g) - 1 for g in pool.duplicates), "model_hash": trained.model_hash,
               "trained_run": str(trained.path), "task": trained.task,
               "threshold": {**choice["global"], "mode": choice["mode"]},
               "thresholds": {"mode": choice["mode"], "per_class": choice["per_class"],
                              "val_precision": choice["val_precision"], "val_coverage": choice["val_coverage"],
                              "chosen_on": cert["certified_by"]},
               "temperature": choice.get("temperature"), "target_precision": params.target_precision,
               "guarantee": params.guarantee,
               "shift": shift,
               "certification": _certification_summary(cert, params, table, val_choice or choice),
               "n_auto_accepted": int(accepted.sum()), "n_needs_review": int((table["status"] == REVIEW).sum()),
               "n_labelled": int(labelled.sum()),
               "coverage": float(accepted.mean()) if len(accepted) else 0.0,
               "pool_labels_known": pool.labels is not None}
    if pool.labels is not None:
        y = np.asarray(pool.labels)
        known = (y >= 0).all(1) if y.ndim == 2 else y >= 0     # a labels CSV may cover some files only
        known &= ~labelled       # people's labels are final: precision is that of the machine's labels
        if _tasks.is_multilabel(trained.task):
            thr = np.asarray(choice["thresholds"], dtype=np.float64)
            yk, pk, acc_items = y[known], probs[known], accepted[known]
            # the label decisions of the auto-accepted items (every one of their labels passed its threshold)
            pc = _metrics.multilabel_precision_coverage(yk[acc_items], pk[acc_items], thr) if acc_items.any() else {}
            summary["achieved"] = {"precision": pc.get("precision", float("nan")),
                                   "coverage": float(acc_items.mean()) if len(acc_items) else 0.0,
                                   "n_accepted": int(acc_items.sum()), "n": int(len(acc_items)),
                                   "all_accepted_precision": pc.get("all_accepted_precision", float("nan")),
                                   "per_label": pc.get("per_label", []),
                                   "what": "precision: the label decisions of the auto-accepted items; coverage: "
                                           "auto-accepted items / items"}
        else:
            summary["achieved"] = achieved(y[known], table["predicted_label"].to_numpy()[known], accepted[known],
                                           params.bootstrap, params.seed)
        summary["achieved"]["n_labelled"] = int(known.sum())
    summary.update(extra or {})    # features_of: knn, ood, train_near_duplicates
    run.write_json("annotation_summary.json", summary)
    return summary


def semi_supervised_gain(run: _runs.Run, trained, pool, params: AnnotateParams, cert: dict, table: pd.DataFrame,
                         temperature=None):
    """A run trained with unlabelled images (train -p unlabelled, compare_supervised): how many more pool images it
    auto-accepts than the same recipe on the labelled images alone, each certified like this pool at the same target
    precision (workbench.semisup.compare_annotation; semi_supervised_comparison.json). A note for other runs."""
    from . import semisup
    return semisup.comparison_report(semisup.compare_annotation(run, trained, pool, params, cert, table, temperature))


def achieved_table(summary: dict) -> pd.DataFrame:
    a = summary.get("achieved")
    if not a:
        return pd.DataFrame({"note": ["the pool's labels are unknown: nothing to compare with"]})
    target = summary["thresholds"].get("val_coverage")
    return pd.DataFrame({
        "estimate": [a["precision"], a["coverage"]],
        "95% CI low": [(a.get("precision_ci95") or [None])[0], (a.get("coverage_ci95") or [None])[0]],
        "95% CI high": [(a.get("precision_ci95") or [None, None])[1], (a.get("coverage_ci95") or [None, None])[1]],
        "target / chosen on": [summary["target_precision"], target],
    }, index=["precision of auto-accepted" + (" label decisions" if summary["task"] == _tasks.MULTILABEL else ""),
              "coverage (auto-accepted / items not labelled by a person)"])


# ---------------------------------------------------------------------- ranking
def rank_for_review(run: _runs.Run, trained, pool, table: pd.DataFrame, probs: np.ndarray,
                    params: AnnotateParams, temp=None, chunk: int = 4096) -> pd.DataFrame:
    """Rank the needs-review items by ``params.strategy`` (most useful first) into review_queue.csv.
    Stochastic strategies read the needed images back in chunks (a large pool never sits in memory)."""
    from ..model import active
    from ..data import augment as _augment
    need = np.flatnonzero((table["status"] == REVIEW).to_numpy())
    task = trained.task
    if len(need):
        if params.strategy in active.STOCHASTIC:
            transform = None
            if params.strategy == "tta":
                transform = _augment.build(trained.params.augment, params.seed, n_channels=trained.input.channels)
            scores = np.concatenate([
                active.uncertainty(params.strategy, trained.model, pool.images(need[i:i + chunk], input_spec(trained, params)),
                                   transform=transform, n_passes=params.n_passes, seed=params.seed + i,
                                   batch_size=params.batch_size, temperature=temp, task=task)["score"]
                for i in range(0, len(need), chunk)])
        else:
            scores = active.score(params.strategy, probs[need], task=task)
        order = active.rank(scores)
        scores, need = scores[order], need[order]
    else:
        scores = np.zeros(0)
    queue = pd.DataFrame({
        "rank": np.arange(1, len(need) + 1), "id": [pool.ids[i] for i in need], "index": need,
        "predicted_label": table["predicted_label"].to_numpy()[need],
        "predicted_class": table["predicted_class"].to_numpy()[need],
        "confidence": table["confidence"].to_numpy()[need], "strategy": params.strategy,
        "score": np.round(scores, 6),
    })
    p = probs[need]
    if not _tasks.is_multilabel(task):
        second = np.argsort(-p, axis=1)[:, 1] if p.shape[1] > 1 and len(p) else np.zeros(len(p), int)
        queue["second_label"] = second
        queue["second_class"] = [trained.class_names[c] for c in second]
        queue["second_prob"] = np.round(p[np.arange(len(p)), second], 6) if len(p) else np.zeros(0)
    else:
        queue["labels_to_review"] = table["labels_to_review"].to_numpy()[need]
    queue.to_csv(run.file("review_queue.csv"), index=False)
    return queue


# ---------------------------------------------------------------------- label audit
AUDIT_FILES = ("label_issues.csv", "audit_probs.npz", "label_audit.json")


def audit_labels(run: _runs.Run, trained, params: AnnotateParams) -> pd.DataFrame | None:
    """Confident learning over the train split with cross-validated probabilities → label_issues.csv.

    The audit is about the run's training labels, not the pool: it is computed once per run (train parameters,
    data, folds, epochs, seed) into RUN/cache/audit-<key>/ and every pool's directory gets a copy of its files
    (``label_audit.json`` says where they came from)."""
    from ..model import audit
    from ..data import augment as _augment
    from ..model import models as _models
    if params.audit_folds == 0:
        print("label audit skipped (audit_folds 0)")
        return None
    if _tasks.is_multilabel(trained.task):
        reason = "the label audit (confident learning) covers single-label tasks; this task is multi-label"
        print(f"label audit skipped: {reason}")
        run.write_json("label_audit.json", {"skipped": True, "reason": reason, "split": "train"})
        return None
    tp, ds = trained.params, trained.dataset()
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

    def fill(folder: Path):
        probs, folds = audit.cross_val_probs(images, labels, build, folds=params.audit_folds,
                                             epochs=params.audit_epochs, seed=params.seed, transform_factory=transform,
                                             batch_size=tp.batch_size, learning_rate=tp.learning_rate)
        issues = audit.issues_table(audit.find_issues(labels, probs), ds.class_names, "train")
        issues.to_csv(folder / "label_issues.csv", index=False)
        np.savez_compressed(folder / "audit_probs.npz", probs=probs.astype(np.float32), folds=folds, labels=labels)
        oof_acc = float((probs.argmax(1) == labels).mean())
        (folder / "label_audit.json").write_text(json.dumps({
            "method": "confident learning (cleanlab find_label_issues, prune_by_noise_rate, ranked by self_confidence)",
            "split": "train", "n": int(len(labels)), "folds": params.audit_folds, "epochs": params.audit_epochs,
            "out_of_sample_acc": oof_acc, "n_issues": int(len(issues)),
            "issue_rate": float(len(issues) / len(labels))}, indent=1) + "\n")

    from ..core.params import to_dict
    key = {"train": {k: v for k, v in to_dict(tp).items() if k != "run_dir"}, "data": ds.md5, "n": int(len(labels)), "folds": params.audit_folds,
           "epochs": params.audit_epochs, "seed": params.seed, "classes": list(ds.class_names)}
    folder, hit = _runs.cached_folder(_runs.run_cache_path(trained.path, "audit", key), fill)
    import shutil
    copied = {name: run.file(name) for name in AUDIT_FILES[:2]}
    for name, dest in copied.items():
        shutil.copyfile(folder / name, dest)
    meta = json.loads((folder / "label_audit.json").read_text())
    meta["computed"] = "read from the run's cache" if hit else "computed now and kept in the run's cache"
    meta["cache"] = str(folder.relative_to(trained.path))
    run.write_json("label_audit.json", meta)
    issues = pd.read_csv(copied["label_issues.csv"])
    print(f"label audit: {meta['n_issues']} of {meta['n']} train labels flagged (out-of-sample accuracy "
          f"{meta['out_of_sample_acc']:.3f}, {meta['folds']} folds x {meta['epochs']} epochs; "
          f"{'read from' if hit else 'kept in'} the run's cache {meta['cache']})")
    return issues


def audit_gallery(issues: pd.DataFrame | None, trained, params: AnnotateParams):
    from ..model import audit
    if issues is None:
        return None
    return audit.gallery(issues, trained.dataset().images["train"], n=params.gallery_size)


# ---------------------------------------------------------------------- galleries
def gallery(table: pd.DataFrame, pool, trained, params: AnnotateParams, status: str):
    """Auto-accepted: a seeded random sample; needs-review: the least confident first. Where the pool's
    labels are known, captions are green (right) or red (wrong, with the true class)."""
    from ..data.inputs import conform
    from ..core.viz import image_grid
    sub = table[table["status"] == status]
    n = params.gallery_size
    if status == REVIEW:
        idx = sub.sort_values("confidence", kind="stable").index.to_numpy()[:n]
    else:
        rng = np.random.default_rng(params.seed)
        idx = np.sort(rng.choice(sub.index.to_numpy(), size=min(n, len(sub)), replace=False))
    truth = pool.labels
    multilabel = _tasks.is_multilabel(trained.task)
    caps, colors = [], []
    for i in idx:
        row = table.loc[i]
        cap, color = f"{str(row['id'])[-14:]}\n{str(row['predicted_class'])[:14]} {row['confidence']:.3f}", "black"
        if truth is not None:
            t = np.asarray(truth[i])
            if (t >= 0).all():
                if multilabel:
                    ok = SEP.join(str(j) for j in np.flatnonzero(t)) == str(row["predicted_label"])
                    true = _tasks.label_names(t, trained.class_names, trained.task)
                else:
                    ok = int(t) == int(row["predicted_label"])
                    true = trained.class_names[int(t)]
                color = "green" if ok else "red"
                cap += "" if ok else f"\n(true: {true[:12]})"
        caps.append(cap)
        colors.append(color)
    images = conform(pool.raw(idx), display_spec(trained)) if len(idx) else np.zeros((0, 1, 1, 1), np.uint8)
    title = f"{status}: {len(sub)} of {len(table)} (showing {len(idx)})"
    return image_grid(images, caps, ncols=8, title=title, caption_colors=colors, cell=1.5)


def display_spec(trained):
    """The images a person looks at (workbench.inputs.display_spec of the run's input path)."""
    from ..data.inputs import display_spec as _display
    return _display(trained.input)


# ---------------------------------------------------------------------- privacy
def phi_check(out_dir, params: dict | AnnotateParams) -> int:
    """Search every file of a pool directory (annotations, exports, review log, the executed notebook and
    its HTML report) for the original identifying values of the pool's DICOM headers (re-read from the
    source, kept in memory only). Raises with the files and attributes (never the values) on a hit;
    returns how many values were searched."""
    from ..data.pools import phi_registry
    p = params if isinstance(params, dict) else {"pool": params.pool}
    registry = phi_registry(p.get("pool", ""))
    if registry is None or not len(registry):
        return 0
    from ..data import deid
    hits = deid.audit([Path(out_dir)], registry)
    if hits:
        raise WorkbenchError("PHI guard: original identifying DICOM values were found in "
                             + "; ".join(f"{Path(f).name} ({kw})" for f, kw in hits[:5])
                             + f": do not share {out_dir}; remove it and report this as a bug")
    return len(registry)


# ---------------------------------------------------------------------- review
def default_log(run_dir) -> Path:
    """The pool's single review log of earlier versions (still opened, and written by a review opened
    without an annotator name through the API); annotators write ``review/annotators/<name>.jsonl``."""
    return Path(run_dir) / "review" / "decisions.jsonl"


QUEUES = ("review", "certification", "adjudication")
CERTIFICATION_QUEUE = "certification_queue.csv"   # written by the annotate stage when the pool is certified on its own labels
ADJUDICATION_QUEUE = "adjudication_queue.csv"     # written by workbench agreement (workbench.agreement.analyse)


def review_dir(pool_dir) -> Path:
    return Path(pool_dir) / "review"


def certification_ids(pool_dir) -> list[str]:
    """The ids of ``certification_queue.csv`` (column ``id``), in its (seeded random) order; [] without it."""
    path = Path(pool_dir) / CERTIFICATION_QUEUE
    if not path.is_file():
        return []
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if "id" not in df:
        raise WorkbenchError(f"{path} has no column 'id': it is not a certification queue")
    return df["id"].astype(str).tolist()


def blind_items(pool_dir, ids: list[str], params: dict) -> tuple[list[str], frozenset]:
    """(the blind overlap in its order, every blind item of the pool): the overlap (``overlap``, seeded by
    ``seed``) and the certification sample are labelled without the model's opinion, in every queue."""
    from ..data.review import overlap_items
    overlap = overlap_items(ids, float(params.get("overlap", 0) or 0), int(params.get("seed", 0)))
    return overlap, frozenset(overlap) | frozenset(certification_ids(pool_dir))


@dataclass
class ReviewInputs:
    """What the review widget (workbench.widgets) and the exports need of an annotated pool."""
    pool: object             # workbench.pools.Pool (scanned)
    table: pd.DataFrame      # annotations.csv
    queue: pd.DataFrame      # review_queue.csv
    probs: np.ndarray        # pool probabilities (pool order)
    class_names: list[str]
    run_dir: Path            # the pool directory
    params: dict             # params/annotate.json
    task: str = "multi-class"
    trained: object = None   # workbench.runload.TrainedRun
    session: object = None   # review.ReviewSession once opened
    queue_kind: str = "review"            # review (the ranked queue, after the blind overlap) or certification
    blind: frozenset = frozenset()        # items labelled without the model's opinion (overlap, certification)
    overlap: tuple = ()                   # the blind overlap, in the order every annotator reads it
    all_queue: object = None              # the queue before it was fitted to one annotator (open_session)

    @property
    def ids(self) -> list[str]:
        return list(self.pool.ids)

    def display(self, positions) -> np.ndarray:
        """What the reviewer sees: the items at the model's size and channels, before preprocessing."""
        from ..data.inputs import conform
        return conform(self.pool.raw(np.asarray(positions, dtype=int)), display_spec(self.trained))

    def model_input(self, positions) -> np.ndarray:
        """What the model saw: through the run's input path."""
        return self.pool.images(np.asarray(positions, dtype=int), self.trained.input.with_resize(self.params.get("resize", "")))

    def export_images(self, positions) -> np.ndarray:
        """Images for labelled.npz: conformed to the model's size and channels, not preprocessed, like a
        dataset's own raw images (``10_train -p extra_labels`` runs them through the input path)."""
        from ..data.inputs import conform
        return conform(self.pool.raw(np.asarray(positions, dtype=int)),
                       self.trained.input.with_resize(self.params.get("resize", "")))


def resolve_pool_dir(path) -> Path:
    """An annotated pool's directory; a run directory with exactly one annotated pool stands for it."""
    pool_dir = Path(path)
    if not (pool_dir / "annotations.csv").is_file():
        pools_found = pool_dirs(pool_dir)
        if len(pools_found) == 1:
            pool_dir = pools_found[0]
        elif pools_found:
            raise WorkbenchError(f"{pool_dir} has {len(pools_found)} annotated pools: open one of "
                                 + ", ".join(str(p) for p in pools_found[-3:]))
    return pool_dir


def review_inputs(pool_dir, queue: str = "review") -> ReviewInputs:
    """What a review of an annotated pool needs, read back from its directory (nothing is written). The
    pool is re-opened from its source; items whose content changed since are refused.

    ``queue`` "review": the blind overlap (parameter ``overlap``) first, then ``review_queue.csv``;
    "certification": ``certification_queue.csv`` in its order, every item blind; "adjudication":
    ``adjudication_queue.csv`` (``workbench agreement``: items whose readers disagree), every item blind."""
    if queue not in QUEUES:
        raise WorkbenchError(f"queue {queue!r} is not one of {', '.join(QUEUES)}")
    pool_dir = resolve_pool_dir(pool_dir)
    _runs.require(pool_dir, ("annotations.csv", "review_queue.csv", "pool_predictions.npz", "params/annotate.json"),
                  "annotate")
    ap = json.loads((pool_dir / "params" / "annotate.json").read_text())
    table = pd.read_csv(pool_dir / "annotations.csv", dtype={"id": str, "predicted_label": str},
                        keep_default_na=False, na_values=[""])
    queue_df = pd.read_csv(pool_dir / "review_queue.csv", dtype={"id": str}, keep_default_na=False, na_values=[""])
    with np.load(pool_dir / "pool_predictions.npz", allow_pickle=False) as z:
        probs, ids, saved_pool_id = z["probs"], z["ids"].tolist(), str(z["pool_id"])
    trained = _runload.load(pool_dir.parent.parent)
    if not _tasks.is_multilabel(trained.task):
        table["predicted_label"] = table["predicted_label"].astype(int)
    params = AnnotateParams(**{k: v for k, v in ap.items() if k in AnnotateParams.__dataclass_fields__})
    pool = _open_pool(params, trained)
    pool.scan(trained.input.with_resize(params.resize))
    if pool.pool_id != saved_pool_id or list(pool.ids) != ids:
        raise WorkbenchError(f"the pool's images changed since {pool_dir} was annotated (pool {pool.pool_id}, "
                             f"annotated {saved_pool_id}): restore the data or annotate it again")
    overlap, blind = blind_items(pool_dir, table["id"].astype(str).tolist(), ap)
    known = set(table["id"].astype(str))
    if queue == "certification":
        cert = certification_ids(pool_dir)
        if not cert:
            raise WorkbenchError(f"{pool_dir} has no {CERTIFICATION_QUEUE}: the annotate stage writes it when the pool "
                                 "must be certified on its own labels; review the ranked queue instead (queue 'review')")
        unknown = [i for i in cert if i not in known]
        if unknown:
            raise WorkbenchError(f"{pool_dir / CERTIFICATION_QUEUE} lists {len(unknown)} id(s) that are not items of the "
                                 f"pool (first: {unknown[0]!r}): it belongs to another pool")
        review_queue = pd.DataFrame({"rank": np.arange(1, len(cert) + 1), "id": cert, "blind": True})
    elif queue == "adjudication":
        path = pool_dir / ADJUDICATION_QUEUE
        if not path.is_file():
            raise WorkbenchError(f"{pool_dir} has no {ADJUDICATION_QUEUE}: run 'workbench agreement {pool_dir}' after "
                                 "two or more annotators have labelled it")
        adj = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)["id"].astype(str).tolist()
        adj = [i for i in adj if i in known]
        blind = blind | frozenset(adj)
        review_queue = pd.DataFrame({"rank": np.arange(1, len(adj) + 1), "id": adj, "blind": True})
    else:   # the blind overlap first, then the ranked queue (where certification items stay blind)
        first = pd.DataFrame({"id": overlap, "blind": True})
        rest = queue_df[~queue_df["id"].astype(str).isin(set(overlap))].drop(columns=["rank"], errors="ignore")
        rest = rest.assign(blind=rest["id"].astype(str).isin(blind))
        review_queue = pd.concat([first, rest], ignore_index=True) if len(first) else rest.reset_index(drop=True)
        review_queue.insert(0, "rank", np.arange(1, len(review_queue) + 1))
    return ReviewInputs(pool, table, review_queue, probs, list(trained.class_names), pool_dir, ap, task=trained.task,
                        trained=trained, queue_kind=queue, blind=blind, overlap=tuple(overlap))


def _predicted(inputs: ReviewInputs) -> dict:
    return _predicted_labels(inputs.table, inputs.task)


def _predicted_labels(t: pd.DataFrame, task: str) -> dict:
    if _tasks.is_multilabel(task):
        return {str(i): [int(j) for j in str(v).split(SEP) if str(j).strip() != ""] if isinstance(v, str) else []
                for i, v in zip(t["id"], t["predicted_label"])}
    return dict(zip(t["id"].astype(str), t["predicted_label"].astype(int)))


def open_review(pool_dir, annotator: str = "", log: str | Path = "", queue: str = "review") -> ReviewInputs:
    """A resumable review session over an annotated pool (see workbench.review).

    ``annotator`` NAME: NAME's own log (``review/annotators/<NAME>.jsonl``; or ``review/decisions.jsonl``
    when that log of an earlier version is NAME's alone). NAME's queue: the items every annotator reads
    (the blind overlap, the certification sample) and the ranked review queue less the items another
    annotator has labelled. ``log`` PATH: that log and the whole queue, the name free to change (as
    before). Neither: ``review/decisions.jsonl`` (earlier versions' single log).

    ``queue`` "certification": ``certification_queue.csv`` in its order, blind (no model prediction)."""
    return open_session(review_inputs(pool_dir, queue), annotator=annotator, log=log)


def open_session(inputs: ReviewInputs, annotator: str = "", log: str | Path = "") -> ReviewInputs:
    """Open (or re-open under another name) the review session of ``inputs`` (``open_review``)."""
    from ..data.review import ReviewSession, annotator_queue, check_annotator, labelled, log_for, logged_decisions
    if inputs.all_queue is None:
        inputs.all_queue = inputs.queue
    inputs.queue = inputs.all_queue
    ids = inputs.queue["id"].astype(str).tolist()
    owner = ""
    if log:
        path = Path(log)
    elif annotator:
        owner = check_annotator(annotator)
        path = log_for(review_dir(inputs.run_dir), owner)
    else:
        path = default_log(inputs.run_dir)
    if owner:
        logs = logged_decisions(review_dir(inputs.run_dir), pool_id=inputs.pool.pool_id,
                                model_hash=inputs.trained.model_hash)
        here = {i for p, _, decs in logs if p.resolve() == path.resolve() for i in decs}
        taken = {i for p, name, decs in logs if name != owner for i in labelled(decs)} - here - inputs.blind
        elsewhere = {i for p, name, decs in logs if name == owner and p.resolve() != path.resolve()
                     for i in labelled(decs)} - here
        everyone = [i for i in ids if i in inputs.blind] if inputs.queue_kind != "review" else \
            [i for i in inputs.overlap if i in set(ids)]
        mine = annotator_queue(everyone, [i for i in ids if i not in set(everyone)], taken, elsewhere)
        pos = {i: k for k, i in enumerate(ids)}
        inputs.queue = inputs.queue.iloc[[pos[i] for i in mine]].reset_index(drop=True)
        inputs.queue["rank"] = np.arange(1, len(inputs.queue) + 1)
    inputs.session = ReviewSession(
        log_path=path, queue=inputs.queue["id"].astype(str).tolist(),
        predicted=_predicted(inputs), class_names=inputs.class_names, pool_id=inputs.pool.pool_id,
        model_hash=inputs.trained.model_hash, annotator=owner or annotator, task=inputs.task, blind=inputs.blind,
        owner=owner, meta={"pool_dir": str(inputs.run_dir), "strategy": inputs.params.get("strategy"),
                           "queue": inputs.queue_kind})
    return inputs


def import_labels(pool_dir, annotator: str, source) -> dict:
    """``workbench review import POOL --annotator NAME FILE.csv``: labels given elsewhere (columns ``id``,
    ``label``: a class index or name; multi-label: several joined by ``;``) appended to NAME's own log as
    "label" decisions (``origin`` import:<file>), in one durable write; blind items (overlap, certification
    sample) are recorded blind. Unknown ids or classes are one-line errors and nothing is written; a label
    NAME already gave is kept (counted as unchanged), a different one is refused."""
    from ..stats.certify import read_labels
    from ..data.review import ReviewSession, check_annotator, log_for, pool_decisions
    owner = check_annotator(annotator)
    pool_dir = resolve_pool_dir(pool_dir)
    _runs.require(pool_dir, ("annotations.csv", "pool_predictions.npz", "params/annotate.json"), "annotate")
    path = Path(str(source)).expanduser()
    if not path.is_file():
        raise WorkbenchError(f"{path}: file not found; give a CSV with columns id,label")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise WorkbenchError(f"{path}: not a readable CSV ({type(e).__name__}); give columns id,label") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("id", "label") if c not in df.columns]
    if missing:
        raise WorkbenchError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'}); "
                             "the CSV needs columns id,label")
    ap = json.loads((pool_dir / "params" / "annotate.json").read_text())
    table = pd.read_csv(pool_dir / "annotations.csv", dtype={"id": str, "predicted_label": str},
                        keep_default_na=False, na_values=[""])
    with np.load(pool_dir / "pool_predictions.npz", allow_pickle=False) as z:
        pool_id = str(z["pool_id"])
    trained = _runload.load(pool_dir.parent.parent)
    ids = table["id"].astype(str).tolist()
    try:
        given = read_labels(df[["id", "label"]], ids, list(trained.class_names), trained.task)
    except WorkbenchError as e:
        raise WorkbenchError(str(e).replace("certification labels", str(path), 1).replace(
            "label the certification queue first", "the file has no rows")) from None
    multilabel = _tasks.is_multilabel(trained.task)
    if not multilabel:
        table["predicted_label"] = table["predicted_label"].astype(int)
    _, blind = blind_items(pool_dir, ids, ap)
    log = log_for(review_dir(pool_dir), owner)
    session = ReviewSession(log, [], _predicted_labels(table, trained.task), list(trained.class_names), pool_id,
                            trained.model_hash, task=trained.task, blind=blind, owner=owner,
                            meta={"pool_dir": str(pool_dir), "queue": "import"})
    before = pool_decisions(review_dir(pool_dir), pool_id=pool_id, model_hash=trained.model_hash).get(owner, {})
    items, labels, same, clash = [], [], [], []
    for item in ids:
        if item not in given:
            continue
        lab = [int(j) for j in np.flatnonzero(given[item])] if multilabel else int(given[item])
        d = before.get(item)
        if d is not None and d.action in ("accept", "label"):
            old = list(d.labels or ()) if multilabel else d.label
            (same if old == lab else clash).append((item, old, lab))
            continue
        if item in session.decisions:   # a skip in this log: its item cannot be decided twice without an undo
            clash.append((item, "skipped", lab))
            continue
        items.append(item)
        labels.append(lab)
    if clash:
        item, old, new = clash[0]
        raise WorkbenchError(f"{path}: {owner} already decided {len(clash)} of these item(s) otherwise (first: {item} "
                             f"is {old} in {owner}'s log, {new} in the file); nothing was imported: fix the file, or "
                             "import under another annotator name")
    n = session.record(items, labels, origin=f"import:{path.name}")
    return {"annotator": owner, "log": str(log), "imported": n, "unchanged": len(same),
            "blind": int(sum(i in blind for i in items)), "file": str(path)}


def agreement_report(pool_dir, params=None):
    """The agreement section of the report: between the annotators of the pool whose labels certified this
    one (``certify_labels``, when it names an annotated pool's directory), else of this pool (no review yet
    when the stage has just run: ``workbench agreement POOL`` computes it later)."""
    from .agreement import report
    source = str(getattr(params, "certify_labels", "") or "")
    if source and (Path(source).expanduser() / "annotation_summary.json").is_file():
        return report(Path(source).expanduser())
    return report(pool_dir)


def export_review(inputs: ReviewInputs, out_dir: str | Path | None = None, include_auto: bool = True) -> dict:
    """annotations.csv + annotations_coco.json + labelled.npz in a new ``review/export-<UTC time>/``; for a
    DICOM pool the export is searched for the headers' identifying values before it is kept. The labels are
    the pool's: every annotator's (all review logs), combined into the consensus (workbench.agreement) with
    its quality and number of annotations; auto-accepted items keep the model's label."""
    import shutil

    from ..data.review import export
    if out_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = inputs.run_dir / "review" / f"export-{stamp}"
        k = 2
        while Path(out_dir).exists():
            out_dir = inputs.run_dir / "review" / f"export-{stamp}-{k}"
            k += 1
    from .agreement import pool_labels
    source = {**inputs.pool.source, "pool_dir": str(inputs.run_dir), "trained_run": str(inputs.trained.path)}
    labels = pool_labels(inputs.run_dir, extra_logs=[inputs.session.log_path])   # every annotator's, combined
    source["annotators"] = labels.attrs.get("annotators", [])
    source["consensus"] = labels.attrs.get("method", "")
    out = export(inputs.session, inputs.table, Path(out_dir), images=inputs.export_images, source=source,
                 include_auto=include_auto, pool=labels)
    try:
        phi_check(out_dir, inputs.params)
    except WorkbenchError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return {**out, "annotators": source["annotators"]}


NOTEBOOK = _cells.Stage(
    stage="annotate", title="30 · Annotate",
    inputs="a run directory holding a trained `model.keras` (and `calibration.json` when evaluated); a pool of "
           "unlabelled images: a split of the training data, a folder of PNG/JPEG/TIFF/DICOM files or an `.npz` "
           "(`pool`)",
    outputs="a new pool directory `RUN/annotate/<pool>/` with `annotations.csv` (id, prediction, confidence, "
            "threshold, auto-accepted / needs-review), `annotation_summary.json` (thresholds, shift check, precision "
            "and coverage with bootstrap intervals where labels are known), `pool_predictions.npz`, `rejected.csv`, "
            "`duplicates.csv`, `review_queue.csv` (needs-review items ranked by the strategy), `label_issues.csv` + "
            "`label_audit.json` (likely mislabelled train images), `review/decisions.jsonl` (the review's "
            "append-only log) and `review/export-*/` (annotations.csv, COCO JSON, labelled.npz for "
            "`10_train -p extra_labels`)",
    cells=(
        _cells.code('import workbench as wb\nfrom workbench import annotate, maps, widgets\n\n'
                    'P = wb.params.collect("annotate", globals())\n'
                    "run, trained, pool = annotate.open_stage(P)"),
        _cells.md("## Pool\nEvery file is read once through the run's own input path; unreadable files are listed "
                  "in `rejected.csv`, identical files in `duplicates.csv`. Labels, where the pool has them, are used "
                  "only to report what was achieved, never shown to the model."),
        _cells.code("scan = annotate.scan_pool(run, trained, pool, P)"),
        _cells.show("scan"),
        _cells.show("annotate.rejected_table(pool)"),
        _cells.code("temperature = annotate.temperature(trained, P)\n"
                    "val_probs = annotate.val_predictions(trained, P, temperature)"),
        _cells.code("from workbench import adapt  # -p adapt: label-free test-time adaptation to the pool (none: trained)\n"
                    "adapted = adapt.for_annotate(run, trained, pool, P)\n"
                    "pool_probs = annotate.predict_pool(run, adapted, pool, P, temperature)"),
        _cells.md("## Features: a second opinion, unusual items, near-duplicates\nEmbeddings (the network's pooled "
                  "penultimate layer, cached in the run's `features/`) of the train split, val and the pool "
                  "(workbench.embeddings, workbench.neighbours). Each pool item gets the label of its 11 nearest labelled train images "
                  "(cosine; `knn_label`, `knn_agree` in `annotations.csv`), an out-of-distribution score (Mahalanobis "
                  "distance to the train classes; `ood_score`) and its near-duplicates in the train split "
                  "(`train_near_duplicates.csv`). An item whose OOD score lies beyond val's 99th percentile is never "
                  "auto-accepted, whatever its confidence (`ood_gate`; the `reason` column says so)."),
        _cells.code("fx = annotate.features_of(run, trained, pool, P, pool_probs)"),
        _cells.code("val_gate, pool_gate = annotate.ood_gates(fx, P)\n"
                    "choice, _ = annotate.choose_thresholds(trained, P, temperature, val_probs, exclude=val_gate)"),
        _cells.code("shift = annotate.check_shift(run, trained, val_probs, pool_probs, choice, P, fx)"),
        _cells.code("cert = annotate.certify(run, trained, pool, pool_probs, choice, shift, P, fx)"),
        _cells.md("## Who vouches for the auto-accept: val or the pool?\nThresholds chosen on val promise the target "
                  "precision only on images like val. The pool is compared with val without its labels "
                  "(workbench.shift: confidences, predicted classes, accepted share, out-of-distribution share; a test "
                  "fires only when the difference is larger than a harmless floor). When it differs, or with "
                  "`certify pool`, a seeded random sample of the pool (`certification_queue.csv`) is labelled blind "
                  "and the thresholds are chosen on it by the same Learn-then-Test procedure (workbench.certify): "
                  "the guarantee then holds for the rest of the pool."),
        _cells.show("annotate.route_banner(cert, shift)"),
        _cells.md("## Auto-accept thresholds\nThe lowest confidence (one for all classes, one per predicted class, or "
                  "one per label for multi-label tasks) at which the accepted labelled items (val, or the pool's "
                  "certification sample) reach the target precision. With a `guarantee` g > 0 the threshold is "
                  "chosen by Learn-then-Test: an exact binomial test at each cut, from the most confident down, "
                  "stopping at the first that fails; the precision on new data like those items then reaches the "
                  "target with probability at least g. The figure shows val's."),
        _cells.show("annotate.thresholds_table(cert['choice'], trained.class_names)"),
        _cells.show('wb.viz.per_class_thresholds(choice, trained.class_names, val_probs, trained.dataset().labels["val"])'),
        _cells.md("## Label the pool"),
        _cells.code("table = annotate.decide(run, trained, pool, pool_probs, cert, P, extra=fx.columns(), fx=fx)\n"
                    "summary = annotate.summarise(run, trained, pool, P, cert, table, pool_probs, shift,\n"
                    "                             extra={**fx.summary(table, pool, P.bootstrap, P.seed), 'adaptation': adapt.summary(adapted)}, val_choice=choice)"),
        _cells.show("table.head(10)"),
        _cells.show("annotate.achieved_table(summary)"),
        _cells.code("annotate.semi_supervised_gain(run, trained, pool, P, cert, table, temperature)  # unlabelled runs"),
        _cells.md("## kNN second opinion\nAuto-accept precision and coverage as decided, and when the kNN label must "
                  "also agree with the model (where the pool's labels are known)."),
        _cells.show("annotate.agreement_table(summary)"),
        _cells.md("## Most unusual items\nThe pool items farthest from the training data in feature space "
                  "(highest OOD score first)."),
        _cells.show("annotate.ood_gallery(fx, pool, trained, P.gallery_size)"),
        _cells.md("## Auto-accepted"),
        _cells.show("annotate.gallery(table, pool, trained, P, annotate.AUTO)"),
        _cells.md("## Needs review, ranked\nThe needs-review items ordered by the chosen uncertainty strategy "
                  "(most informative first) into `review_queue.csv`."),
        _cells.code("queue = annotate.rank_for_review(run, adapted, pool, table, pool_probs, P, temperature)"),
        _cells.show("queue.head(10)"),
        _cells.show("annotate.gallery(table, pool, trained, P, annotate.REVIEW)"),
        _cells.md("## Label audit (train split)\nConfident learning (cleanlab) on out-of-sample probabilities from "
                  "cross-validated models: train images whose given label is probably wrong, with a suggested label."),
        _cells.code("issues = annotate.audit_labels(run, trained, P)"),
        _cells.show("issues.head(10) if issues is not None else None"),
        _cells.show("annotate.audit_gallery(issues, trained, P)"),
        _cells.md("## Embedding map\nTrain, val and pool in one 2-D projection of the features (UMAP; t-SNE for small "
                  "sets), coloured by label, prediction, confidence, split, audit flag or OOD score. In JupyterLab, "
                  "select points (lasso, box or click) to see their images."),
        _cells.show("widgets.show_map(maps.annotate_map(fx, trained, pool, table, issues, P), 'label', P.seed)"),
        _cells.md("## Review\nAccept the model's label, pick a class (or toggle labels), skip or undo; every decision "
                  "is saved at once to the annotator's own log (`review/annotators/<name>.jsonl`) and the review "
                  "resumes where it stopped (also later, with `workbench.widgets.review_run(POOL_DIR, annotator=NAME)`; "
                  "`queue=\"certification\"` labels the certification sample). Several annotators each open the pool "
                  "under their own name and never see each other's labels; the blind overlap (`overlap`) and the "
                  "certification sample are shown to everyone without the model's prediction. Export writes the "
                  "labels (several annotators: their consensus) and their images for `10_train -p extra_labels`. "
                  "Headless reports show a static summary."),
        _cells.show("widgets.review_run(run.path, annotator=P.annotator, log=P.review_log)"),
        _cells.md("## Agreement between annotators\nCohen's and Fleiss' kappa, Krippendorff's alpha with bootstrap "
                  "intervals, per-class agreement, the model against each annotator, and the consensus with each "
                  "annotator's quality (cleanlab CROWDLAB; workbench.agreement)."),
        _cells.show("annotate.agreement_report(run.path, P)"),
    ),
    result=("run", "summary"),
)


def run(params: AnnotateParams) -> dict:
    """The whole stage without a notebook: the notebook's code cells, in order (workbench.cells)."""
    out = _cells.run_cells(NOTEBOOK, params)
    phi_check(out["run"].path, params)
    return {"run_dir": str(out["run"].path), **out["summary"]}

"""Neighbours in a run's embedding space: the kNN second opinion, the out-of-distribution score,
near-duplicates and the feature baselines (kNN and a linear probe).

* **Geometry**: cosine similarity of *centred* embeddings (the train mean subtracted, then unit length).
  The embeddings come after ReLU and average pooling, so they all lie in the positive orthant, where the
  plain cosine of any two images is high (0.8-0.99): centring makes 0 mean "as unrelated as an average
  pair". ``Index`` holds the train split's centred unit vectors and their labels.
* **kNN second opinion** (``knn_vote``): majority vote of the k = 11 nearest labelled train images
  (MedMNIST+'s k); ties go to the class with the higher summed similarity.
* **Out-of-distribution score** (``OODScorer``): the Mahalanobis score of Lee et al. (NeurIPS 2018): the
  smallest squared Mahalanobis distance of an embedding to a train class mean under one shared (within-class)
  covariance, ridge-regularised (multi-label tasks: one Gaussian for all train images). Chosen by
  measurement over the mean cosine distance to the k nearest train embeddings (Sun et al., ICML 2022;
  ``Index.ood_scores``, kept for comparison): on the BloodMNIST demo model (bench/results/features.md)
  Mahalanobis separates BreastMNIST test images from BloodMNIST test images with AUROC 0.999 against 0.96-0.98
  for the kNN distance (centred or plain cosine), and blurred images better too (σ 2 px: 0.98 against 0.86).
  The covariance accounts for how much each feature varies among blood cells; a cosine treats every
  direction alike. Cost: one D×D covariance (D = 64 for the demo CNN, 512 for ResNet-18). Scores are read
  against the val split's (in-distribution) scores: ``ood_flag`` marks items above val's 99th percentile.
* **Near-duplicates** of pool items in the train split: top-1 centred cosine ≥ ``NEAR_DUPLICATE`` (0.9995: on
  BloodMNIST the 5 test images byte-identical to train images score ≥ 0.9999999, the next most similar pair
  0.9991 with a mean pixel difference of 22 grey levels).
* **Baselines** (``baselines``): kNN (k = 11) and a linear probe (scikit-learn LogisticRegression) on the
  train embeddings, scored on test with the bootstrap intervals of ``metrics.headline_intervals``.

No Keras or JAX at import time.
"""

from __future__ import annotations

import numpy as np

from ..stats import metrics as _metrics
from ..core import tasks as _tasks
from ..core.errors import WorkbenchError

KNN_K = 11                 # MedMNIST+ (Doerrich et al. 2024) reports kNN baselines with k = 11
OOD_QUANTILE = 0.99        # an item is flagged when its score exceeds this quantile of val's scores
NEAR_DUPLICATE = 0.9995    # centred cosine of a pool item and its nearest train image (see the docstring)
PROBE_C = (0.01, 0.1, 1.0, 10.0)   # linear probe: inverse regularisation, chosen on val


# ============================================================================================ geometry
def unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Index:
    """Train embeddings for cosine search: centred by their mean (``center=False``: as they are), unit length."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray | None = None, center: bool = True):
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or not len(x):
            raise WorkbenchError(f"a feature index needs embeddings (N, D) with N > 0; got shape {x.shape}")
        self.center = x.mean(0) if center else np.zeros(x.shape[1], np.float32)
        self.vectors = unit_rows(x - self.center)
        self.labels = None if labels is None else np.asarray(labels)

    def __len__(self) -> int:
        return len(self.vectors)

    def unit(self, queries: np.ndarray) -> np.ndarray:
        return unit_rows(np.asarray(queries, dtype=np.float32) - self.center)

    def search(self, queries: np.ndarray, k: int = KNN_K, exclude_self: bool = False,
               chunk: int = 2048, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (N, k), train indices (N, k)), most similar first. ``exclude_self``: the queries are
        the indexed vectors themselves (row i never finds itself)."""
        q = self.unit(queries)
        kk = min(int(k), len(self) - (1 if exclude_self else 0))
        if kk < 1:
            raise WorkbenchError(f"nearest neighbours: k = {k} but the index holds {len(self)} vectors")
        sims = np.empty((len(q), kk), np.float32)
        idx = np.empty((len(q), kk), np.int64)
        steps = range(0, len(q), chunk)
        if progress:
            from ..core.progress import tqdm
            steps = tqdm(steps, desc="nearest neighbours", unit="chunk")
        for s in steps:
            sim = q[s:s + chunk] @ self.vectors.T
            if exclude_self:
                r = np.arange(len(sim))
                sim[r, s + r] = -np.inf
            part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            ps = np.take_along_axis(sim, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
            sims[s:s + chunk] = np.take_along_axis(ps, order, axis=1)
        return sims, idx

    def ood_scores(self, queries=None, k: int = KNN_K, neighbours=None) -> np.ndarray:
        """Mean cosine distance (1 - centred cosine, 0..2) to the k nearest indexed vectors."""
        sims, _ = neighbours if neighbours is not None else self.search(queries, k)
        return (1.0 - sims[:, :k].astype(np.float64).mean(1))


def knn_vote(labels: np.ndarray, idx: np.ndarray, sims: np.ndarray, num_classes: int,
             task: str = _tasks.MULTICLASS) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K): each class's share of the k neighbours' votes — for multi-label tasks each
    label's share of neighbours carrying it —, decided labels: majority class, ties to the higher summed
    similarity; multi-label: labels carried by more than half of the neighbours)."""
    labels = np.asarray(labels)
    k = idx.shape[1]
    if _tasks.is_multilabel(task):
        probs = labels[idx].astype(np.float64).mean(1)
        return probs, (probs > 0.5).astype(np.int64)
    flat = labels.reshape(len(labels))[idx]                     # (N, k)
    probs = np.zeros((len(idx), num_classes))
    simsum = np.zeros((len(idx), num_classes))
    rows = np.repeat(np.arange(len(idx)), k)
    np.add.at(probs, (rows, flat.ravel()), 1.0)
    np.add.at(simsum, (rows, flat.ravel()), sims.ravel().astype(np.float64))
    decided = np.argmax(probs + 1e-3 * (simsum + k) / (2 * k + 1), axis=1)   # tie-break < one vote
    return probs / k, decided


def knn_predict(index: Index, queries: np.ndarray, num_classes: int, task: str = _tasks.MULTICLASS,
                k: int = KNN_K) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = index.search(queries, k)
    return knn_vote(index.labels, idx, sims, num_classes, task)


class OODScorer:
    """Mahalanobis OOD score (see the module docstring): class means of the train embeddings and their
    shared within-class covariance (+ ``ridge`` × its mean variance on the diagonal, so that features that
    never vary on train — dead ReLU channels — stay finite and count strongly when they do fire)."""

    def __init__(self, train: np.ndarray, labels: np.ndarray | None = None, task: str = _tasks.MULTICLASS,
                 ridge: float = 1e-3):
        x = np.asarray(train, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise WorkbenchError(f"the OOD score needs at least 2 train embeddings (N, D); got shape {x.shape}")
        if labels is None or _tasks.is_multilabel(task):
            y = np.zeros(len(x), dtype=int)
        else:
            y = np.asarray(labels).reshape(len(x))
        classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - self.means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(x)
        cov += ridge * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
        w, v = np.linalg.eigh(cov)
        self.whiten = v / np.sqrt(np.maximum(w, 1e-12))          # x @ whiten: unit covariance
        self.white_means = self.means @ self.whiten

    def scores(self, queries: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per query (higher: more unusual)."""
        q = np.asarray(queries, dtype=np.float64)
        out = np.empty(len(q))
        m2 = (self.white_means ** 2).sum(1)
        for s in range(0, len(q), chunk):
            z = q[s:s + chunk] @ self.whiten
            d = (z ** 2).sum(1, keepdims=True) - 2 * z @ self.white_means.T + m2[None, :]
            out[s:s + chunk] = np.maximum(d.min(1), 0.0)
        return out


def near_duplicate_pairs(sims: np.ndarray, idx: np.ndarray,
                         threshold: float = NEAR_DUPLICATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, train indices, similarities) of every neighbour at or above ``threshold``."""
    r, c = np.nonzero(sims >= threshold)
    return r, idx[r, c], sims[r, c]


# ============================================================================================ baselines
def _full_probs(model, x: np.ndarray, k: int) -> np.ndarray:
    """predict_proba with a column per class, also for classes absent from the fit."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), k))
    out[:, np.asarray(model.classes_, dtype=int)] = p
    return out


def linear_probe(train_x, train_y, val_x, val_y, task: str, num_classes: int, seed: int = 0,
                 grid=PROBE_C) -> tuple[object, dict]:
    """LogisticRegression on standardised train embeddings (multinomial; one per label for multi-label
    tasks), its inverse regularisation C chosen on val accuracy from ``grid``. Returns (predict-probabilities
    function, {"C": chosen, "val_acc": {C: acc}})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(train_x)
    tx, vx = scaler.transform(train_x), scaler.transform(val_x)
    ml = _tasks.is_multilabel(task)

    def fit(c):
        if ml:
            ys = np.asarray(train_y)
            parts = []
            for j in range(ys.shape[1]):
                if len(np.unique(ys[:, j])) < 2:
                    parts.append(float(ys[0, j]))
                else:
                    parts.append(LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(tx, ys[:, j]))

            def proba(x):
                return np.stack([np.full(len(x), p) if isinstance(p, float) else p.predict_proba(x)[:, 1]
                                 for p in parts], axis=1)
            return proba
        m = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(tx, np.asarray(train_y).reshape(-1))
        return lambda x: _full_probs(m, x, num_classes)

    scores, fns = {}, {}
    for c in grid:
        fns[c] = fit(c)
        scores[c] = float(_metrics.medmnist_acc_auc(val_y, fns[c](vx), task)["acc"])
    best = max(grid, key=lambda c: (scores[c], -c))     # ties: the stronger regularisation
    info = {"C": float(best), "val_acc": {str(c): s for c, s in scores.items()}}
    return (lambda x: fns[best](scaler.transform(x))), info


_HEAD_KEYS = ("acc", "auc", "balanced_acc", "exact_match", "mae", "qwk")


def _headline(y, probs, task, n_resamples, seed) -> dict:
    h = _metrics.headline_intervals(y, probs, task, n_resamples=n_resamples, seed=seed)
    out = {}
    for k in _HEAD_KEYS:
        if k in h:
            out[k] = h[k]
            out[f"{k}_ci95"] = h.get(f"{k}_ci95")
    out["n"] = int(h["n"])
    return out


def baselines(trained, ds, n_resamples: int = 1000, seed: int = 0, batch_size: int = 512, k: int = KNN_K) -> dict:
    """kNN (k = 11, cosine on centred embeddings) and a linear probe on the run's train embeddings, scored
    on test with bootstrap intervals (``metrics.headline_intervals``): what the network's features alone
    give, beside the network's own numbers. Train/val/test embeddings are cached in the run."""
    from .embeddings import split_features
    task = ds.task
    feats = {s: split_features(trained, s, batch_size) for s in ("train", "val", "test")}
    y = {s: ds.labels[s] for s in feats}
    out = {"layer": feats["train"].layer, "dim": feats["train"].dim, "k": int(k),
           "metric": "cosine similarity of centred embeddings (train mean subtracted)",
           "features": {s: str(f.path.relative_to(trained.path)) if f.path else None for s, f in feats.items()}}
    classes_present = np.unique(y["train"].reshape(len(y["train"]), -1), axis=0)
    if len(classes_present) < 2:
        out["skipped"] = "the train split holds a single class: nothing to compare"
        return out
    index = Index(feats["train"].embeddings, y["train"])
    kp, _ = knn_predict(index, feats["test"].embeddings, ds.num_classes, task, k)
    out["knn"] = {"method": f"majority vote of the {min(k, len(index))} nearest train images",
                  **_headline(y["test"], kp, task, n_resamples, seed)}
    proba, info = linear_probe(feats["train"].embeddings, y["train"], feats["val"].embeddings, y["val"], task,
                               ds.num_classes, seed)
    out["linear_probe"] = {"method": "LogisticRegression on standardised train embeddings, C chosen on val",
                           **info, **_headline(y["test"], proba(feats["test"].embeddings), task, n_resamples, seed)}
    return out


def baselines_table(result: dict):
    """The network beside kNN and the linear probe on its features (test, 95 % intervals)."""
    import pandas as pd

    from ..core.viz import Markdown
    fb = result.get("feature_baselines")
    if not fb:
        return Markdown("No feature baselines in metrics.json.")
    if fb.get("skipped"):
        return Markdown(f"Feature baselines skipped: {fb['skipped']}.")

    def cell(d, key):
        v, ci = d.get(key), d.get(f"{key}_ci95")
        if v is None:
            return "undefined"
        return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and ci[0] is not None and ci[1] is not None else "")

    keys = [k for k in ("acc", "auc", "balanced_acc", "exact_match", "mae", "qwk") if k in result["test"]]
    rows = {"network (this run)": {k.upper() if k in ("acc", "auc") else k: cell(result["test"], k) for k in keys}}
    rows[f"kNN (k = {fb['k']}) on its features"] = {k.upper() if k in ("acc", "auc") else k: cell(fb["knn"], k)
                                                  for k in keys}
    rows[f"linear probe (C = {fb['linear_probe']['C']:g}) on its features"] = {
        k.upper() if k in ("acc", "auc") else k: cell(fb["linear_probe"], k) for k in keys}
    return pd.DataFrame(rows).T

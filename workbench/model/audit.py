"""Label audit: confident learning over a labelled set with out-of-sample probabilities.

Each image's probabilities come from a model that never saw it (stratified K-fold: K models of the
run's architecture and recipe, each trained on the other folds). cleanlab's
``find_label_issues`` (Northcutt et al., "Confident Learning", JAIR 2021; rule
``prune_by_noise_rate``) then flags the images whose given label is likely wrong; the suggested label
is the out-of-sample arg-max. The cleanlab 2.9 wheel is Apache-2.0 (its LICENSE and metadata; earlier
2.x releases were AGPL-3.0), compatible with this MIT project, hence the pin ``cleanlab>=2.9``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.errors import WorkbenchError


def cross_val_probs(images: np.ndarray, labels: np.ndarray, build_model, folds: int = 3, epochs: int = 3,
                    seed: int = 0, transform_factory=None, batch_size: int = 128,
                    learning_rate: float = 0.003) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample class probabilities (N, K) and each image's fold (N,).

    ``build_model()`` returns a fresh Keras model (built once; every fold starts from its initial
    weights); ``transform_factory(seed)`` the training augmentation (None: no augmentation).
    """
    import keras
    from sklearn.model_selection import StratifiedKFold

    from .active import ALConfig, train_model
    from .predict import predict
    from ..core.progress import tqdm
    labels = np.asarray(labels).reshape(-1)
    if folds < 2:
        raise WorkbenchError(f"the label audit needs at least 2 folds (parameter audit_folds = {folds}); 0 skips it")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < folds:
        raise WorkbenchError(
            f"the label audit needs at least {folds} images of every class for {folds}-fold cross-validation, but a "
            f"class has {counts[counts > 0].min()}: lower audit_folds or label more images")
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs, fold_of = None, np.full(len(labels), -1)
    cfg = ALConfig(batch_size=batch_size, learning_rate=learning_rate)
    keras.utils.set_random_seed(seed)  # the initial weights: seeded, not whatever the process drew before
    model = build_model()  # one model, re-initialised per fold: one compilation for all folds
    initial = model.get_weights()
    for f, (tr, te) in enumerate(tqdm(list(skf.split(np.zeros(len(labels)), labels)), desc="audit folds", unit="fold")):
        keras.utils.set_random_seed(seed + f)
        model.set_weights(initial)
        t = transform_factory(seed + f) if transform_factory is not None else None
        train_model(model, images[tr], labels[tr], epochs, cfg, seed + f, t)
        p = predict(model, images[te], 512, progress=False)
        if probs is None:
            probs = np.zeros((len(labels), p.shape[1]))
        probs[te], fold_of[te] = p, f
    return probs, fold_of


def find_issues(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Likely label errors by confident learning (cleanlab, prune_by_noise_rate), worst first.

    Columns: position, given_label, suggested_label, given_label_prob (self-confidence),
    suggested_prob, rank.
    """
    from cleanlab.filter import find_label_issues
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise WorkbenchError(f"probabilities of shape {probs.shape} do not match {len(labels)} labels")
    idx = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence",
                            n_jobs=1)
    idx = np.asarray(idx, dtype=int)
    sugg = probs[idx].argmax(1)
    return pd.DataFrame({"position": idx, "given_label": labels[idx], "suggested_label": sugg,
                         "given_label_prob": probs[idx, labels[idx]].round(6),
                         "suggested_prob": probs[idx, sugg].round(6), "rank": np.arange(1, len(idx) + 1)})


def issues_table(issues: pd.DataFrame, class_names: list[str], split: str, ids=None) -> pd.DataFrame:
    """Add ids and class names; the layout of ``label_issues.csv``."""
    out = pd.DataFrame({
        "rank": issues["rank"].to_numpy(), "index": issues["position"].to_numpy(), "split": split,
        "id": ([str(ids[i]) for i in issues["position"]] if ids is not None
               else [f"{split}:{i}" for i in issues["position"]]),
        "given_label": issues["given_label"].to_numpy(),
        "given_class": [class_names[c] for c in issues["given_label"]],
        "suggested_label": issues["suggested_label"].to_numpy(),
        "suggested_class": [class_names[c] for c in issues["suggested_label"]],
        "given_label_prob": issues["given_label_prob"].to_numpy(),
        "suggested_prob": issues["suggested_prob"].to_numpy(),
    })
    return out


def gallery(table: pd.DataFrame, images: np.ndarray, n: int = 24, title: str = ""):
    """The likeliest label errors: given label (red) and suggested label with its probability."""
    from ..core.viz import image_grid
    sub = table.head(n)
    caps = [f"#{r['index']} given: {str(r['given_class'])[:10]}\nsuggest: {str(r['suggested_class'])[:10]} "
            f"{r['suggested_prob']:.2f}" for _, r in sub.iterrows()]
    return image_grid(images[sub["index"].to_numpy(dtype=int)], caps, ncols=8, cell=1.6,
                      caption_colors=["darkred"] * len(sub),
                      title=title or f"Likely label errors: {len(table)} flagged (showing {len(sub)})")

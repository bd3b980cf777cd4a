"""Uncertainty, ranking and active learning.

Scores are "higher = more worth a human label". Deterministic strategies work on one probability
matrix; MC-dropout and TTA need several stochastic passes of the model:

* ``least_confidence``: 1 - max p
* ``margin``: 1 - (p1 - p2), the two largest probabilities
* ``entropy``: -sum p log p
* ``mc_dropout``: BALD mutual information (entropy of the mean minus mean entropy) over N passes with
  the Dropout layers sampling and every other layer (BatchNormalization above all) in inference mode
* ``tta``: entropy of the mean prediction over N passes of the run's training augmentation
* ``random``: a seeded random order (the baseline of the active-learning benchmark)

Multi-label probabilities (N, L) of independent labels are scored per label as yes/no distributions
and the item takes its most uncertain label's score (``task="multi-label, binary-class"``).

``simulate`` runs the simulated-oracle active-learning loop used by ``make bench-annotate``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import WorkbenchError

DETERMINISTIC = ("least_confidence", "margin", "entropy")
STOCHASTIC = ("mc_dropout", "tta")
STRATEGIES = (*DETERMINISTIC, *STOCHASTIC)
_EPS = 1e-12


# ---------------------------------------------------------------- scores (pure functions of probabilities)
def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, dtype=np.float64).max(1)


def margin(probs: np.ndarray) -> np.ndarray:
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2]) if p.shape[1] > 1 else np.zeros(len(p))


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p)).sum(-1)


def mutual_information(passes: np.ndarray) -> np.ndarray:
    """BALD: H[mean_t p_t] - mean_t H[p_t] for passes of shape (T, N, K); ≥ 0."""
    passes = np.asarray(passes, dtype=np.float64)
    return np.maximum(entropy(passes.mean(0)) - entropy(passes).mean(0), 0.0)


SCORES = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices from the highest score to the lowest; ties keep index order (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


# ---------------------------------------------------------------- stochastic passes: workbench.predict
from .predict import mc_dropout_passes, predict, tta_passes  # noqa: E402,F401  (re-exported for callers)


def _yes_no(p: np.ndarray) -> np.ndarray:
    """(…, L) independent label probabilities → (…, L, 2) yes/no distributions."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([1.0 - p, p], axis=-1)


def score(strategy: str, probs: np.ndarray | None = None, passes: np.ndarray | None = None,
          seed: int = 0, n: int | None = None, task: str = "multi-class") -> np.ndarray:
    """Scores for a strategy from probabilities (deterministic) or passes (mc_dropout, tta)."""
    from ..core.tasks import is_multilabel
    if strategy == "random":
        size = n if n is not None else len(probs if probs is not None else passes[0])
        return np.random.default_rng(seed).random(size)
    if is_multilabel(task):  # per label as a 2-class problem; the item's most uncertain label counts
        L = (probs if probs is not None else passes[0]).shape[-1]
        flat = lambda a: _yes_no(a).reshape(*a.shape[:-1][:-1], -1, 2)  # noqa: E731  (…, N·L, 2)
        per = score(strategy, None if probs is None else flat(probs), None if passes is None else flat(passes), seed)
        return per.reshape(-1, L).max(1)
    if strategy in SCORES:
        return SCORES[strategy](probs)
    if strategy == "mc_dropout":
        return mutual_information(passes)
    if strategy == "tta":
        return entropy(np.asarray(passes, dtype=np.float64).mean(0))
    raise WorkbenchError(f"unknown strategy {strategy!r}; choose one of random, {', '.join(STRATEGIES)}")


def uncertainty(strategy: str, model, images: np.ndarray, probs: np.ndarray | None = None, *, transform=None,
                n_passes: int = 10, seed: int = 0, batch_size: int = 512, temperature=None,
                task: str = "multi-class") -> dict:
    """Score ``images`` by ``strategy``; returns {"score", "probs" (mean prediction), "passes" or None}.

    ``probs`` (the deterministic prediction) is reused when given; passes are temperature-scaled
    like the deterministic probabilities when a temperature is given.
    """
    from .predict import calibrated
    cal = (lambda p: calibrated(p, temperature, task)) if temperature is not None else (lambda p: p)
    passes = None
    if strategy == "mc_dropout":
        passes = np.stack([cal(p) for p in mc_dropout_passes(model, images, n_passes, seed, batch_size)])
    elif strategy == "tta":
        if transform is None:
            raise WorkbenchError("strategy 'tta' needs the run's augmentation pipeline")
        passes = np.stack([cal(p) for p in tta_passes(model, images, transform, n_passes, batch_size)])
    if probs is None:
        probs = passes.mean(0) if passes is not None else cal(predict(model, images, batch_size, progress=False))
    return {"score": score(strategy, probs, passes, seed=seed, n=len(images), task=task), "probs": probs,
            "passes": passes}


# ---------------------------------------------------------------- simulated-oracle active learning
@dataclass(frozen=True)
class ALConfig:
    """One active-learning run: the labelled fractions of the pool after each round, and the recipe."""
    strategy: str = "entropy"
    seed: int = 0
    fractions: tuple = (0.02, 0.04, 0.06, 0.09, 0.12, 0.16, 0.20)
    first_epochs: int = 20          # from scratch on the initial labelled set
    round_epochs: int = 4           # warm-started on the grown labelled set
    batch_size: int = 128
    learning_rate: float = 0.003    # from scratch
    round_learning_rate: float = 0.001  # warm-started rounds: lower, so a round refines rather than re-learns
    width: int = 16
    dropout: float = 0.2
    augment: str = "microscopy"
    n_passes: int = 8               # MC-dropout passes
    tta_passes: int = 4             # TTA passes (each augments every candidate: the costly one)
    candidates: int = 0             # score a seeded random subset of the pool per round (0: all)
    min_samples: int = 0            # every fit sees at least this many images (more epochs for small sets)


def _batches(images, labels, batch_size: int, transform, seed: int, steps: int | None = None):
    """Seeded shuffled (augmented) batches of one fixed shape, drawn from a stream of permutations
    (so no remainder batch and no image left out of an epoch): repeated fits on growing sets reuse one
    compiled training step. An epoch is ``steps`` batches (default: one pass over the images)."""
    import keras

    from ..data import augment as _augment

    class StreamBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.buffer = np.zeros(0, dtype=int)
            self.steps = steps or max(1, math.ceil(len(images) / batch_size))

        def __len__(self):
            return self.steps

        def __getitem__(self, i):
            while len(self.buffer) < batch_size:
                self.buffer = np.concatenate([self.buffer, self.rng.permutation(len(images))])
            idx, self.buffer = self.buffer[:batch_size], self.buffer[batch_size:]
            x = images[idx] if transform is None else _augment.apply(transform, images[idx])
            return x.astype("float32"), labels[idx]

    return StreamBatches()


def train_model(model, images, labels, epochs: int, cfg: ALConfig, seed: int, transform=None,
                learning_rate: float | None = None):
    """Fit ``model`` in place: AdamW with fresh moments, per-epoch cosine learning rate (first epoch a
    warm-up at a third of it when ``epochs`` > 2). Small sets train for more epochs, so that every fit
    sees at least ``cfg.min_samples`` images.

    The model is compiled once and reused (optimizer state reset, learning rate set per epoch by a
    callback), so the rounds of active learning and the folds of the audit pay one compilation.
    """
    import keras
    base_lr = learning_rate or cfg.learning_rate
    if not getattr(model, "_wb_compiled", False):
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=1e-4),
                      loss="sparse_categorical_crossentropy")
        model._wb_compiled = True
    opt = model.optimizer
    if opt.built:
        for v in opt.variables:
            v.assign(np.zeros(v.shape, dtype=v.dtype))

    def lr(epoch):
        if epochs > 2 and epoch == 0:
            return base_lr / 3
        return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1))))

    class SetLR(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(lr(epoch))

    keras.utils.set_random_seed(seed)
    labels = np.asarray(labels).reshape(-1)
    epochs = max(epochs, math.ceil(cfg.min_samples / max(len(labels), 1)))
    model.fit(_batches(images, labels, cfg.batch_size, transform, seed), epochs=epochs, verbose=0, callbacks=[SetLR()])
    return model


def accuracy(model, images, labels, batch_size: int = 512) -> float:
    return float((predict(model, images, batch_size, progress=False).argmax(1) == labels).mean())


def select(strategy: str, model, pool_images: np.ndarray, k: int, cfg: ALConfig, rng: np.random.Generator,
           transform=None) -> np.ndarray:
    """Positions (into ``pool_images``) of the k items to label next."""
    n = len(pool_images)
    k = min(k, n)
    if strategy == "random":
        return rng.choice(n, size=k, replace=False)
    cand = np.arange(n)
    if cfg.candidates and cfg.candidates < n:
        cand = np.sort(rng.choice(n, size=cfg.candidates, replace=False))
    res = uncertainty(strategy, model, pool_images[cand], transform=transform,
                      n_passes=cfg.tta_passes if strategy == "tta" else cfg.n_passes,
                      seed=int(rng.integers(1 << 30)), batch_size=512)
    return cand[rank(res["score"])[:k]]


def simulate(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
             num_classes: int, cfg: ALConfig, initial: np.ndarray | None = None, initial_model=None,
             on_round=None) -> dict:
    """Simulated oracle: start from a seeded labelled subset (or ``initial``), each round label the top
    items of the pool by ``cfg.strategy``, retrain (warm start) and record test ACC against labels used.

    ``initial_model`` (trained on ``initial``) lets several strategies share round 0;
    ``on_round(point, model, labelled)`` may add entries to each round's point of the curve.
    """
    import keras

    from ..data import augment as _augment
    from . import models as _models
    if cfg.strategy != "random" and cfg.strategy not in STRATEGIES:
        raise WorkbenchError(f"unknown strategy {cfg.strategy!r}; choose one of random, {', '.join(STRATEGIES)}")
    n = len(images)
    targets = [max(1, int(round(f * n))) for f in cfg.fractions]
    if any(b <= a for a, b in zip(targets, targets[1:])):
        raise WorkbenchError(f"fractions {cfg.fractions} must increase (at least one more label each round)")
    rng = np.random.default_rng(cfg.seed)
    labelled = np.asarray(initial) if initial is not None else rng.choice(n, size=targets[0], replace=False)
    transform = _augment.build(cfg.augment, cfg.seed, n_channels=images.shape[-1])
    if initial_model is not None:
        model = initial_model
    else:
        keras.utils.set_random_seed(cfg.seed)
        model = _models.build("cnn", images.shape[1:], num_classes, width=cfg.width, dropout=cfg.dropout)
        train_model(model, images[labelled], labels[labelled], cfg.first_epochs, cfg, cfg.seed, transform)
    curve = [{"round": 0, "labels": int(len(labelled)), "fraction": len(labelled) / n,
              "test_acc": accuracy(model, test_images, test_labels)}]
    if on_round is not None:
        curve[0].update(on_round(curve[0], model, labelled) or {})
    t0 = time.perf_counter()
    for r, target in enumerate(targets[1:], start=1):
        mask = np.ones(n, bool)
        mask[labelled] = False
        pool = np.flatnonzero(mask)
        picked = pool[select(cfg.strategy, model, images[pool], target - len(labelled), cfg, rng, transform)]
        labelled = np.concatenate([labelled, picked])
        train_model(model, images[labelled], labels[labelled], cfg.round_epochs, cfg, cfg.seed + r, transform,
                    learning_rate=cfg.round_learning_rate)
        curve.append({"round": r, "labels": int(len(labelled)), "fraction": len(labelled) / n,
                      "test_acc": accuracy(model, test_images, test_labels),
                      "picked_class_counts": np.bincount(labels[picked], minlength=num_classes).tolist()})
        if on_round is not None:
            curve[-1].update(on_round(curve[-1], model, labelled) or {})
    return {"config": asdict(cfg), "curve": curve, "seconds": round(time.perf_counter() - t0, 1),
            "labelled": labelled}


def fraction_to_reach(curve: list[dict], target_acc: float) -> float | None:
    """The smallest measured labelled fraction whose test ACC ≥ target (no interpolation), or None."""
    for point in curve:
        if point["test_acc"] >= target_acc:
            return float(point["fraction"])
    return None


"""Semi-supervised training on the user's unlabelled images: FixMatch (Sohn et al., "FixMatch: Simplifying
Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020), written from the paper with Keras 3 ops.

Each optimizer step takes ``B`` labelled images (``batch_size``) and ``mu * B`` unlabelled ones
(``unlabelled_ratio``). An unlabelled image is seen twice: a *weak* view (the run's own augmentation preset,
which follows the data card's orientation rule) and a *strong* view (the weak view, then two RandAugment ops at
random magnitudes and Cutout: ``workbench.augment.strong``, within the same orientation rule). The network's
prediction on the weak view, when its top probability reaches ``tau`` (``pseudo_threshold``), becomes a hard
pseudo-label for the strong view; the loss is

    l_s + lambda_u * l_u,   l_s = mean over the B labelled images of H(y, p(y | weak view)),
                            l_u = 1/(mu B) * sum over the unlabelled of 1[max q >= tau] * H(argmax q, p(y | strong view)),

with q = p(y | weak view) held constant (no gradient through it: ``ops.stop_gradient``). The labelled, weak and
strong images go through the network in one forward pass, as in the paper, so batch normalisation normalises them
with the same batch statistics, which its moving averages (used at inference) follow. An earlier version ran the
weak views in a pass of their own (a forward pass only, about 30 % cheaper per step); its labelled images were then
normalised by statistics dominated by the strong views, unlike at inference, and on BloodMNIST with 10 % of the
labels it ended 2.2 points below the supervised recipe (bench/results/label_efficiency.json, "superseded").
``lambda_u`` is ``unlabelled_weight``.

Task types: ``binary-class``, ``multi-class`` and ``ordinal-regression`` (trained as multi-class, the MedMNIST
protocol), i.e. one softmax over classes. ``multi-label, binary-class`` is refused with a one-line error: FixMatch's
pseudo-label is the arg-max of one softmax; a per-label version is not the paper's method.

What can differ from the paper, and why: ``mu`` defaults to 3, not 7 (a CPU pays for every unlabelled image
twice; ``-p unlabelled_ratio 7`` gives the paper's); the optimizer, schedule, epochs and early stopping are the
recipe's (AdamW, cosine, far fewer steps than the paper's 2^20), not SGD with Nesterov momentum; no EMA of the
weights unless the recipe's ``ema`` says so.

The unlabelled pool (``unlabelled``; workbench.unlabelled: the data side, no Keras) is opened by
``workbench.pools.open_pool`` — the pool kinds of the annotate
stage — and read once through the run's input path (``workbench.inputs``): ``train`` (with ``label_fraction`` < 1,
the train images whose labels were held out), a folder (PNG, JPEG, TIFF, DICOM) or an ``.npz``. The val and test
splits are refused (val picks the checkpoint and test is scored by evaluate: learning from their images, even
without labels, would make both optimistic), and pool items byte-identical to a val or test image are left out.
The pool's labels, where it has them (a split, an ``.npz`` with ``*_labels``), are never given to training: only
the monitor (``PseudoLabelMonitor``) reads them, after each epoch, to report how accurate the pseudo-labels are
(``unlabelled_history.csv``). A test trains twice, with the pool's labels shuffled, and gets the same model.

Label budgets (``label_fraction``): a stratified, seeded subset of the train split keeps its labels
(``unlabelled.label_subset``); the rest becomes the pool ``train``.
"""

from __future__ import annotations

import math
import keras
import numpy as np

from ..data import augment as _augment
from ..core import tasks as _tasks
from ..data import unlabelled as _unlabelled

METHOD = "FixMatch (Sohn et al., NeurIPS 2020)"
SUPPORTED_TASKS = _unlabelled.SUPPORTED_TASKS
Unlabelled = _unlabelled.Unlabelled
# The checkpoint of a semi-supervised run: the epoch of the highest val accuracy, not the lowest val loss, and no early
# stopping (train.resolve sets patience = epochs unless it is given). Training on hard pseudo-labels makes the
# predictions confident, so a few confident errors raise the val loss (NLL) while the accuracy improves: on BloodMNIST
# with 1 % of the labels the val loss was lowest at epoch 3 (val accuracy 0.820) and early stopping on it ended the
# run at epoch 8, with the pseudo-label mask rate still rising (bench/results/label_efficiency.json, "superseded").
# The paper trains to the end of its schedule. Val still makes the choice; test is untouched.
SELECT = ("val_acc", "max")
MONITOR_ITEMS = 2048          # pool items scored after every epoch for the report (a seeded sample)
HISTORY_FILE = "unlabelled_history.csv"
BASELINE_DIR = "supervised"   # the same recipe on the labelled images alone (compare_supervised)


# ------------------------------------------------------------------------------------------- batches
class FixMatchBatches(keras.utils.PyDataset):
    """``((labelled, weak, strong), labels)`` per step: B labelled images (their own augmentation), and mu * B
    unlabelled images in a weak and a strong view. Both streams are successive seeded permutations (every image
    once per pass; a pool smaller than a batch repeats within it)."""

    def __init__(self, images, labels, unlabelled: np.ndarray, batch_size: int, mu: int, transform, weak, strong,
                 seed: int, steps: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels, self.unlabelled = images, labels, unlabelled
        self.b, self.mu, self.steps = int(batch_size), int(mu), int(steps)
        self.transform, self.weak, self.strong = transform, weak, strong
        self.rng_l = np.random.default_rng([seed, 1])
        self.rng_u = np.random.default_rng([seed, 2])
        self.buf_l = np.zeros(0, np.int64)
        self.buf_u = np.zeros(0, np.int64)

    def __len__(self):
        return self.steps

    @staticmethod
    def _take(buf, rng, n_items, k):
        while len(buf) < k:
            buf = np.concatenate([buf, rng.permutation(n_items)])
        return buf[:k], buf[k:]

    def __getitem__(self, i):
        il, self.buf_l = self._take(self.buf_l, self.rng_l, len(self.images), self.b)
        iu, self.buf_u = self._take(self.buf_u, self.rng_u, len(self.unlabelled), self.b * self.mu)
        u = self.unlabelled[iu]
        x_l = _augment.apply(self.transform, self.images[il]).astype("float32")
        x_w = _augment.apply(self.weak, u).astype("float32")
        x_s = _augment.apply(self.strong, u).astype("float32")
        return (x_l, x_w, x_s), self.labels[il]


# ------------------------------------------------------------------------------------------- the trainer
class FixMatch(keras.Model):
    """Wraps the registry network: on a ``(labelled, weak, strong)`` batch it returns the three predictions and
    FixMatch's loss (``compute_loss``); on plain images (validation, prediction) it is the network itself. Only the
    network is saved (``BestNet``)."""

    def __init__(self, net: keras.Model, threshold: float, weight: float, **kwargs):
        super().__init__(name="fixmatch", **kwargs)
        self.net = net
        self.threshold, self.weight = float(threshold), float(weight)
        self.mask_rate = keras.metrics.Mean(name="mask_rate")
        self.sup_loss = keras.metrics.Mean(name="sup_loss")
        self.unsup_loss = keras.metrics.Mean(name="unsup_loss")

    def call(self, inputs, training=False):
        if isinstance(inputs, (tuple, list)):
            # one forward pass over the labelled, weak and strong images, as in the paper: batch normalisation
            # normalises all three with the same statistics, the ones its moving averages (inference) follow
            x_l, x_w, x_s = inputs
            n, m = x_l.shape[0], x_w.shape[0]
            p = self.net(keras.ops.concatenate([x_l, x_w, x_s], axis=0), training=training)
            return {"labelled": p[:n], "weak": keras.ops.stop_gradient(p[n:n + m]), "strong": p[n + m:]}
        return self.net(inputs, training=training)

    def evaluate(self, *args, **kwargs):
        """Validation: the network's loss and accuracy (the FixMatch metrics mean nothing on labelled images)."""
        out = super().evaluate(*args, **kwargs)
        if isinstance(out, dict):
            out = {k: v for k, v in out.items() if k not in (m.name for m in self.fixmatch_metrics)}
        return out

    @property
    def fixmatch_metrics(self):
        return (self.mask_rate, self.sup_loss, self.unsup_loss)

    def _unsup(self, y_pred):
        q = y_pred["weak"]
        mask = keras.ops.cast(keras.ops.max(q, axis=-1) >= self.threshold, "float32")
        pseudo = keras.ops.argmax(q, axis=-1)
        h = keras.losses.sparse_categorical_crossentropy(pseudo, y_pred["strong"])
        return keras.ops.mean(mask * h), keras.ops.mean(mask)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        sup = super().compute_loss(x, y, y_pred["labelled"], sample_weight, training)
        unsup, _ = self._unsup(y_pred)
        return sup + self.weight * unsup

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if not isinstance(y_pred, dict):
            return super().compute_metrics(x, y, y_pred, sample_weight)
        unsup, mask = self._unsup(y_pred)
        sup = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred["labelled"]))
        self.mask_rate.update_state(mask)
        self.sup_loss.update_state(sup)
        self.unsup_loss.update_state(unsup)
        return super().compute_metrics(x, y, y_pred["labelled"], sample_weight)


class BestNet(keras.callbacks.Callback):
    """Save the wrapped network (not the trainer) whenever ``monitor`` improves: ModelCheckpoint for FixMatch."""

    def __init__(self, net: keras.Model, path, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        self.net, self.path, self.monitor = net, str(path), monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf

    def on_epoch_end(self, epoch, logs=None):
        v = (logs or {}).get(self.monitor)
        if v is not None and self.sign * v < self.best:
            self.best = self.sign * float(v)
            self.net.save(self.path)


class PseudoLabelMonitor(keras.callbacks.Callback):
    """After every epoch: the network (inference mode, the images as given) on a fixed seeded sample of the pool:
    the share whose top probability reaches tau (the pool's mask rate) and, where the pool's labels are known, the
    accuracy of those pseudo-labels and of all. The labels are read here only, never by training."""

    def __init__(self, net: keras.Model, pool: Unlabelled, threshold: float, seed: int, n: int = MONITOR_ITEMS):
        super().__init__()
        rng = np.random.default_rng([seed, 3])
        idx = np.sort(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
        self.net, self.x, self.threshold = net, pool.images[idx], float(threshold)
        self.y = None if pool.labels is None else np.asarray(pool.labels)[idx]
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        from ..model.predict import predict
        probs = predict(self.net, self.x, batch_size=512, progress=False)
        conf, pred = probs.max(1), probs.argmax(1)
        mask = conf >= self.threshold
        row = {"epoch": epoch + 1, "pool_mask_rate": float(mask.mean()), "n_scored": int(len(self.x))}
        if self.y is not None:
            ok = pred == self.y
            row["pseudo_label_acc"] = float(ok[mask].mean()) if mask.any() else float("nan")
            row["prediction_acc"] = float(ok.mean())
        self.rows.append(row)


def setup(net: keras.Model, ds, transform, params, unl: Unlabelled, orientation_free: bool, photometric=None):
    """(batches, trainer, monitor) for ``train.fit``."""
    weak = _augment.build(params.augment, params.seed + 1, n_channels=ds.input_shape[-1], photometric=photometric,
                          side=ds.input_shape[0])
    strong = _augment.strong(params.augment, params.seed + 2, n_channels=ds.input_shape[-1], photometric=photometric,
                             side=ds.input_shape[0], orientation_free=orientation_free)
    # at least one pass over the labelled images per epoch, as the supervised batches (train.AugmentedBatches)
    steps = max(params.steps_per_epoch, math.ceil(len(ds.labels["train"]) / params.batch_size))
    batches = FixMatchBatches(ds.images["train"], ds.labels["train"], unl.images, params.batch_size,
                              params.unlabelled_ratio, transform, weak, strong, params.seed, steps)
    trainer = FixMatch(net, params.pseudo_threshold, params.unlabelled_weight)
    monitor = PseudoLabelMonitor(net, unl, params.pseudo_threshold, params.seed)
    return batches, trainer, monitor


def summary(params, unl: Unlabelled, monitor: PseudoLabelMonitor, hist, run) -> dict:
    """What train_summary.json records of the semi-supervised training; writes unlabelled_history.csv."""
    import pandas as pd
    table = pd.DataFrame(monitor.rows)
    table.to_csv(run.file(HISTORY_FILE), index=False)
    last = monitor.rows[-1] if monitor.rows else {}
    out = {"method": METHOD, "unlabelled_ratio": params.unlabelled_ratio, "pseudo_threshold": params.pseudo_threshold,
           "unlabelled_weight": params.unlabelled_weight, "pool": unl.info,
           "mask_rate_last_epoch": float(hist["mask_rate"].iloc[-1]) if "mask_rate" in hist else None,
           "pool_mask_rate_last_epoch": last.get("pool_mask_rate"),
           "pseudo_label_acc_last_epoch": _finite(last.get("pseudo_label_acc")),
           "history": HISTORY_FILE}
    return out


def _finite(v):
    return float(v) if v is not None and np.isfinite(v) else None


# ------------------------------------------------------------------------------------------- report
def mask_rate_figure(history, run_dir):
    """The mask rate per epoch (training batches: weak views at tau; the pool sample in inference mode) and, where
    the pool's labels are known, the accuracy of the pseudo-labels."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from pathlib import Path
    path = Path(run_dir) / HISTORY_FILE
    mon = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    fig, ax = plt.subplots(1, 2 if "pseudo_label_acc" in mon else 1, figsize=(10 if "pseudo_label_acc" in mon else 5.5, 3.6),
                           squeeze=False)
    a = ax[0, 0]
    epochs = np.arange(1, len(history) + 1)
    if "mask_rate" in history:
        a.plot(epochs, history["mask_rate"], marker="o", label="training batches (weak views)")
    if len(mon):
        a.plot(mon["epoch"], mon["pool_mask_rate"], marker="s", label=f"pool sample ({int(mon['n_scored'].iloc[0])})")
    a.set(xlabel="epoch", ylabel="share at or above tau", title="Pseudo-label mask rate", ylim=(0, 1.02))
    a.legend(fontsize=8)
    if "pseudo_label_acc" in mon:
        b = ax[0, 1]
        b.plot(mon["epoch"], mon["pseudo_label_acc"], marker="o", label="pseudo-labels (mask on)")
        b.plot(mon["epoch"], mon["prediction_acc"], marker="s", label="all predictions")
        b.set(xlabel="epoch", ylabel="accuracy against the pool's labels", ylim=(0, 1.02),
              title="Pseudo-label accuracy (labels never trained on)")
        b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def comparison_table(run_dir):
    """The semi-supervised network beside the same recipe trained on the labelled images alone (val)."""
    import json

    import pandas as pd
    from pathlib import Path
    run_dir = Path(run_dir)
    semi = json.loads((run_dir / "train_summary.json").read_text())
    rows = {"semi-supervised (FixMatch)": semi}
    base = run_dir / BASELINE_DIR / "train_summary.json"
    if base.is_file():
        rows["supervised only (same recipe, labelled images)"] = json.loads(base.read_text())
    keys = ("best_val_acc", "best_val_loss", "best_epoch", "epochs_run", "train_seconds")
    return pd.DataFrame({name: {k: s.get(k) for k in keys} for name, s in rows.items()}).T


# ------------------------------------------------------------------------------------------- annotate: what it added
COMPARISON_FILE = "semi_supervised_comparison.json"


def _accepted(probs: np.ndarray, thresholds, gate, labelled: np.ndarray) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    pred, conf = probs.argmax(1), probs.max(1)
    gate = np.zeros(len(probs), bool) if gate is None else np.asarray(gate, bool)
    return (conf >= thr[pred]) & ~gate & ~labelled


def _ood_gates(model, ds, pool, spec, batch_size: int):
    """(val, pool) out-of-distribution gates of ``model``'s own features, as the annotate stage draws them
    (Mahalanobis score beyond val's OOD_QUANTILE; workbench.neighbours)."""
    from ..model import embeddings as _embeddings
    from ..model import neighbours as _neighbours
    tr, _ = _embeddings.embed_images(model, ds.images["train"], desc="supervised: embed train")
    va, _ = _embeddings.embed_images(model, ds.images["val"], desc="supervised: embed val")
    po, _ = _embeddings.embed_stream(model, pool.batches(spec, batch_size), len(pool), desc="supervised: embed pool")
    scorer = _neighbours.OODScorer(tr, ds.labels["train"], ds.task)
    v, p = scorer.scores(va), scorer.scores(po)
    thr = float(np.quantile(v, _neighbours.OOD_QUANTILE))
    return v > thr, p > thr


def compare_annotation(run, trained, pool, params, cert: dict, table, temperature=None) -> dict | None:
    """How many more pool images the semi-supervised model auto-accepts than the same recipe trained on the labelled
    images alone (``RUN/supervised/``, ``compare_supervised``), each certified the way this pool was (val's
    Learn-then-Test thresholds, or the pool's labelled certification sample) at the same target precision and
    guarantee, each with its own calibration (a temperature fitted on val when the run is calibrated) and its own
    out-of-distribution gate. Where the pool's labels are known, the precision each achieved. Writes
    ``semi_supervised_comparison.json`` in the pool's directory; None for a run without a supervised baseline."""
    from ..stats import calibration as _calibration
    from ..stats import certify as _certify
    from ..stats import metrics as _metrics
    from ..model import models as _models
    from ..model import predict as _predict
    base = trained.path / BASELINE_DIR / "model.keras"
    if not base.is_file() or _tasks.is_multilabel(trained.task):
        return None
    route = cert.get("certified_by")
    ds = trained.dataset()
    spec = trained.input.with_resize(params.resize)
    labels = cert.get("labels") or {}
    labelled = np.array([i in labels for i in pool.ids], dtype=bool)
    semi_acc = (table["status"] == "auto-accepted").to_numpy()
    out = {"certified_by": route, "target_precision": params.target_precision, "guarantee": params.guarantee,
           "pool_size": int(len(pool)), "semi_supervised": {"n_auto_accepted": int(semi_acc.sum())},
           "supervised_model": str(base.relative_to(trained.path))}
    if params.adapt != "none":
        out["note_adaptation"] = (f"the semi-supervised model's decisions are those of this pool's adaptation "
                                  f"({params.adapt}); the supervised model is compared as trained")
    if route not in ("val", "pool"):
        out["note"] = "the pool is not certified yet: neither model auto-accepts anything"
        run.write_json(COMPARISON_FILE, out)
        return out
    sup = _models.load(base, compile=False)
    val_raw = _predict.predict(sup, ds.images["val"], params.batch_size, desc="supervised: predict val")
    pool_raw = _predict.predict_stream(sup, pool.batches(spec, params.batch_size), len(pool), params.batch_size,
                                       desc="supervised: predict pool")
    t = (_calibration.fit_temperature(val_raw, ds.labels["val"], trained.task)["temperature"]
         if params.calibrate and temperature is not None else None)
    val_p = _predict.calibrated(val_raw, t, trained.task)
    pool_p = _predict.calibrated(pool_raw, t, trained.task)
    val_gate, pool_gate = _ood_gates(sup, ds, pool, spec, params.batch_size) if params.ood_gate else (None, None)
    if route == "val":
        choice = _metrics.auto_accept_thresholds(val_p, ds.labels["val"], trained.task, params.target_precision,
                                                 params.thresholds, params.min_class_val, params.guarantee, val_gate)
    else:
        # the certification sample is uniform over the semi-supervised model's candidate region (workbench.certify):
        # on its labelled items the supervised model's thresholds are certified for that region only, so it may
        # accept there only (what it would accept outside would need labels of its own)
        region = cert.get("region")
        choice = _certify.certify_pool(pool_p, labels, pool.ids, np.asarray(cert.get("queue_positions", []), int),
                                       trained.task, params.target_precision, params.guarantee, params.thresholds,
                                       params.min_class_val, pool_gate, region)
        out["note_pool_route"] = ("certified on the pool's labelled sample, drawn from the semi-supervised model's "
                                  "candidate region: the supervised model is certified on the same items and accepts "
                                  "only inside that region")
    sup_acc = _accepted(pool_p, choice["thresholds"], pool_gate, labelled)
    if route == "pool" and cert.get("region") is not None:
        sup_acc &= np.asarray(cert["region"], bool)
    out["supervised"] = {"n_auto_accepted": int(sup_acc.sum()), "temperature": t,
                         "thresholds": [float(x) for x in choice["thresholds"]]}
    out["more_auto_accepted"] = int(semi_acc.sum() - sup_acc.sum())
    rest = ~labelled
    for name, acc in (("semi_supervised", semi_acc), ("supervised", sup_acc)):
        out[name]["coverage"] = float(acc[rest].mean()) if rest.any() else 0.0
    if pool.labels is not None and np.asarray(pool.labels).ndim == 1:
        y = np.asarray(pool.labels)
        known = (y >= 0) & rest
        preds = {"semi_supervised": table["predicted_label"].to_numpy().astype(int), "supervised": pool_p.argmax(1)}
        for name, acc in (("semi_supervised", semi_acc), ("supervised", sup_acc)):
            a = _metrics.accepted_precision_coverage(y[known], preds[name][known], acc[known], params.bootstrap,
                                                     params.seed)
            out[name]["achieved_precision"] = a.get("precision")
            out[name]["achieved_precision_ci95"] = a.get("precision_ci95")
    run.write_json(COMPARISON_FILE, _strict(out))
    return out


def _strict(obj):
    from ..core.runs import strict_json
    return strict_json(obj)


def comparison_report(result: dict | None):
    """The comparison as a report cell: a heading, one sentence and the table."""
    from ..core.viz import Markdown
    head = "## What the unlabelled images added\n\n"
    if result is None:
        return Markdown(head + "The run was trained without unlabelled images (or without `compare_supervised`): "
                               "nothing to compare.")
    if "supervised" not in result:
        return Markdown(head + result.get("note", ""))
    s, u = result["semi_supervised"], result["supervised"]
    how = "val's Learn-then-Test thresholds" if result["certified_by"] == "val" else "the pool's labelled sample"
    text = (f"At the same certified precision (target {result['target_precision']}, guarantee {result['guarantee']}, "
            f"each model certified by {how}), the semi-supervised model auto-accepts **{s['n_auto_accepted']}** of "
            f"{result['pool_size']} images, the same recipe on the labelled images alone **{u['n_auto_accepted']}**: "
            f"**{result['more_auto_accepted']:+d}**.")

    def cell(d, k, digits=4):
        v = d.get(k)
        return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    rows = "\n".join(f"| {name} | {d['n_auto_accepted']} | {cell(d, 'coverage')} | {cell(d, 'achieved_precision')} |"
                     for name, d in (("semi-supervised (this run)", s), ("supervised only (supervised/)", u)))
    return Markdown(head + text + "\n\n| model | auto-accepted | coverage | achieved precision (pool labels) |\n"
                    "| --- | ---: | ---: | ---: |\n" + rows)

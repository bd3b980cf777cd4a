"""Pretrain stage (``05_pretrain``): self-supervised pretraining of a registry backbone on every image given,
labelled or not, with SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020), written from the paper with Keras 3 ops.

Each step takes ``batch_size`` images and draws two views of each (``workbench.augment.contrastive``: random
resized crop and colour distortion, the 8 flips and quarter turns only where the data card says they keep the
label). The backbone f (the registry model up to its global average pooling ``gap``: exactly the layers, names and
shapes a classifier of the same ``model`` and ``width`` has) and a projection head g (Dense-BN-ReLU-Dense, dropped
afterwards) map all 2N views; the loss is NT-Xent: for each view, cross-entropy of finding its partner among the
other 2N - 1 views by cosine similarity / temperature. What differs from the paper: AdamW with a cosine schedule
instead of LARS, batches of 256 instead of 4096, about 1,400 steps instead of hundreds of epochs (a 2-core CPU),
the crop keeps at least 35 % of the area (28 px images hold one cell or lesion), no blur at 28 px (the paper drops
it for CIFAR's 32 px).

Writes ``encoder.keras`` (the backbone: ``10_train -p init_from RUN`` copies every layer by name and shape; the
classifier starts new), ``input.json`` (the images' input path: identity preprocessing), ``augment.yaml`` (the
views), ``history.csv`` (loss and the contrastive accuracy: how often a view's partner is its most similar view)
and ``pretrain_summary.json``: time, steps, and the representation's quality on the dataset's val split with the
train split's labels — kNN (k = 11) and a linear probe (workbench.neighbours) on the pretrained backbone beside the
same backbone with its random initial weights. The probe's regularisation is chosen on val (among 4 values), so its
val score is slightly optimistic; the kNN has no choice to make.

``images``: comma-separated pools (``workbench.pools``): ``train`` (the dataset's train split; its labels are not
used for pretraining), folders (PNG, JPEG, TIFF, DICOM) and ``.npz`` files; val and test are refused (they score the
representation), and items byte-identical to a val or test image are left out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from ..data import augment as _augment
from ..core import cells as _cells
from ..data import loaders as _data
from ..data import inputs as _inputs
from ..model import models as _models
from ..core import runs as _runs
from ..core import runtime as _runtime
from ..data import unlabelled as _unlabelled
from ..core.errors import WorkbenchError
from ..core.params import PretrainParams

METHOD = "SimCLR (Chen et al., ICML 2020)"
ENCODER_FILE = "encoder.keras"
# real: about as many steps as the demo recipe of the train stage (1,400), batches of 256 images (512 views);
# a small image set is passed over several times per epoch to reach them. tiny: a few steps, for tests.
RECIPES: dict[str, dict] = {
    "real": {"epochs": 30, "batch_size": 256, "learning_rate": 0.002, "min_steps": 1400, "max_steps_per_epoch": 0},
    "tiny": {"epochs": 1, "batch_size": 32, "learning_rate": 0.002, "min_steps": 0, "max_steps_per_epoch": 3},
}
PROBE_TRAIN_MAX = 20000     # train images embedded for the kNN and the linear probe (a seeded stratified sample)
HEAD_HIDDEN = 256


def resolve(params: PretrainParams, n_images: int) -> tuple[PretrainParams, int]:
    """(parameters with the recipe filled in where left at -1, steps per epoch)."""
    recipe = dict(RECIPES[params.recipe])
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainParams)}
    out = dataclasses.replace(params, **{k: recipe[k] for k in ("epochs", "batch_size", "learning_rate")
                                         if getattr(params, k) == defaults[k]})
    steps = max(1, n_images // out.batch_size)
    if recipe["min_steps"] and params.epochs == defaults["epochs"]:
        steps = max(steps, math.ceil(recipe["min_steps"] / out.epochs))
    if recipe["max_steps_per_epoch"]:
        steps = min(steps, recipe["max_steps_per_epoch"])
    from ..core.params import make, to_dict
    return make("pretrain", to_dict(out)), steps


def _specs(params: PretrainParams) -> list[str]:
    specs = [s.strip() for s in params.images.split(",") if s.strip()]
    if not specs:
        raise WorkbenchError("parameter 'images' is empty: give train, a folder or an .npz (comma-separated)")
    for s in specs:
        if s in _unlabelled.EXCLUDED_SPLITS:
            raise WorkbenchError(f"parameter 'images' = {s!r}: the {s} split scores the pretrained representation "
                                 "(kNN and linear probe on val) or the trained model (test); pretraining on it would "
                                 "make that optimistic: give train, folders or .npz files")
    return specs


def _open_pools(params: PretrainParams, ds) -> list:
    from ..data.pools import open_pool
    out = []
    for s in _specs(params):
        try:
            out.append(open_pool(s, dataset=ds if s == "train" else None, class_names=list(ds.class_names)))
        except WorkbenchError as e:
            raise WorkbenchError(f"parameter 'images': {e}") from None
    return out


def orientation_free(ds) -> bool:
    from ..data.cards import orientation_of
    o, _ = orientation_of(ds.card)
    return bool(o.get("flips")) and bool(o.get("quarter_turns"))


def open_stage(params: PretrainParams):
    """Load the dataset, check the pools, open the run directory (params + provenance). Everything that can fail
    on bad input fails before the directory is made. Returns (run, params, dataset)."""
    ds = _data.load_dataset(params.dataset, size=params.size, max_per_split=params.max_per_split, seed=params.seed)
    _open_pools(params, ds)
    backend = _runtime.configure_backend(params.conv_impl)
    if params.run_dir:
        path = Path(params.run_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = _runs.new_run_dir(f"pretrain_{ds.name}_{params.model}")
    run = _runs.open_stage("pretrain", params, path=path)
    _runs.add_provenance(run, training_path=backend, data=ds.describe(), method=METHOD,
                         orientation_free=orientation_free(ds))
    return run, params, ds


def input_spec(ds, run: _runs.Run | None = None) -> _inputs.InputSpec:
    """The images' input path: the dataset's size and channels, no preprocessing (saved as input.json)."""
    spec = _inputs.for_dataset(ds, None)
    if run is not None:
        _inputs.save(spec, run)
    return spec


def load_images(params: PretrainParams, ds, spec: _inputs.InputSpec, run: _runs.Run | None = None) -> np.ndarray:
    """Every image of every pool given, through the input path, val/test duplicates left out (uint8, in memory)."""
    parts, infos = [], []
    for pool in _open_pools(params, ds):
        images, _, info = _unlabelled.read_pool(pool, spec, (ds.images["val"], ds.images["test"]), what="images")
        parts.append(images)
        infos.append(info)
    images = np.concatenate(parts)
    print(f"pretraining on {len(images)} images from {len(parts)} pool(s)")
    if run is not None:
        _runs.add_provenance(run, images=infos)
    return images


def make_views(params: PretrainParams, ds, run: _runs.Run | None = None):
    """The two-view augmentation (``augment.contrastive``), saved as augment.yaml."""
    t = _augment.contrastive(params.seed, n_channels=ds.input_shape[-1], side=ds.input_shape[0],
                             orientation_free=orientation_free(ds))
    if run is not None:
        _augment.save(t, "contrastive", params.seed, run.file("augment.yaml"))
    return t


def preview_views(params: PretrainParams, ds, images: np.ndarray, n: int = 8):
    """Two views of a few images, from a separate pipeline instance (the training views' stream stays untouched)."""
    from ..core.viz import augmentation_preview
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    t = make_views(params, ds)
    return augmentation_preview(images[idx], [_augment.apply(t, images[idx]) for _ in range(2)],
                                title="Two views of each image (SimCLR)")


def build_encoder(params: PretrainParams, ds) -> keras.Model:
    """The registry model's backbone up to ``gap`` (layer names and shapes of a classifier of the same model and
    width), seeded."""
    keras.utils.set_random_seed(params.seed)
    net = _models.build(params.model, ds.input_shape, max(2, ds.num_classes), width=params.width, dropout=0.0,
                        conv_impl=params.conv_impl)
    if "gap" not in [layer.name for layer in net.layers]:
        raise WorkbenchError(f"model {params.model!r} has no 'gap' layer to pretrain up to")
    return keras.Model(net.inputs, net.get_layer("gap").output, name=f"{params.model}_encoder")


def nt_xent(z, temperature: float):
    """NT-Xent of 2N projections whose rows i and i + N are the two views of one image: (loss, accuracy of finding
    the partner as the most similar other view)."""
    ops = keras.ops
    z = z / ops.maximum(ops.norm(z, axis=1, keepdims=True), 1e-12)
    n2 = z.shape[0]
    n = n2 // 2
    sim = ops.matmul(z, ops.transpose(z)) / temperature
    sim = sim - 1e9 * ops.eye(n2, dtype=sim.dtype)                       # a view is not its own partner
    partner = ops.concatenate([ops.arange(n, n2), ops.arange(0, n)])
    pos = ops.take_along_axis(sim, partner[:, None], axis=1)[:, 0]
    loss = ops.mean(ops.logsumexp(sim, axis=1) - pos)
    acc = ops.mean(ops.cast(ops.argmax(sim, axis=1) == partner, "float32"))
    return loss, acc


class SimCLR(keras.Model):
    """The backbone and a projection head trained with NT-Xent on ``(view1, view2)`` batches."""

    def __init__(self, encoder: keras.Model, projection_dim: int, temperature: float, **kwargs):
        super().__init__(name="simclr", **kwargs)
        self.encoder = encoder
        self.head = keras.Sequential([keras.layers.Dense(HEAD_HIDDEN, use_bias=False, name="proj_dense1"),
                                      keras.layers.BatchNormalization(name="proj_bn"),
                                      keras.layers.ReLU(name="proj_relu"),
                                      keras.layers.Dense(projection_dim, name="proj_dense2")], name="projection")
        self.temperature = float(temperature)
        self.contrastive_acc = keras.metrics.Mean(name="contrastive_acc")

    def call(self, inputs, training=False):
        x = keras.ops.concatenate(list(inputs), axis=0) if isinstance(inputs, (tuple, list)) else inputs
        return self.head(self.encoder(x, training=training), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, _ = nt_xent(y_pred, self.temperature)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        _, acc = nt_xent(y_pred, self.temperature)
        self.contrastive_acc.update_state(acc)
        return self.get_metrics_result()


class ViewBatches(keras.utils.PyDataset):
    """``((view1, view2),)`` of ``batch_size`` images per step, from successive seeded permutations."""

    def __init__(self, images: np.ndarray, batch_size: int, views, seed: int, steps: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.b, self.views, self.steps = images, int(batch_size), views, int(steps)
        self.rng = np.random.default_rng([seed, 4])
        self.buf = np.zeros(0, np.int64)

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        while len(self.buf) < self.b:
            self.buf = np.concatenate([self.buf, self.rng.permutation(len(self.images))])
        idx, self.buf = self.buf[:self.b], self.buf[self.b:]
        x = self.images[idx]
        return ((_augment.apply(self.views, x).astype("float32"), _augment.apply(self.views, x).astype("float32")),)


def fit(encoder: keras.Model, images: np.ndarray, views, params: PretrainParams,
        run: _runs.Run) -> tuple[pd.DataFrame, dict]:
    """SimCLR on ``images``; writes encoder.keras (the last epoch's backbone) and history.csv. Returns the history
    and the training's summary (``probe`` completes it into pretrain_summary.json)."""
    from .train import TqdmTraining
    if len(images) < 2:
        raise WorkbenchError("pretraining needs at least 2 images (parameter 'images')")
    p, steps = resolve(params, len(images))
    batch = min(p.batch_size, len(images))
    keras.utils.set_random_seed(p.seed)
    model = SimCLR(encoder, p.projection_dim, p.temperature)
    total = p.epochs * steps
    warmup = min(steps, max(total - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else p.learning_rate, decay_steps=max(total - warmup, 1), alpha=0.01,
        warmup_target=p.learning_rate if warmup else None, warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=p.weight_decay))
    history_path = run.file("history.csv")
    t0 = time.perf_counter()
    model.fit(ViewBatches(images, batch, views, p.seed, steps), epochs=p.epochs, verbose=0,
              callbacks=[keras.callbacks.CSVLogger(str(history_path)), keras.callbacks.TerminateOnNaN(),
                         TqdmTraining(p.epochs, steps, shown=("loss", "contrastive_acc"))])
    seconds = time.perf_counter() - t0
    encoder.save(run.file(ENCODER_FILE))
    hist = pd.read_csv(history_path)
    summary = {
        "method": METHOD, "recipe": p.recipe, "epochs": p.epochs, "batch_size": batch, "steps_per_epoch": steps,
        "steps": total, "learning_rate": p.learning_rate, "temperature": p.temperature,
        "projection_dim": p.projection_dim, "n_images": int(len(images)), "train_seconds": round(seconds, 1),
        "views_per_second": round(2 * batch * len(hist) * steps / max(seconds, 1e-9), 1),
        "final_loss": float(hist["loss"].iloc[-1]), "final_contrastive_acc": float(hist["contrastive_acc"].iloc[-1]),
        "encoder": ENCODER_FILE, "model": p.model, "width": p.width,
        "embedding_dim": int(encoder.output.shape[-1]), "num_params": int(encoder.count_params())}
    print(f"pretrained {total} steps in {seconds:.0f} s; backbone written to {run.path / ENCODER_FILE}")
    return hist, summary


def _scores(encoder, ds, params: PretrainParams, idx: np.ndarray) -> dict:
    from ..model import embeddings as _embeddings
    from ..model import neighbours as _neighbours
    from ..stats import metrics as _metrics
    tr, _ = _embeddings.embed_images(encoder, ds.images["train"][idx], desc="embed train")
    va, _ = _embeddings.embed_images(encoder, ds.images["val"], desc="embed val")
    ytr, yva = ds.labels["train"][idx], ds.labels["val"]
    index = _neighbours.Index(tr, ytr)
    kp, _ = _neighbours.knn_predict(index, va, ds.num_classes, ds.task)
    knn = _metrics.medmnist_acc_auc(yva, kp, ds.task)
    proba, info = _neighbours.linear_probe(tr, ytr, va, yva, ds.task, ds.num_classes, params.seed)
    lin = _metrics.medmnist_acc_auc(yva, proba(va), ds.task)
    return {"knn": {"acc": float(knn["acc"]), "auc": _finite(knn.get("auc"))},
            "linear_probe": {"acc": float(lin["acc"]), "auc": _finite(lin.get("auc")), "C": info["C"]}}


def _finite(v):
    return float(v) if v is not None and np.isfinite(v) else None


def probe(encoder: keras.Model, ds, params: PretrainParams, run: _runs.Run, summary: dict) -> dict:
    """kNN (k = 11) and linear probe on val with the train split's labels, for the pretrained backbone and the same
    backbone at its random initialisation; written with the training's ``summary`` as pretrain_summary.json."""
    from ..data.loaders import stratified_indices
    n = len(ds.labels["train"])
    idx = stratified_indices(ds.labels["train"], PROBE_TRAIN_MAX, params.seed) if n > PROBE_TRAIN_MAX else np.arange(n)
    out = {"split": "val", "n_val": int(len(ds.labels["val"])), "n_train": int(len(idx)),
           "pretrained": _scores(encoder, ds, params, idx),
           "random_init": _scores(build_encoder(params, ds), ds, params, idx),
           "note": "the linear probe's C is chosen on val among 4 values: its val score is slightly optimistic"}
    run.write_json("pretrain_summary.json", {**summary, "probe": out})
    return out


def probe_table(result: dict) -> pd.DataFrame:
    rows = {}
    for which in ("pretrained", "random_init"):
        r = result[which]
        rows[f"{which.replace('_', ' ')} backbone"] = {
            "kNN ACC (val)": r["knn"]["acc"], "kNN AUC (val)": r["knn"]["auc"],
            "linear probe ACC (val)": r["linear_probe"]["acc"], "linear probe AUC (val)": r["linear_probe"]["auc"]}
    return pd.DataFrame(rows).T


def curves(history: pd.DataFrame):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    ax[0].plot(history["epoch"] + 1, history["loss"], marker="o")
    ax[0].set(xlabel="epoch", ylabel="NT-Xent loss", title="Contrastive loss")
    ax[1].plot(history["epoch"] + 1, history["contrastive_acc"], marker="o")
    ax[1].set(xlabel="epoch", ylabel="share", ylim=(0, 1.02), title="Partner view found (contrastive accuracy)")
    fig.tight_layout()
    return fig


def encoder_path(source) -> Path | None:
    """The pretrained backbone of a pretrain run directory (None when ``source`` is not one)."""
    p = Path(source).expanduser()
    return p / ENCODER_FILE if p.is_dir() and (p / ENCODER_FILE).is_file() else None


NOTEBOOK = _cells.Stage(
    stage="pretrain", title="05 · Pretrain (self-supervised)",
    inputs="images without labels: the dataset's train split, folders or `.npz` files (`images`); the dataset "
           "(`dataset`) gives the input shape, the card's orientation rule and the labelled splits the representation "
           "is scored on",
    outputs="`encoder.keras` (the backbone: `10_train -p init_from RUN` copies it layer by layer), `input.json`, "
            "`augment.yaml`, `history.csv`, `pretrain_summary.json` (time, kNN and linear-probe scores on val), "
            "`params/pretrain.json`, `provenance.json`",
    intro="SimCLR (Chen et al., ICML 2020): two random views of every image; the backbone learns to tell which views "
          "belong together. No label is used for training; the dataset's labels only score the result.",
    cells=(
        _cells.code('import workbench as wb\nfrom workbench import pretrain\n\nP = wb.params.collect("pretrain", globals())\n'
                    "run, P, ds = pretrain.open_stage(P)  # checks the dataset and every pool first"),
        _cells.md("## Images"),
        _cells.code("spec = pretrain.input_spec(ds, run)\nimages = pretrain.load_images(P, ds, spec, run)"),
        _cells.md("## Views\nRandom resized crop and colour distortion; the 8 flips and quarter turns only where the "
                  "data card says they keep the label."),
        _cells.code("views = pretrain.make_views(P, ds, run)"),
        _cells.show("pretrain.preview_views(P, ds, images)"),
        _cells.md("## Pretraining"),
        _cells.code("encoder = pretrain.build_encoder(P, ds)\nhistory, summary = pretrain.fit(encoder, images, views, P, run)"),
        _cells.show("history"),
        _cells.show("pretrain.curves(history)"),
        _cells.md("## What the representation knows\nkNN (k = 11) and a linear probe on the backbone's embeddings: "
                  "trained on the train split's labels, scored on val; beside the same backbone at its random "
                  "initialisation."),
        _cells.code("scores = pretrain.probe(encoder, ds, P, run, summary)"),
        _cells.show("pretrain.probe_table(scores)"),
        _cells.show('run.read_json("pretrain_summary.json")'),
    ),
    result=("run",),
)


def run(params: PretrainParams) -> dict:
    """The whole stage without a notebook: the notebook's code cells, in order (workbench.cells)."""
    r = _cells.run_cells(NOTEBOOK, params)["run"]
    return {"run_dir": str(r.path), **r.read_json("pretrain_summary.json")}

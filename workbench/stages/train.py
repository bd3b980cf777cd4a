"""Train stage: seeded fit with on-the-fly augmentation, cosine LR with warm-up, early stopping on
val_loss, best checkpoint, optional class weights; writes model.keras, history.csv, augment.yaml,
input.json (the run's input contract, workbench.inputs) and preprocess.json.

Recipes (``recipe`` parameter, ``RECIPES``) fill in every parameter marked "(recipe)" that was left at
its empty default (-1 or ""), from the recipe and from the data: the augmentation preset and the
test-time augmentation follow the data card's ``orientation`` (``resolve``), and small training sets get
more epochs so that every recipe trains for about the same number of optimizer steps. A value passed
explicitly always wins, and ``params/train.json`` records the effective values. Any task of
workbench.tasks: softmax + cross-entropy, or sigmoid + binary cross-entropy for multi-label data.
Transfer learning: ``init_from`` (a run directory or ``.keras`` file) copies weights layer by layer (by
name, where shapes match), ``freeze_backbone`` trains only the classifier. With more than one local JAX
device, training is data-parallel over all of them (``keras.distribution.DataParallel``).
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
from ..model import layers as _layers
from ..model import models as _models
from ..data import preprocess as _pre
from ..core import runs as _runs
from ..core import runtime as _runtime
from . import semisup as _semisup
from ..core import tasks as _tasks
from ..data import unlabelled as _unlabelled
from ..core.errors import WorkbenchError
from ..core.params import TrainParams
from ..core.progress import headless, tqdm

# What each recipe sets where the user left a "(recipe)" parameter empty. demo: the foundation's compact
# CNN (≈ 4 min on 2 CPU cores on BloodMNIST). full: twice the width and more epochs, without early stopping
# (patience = epochs: at the high learning rates early in the cosine schedule val_loss jumps about, and
# patience 8 once stopped a run at epoch 18 of 36, 2.6 points down) and without EMA of the weights (Keras'
# optimizer EMA, written into the model every epoch, cost about 0.7 points; recomputing the batch-norm
# statistics under the averaged weights did not win them back).
# "auto" values come from the data (``resolve``): the augmentation preset from the data card's orientation
# (flips and quarter turns preserve the labels → "dihedral" and the 8-way test-time augmentation inside the
# saved model; otherwise "fixed" and no TTA). ``min_steps``: a training set smaller than BloodMNIST's is
# passed over several times per epoch (``steps_per_epoch``), so that the recipe still makes about as many
# optimizer steps (15 and 36 epochs of BloodMNIST's 94 batches of 128: 1,410 and 3,384 steps) while
# validation, early stopping and checkpoints keep the recipe's number of epochs (many tiny epochs would
# spend most of the time validating and saving). Measured results: bench/results/accuracy.json and
# bench/results/datasets.json (make bench-accuracy, make bench-datasets).
RECIPES: dict[str, dict] = {
    "demo": {"model": "cnn", "width": 16, "dropout": 0.2, "augment": "auto", "epochs": 15, "steps_per_epoch": "auto",
             "learning_rate": 0.003, "patience": 5, "ema": "no", "tta": "auto", "photometric": "none", "min_steps": 1400},
    "full": {"model": "cnn", "width": 32, "dropout": 0.2, "augment": "auto", "epochs": 36, "steps_per_epoch": "auto",
             "learning_rate": 0.003, "patience": "epochs", "ema": "no", "tta": "auto", "photometric": "none", "min_steps": 3380},
}


def orientation(ds: _data.Dataset) -> dict:
    """Whether flips and quarter turns preserve the labels of this data: the data card says so
    (``orientation``); a dataset without a card, or a card without the field, is treated as
    orientation-fixed, with a note saying so."""
    from ..data.cards import orientation_of
    o, note = orientation_of(ds.card)
    free = bool(o.get("flips")) and bool(o.get("quarter_turns"))
    return {"flips": bool(o.get("flips")), "quarter_turns": bool(o.get("quarter_turns")),
            "reason": o.get("reason", ""), "free": free, "note": note,
            "source": f"data card {ds.card.name}" if ds.card is not None else "no data card"}


def resolve(params: TrainParams, ds: _data.Dataset) -> TrainParams:
    """Fill the recipe's values into the parameters left at their empty default, reading what depends on
    the data from ``ds`` (orientation, training-set size); explicit values win."""
    recipe = dict(RECIPES[params.recipe])
    min_steps = recipe.pop("min_steps")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainParams)}
    left = {name for name in recipe if getattr(params, name) == defaults[name]}
    out = dataclasses.replace(params, **{name: recipe[name] for name in left})
    o = orientation(ds)
    if out.augment == "auto":
        out = dataclasses.replace(out, augment="dihedral" if o["free"] else "fixed")
    if out.steps_per_epoch == "auto":
        one_pass = max(1, math.ceil(len(ds.labels["train"]) / params.batch_size))
        # small training sets: several passes per epoch, about as many optimizer steps as on a large one; an
        # epoch count the user chose keeps its meaning (one pass each)
        steps = max(one_pass, math.ceil(min_steps / out.epochs)) if "epochs" in left else one_pass
        out = dataclasses.replace(out, steps_per_epoch=steps)
    if out.patience == "epochs" or (out.unlabelled and "patience" in left):
        # no early stopping, however many epochs the user asks for; semi-supervised training always runs its whole
        # schedule (workbench.semisup.SELECT: the pseudo-labels grow over all of it, as in the paper)
        out = dataclasses.replace(out, patience=out.epochs)
    if out.tta == "auto":
        out = dataclasses.replace(out, tta="yes" if o["free"] and out.augment in _augment.DIHEDRAL_PRESETS else "no")
    if out.freeze_backbone and not out.init_from:
        raise WorkbenchError("parameter 'freeze_backbone' needs 'init_from' (a trained run directory or .keras file)")
    if out.class_weights and _tasks.is_multilabel(ds.task):
        raise WorkbenchError("parameter 'class_weights' applies to single-label tasks; dataset "
                             f"{ds.name} is multi-label: leave it false")
    from ..core.params import make, to_dict
    return make("train", to_dict(out))  # the filled-in values pass the usual checks


def orientation_statement(params: TrainParams, o: dict) -> str:
    """One sentence for the train report and the model card: what the data allows and what the preset does."""
    changes = _augment.ORIENTATION_CHANGES.get(params.augment)
    allowed = ("flips and quarter turns preserve the labels" if o["free"] else
               "orientation carries meaning: flips and quarter turns may change the label")
    text = f"Orientation ({o['source']}): {allowed}" + (f" ({o['reason']})" if o["reason"] else "") + ". "
    if o["note"]:
        text += o["note"] + " "
    if changes and not o["free"]:
        text += (f"WARNING: augmentation preset '{params.augment}' applies {changes} although the data are "
                 "orientation-fixed: the model cannot tell an image from its mirror image.")
    else:
        text += f"Augmentation preset '{params.augment}'" + (f" ({changes})" if changes else " (no flips or turns)")
        text += "; test-time augmentation over the 8 flips and quarter turns: " + params.tta + "."
    return text


def open_stage(params: TrainParams):
    """Load the data, resolve the recipe against it, set up the CPU training path, open the run directory
    (params + provenance). Everything that can fail on bad input fails before the directory is made."""
    ds, extra = load_data(params)
    p = resolve(params, ds)
    _unlabelled.check(p, ds)    # unlabelled: the task, the pool's path (workbench.unlabelled)
    backend = _runtime.configure_backend(p.conv_impl)
    run = _runs.open_stage("train", p)
    o = orientation(ds)
    from ..core.params import to_dict
    _runs.add_provenance(run, training_path=backend, recipe={"name": p.recipe, **RECIPES[p.recipe]},
                         requested=to_dict(params),     # before the recipe filled them in (the supervised baseline)
                         data=ds.describe(), orientation={**o, "statement": orientation_statement(p, o)})
    if extra is not None:
        _runs.add_provenance(run, extra_labels=extra)
    print(orientation_statement(p, o))
    return run, p, ds


def balance_figure(ds: _data.Dataset):
    """Images per class and split; for multi-label data, each label's prevalence per split."""
    from ..core.viz import class_balance, label_prevalence
    if _tasks.is_multilabel(ds.task):
        return label_prevalence(ds.labels, ds.class_names)
    return class_balance(ds.counts(), ds.class_names)


def orientation_note(params: TrainParams, ds: _data.Dataset):
    """The orientation statement as a report cell (a warning box when a flipping preset meets
    orientation-fixed data)."""
    from ..core.viz import Markdown
    o = orientation(ds)
    text = orientation_statement(params, o)
    return Markdown(f"> **{text}**" if "WARNING" in text else text)


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled batches, augmented on the fly; one seeded generator drives order and augmentation.

    An epoch is one pass over the images (the last batch may be smaller), or, with ``steps`` beyond one
    pass, ``steps`` full batches drawn from a stream of successive permutations (every image once per
    pass, no image left out)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, transform, seed: int,
                 multiple_of: int = 1, steps: int | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        # multi-label targets (N, L) go to binary cross-entropy as floats; class indices stay integers
        self.images, self.labels = images, (labels.astype("float32") if labels.ndim == 2 else labels)
        # data-parallel training splits every batch evenly over the devices: a last batch that does not
        # divide is cut to the largest multiple (the images left out change every epoch)
        self.multiple_of = multiple_of
        self.batch_size, self.transform = batch_size, transform
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))
        one_pass = math.ceil(len(images) / batch_size)
        self.steps = steps if steps and steps > one_pass else None
        self.buffer = np.zeros(0, dtype=np.int64)

    def __len__(self):
        return self.steps or math.ceil(len(self.images) / self.batch_size)

    def _indices(self, i: int) -> np.ndarray:
        if self.steps is None:
            return self.order[i * self.batch_size:(i + 1) * self.batch_size]
        while len(self.buffer) < self.batch_size:  # the stream: successive seeded permutations
            self.buffer = np.concatenate([self.buffer, self.rng.permutation(len(self.images))])
        idx, self.buffer = self.buffer[:self.batch_size], self.buffer[self.batch_size:]
        return idx

    def __getitem__(self, i):
        idx = self._indices(i)
        idx = idx[:len(idx) - len(idx) % self.multiple_of] if len(idx) > self.multiple_of else idx
        x = _augment.apply(self.transform, self.images[idx]).astype("float32")
        return x, self.labels[idx]

    def on_epoch_end(self):
        if self.steps is None:
            self.order = self.rng.permutation(len(self.images))


SHOWN = ("loss", "acc", "mask_rate", "val_loss", "val_acc")   # the progress bar's metrics


class TqdmTraining(keras.callbacks.Callback):
    """One bar over all training steps, with the last epoch's metrics as postfix."""

    def __init__(self, epochs: int, steps_per_epoch: int, shown: tuple = SHOWN):
        super().__init__()
        self.total = epochs * steps_per_epoch
        self.bar = None
        self.shown = shown

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total, desc="train", unit="step")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and batch % 10 == 0:   # live: e.g. semi-supervised training's pseudo-label mask rate
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in self.shown}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in self.shown}, refresh=False)
        self.bar.set_description(f"epoch {epoch + 1}")
        if headless():  # one readable line per epoch in the executed notebook (a log line, not a bar)
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()


def load_data(params: TrainParams) -> tuple[_data.Dataset, dict | None]:
    """The dataset as loaded (raw pixels, before the input path), with any review export appended to
    train (and what was appended, for the provenance; None without ``extra_labels``)."""
    ds = _data.load_dataset(params.dataset, size=params.size, max_per_split=params.max_per_split, seed=params.seed)
    ds = _unlabelled.label_subset(ds, params.label_fraction, params.seed)   # label_fraction < 1: a label budget
    if params.extra_labels:
        return add_extra_labels(ds, params.extra_labels)
    return ds, None


def make_input_spec(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None) -> _inputs.InputSpec:
    """The run's input contract: the data's size and channels, the resize policy and DICOM window from its
    card, and the preprocessing recipe from the parameters (dataset statistics from the train split).
    Saved as input.json (and preprocess.json): every later stage feeds the model through it."""
    pre = _pre.make_spec(params.denoise, params.contrast, params.normalize,
                         train_images=ds.images["train"] if params.normalize == "dataset" else None)
    spec = _inputs.for_dataset(ds, pre)
    if run is not None:
        run.write_json("preprocess.json", pre)
        _inputs.save(spec, run)
        _runs.add_provenance(run, preprocess=pre, input=spec.to_dict())
    return spec


def prepare_dataset(ds: _data.Dataset, spec: _inputs.InputSpec) -> _data.Dataset:
    """Every split through the one input path (workbench.inputs.prepare)."""
    return _inputs.prepare_dataset(ds, spec)


def _preview_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``n`` images for a preview figure (any class count)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


def preview_preprocessing(params: TrainParams, ds: _data.Dataset, spec: _inputs.InputSpec, n_images: int = 8):
    """Before/after figure of the same training images (raw → through the input path)."""
    from ..core.viz import preprocessing_preview
    idx = _preview_indices(len(ds.images["train"]), n_images, params.seed)
    before = ds.images["train"][idx]
    return preprocessing_preview(before, _inputs.prepare(before, spec),
                                 title=f"Input path: {spec.describe()}")


def _extra_labels_file(spec: str):
    from pathlib import Path
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "labelled.npz"
    elif p.name in ("annotations.csv", "annotations_coco.json"):
        p = p.with_name("labelled.npz")
    if not p.is_file():
        raise WorkbenchError(f"extra labels {spec}: no {p.name} found at {p}; pass a review export directory "
                             "(review/export-*/ written by the annotate stage) or its labelled.npz (parameter extra_labels)")
    return p


def add_extra_labels(ds: _data.Dataset, spec: str) -> tuple[_data.Dataset, dict]:
    """Append the labelled images of an annotate review export to the train split.

    An export carries its images (conformed to the model's size and channels, before preprocessing,
    exactly like the dataset's own raw images), so pools from outside the dataset (a folder of new PNGs,
    a DICOM series) can be trained on. Multi-label exports carry (N, L) label sets. Refused: other classes
    or image shape than the dataset, and images from the val or test split of the same dataset file
    (training on them would leak into the evaluation)."""
    import json
    from dataclasses import replace
    path = _extra_labels_file(spec)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64)
            class_names = [str(c) for c in z["class_names"]]
            source = json.loads(str(z["source"])) if "source" in z.files else {}
            n_sources = {str(k): int(v) for k, v in zip(*np.unique(z["label_source"], return_counts=True))} \
                if "label_source" in z.files else {}
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise WorkbenchError(f"extra labels {path} is not a review export ({type(e).__name__}: {e}); "
                             "export again from the review (parameter extra_labels)") from None
    if class_names != list(ds.class_names):
        raise WorkbenchError(f"extra labels {path} name classes {class_names} but dataset {ds.name} has "
                             f"{list(ds.class_names)}: they belong to another task")
    if images.dtype != np.uint8 or images.shape[1:] != ds.images["train"].shape[1:] or len(images) != len(labels):
        raise WorkbenchError(f"extra labels {path}: images {images.dtype} {images.shape[1:]} for {len(labels)} labels do not "
                             f"match dataset {ds.name} ({ds.images['train'].shape[1:]} uint8)")
    if _tasks.is_multilabel(ds.task):
        if labels.ndim != 2 or labels.shape[1] != ds.num_classes or (labels.size and not np.isin(labels, (0, 1)).all()):
            raise WorkbenchError(f"extra labels {path}: labels {labels.shape} are not (N, {ds.num_classes}) 0/1 label "
                                 f"sets of the multi-label dataset {ds.name}")
    else:
        labels = labels.reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= ds.num_classes):
            raise WorkbenchError(f"extra labels {path}: labels outside 0..{ds.num_classes - 1}")
    if source.get("dataset_md5") == ds.md5 and source.get("split") in ("val", "test"):
        raise WorkbenchError(
            f"extra labels {path} are images of the {source['split']} split of {ds.name}, which the evaluate stage "
            "scores: training on them would leak into the evaluation; annotate a pool outside val/test")
    if source.get("dataset_md5") == ds.md5 and source.get("split") == "train":
        print(f"warning: extra labels {path} are images of the train split of {ds.name}: they are trained on twice")
    images_tr = np.concatenate([ds.images["train"], images])
    labels_tr = np.concatenate([ds.labels["train"], labels])
    note = f"train split extended by {len(labels)} labelled images from {path} ({n_sources or 'sources unknown'})"
    info = {"path": str(path.resolve()), "md5": _data.file_md5(path), "n": int(len(labels)), "label_source": n_sources,
            "pool_source": source}
    out = replace(ds, images={**ds.images, "train": images_tr}, labels={**ds.labels, "train": labels_tr},
                  notes=[*ds.notes, note])
    print(note)
    return out, info


def augmentation(params: TrainParams, ds: _data.Dataset):
    """The training pipeline: the geometric preset, then (``photometric card``) the data card's acquisition
    changes within its ranges (workbench.augment.photometric_of); returns (pipeline, photometric info or None)."""
    photo = {**_augment.photometric_of(ds.card), "p": params.photometric_p} if params.photometric == "card" else None
    t = _augment.build(params.augment, params.seed, n_channels=ds.input_shape[-1], photometric=photo,
                       side=ds.input_shape[0])
    return t, photo


def make_augmentation(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None):
    t, photo = augmentation(params, ds)
    if photo and photo["warning"]:
        print(photo["warning"])
    if run is not None:
        _augment.save(t, params.augment, params.seed, run.file("augment.yaml"), photometric=photo)
        if photo is not None:
            _runs.add_provenance(run, photometric=photo)
    return t


def build_model(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None) -> keras.Model:
    """The registry model for the data; with ``init_from``, its weights copied in (and the backbone
    frozen with ``freeze_backbone``)."""
    keras.utils.set_random_seed(params.seed)
    distribution = _distribute()
    model = _models.build(params.model, ds.input_shape, ds.num_classes, width=params.width, dropout=params.dropout,
                          conv_impl=params.conv_impl, activation=_tasks.activation(ds.task))
    if params.init_from:
        report = init_from(model, params.init_from, freeze_backbone=params.freeze_backbone)
        if run is not None:
            _runs.add_provenance(run, init_from=report)
    if run is not None and distribution is not None:
        _runs.add_provenance(run, distribution=distribution)
    return model


def _distribute() -> dict | None:
    """Data parallelism over every local JAX device when there is more than one (else None)."""
    import jax
    devices = jax.devices()
    if len(devices) < 2:
        keras.distribution.set_distribution(None)
        return None
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return {"type": "DataParallel", "devices": [str(d) for d in devices]}


def _source_model(source: str) -> tuple[keras.Model, Path]:
    path = Path(source).expanduser()
    if path.is_dir():   # a trained run (model.keras) or a pretrain run (its backbone, encoder.keras: workbench.pretrain)
        path = path / "model.keras" if (path / "model.keras").is_file() or not (path / "encoder.keras").is_file() \
            else path / "encoder.keras"
    if not path.is_file():
        raise WorkbenchError(f"parameter 'init_from' = {source!r}: no such .keras file or run directory with "
                             "model.keras (train) or encoder.keras (pretrain); give a trained or pretrained run "
                             "directory or a .keras file")
    model = _models.load(path, compile=False)
    return _models.backbone(model), path


def init_from(model: keras.Model, source: str, freeze_backbone: bool = False) -> dict:
    """Copy weights from ``source`` into ``model`` layer by layer (same name, same weight shapes).

    The classifier (``probs``) is copied only when the class counts agree; with ``freeze_backbone``
    every layer but the classifier is frozen (BatchNormalization then uses its moving statistics)."""
    src, path = _source_model(source)
    src_layers = {l.name: l for l in src.layers}
    copied, skipped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = src_layers.get(layer.name)
        if other is not None and [w.shape for w in other.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
        else:
            skipped.append(layer.name)
    if not copied:
        raise WorkbenchError(f"parameter 'init_from': {path} shares no layer (by name and shape) with model "
                             f"{model.name}; pretrain the same model (parameter 'model') and width")
    if freeze_backbone:
        for layer in model.layers:
            if layer.name != "probs":
                layer.trainable = False
    return {"path": str(path.resolve()), "layers_copied": len(copied), "layers_new": skipped,
            "frozen_backbone": bool(freeze_backbone)}


def with_tta(model: keras.Model) -> keras.Model:
    """The same network wrapped so that it predicts the mean over the 8 flips/quarter turns."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    return keras.Model(inputs, _layers.DihedralMean(model, name="tta")(inputs), name=f"{model.name}_tta")


def class_weight(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight
    present = np.unique(labels)
    w = compute_class_weight("balanced", classes=present, y=labels)
    out = {int(c): 1.0 for c in range(num_classes)}
    out.update({int(c): float(v) for c, v in zip(present, w)})
    return out


def fit(model: keras.Model, ds: _data.Dataset, transform, params: TrainParams, run: _runs.Run,
        unlabelled: _unlabelled.Unlabelled | None = None) -> pd.DataFrame:
    """Fit and checkpoint the best epoch (by val_loss) to model.keras; return the history table. With
    ``unlabelled`` (``load_unlabelled``): FixMatch on the labelled and unlabelled images (workbench.semisup)."""
    keras.utils.set_random_seed(params.seed)
    import jax
    n_dev = jax.device_count()
    if n_dev > 1 and params.batch_size % n_dev:
        raise WorkbenchError(f"parameter 'batch_size' = {params.batch_size} must be a multiple of the {n_dev} "
                             "devices for data-parallel training")
    trainer, pseudo = model, None
    if unlabelled is not None:   # FixMatch: labelled + weak/strong unlabelled views each step, the network wrapped
        batches, trainer, pseudo = _semisup.setup(model, ds, transform, params, unlabelled, orientation(ds)["free"],
                                                   augmentation(params, ds)[1])
        per_epoch = len(batches) * params.batch_size * (1 + params.unlabelled_ratio)
    else:
        batches = AugmentedBatches(ds.images["train"], ds.labels["train"], params.batch_size, transform, params.seed,
                                   multiple_of=n_dev, steps=params.steps_per_epoch)
    steps = len(batches)
    if unlabelled is None:
        per_epoch = steps * params.batch_size if batches.steps else len(ds.labels["train"])  # images per epoch
    total = params.epochs * steps
    warmup = min(params.warmup_epochs * steps, max(total - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else params.learning_rate,
        decay_steps=max(total - warmup, 1), alpha=0.01,
        warmup_target=params.learning_rate if warmup else None, warmup_steps=warmup,
    )
    # EMA: the averaged weights are written into the model once per epoch, so validation, early stopping
    # and the checkpoint all see them
    ema = {"use_ema": True, "ema_momentum": 0.99, "ema_overwrite_frequency": steps} if params.ema == "yes" else {}
    trainer.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay, **ema),
        loss=_tasks.loss(ds.task), metrics=[_tasks.accuracy_metric(ds.task)],
    )
    tta = params.tta == "yes"
    # the checkpoint (and what early stopping watches): the lowest val loss; semi-supervised: the highest val accuracy
    monitor, mode = _semisup.SELECT if unlabelled is not None else ("val_loss", "min")
    model_path = run.file("backbone.keras" if tta else "model.keras")
    history_path = run.file("history.csv")
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(model_path), monitor="val_loss", save_best_only=True) if unlabelled is None
        else _semisup.BestNet(model, model_path, monitor, mode),      # FixMatch: the network, not its trainer
        *([pseudo] if pseudo is not None else []),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=params.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(history_path)),
        keras.callbacks.TerminateOnNaN(),
        TqdmTraining(params.epochs, steps),
    ]
    cw = class_weight(ds.labels["train"], ds.num_classes) if params.class_weights else None
    t0 = time.perf_counter()
    y_val = ds.labels["val"].astype("float32") if _tasks.is_multilabel(ds.task) else ds.labels["val"]
    trainer.fit(batches, validation_data=(ds.images["val"].astype("float32"), y_val),
              epochs=params.epochs, callbacks=callbacks, class_weight=cw, verbose=0)
    seconds = time.perf_counter() - t0
    if tta:
        with_tta(model).save(run.file("model.keras"))
    hist = pd.read_csv(history_path)
    best = int(hist[monitor].idxmin() if mode == "min" else hist[monitor].idxmax())
    summary = {
        "epochs_run": int(len(hist)), "best_epoch": best + 1,
        "best_val_loss": float(hist["val_loss"][best]), "best_val_acc": float(hist["val_acc"][best]),
        "train_seconds": round(seconds, 2),
        "train_images_per_second": round(len(hist) * per_epoch / seconds, 1), "steps_per_epoch": steps,
        "class_weight": cw, "num_params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "tta": tta, "ema": params.ema == "yes", "conv_impl": params.conv_impl, "task": ds.task,
        "loss": _tasks.loss(ds.task), "output_activation": _tasks.activation(ds.task),
        "labelled_images": int(len(ds.labels["train"])),
    }
    if unlabelled is not None:
        summary["semi_supervised"] = _semisup.summary(params, unlabelled, pseudo, hist, run)
        summary["checkpoint_selected_by"] = f"{monitor} ({mode})"
    run.write_json("train_summary.json", summary)
    return hist


def load_unlabelled(params: TrainParams, ds: _data.Dataset, spec: _inputs.InputSpec, run: _runs.Run | None = None):
    """The unlabelled pool (``unlabelled``) through the run's input path, or None (workbench.unlabelled)."""
    return _unlabelled.load_unlabelled(params, ds, spec, run)


def preview_strong_views(params: TrainParams, ds: _data.Dataset, n_images: int = 8):
    """Semi-supervised runs: a few training images in FixMatch's strong view (the preset, two RandAugment ops and
    Cutout, within the card's orientation rule), from separate pipeline instances."""
    from ..core.viz import Markdown
    from ..core.viz import augmentation_preview
    if not params.unlabelled:
        return Markdown("Supervised training (no `unlabelled` images): no strong views.")
    photo = augmentation(params, ds)[1]
    t = _augment.strong(params.augment, params.seed, n_channels=ds.input_shape[-1], photometric=photo,
                        side=ds.input_shape[0], orientation_free=orientation(ds)["free"])
    originals = ds.images["train"][_preview_indices(len(ds.images["train"]), n_images, params.seed)]
    return augmentation_preview(originals, [_augment.apply(t, originals) for _ in range(3)],
                                title=f"FixMatch strong views: preset '{params.augment}' + RandAugment (2 ops) + Cutout")


def fit_supervised_baseline(params: TrainParams, ds: _data.Dataset, run: _runs.Run) -> pd.DataFrame | None:
    """With ``unlabelled`` and ``compare_supervised``: the same recipe, seed and initialisation on the labelled
    images alone, into ``RUN/supervised/`` (model.keras, history.csv, train_summary.json): what the unlabelled
    images added, for the report and the annotate stage. None otherwise."""
    if not (params.unlabelled and params.compare_supervised):
        return None
    from ..core.params import make
    requested = run.read_json("provenance.json").get("train", {}).get("requested") or {}
    # the parameters as asked for, without the unlabelled images, resolved as a supervised run resolves them
    p = resolve(make("train", {**requested, "run_dir": params.run_dir, "unlabelled": ""}), ds) if requested \
        else dataclasses.replace(params, unlabelled="")
    transform, _ = augmentation(p, ds)            # a fresh pipeline: the stream a supervised run would draw
    sub = _runs.Run(path=run.path / _semisup.BASELINE_DIR, stage="train")
    return fit(build_model(p, ds), ds, transform, p, sub)


def semi_supervised_report(params: TrainParams, history: pd.DataFrame, run: _runs.Run):
    """The mask-rate and pseudo-label-accuracy figure of a semi-supervised run (a note for a supervised one)."""
    from ..core.viz import Markdown
    if not params.unlabelled:
        return Markdown("Supervised training (no `unlabelled` images).")
    return _semisup.mask_rate_figure(history, run.path)


def semi_supervised_comparison(params: TrainParams, run: _runs.Run):
    from ..core.viz import Markdown
    if not params.unlabelled:
        return Markdown("Supervised training (no `unlabelled` images).")
    return _semisup.comparison_table(run.path)


def preview_augmentation(params: TrainParams, ds: _data.Dataset, n_images: int = 8, n_samples: int = 3):
    """Figure of originals and augmented samples, from a separate pipeline instance so the training
    pipeline's random stream stays untouched."""
    from ..core.viz import augmentation_preview
    t, photo = augmentation(params, ds)
    idx = _preview_indices(len(ds.images["train"]), n_images, params.seed)
    originals = ds.images["train"][idx]
    return augmentation_preview(originals, [_augment.apply(t, originals) for _ in range(n_samples)],
                                title=f"Augmentation preset '{params.augment}'"
                                      + (f" + acquisition changes ({photo['source']})" if photo else "")
                                      + f" (seed {params.seed})")


NOTEBOOK = _cells.Stage(
    stage="train", title="10 · Train",
    inputs="a dataset: a data card name (default the embedded BloodMNIST), a MedMNIST-format `.npz`, a folder "
           "written by `workbench ingest` or an image folder with its card",
    outputs="`model.keras` (best epoch by val loss; with `tta` the network wrapped in test-time augmentation, "
            "the bare network in `backbone.keras`), `input.json` (the input path every later stage uses), "
            "`preprocess.json`, `augment.yaml`, `history.csv`, `train_summary.json`, `params/train.json`, "
            "`provenance.json`",
    cells=(
        _cells.code('import workbench as wb\nfrom workbench import train\n\nP = wb.params.collect("train", globals())\n'
                    "run, P, ds = train.open_stage(P)  # loads the data and fills in the recipe from it; "
                    "params/train.json records the effective values"),
        _cells.md("## Data"),
        _cells.show("ds.describe()"),
        _cells.show("train.balance_figure(ds)"),
        _cells.show('wb.viz.samples_per_class(ds.images["train"], ds.labels["train"], ds.class_names, seed=P.seed)'),
        _cells.md("## Orientation\nWhether flips and quarter turns preserve the labels is a property of the data "
                  "(the data card's `orientation`); the recipe's augmentation and test-time augmentation follow it."),
        _cells.show("train.orientation_note(P, ds)"),
        _cells.md("## Input path and preprocessing\nSize, channels and resize policy of the data, then denoising, "
                  "contrast and normalisation from the parameters `denoise`, `contrast` and `normalize`. Saved as "
                  "`input.json`: evaluate, annotate (any pool), review and explore feed the model through it."),
        _cells.code("spec = train.make_input_spec(P, ds, run)"),
        _cells.show("spec.describe()"),
        _cells.show("train.preview_preprocessing(P, ds, spec)"),
        _cells.code("ds = train.prepare_dataset(ds, spec)"),
        _cells.md("## Augmentation\nApplied on the fly to training batches; the pipeline is saved as `augment.yaml`."),
        _cells.code("aug = train.make_augmentation(P, ds, run)"),
        _cells.show("train.preview_augmentation(P, ds)"),
        _cells.md("## Unlabelled images\nWith `-p unlabelled POOL` (a folder, an `.npz`, or `train` with "
                  "`label_fraction` < 1), FixMatch learns from them too (workbench.semisup): each step takes "
                  "`unlabelled_ratio` unlabelled images per labelled one, a weak view (the preset above) and a strong "
                  "view (two RandAugment ops and Cutout, within the card's orientation rule). The pool's labels, where "
                  "it has them, are only read to report the pseudo-labels' accuracy, never trained on."),
        _cells.code("unl = train.load_unlabelled(P, ds, spec, run)  # None without -p unlabelled"),
        _cells.show("train.preview_strong_views(P, ds)"),
        _cells.md("## Model"),
        _cells.code("model = train.build_model(P, ds, run)"),
        _cells.show("model.summary()"),
        _cells.md("## Training\nAdamW with linear warm-up and cosine decay; early stopping on val loss restores the "
                  "best epoch, which is also the checkpoint saved as `model.keras`."),
        _cells.code("history = train.fit(model, ds, aug, P, run, unlabelled=unl)"),
        _cells.show("history"),
        _cells.show("wb.viz.training_curves(history)"),
        _cells.show('run.read_json("train_summary.json")'),
        _cells.md("## Pseudo-labels\nSemi-supervised runs: the share of unlabelled images whose weak view reaches "
                  "`pseudo_threshold` (the mask rate) per epoch, in the training batches and on a fixed sample of the "
                  "pool; where the pool's labels are known, how often those pseudo-labels are right. Then the same "
                  "recipe trained on the labelled images alone (`compare_supervised`, in `supervised/`)."),
        _cells.show("train.semi_supervised_report(P, history, run)"),
        _cells.code("baseline = train.fit_supervised_baseline(P, ds, run)"),
        _cells.show("train.semi_supervised_comparison(P, run)"),
    ),
    result=("run",),
)


def run(params: TrainParams) -> dict:
    """The whole stage without a notebook: the notebook's code cells, in order (workbench.cells)."""
    r = _cells.run_cells(NOTEBOOK, params)["run"]
    return {"run_dir": str(r.path), **r.read_json("train_summary.json")}

"""Train stage: seeded fit with on-the-fly augmentation, cosine LR with warm-up, early stopping on
val_loss, best checkpoint, optional class weights; writes model.keras, history.csv, augment.yaml.

Recipes (``recipe`` parameter, ``RECIPES``) fill in every parameter marked "(recipe)" that was left at
its empty default (-1 or ""); a value passed explicitly always wins, and ``params/train.json``
records the effective values. Transfer learning: ``init_from`` (a run directory or ``.keras`` file)
copies weights layer by layer (by name, where shapes match), ``freeze_backbone`` trains only the
classifier. With more than one local JAX device, training is data-parallel over all of them
(``keras.distribution.DataParallel``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from . import augment as _augment
from . import data as _data
from . import models as _models
from . import preprocess as _pre
from . import runs as _runs
from . import layers as _layers
from .errors import WorkbenchError
from .params import TrainParams
from .progress import TqdmTraining

# What each recipe sets where the user left a "(recipe)" parameter empty. demo: the foundation's compact
# CNN (≈ 4 min on 2 CPU cores). full: twice the width and more epochs, without early stopping (patience =
# epochs: at the high learning rates early in the cosine schedule val_loss jumps about, and patience 8
# once stopped a run at epoch 18 of 36, 2.6 points down) and without EMA of the weights (Keras' optimizer
# EMA, written into the model every epoch, cost about 0.7 points; recomputing the batch-norm statistics
# under the averaged weights did not win them back). Both recipes use test-time augmentation over the 8
# flips/quarter turns (only where the augmentation preset says the images have no canonical orientation,
# see ``resolve``). Measured results: bench/results/accuracy.json (make bench-accuracy).
RECIPES: dict[str, dict] = {
    "demo": {"model": "cnn", "width": 16, "dropout": 0.2, "augment": "dihedral", "epochs": 15,
             "learning_rate": 0.003, "patience": 5, "ema": "no", "tta": "auto"},
    "full": {"model": "cnn", "width": 32, "dropout": 0.2, "augment": "dihedral", "epochs": 36,
             "learning_rate": 0.003, "patience": "epochs", "ema": "no", "tta": "auto"},
}
# presets whose flips and quarter turns are label-preserving: there dihedral TTA is valid
ORIENTATION_FREE_PRESETS = ("microscopy", "dihedral")


def resolve(params: TrainParams) -> TrainParams:
    """Fill the recipe's values into the parameters left at their empty default; explicit values win."""
    recipe = RECIPES[params.recipe]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainParams)}
    values = {}
    for name, value in recipe.items():
        if getattr(params, name) == defaults[name]:
            values[name] = value
    out = dataclasses.replace(params, **values)
    if out.patience == "epochs":  # no early stopping, however many epochs the user asks for
        out = dataclasses.replace(out, patience=out.epochs)
    if out.tta == "auto":
        out = dataclasses.replace(out, tta="yes" if out.augment in ORIENTATION_FREE_PRESETS else "no")
    if out.freeze_backbone and not out.init_from:
        raise WorkbenchError("parameter 'freeze_backbone' needs 'init_from' (a trained run directory or .keras file)")
    from .params import make, to_dict
    return make("train", to_dict(out))  # the filled-in values pass the usual checks


def open_stage(params: TrainParams):
    """Resolve the recipe, set up the CPU training path, open the run directory (params + provenance)."""
    p = resolve(params)
    backend = _layers.configure_backend(p.conv_impl)
    run = _runs.open_stage("train", p)
    _runs.add_provenance(run, training_path=backend, recipe={"name": p.recipe, **RECIPES[p.recipe]})
    return run, p


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled batches, augmented on the fly; one seeded generator drives order and augmentation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, transform, seed: int,
                 multiple_of: int = 1):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels = images, labels
        # data-parallel training splits every batch evenly over the devices: a last batch that does not
        # divide is cut to the largest multiple (the images left out change every epoch)
        self.multiple_of = multiple_of
        self.batch_size, self.transform = batch_size, transform
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        idx = idx[:len(idx) - len(idx) % self.multiple_of] if len(idx) > self.multiple_of else idx
        x = _augment.apply(self.transform, self.images[idx]).astype("float32")
        return x, self.labels[idx]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))


def load_data(params: TrainParams, run: _runs.Run | None = None) -> _data.Dataset:
    ds = _data.load_dataset(params.dataset, size=params.size, max_per_split=params.max_per_split, seed=params.seed)
    extra = None
    if params.extra_labels:
        ds, extra = add_extra_labels(ds, params.extra_labels)
    if run is not None:
        _runs.add_provenance(run, data=ds.describe())
        if extra is not None:
            _runs.add_provenance(run, extra_labels=extra)
    return ds


def make_preprocessing(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None) -> dict:
    """The preprocessing spec from the parameters (dataset statistics from the train split), saved
    as preprocess.json so evaluate and annotate apply exactly the same recipe."""
    spec = _pre.make_spec(params.denoise, params.contrast, params.normalize,
                          train_images=ds.images["train"] if params.normalize == "dataset" else None)
    if run is not None:
        run.write_json("preprocess.json", spec)
        _runs.add_provenance(run, preprocess=spec)
    return spec


def read_preprocessing(run: _runs.Run, params: TrainParams) -> dict | None:
    """The spec a run was trained with (None for runs from before preprocessing existed)."""
    from .errors import WorkbenchError
    path = run.path / "preprocess.json"
    if not path.exists():
        if (params.denoise, params.contrast, params.normalize) != ("none", "none", "none"):
            raise WorkbenchError(f"{run.path} was trained with preprocessing but has no preprocess.json: "
                                 "the recipe is lost; train a new run")
        return None
    return _pre.check_spec(run.read_json("preprocess.json"))


def preview_preprocessing(params: TrainParams, ds: _data.Dataset, spec: dict, n_images: int = 8):
    """Before/after figure of the same training images."""
    from .viz import preprocessing_preview
    idx = _data.stratified_indices(ds.labels["train"], n_images, params.seed)[:n_images]
    before = ds.images["train"][idx]
    return preprocessing_preview(before, _pre.apply_spec(spec, before),
                                 title=f"Preprocessing: {_pre.describe(spec)}")


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

    Refused: other classes or image shape than the dataset, and images from the val or test split of
    the same dataset file (training on them would leak into the evaluation)."""
    import json
    from dataclasses import replace
    path = _extra_labels_file(spec)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64).reshape(-1)
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


def make_augmentation(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None):
    t = _augment.build(params.augment, params.seed, n_channels=ds.input_shape[-1])
    if run is not None:
        _augment.save(t, params.augment, params.seed, run.file("augment.yaml"))
    return t


def build_model(params: TrainParams, ds: _data.Dataset, run: _runs.Run | None = None) -> keras.Model:
    """The registry model for the data; with ``init_from``, its weights copied in (and the backbone
    frozen with ``freeze_backbone``)."""
    keras.utils.set_random_seed(params.seed)
    distribution = _distribute()
    model = _models.build(params.model, ds.input_shape, ds.num_classes, width=params.width, dropout=params.dropout,
                          conv_impl=params.conv_impl)
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
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise WorkbenchError(f"parameter 'init_from' = {source!r}: no such .keras file or run directory with "
                             "model.keras; give a trained run directory or a .keras file")
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


def fit(model: keras.Model, ds: _data.Dataset, transform, params: TrainParams, run: _runs.Run) -> pd.DataFrame:
    """Fit and checkpoint the best epoch (by val_loss) to model.keras; return the history table."""
    keras.utils.set_random_seed(params.seed)
    import jax
    n_dev = jax.device_count()
    if n_dev > 1 and params.batch_size % n_dev:
        raise WorkbenchError(f"parameter 'batch_size' = {params.batch_size} must be a multiple of the {n_dev} "
                             "devices for data-parallel training")
    batches = AugmentedBatches(ds.images["train"], ds.labels["train"], params.batch_size, transform, params.seed,
                               multiple_of=n_dev)
    steps = len(batches)
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
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=params.weight_decay, **ema),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
    )
    tta = params.tta == "yes"
    model_path = run.file("backbone.keras" if tta else "model.keras")
    history_path = run.file("history.csv")
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(model_path), monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=params.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(history_path)),
        keras.callbacks.TerminateOnNaN(),
        TqdmTraining(params.epochs, steps),
    ]
    cw = class_weight(ds.labels["train"], ds.num_classes) if params.class_weights else None
    t0 = time.perf_counter()
    model.fit(batches, validation_data=(ds.images["val"].astype("float32"), ds.labels["val"]),
              epochs=params.epochs, callbacks=callbacks, class_weight=cw, verbose=0)
    seconds = time.perf_counter() - t0
    if tta:
        with_tta(model).save(run.file("model.keras"))
    hist = pd.read_csv(history_path)
    best = int(hist["val_loss"].idxmin())
    summary = {
        "epochs_run": int(len(hist)), "best_epoch": best + 1,
        "best_val_loss": float(hist["val_loss"][best]), "best_val_acc": float(hist["val_acc"][best]),
        "train_seconds": round(seconds, 2),
        "train_images_per_second": round(len(hist) * len(ds.labels["train"]) / seconds, 1),
        "class_weight": cw, "num_params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "tta": tta, "ema": params.ema == "yes", "conv_impl": params.conv_impl,
    }
    run.write_json("train_summary.json", summary)
    return hist


def run(params: TrainParams) -> dict:
    """The whole stage without a notebook (the notebook calls the same steps one per cell)."""
    r, params = open_stage(params)
    ds = load_data(params, r)
    ds = ds.preprocessed(make_preprocessing(params, ds, r))
    t = make_augmentation(params, ds, r)
    model = build_model(params, ds, r)
    fit(model, ds, t, params, r)
    return {"run_dir": str(r.path), **r.read_json("train_summary.json")}


def reload(run: _runs.Run):
    """The trained model and the exact data it was trained on (same file md5, same subset, same
    preprocessing)."""
    from .errors import WorkbenchError
    tp = _params_from_run(run)
    model = _models.load(run.path / "model.keras")
    ds = _data.load_dataset(tp.dataset, size=tp.size, max_per_split=tp.max_per_split, seed=tp.seed)
    trained_md5 = run.read_json("provenance.json").get("train", {}).get("data", {}).get("md5")
    if trained_md5 and ds.md5 != trained_md5:
        raise WorkbenchError(
            f"dataset {ds.path} has md5 {ds.md5} but the model in {run.path} was trained on md5 {trained_md5}: "
            "restore the original file or train a new run"
        )
    return model, ds.preprocessed(read_preprocessing(run, tp)), tp


def _params_from_run(run: _runs.Run) -> TrainParams:
    from .params import make
    return make("train", run.read_json("params/train.json"))


def preview_augmentation(params: TrainParams, ds: _data.Dataset, n_images: int = 8, n_samples: int = 3):
    """Figure of originals and augmented samples, from a separate pipeline instance so the training
    pipeline's random stream stays untouched."""
    from .viz import augmentation_preview
    t = _augment.build(params.augment, params.seed, n_channels=ds.input_shape[-1])
    idx = _data.stratified_indices(ds.labels["train"], n_images, params.seed)[:n_images]
    originals = ds.images["train"][idx]
    return augmentation_preview(originals, [_augment.apply(t, originals) for _ in range(n_samples)],
                                title=f"Augmentation preset '{params.augment}' (seed {params.seed})")

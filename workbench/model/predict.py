"""One prediction module: batched prediction (in memory or streamed), test-time augmentation,
MC-dropout and seed ensembles, for every stage (evaluate, annotate, active learning, the widgets).

Images are uint8 arrays already through the run's input path (workbench.inputs.prepare); the models
take 0-255 floats and rescale inside. Every batch is padded to one shape (repeating its last image; the
padding's outputs are dropped): JAX compiles a model once per input shape, about a second each, and a
stage predicts val, test, a pool, augmented and occluded copies; with one shape it compiles once.
Outputs are probabilities: softmax over the classes, or one sigmoid per label (multi-label tasks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import WorkbenchError


def pad_batch(a: np.ndarray, size: int) -> np.ndarray:
    """Pad the first axis to ``size`` by repeating the last item (one compiled shape for every batch)."""
    if len(a) >= size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _n_outputs(model) -> int:
    return int(model.output_shape[-1])


def predict(model, images: np.ndarray, batch_size: int = 512, desc: str = "predict", progress: bool = True) -> np.ndarray:
    """Probabilities (N, K) for uint8 images, in batches of one shape, with a progress bar."""
    from ..core.progress import tqdm
    images = np.asarray(images)
    if not len(images):
        return np.zeros((0, _n_outputs(model)))
    size = min(batch_size, len(images))
    steps = range(0, len(images), batch_size)
    out = []
    for i in (tqdm(steps, desc=desc, unit="batch") if progress else steps):
        x = images[i:i + batch_size].astype("float32")
        out.append(np.asarray(model.predict_on_batch(pad_batch(x, size)))[:len(x)])
    return np.concatenate(out).astype(np.float64)


def predict_stream(model, batches, total: int, batch_size: int = 512, desc: str = "predict") -> np.ndarray:
    """Probabilities for images arriving in batches (``(positions, images)`` pairs, e.g. a pool streamed
    from disk, never all in memory); rows in position order. Every batch is padded to ``batch_size``."""
    out = np.full((total, 0), np.nan)
    for positions, images in batches:
        if not len(images):
            continue
        p = np.asarray(model.predict_on_batch(pad_batch(np.asarray(images).astype("float32"), batch_size)))[:len(images)]
        if out.shape[1] == 0:
            out = np.full((total, p.shape[1]), np.nan)
        out[np.asarray(positions)] = p
    return out


def calibrated(probs: np.ndarray, temperature, task: str) -> np.ndarray:
    """Probabilities after the run's temperature scaling (None: unchanged)."""
    if temperature is None:
        return probs
    from ..stats.calibration import apply_temperature
    return apply_temperature(probs, temperature, task)


# ---------------------------------------------------------------------------------------------- TTA
def tta_passes(model, images: np.ndarray, transform, n_passes: int = 8, batch_size: int = 512,
               desc: str = "TTA") -> np.ndarray:
    """(n_passes, N, K) probabilities of augmented copies (``transform``: a seeded albumentations pipeline,
    normally the run's training augmentation)."""
    from ..data import augment as _augment
    from ..core.progress import tqdm
    if _augment.is_identity(transform):
        raise WorkbenchError("test-time augmentation needs an augmentation: the run was trained with preset 'none'; "
                             "set tta_passes 0 or choose another strategy (parameter 'strategy')")
    return np.stack([predict(model, _augment.apply(transform, images), batch_size, progress=False)
                     for _ in tqdm(range(n_passes), desc=desc, unit="pass")])


def tta_predict(model, images: np.ndarray, augment_yaml: Path, passes: int, seed: int,
                batch_size: int = 512) -> np.ndarray:
    """Mean probabilities over the images as they are and ``passes`` copies drawn from the run's training
    augmentation (augment.yaml), re-seeded with ``seed``."""
    from ..data import augment as _augment
    t, _ = _augment.load(augment_yaml)
    _augment.reseed(t, seed)
    total = predict(model, images, batch_size, desc="predict test")
    return (total + tta_passes(model, images, t, passes, batch_size, desc="test-time augmentation").sum(0)) / (passes + 1)


# ---------------------------------------------------------------------------------------------- ensembles
def ensemble_predict(trained, members: list[Path], split: str = "test", batch_size: int = 512) -> list[np.ndarray]:
    """``split`` probabilities of each member run's model. Members must have been trained on the same data
    (same file md5, same images in the same order) with the same input path; each predicts through its own."""
    from . import runload
    ds = trained.dataset()
    out = []
    for p in members:
        m = runload.load(p)
        mds = m.dataset()
        same = (mds.md5 == ds.md5 and mds.images[split].shape[0] == ds.images[split].shape[0]
                and np.array_equal(mds.labels[split], ds.labels[split]) and m.class_names == trained.class_names)
        if not same:
            raise WorkbenchError(f"parameter 'ensemble': {p} was trained on other data ({mds.name}, md5 {mds.md5}, "
                                 f"{len(mds.labels[split])} {split} images) than this run ({ds.name}, md5 {ds.md5}, "
                                 f"{len(ds.labels[split])}): members need the same dataset, size and subset")
        out.append(predict(m.model, mds.images[split], batch_size, desc=f"predict {split} ({p.name})"))
    return out


# ---------------------------------------------------------------------------------------------- MC-dropout
def _dropout_layers(model):
    from keras import layers
    return [layer for layer in model.layers if isinstance(layer, layers.Dropout)]


def mc_dropout_model(model, seed: int = 0, rate: float | None = None):
    """A model sharing ``model``'s layers and weights in which only the Dropout layers sample.

    ``model(x, training=True)`` would also switch BatchNormalization to batch statistics (and move
    its running averages); instead the graph is cloned with each Dropout replaced by a copy whose
    ``call`` always drops, while every other layer is the original object (shared weights, inference
    mode). ``rate`` overrides the trained dropout rate (None: keep it; 0 reproduces the deterministic
    prediction, which the tests use to show that nothing else changed). Raises WorkbenchError when the
    model has no Dropout layer.
    """
    import keras
    from keras import layers

    class _AlwaysDropout(layers.Dropout):
        def call(self, inputs, training=False):
            return super().call(inputs, training=True)

    if not _dropout_layers(model):
        raise WorkbenchError(
            f"model {model.name!r} has no Dropout layer, so MC-dropout has nothing to sample: train with "
            "dropout > 0 or choose another strategy (parameter 'strategy')")
    counter = iter(range(1, 1_000_000))

    def clone(layer):
        if isinstance(layer, layers.Dropout):
            cfg = layer.get_config()
            cfg["seed"] = (int(seed) * 1000 + next(counter)) % (2**31 - 1)
            if rate is not None:
                cfg["rate"] = float(rate)
            return _AlwaysDropout.from_config(cfg)
        return layer  # the original object: shared weights, unchanged behaviour

    return keras.models.clone_model(model, clone_function=clone)


def _split_at_first_dropout(mc):
    """(prefix, head): the deterministic part before the first Dropout is computed once and only the
    head is re-run per pass. None when the graph does not split there (e.g. a skip connection around it)."""
    import keras
    first = _dropout_layers(mc)[0]
    try:
        prefix = keras.Model(mc.inputs, first.input)
        head = keras.Model(first.input, mc.outputs)
    except (ValueError, TypeError, KeyError):
        return None
    return prefix, head


def mc_dropout_passes(model, images: np.ndarray, n_passes: int = 10, seed: int = 0,
                      batch_size: int = 512, rate: float | None = None, split: bool = True) -> np.ndarray:
    """(n_passes, N, K) probabilities with dropout sampling (see ``mc_dropout_model``).

    With ``split`` the layers before the first Dropout run once and only the rest runs per pass."""
    from ..core.progress import tqdm
    mc = mc_dropout_model(model, seed, rate)
    parts = _split_at_first_dropout(mc) if split else None
    x = np.asarray(images, dtype=np.float32)
    if parts is not None:
        prefix, head = parts
        x = predict(prefix, x, batch_size, progress=False).astype(np.float32)
        mc = head
    return np.stack([predict(mc, x, batch_size, progress=False)
                     for _ in tqdm(range(n_passes), desc="MC-dropout", unit="pass")])

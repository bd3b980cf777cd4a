"""Test-time adaptation: a trained model adjusted to a pool of new images, label-free, opt-in, recorded.

A pool from another microscope, scanner or stain batch differs from the training images in ways the
network's batch-norm statistics and the colour of its inputs capture. Two label-free adaptations, each
estimated from the pool's images only (its labels, where it has any, are never read):

- ``bn``: batch-norm statistics re-estimated on the pool (AdaBN, Li et al. 2016; Schneider et al.,
  NeurIPS 2020). Each BatchNormalization layer, in order (the earlier layers already adapted), is moved by
  the difference between its input's mean and variance over the pool (a seeded sample of at most
  ``MAX_IMAGES`` images) and over clean training images measured the same way (``bn_reference``): the
  running statistics were averaged over augmented batches in training mode, and replacing them outright
  by plain images' statistics cost 0.2 and 0.5 points of clean accuracy on the whole val split of two
  BloodMNIST demo runs (the clean val split as the pool); moving them by the difference changed it by +0.1
  and -0.06 points, with the same gain under corruption (val only). With few pool images the move is shrunk:
  weight n / (n + ``PRIOR``) (Schneider et al.'s pseudo-count; 16 images).
- ``color``: the pool's colour standardised to the training set's (a Reinhard-style mean / standard
  deviation match, Reinhard et al. 2001, done once for the whole pool, not per image, so differences
  between the pool's images, which carry the class, are kept). RGB images are matched per channel in
  optical density, OD = -log((I + 1) / 256) (Beer-Lambert: a stain that is darker or lighter, another dye
  balance or another lamp are affine in OD, so the match undoes them exactly); grayscale images in
  intensity. The map is a layer in front of the network (``ColorStandardize``).
- ``color+bn``: both, the batch-norm statistics estimated on the colour-standardised pool.

What it assumes: the pool is one acquisition condition (one site, scanner, stain batch) and holds
roughly the classes the model knows in proportions like training; a pool of a single class, or a mix of
sites, gives statistics that describe neither. The adapted model is built for this pool only; the run's
``model.keras`` is never changed. The annotate stage (``-p adapt``) predicts the pool with it; its
thresholds stay those chosen on val with the trained model, and the shift check then compares the
adapted pool predictions with val, so it certifies the adapted model (a failed adaptation shows as a
shift). The record (method, sample size, the statistics before and after) goes to the pool's provenance
and ``adaptation.json``.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from ..core.errors import WorkbenchError

METHODS = ("none", "bn", "color", "color+bn")
MAX_IMAGES = 8192      # pool images (seeded sample) the statistics are estimated from
REFERENCE_IMAGES = 4096   # training images (seeded sample) the reference statistics are measured on
PRIOR = 16             # pseudo-count of the training statistics (Schneider et al. 2020)
ADAPT_FILE = "adaptation.json"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise WorkbenchError(f"parameter 'adapt' = {method!r} is not one of {', '.join(METHODS)}")
    return method


def sample_positions(n: int, cap: int = MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """All of 0..n-1, or a seeded sorted sample of ``cap`` of them."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


# ---------------------------------------------------------------------------------------------- colour
def _to_space(x: np.ndarray) -> np.ndarray:
    """uint8/float images → the space the statistics live in (OD for RGB, 0-1 intensity for grayscale)."""
    x = np.asarray(x, np.float64)
    return -np.log((x + 1.0) / 256.0) if x.shape[-1] == 3 else x / 255.0


def color_stats(images: np.ndarray) -> dict:
    """Per-channel mean and standard deviation over every pixel of ``images`` (N, H, W, C)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise WorkbenchError(f"colour statistics need images (N, H, W, 1|3) with N > 0; got {images.shape}")
    v = _to_space(images).reshape(-1, images.shape[-1])
    return {"space": "optical density" if images.shape[-1] == 3 else "intensity",
            "mean": v.mean(0).tolist(), "std": np.maximum(v.std(0), 1e-6).tolist(), "n_images": int(len(images))}


def color_map(images: np.ndarray, source: dict, reference: dict) -> np.ndarray:
    """``images`` with ``source``'s per-channel statistics mapped onto ``reference``'s (numpy; the same map
    as ``ColorStandardize``), uint8 out."""
    v = _to_space(images)
    a = np.asarray(reference["std"]) / np.asarray(source["std"])
    z = (v - np.asarray(source["mean"])) * a + np.asarray(reference["mean"])
    out = 256.0 * np.exp(-z) - 1.0 if images.shape[-1] == 3 else z * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@keras.saving.register_keras_serializable(package="workbench")
class ColorStandardize(keras.layers.Layer):
    """Raw 0-255 pixels with one pool's per-channel statistics mapped onto the training set's (in optical
    density for RGB, intensity for grayscale), clipped to 0-255: ``color_map`` as a layer."""

    def __init__(self, src_mean, src_std, ref_mean, ref_std, **kwargs):
        super().__init__(**kwargs)
        self.src_mean, self.src_std = [float(v) for v in src_mean], [float(v) for v in src_std]
        self.ref_mean, self.ref_std = [float(v) for v in ref_mean], [float(v) for v in ref_std]

    def call(self, inputs):
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        scale = ops.convert_to_tensor(np.asarray(self.ref_std) / np.asarray(self.src_std), "float32")
        src = ops.convert_to_tensor(self.src_mean, "float32")
        ref = ops.convert_to_tensor(self.ref_mean, "float32")
        if len(self.src_mean) == 3:
            z = (-ops.log((x + 1.0) / 256.0) - src) * scale + ref
            y = 256.0 * ops.exp(-z) - 1.0
        else:
            y = ((x / 255.0 - src) * scale + ref) * 255.0
        return ops.clip(ops.round(y), 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "src_mean": self.src_mean, "src_std": self.src_std,
                "ref_mean": self.ref_mean, "ref_std": self.ref_std}


def with_color(model: keras.Model, source: dict, reference: dict) -> keras.Model:
    """``model`` with ``ColorStandardize`` in front: the same layers (shared, not copied) replayed on a new
    input, so the graph stays flat (MC-dropout and Grad-CAM find the layers they look for)."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    color = ColorStandardize(source["mean"], source["std"], reference["mean"], reference["std"],
                             name="color_standardize")

    def call(layer, *args, **kwargs):     # the layers that read the model's input read the standardised one
        if args and args[0] is inputs:
            return layer(color(inputs), *args[1:], **kwargs)
        return layer(*args, **kwargs)
    try:
        return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer,
                                        call_function=call)
    except (ValueError, TypeError):     # a graph clone_model cannot replay: nest it instead
        return keras.Model(inputs, model(color(inputs)), name=f"{model.name}_color")


# ---------------------------------------------------------------------------------------------- batch norm
def _bn_layers(model: keras.Model) -> list:
    from .models import backbone
    bb = backbone(model)
    return bb, [layer for layer in bb.layers if isinstance(layer, keras.layers.BatchNormalization)]


def bn_probes(model: keras.Model) -> list:
    """(BatchNormalization layer, model from the network's input to that layer's input) pairs, in graph
    order; built once per model object (each probe compiles once; re-running it after the statistics of
    earlier layers changed needs no recompilation: the weights are arguments of the compiled function)."""
    cached = model.__dict__.get("_workbench_bn_probes")
    if cached is None:
        bb, layers = _bn_layers(model)
        if not layers:
            raise WorkbenchError(f"parameter 'adapt': model {model.name!r} has no BatchNormalization layer to "
                                 "adapt; use adapt color or none")
        cached = []
        for layer in layers:    # per-batch channel means of x and x² (summed in float64 outside, over batches)
            f = layer.input
            axes = tuple(range(len(f.shape) - 1))
            stats = keras.ops.stack([keras.ops.mean(f, axis=axes[1:]), keras.ops.mean(keras.ops.square(f), axis=axes[1:])], 1)
            cached.append((layer, keras.Model(bb.inputs, stats)))
        model.__dict__["_workbench_bn_probes"] = cached
    return cached


def bn_state(model: keras.Model) -> list:
    """The moving statistics of every BatchNormalization layer (``bn_restore`` puts them back)."""
    return [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)) for layer, _ in bn_probes(model)]


def bn_restore(model: keras.Model, state: list) -> None:
    for (layer, _), (m, v) in zip(bn_probes(model), state):
        layer.moving_mean.assign(m)
        layer.moving_variance.assign(v)


def _layer_stats(probe, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Channel mean and variance of a BN layer's input over ``images`` (one probe of ``bn_probes``)."""
    from .predict import pad_batch
    n = len(images)
    size = min(batch_size, n)
    s = 0.0
    for i in range(0, n, batch_size):
        x = images[i:i + batch_size].astype("float32")
        # (B, 2, C): each image's channel means of x and x²; every image has as many pixels
        s = s + np.asarray(probe.predict_on_batch(pad_batch(x, size)), np.float64)[:len(x)].sum(0)
    mean, sq = s[0] / n, s[1] / n
    return mean, np.maximum(sq - mean ** 2, 0.0)


def bn_reference(model: keras.Model, images: np.ndarray, batch_size: int = 512) -> list:
    """Each BN layer's input statistics over clean training images, measured as ``bn_adapt`` measures a
    pool's (plain images through the trained network). ``bn_adapt`` moves the layer by the pool's difference
    from these, so a pool like the training images leaves the model as trained (the running statistics were
    averaged over augmented training batches in training mode, which plain images do not reproduce)."""
    return [_layer_stats(probe, images, batch_size) for _, probe in bn_probes(model)]


def bn_adapt(model: keras.Model, images: np.ndarray, batch_size: int = 512, prior: int = PRIOR,
             reference: list | None = None) -> dict:
    """Re-estimate, in place and layer by layer, every BatchNormalization layer's moving mean and variance
    from ``images`` (model-ready uint8, the pool's); returns what changed. The caller passes a copy of the
    trained model (``adapt_model`` does)."""
    n = len(images)
    w = n / (n + prior)
    changes = []
    for i, (layer, probe) in enumerate(bn_probes(model)):
        mean, var = _layer_stats(probe, images, batch_size)
        old_m = np.asarray(layer.moving_mean, np.float64)
        old_v = np.asarray(layer.moving_variance, np.float64)
        if reference is not None:     # the pool's shift from the clean training images, applied to the running statistics
            ref_m, ref_v = reference[i]
            mean, var = old_m + (mean - ref_m), old_v * (var + 1e-3) / (ref_v + 1e-3)
        new_m, new_v = w * mean + (1 - w) * old_m, w * var + (1 - w) * old_v
        layer.moving_mean.assign(new_m.astype("float32"))
        layer.moving_variance.assign(new_v.astype("float32"))
        # how far the pool's statistics moved, in units of the training standard deviation (a summary a person can read)
        changes.append({"layer": layer.name, "mean_shift_sd": float(np.mean(np.abs(new_m - old_m) / np.sqrt(old_v + 1e-3))),
                        "sd_ratio": float(np.mean(np.sqrt((new_v + 1e-3) / (old_v + 1e-3))))})
    return {"layers": len(changes), "n_images": n, "weight": round(w, 6), "prior": prior,
            "relative_to_training_images": reference is not None, "per_layer": changes}


# ---------------------------------------------------------------------------------------------- together
def adapt_model(model_loader, pool_images: np.ndarray, reference_images: np.ndarray | None, method: str,
                batch_size: int = 512) -> tuple[keras.Model | None, dict]:
    """The model adapted to ``pool_images`` (model-ready uint8, no labels). ``model_loader()`` returns a
    fresh copy of the trained model (it is changed in place); ``reference_images`` (a sample of the training
    set's, model-ready) are the colour reference and the batch-norm reference. Returns (model, record);
    (None, record) for ``none``."""
    check_method(method)
    record = {"method": method, "n_images": int(len(pool_images))}
    if method == "none":
        return None, record
    if not len(pool_images):
        raise WorkbenchError("parameter 'adapt': the pool has no images to estimate statistics from")
    if reference_images is None or not len(reference_images):
        raise WorkbenchError(f"adapt {method} needs a sample of the training images as its reference")
    model = model_loader()
    images = pool_images
    if "color" in method:
        src, ref = color_stats(pool_images), color_stats(reference_images)
        record["color"] = {"pool": src, "reference": ref}
        images = color_map(pool_images, src, ref)
    if "bn" in method:
        record["bn"] = bn_adapt(model, images, batch_size, reference=bn_reference(model, reference_images, batch_size))
        record["bn"]["n_reference_images"] = int(len(reference_images))
    if "color" in method:
        model = with_color(model, record["color"]["pool"], record["color"]["reference"])
    return model, record


def for_annotate(run, trained, pool, params):
    """The annotate stage's model for this pool: ``trained`` itself (``adapt none``), or a copy of it whose
    model is adapted to the pool (``params.adapt``). Reads the pool's images only (never its labels); the
    record goes to the pool directory's provenance and ``adaptation.json`` (``run`` None: not recorded)."""
    method = check_method(getattr(params, "adapt", "none"))
    if method == "none":
        return trained
    from . import models as _models
    from ..core.progress import tqdm
    seed = int(getattr(params, "seed", 0))
    spec = trained.input.with_resize(getattr(params, "resize", ""))
    positions = sample_positions(len(pool), MAX_IMAGES, seed)
    chunks = [pool.images(positions[i:i + 1024], spec)
              for i in tqdm(range(0, len(positions), 1024), desc="adapt: read pool sample", unit="chunk")]
    images = np.concatenate(chunks) if chunks else np.zeros((0, *spec.shape), np.uint8)
    train = trained.dataset().images["train"]
    reference = train[sample_positions(len(train), REFERENCE_IMAGES, seed)]
    model, record = adapt_model(lambda: _models.load(trained.path / "model.keras"), images, reference, method,
                                int(getattr(params, "batch_size", 512)))
    record.update({"pool_size": int(len(pool)), "seed": seed, "sample": "all" if len(positions) == len(pool)
                   else f"seeded sample of {len(positions)}", "labels_read": False})
    print(f"test-time adaptation '{method}' on {len(images)} pool images (labels not read)")
    if run is not None:
        from ..core import runs as _runs
        run.write_json(ADAPT_FILE, record)
        _runs.add_provenance(run, adaptation=record)
    adapted = dataclasses.replace(trained, _model=model)
    adapted.adaptation = record
    return adapted


def summary(trained) -> dict:
    """The adaptation record of an annotate stage's model (``{"method": "none"}`` when not adapted)."""
    return dict(getattr(trained, "adaptation", None) or {"method": "none"})

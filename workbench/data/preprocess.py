"""Preprocessing as pure functions: DICOM windowing, resizing, denoising, contrast, normalisation.

Every function takes a batch ``(N, H, W, C)`` (or one image where said) and returns a new array;
nothing is changed in place and nothing random happens. The train stage turns its ``denoise``,
``contrast`` and ``normalize`` parameters into a *spec* (``make_spec``), writes it to the run as
``preprocess.json`` and every stage applies it with the one call ``apply_spec(spec, images)``
(via ``Dataset.preprocessed``), so train, evaluate and annotate see identical pixels.

Why everything stays uint8: the models take 0-255 pixel values and rescale inside
(``Rescaling(1/255)``), the augmentation presets assume uint8 and a saved ``model.keras`` must keep
one input contract. Denoising and contrast produce uint8 by nature; min-max normalisation
stretches each image to the full 0-255 range (the model then sees [0, 1]). Z-scores (per image, or
with the train split's mean/std) are re-quantised as ``128 + 32·z`` clipped to 0-255 (±3.97 σ), so
the network sees ``0.5 + z/8``: an affine map of the z-score that its first convolution absorbs,
at a resolution of 1/32 σ. The chosen spec, with the train statistics, is stored in the run.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import WorkbenchError
from ..core.params import CONTRAST, DENOISE, NORMALIZE  # the methods' names: the parameters' vocabulary

SPEC_VERSION = 1
Z_CENTER, Z_SCALE = 128.0, 32.0   # uint8 encoding of a z-score: 128 + 32·z

# CT windows (level, width) in Hounsfield units, as listed by Radiopaedia, "Windowing (CT)"
# (https://radiopaedia.org/articles/windowing-ct): brain W80 L40, lungs W1500 L-600,
# mediastinum W350 L50, abdomen soft tissue W400 L50, bone W1800 L400.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "bone": (400.0, 1800.0),
}

RESIZE = ("none", "stretch", "pad", "crop")

# fixed settings, recorded in every spec so an old run reproduces even if these defaults change
SETTINGS = {
    "median": {"ksize": 3},
    "gaussian": {"sigma": 1.0},
    "nlmeans": {"h": 10.0, "template_window": 7, "search_window": 21},
    "clahe": {"clip_limit": 2.0, "tile_grid": 8},
    "histeq": {},
}


# ----------------------------------------------------------------------------- DICOM intensities

def window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map modality values (e.g. HU) to uint8 with the DICOM linear VOI function (PS3.3 C.11.2.1.2.1):
    values at or below ``level - width/2`` become 0, at or above ``level + width/2`` become 255."""
    if width < 1:
        raise WorkbenchError(f"window width {width} must be at least 1")
    x = np.asarray(values, dtype=np.float64)
    y = ((x - (level - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def minmax_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch one image's value range to 0-255 (a constant image becomes all 0)."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.clip(np.round((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def invert(images: np.ndarray) -> np.ndarray:
    """MONOCHROME1 (minimum value = white) → MONOCHROME2 display convention."""
    return (255 - np.asarray(images, dtype=np.uint8)).astype(np.uint8)


# ----------------------------------------------------------------------------- geometry

def resize(image: np.ndarray, size: int, policy: str) -> np.ndarray:
    """One (H, W, C) uint8 image → (size, size, C) by an explicit policy:
    ``none`` (must already be size×size), ``stretch`` (ignore the aspect ratio), ``pad`` (letterbox
    with black borders, aspect kept) or ``crop`` (centre square crop, aspect kept)."""
    import cv2
    if policy not in RESIZE:
        raise WorkbenchError(f"resize policy {policy!r} is not one of {', '.join(RESIZE)}")
    h, w, c = image.shape
    if (h, w) == (size, size):
        return image
    if policy == "none":
        raise WorkbenchError(
            f"image is {h}x{w} but size is {size}: choose a resize policy (stretch, pad or crop)"
        )
    if policy == "pad":
        side = max(h, w)
        canvas = np.zeros((side, side, c), image.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = image
        image = canvas
    elif policy == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)
    return out.reshape(size, size, c)


# ----------------------------------------------------------------------------- per-image filters

def _per_image(images: np.ndarray, fn, desc: str) -> np.ndarray:
    images = _check_batch(images)
    out = np.empty_like(images)
    it = range(len(images))
    if len(images) >= 2000:
        from ..core.progress import tqdm
        it = tqdm(it, desc=desc, unit="img")
    for i in it:
        out[i] = fn(np.ascontiguousarray(images[i])).reshape(images.shape[1:])
    return out


def _check_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise WorkbenchError(f"preprocessing needs uint8 images (N, H, W, 1|3); got {images.dtype} {images.shape}")
    return images


def denoise(images: np.ndarray, method: str) -> np.ndarray:
    """``median`` (3×3), ``gaussian`` (σ = 1) or ``nlmeans`` (OpenCV fast non-local means, h = 10)."""
    import cv2
    if method == "none":
        return _check_batch(images)
    if method not in DENOISE:
        raise WorkbenchError(f"denoise method {method!r} is not one of {', '.join(DENOISE)}")
    s = SETTINGS[method]
    if method == "median":
        fn = lambda im: cv2.medianBlur(im, s["ksize"])  # noqa: E731
    elif method == "gaussian":
        fn = lambda im: cv2.GaussianBlur(im, (0, 0), s["sigma"])  # noqa: E731
    else:
        def fn(im):
            if im.shape[-1] == 3:
                return cv2.fastNlMeansDenoisingColored(im, None, s["h"], s["h"], s["template_window"],
                                                       s["search_window"])
            return cv2.fastNlMeansDenoising(im[..., 0], None, s["h"], s["template_window"], s["search_window"])
    return _per_image(images, fn, f"denoise ({method})")


def enhance_contrast(images: np.ndarray, method: str) -> np.ndarray:
    """``clahe`` (clip 2.0, 8×8 tiles) or ``histeq`` (global histogram equalisation); RGB images are
    equalised on the L channel of CIELAB so colours keep their hue."""
    import cv2
    if method == "none":
        return _check_batch(images)
    if method not in CONTRAST:
        raise WorkbenchError(f"contrast method {method!r} is not one of {', '.join(CONTRAST)}")
    if method == "clahe":
        s = SETTINGS["clahe"]
        op = cv2.createCLAHE(clipLimit=s["clip_limit"], tileGridSize=(s["tile_grid"], s["tile_grid"])).apply
    else:
        op = cv2.equalizeHist

    def fn(im):
        if im.shape[-1] == 1:
            return op(im[..., 0])
        lab = cv2.cvtColor(im, cv2.COLOR_RGB2LAB)
        lab[..., 0] = op(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return _per_image(images, fn, f"contrast ({method})")


def dataset_stats(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std over a whole split (computed on train, applied to every split)."""
    x = _check_batch(images).astype(np.float64)
    return {"mean": x.mean(axis=(0, 1, 2)).round(6).tolist(), "std": x.std(axis=(0, 1, 2)).round(6).tolist()}


def _encode_z(z: np.ndarray) -> np.ndarray:
    return np.clip(np.round(Z_CENTER + Z_SCALE * z), 0, 255).astype(np.uint8)


def normalize(images: np.ndarray, method: str, stats: dict | None = None) -> np.ndarray:
    """``minmax``: each image stretched to 0-255; ``zscore``: per image (all channels together);
    ``dataset``: per channel with ``stats`` = train mean/std. Z-scores are encoded as uint8
    ``128 + 32·z`` (see the module docstring for why)."""
    images = _check_batch(images)
    if method == "none":
        return images
    if method not in NORMALIZE:
        raise WorkbenchError(f"normalize method {method!r} is not one of {', '.join(NORMALIZE)}")
    x = images.astype(np.float64)
    if method == "minmax":
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo
        out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1) * 255.0, 0.0)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    if method == "zscore":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = x.std(axis=(1, 2, 3), keepdims=True)
        return _encode_z((x - mean) / np.where(std > 0, std, 1.0))
    if not stats or len(stats.get("mean", [])) != images.shape[-1]:
        raise WorkbenchError("normalize 'dataset' needs the train split's per-channel mean/std in the spec")
    mean = np.asarray(stats["mean"], np.float64)
    std = np.asarray(stats["std"], np.float64)
    return _encode_z((x - mean) / np.where(std > 0, std, 1.0))


# ----------------------------------------------------------------------------- spec

_denoise, _contrast, _normalize = denoise, enhance_contrast, normalize  # make_spec's arguments shadow them

def make_spec(denoise: str = "none", contrast: str = "none", normalize: str = "none",
              train_images: np.ndarray | None = None) -> dict:
    """The recorded recipe. ``normalize='dataset'`` computes mean/std on ``train_images`` after
    denoising and contrast (the same pixels the normalisation will see)."""
    for name, value, allowed in (("denoise", denoise, DENOISE), ("contrast", contrast, CONTRAST),
                                 ("normalize", normalize, NORMALIZE)):
        if value not in allowed:
            raise WorkbenchError(f"parameter {name!r} = {value!r} is not one of {', '.join(allowed)}")
    spec = {"version": SPEC_VERSION, "denoise": denoise, "contrast": contrast, "normalize": normalize,
            "settings": {k: SETTINGS[k] for k in (denoise, contrast) if k in SETTINGS}}
    if normalize in ("zscore", "dataset"):
        spec["settings"]["z_encoding"] = {"center": Z_CENTER, "scale": Z_SCALE}
    if normalize == "dataset":
        if train_images is None:
            raise WorkbenchError("normalize 'dataset' needs the train images to compute mean/std")
        spec["stats"] = dataset_stats(_contrast(_denoise(train_images, denoise), contrast))
    return spec


def is_identity(spec: dict | None) -> bool:
    return not spec or all(spec.get(k, "none") == "none" for k in ("denoise", "contrast", "normalize"))


def check_spec(spec: dict) -> dict:
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise WorkbenchError(f"preprocessing spec has version {spec.get('version') if isinstance(spec, dict) else None}; "
                             f"this workbench reads version {SPEC_VERSION}")
    for k, allowed in (("denoise", DENOISE), ("contrast", CONTRAST), ("normalize", NORMALIZE)):
        if spec.get(k) not in allowed:
            raise WorkbenchError(f"preprocessing spec: {k} = {spec.get(k)!r} is not one of {', '.join(allowed)}")
    return spec


def apply_spec(spec: dict | None, images: np.ndarray) -> np.ndarray:
    """Denoise → contrast → normalise, as recorded in ``spec``; the identity spec returns ``images``."""
    if is_identity(spec):
        return images
    check_spec(spec)
    out = denoise(images, spec["denoise"])
    out = enhance_contrast(out, spec["contrast"])
    return normalize(out, spec["normalize"], spec.get("stats"))


def describe(spec: dict | None) -> str:
    if is_identity(spec):
        return "none (images unchanged)"
    return ", ".join(f"{k} {spec[k]}" for k in ("denoise", "contrast", "normalize") if spec[k] != "none")

"""Acquisition corruptions: what another microscope, scanner, stain batch or site does to an image.

A pure, seeded suite (numpy and OpenCV only; no albumentations, so the benchmark's corruptions are not
the training augmentation's code): every function takes uint8 images ``(N, H, W, C)`` (C = 1 or 3,
any size) and returns the same shape and dtype, deterministic for a seed.

    corrupt.CORRUPTIONS                      # registry: name -> function(images, severity, seed)
    corrupt.apply(images, name, severity, seed)
    corrupt.suite(card_or_family)            # [(name, severity), ...] for a data card or a family

Severities 1..3 are fixed here (ImageNet-C style, Hendrycks & Dietterich 2019), never tuned on a
model: 1 is a change between two well-run sites, 3 a poor but still readable acquisition. Spatial
parameters (blur σ, disk radius, bubble size, speckle grain) are given for a 28 px image and scale
with the image side, so a severity means the same change at 28 and at 224 px.

Which corruptions a dataset is tested under depends on how it was acquired: ``FAMILIES`` maps an
acquisition family (stained microscopy, ultrasound, radiograph, CT, fundus photography, ...) to its
suite, at least 8 corruptions each. A data card names its family and the plausible acquisition
changes with their ranges (``acquisition`` front-matter field, validated by workbench.cards); the
ranges drive the photometric training augmentation (workbench.augment), the family drives the suite
here. A card without the field is mapped from its modality text by keywords (``family_of``), with a
warning.

``KIND`` names the acquisition change each corruption belongs to (the keys of ``CHANGES``), so a
report can say which corruptions the training augmentation covered and which it never saw (e.g.
bubbles, defocus, downsampling): the latter measure generalisation rather than the augmentation.

Pure numpy/OpenCV: importing this module loads neither Keras, JAX, albumentations nor matplotlib.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..core.errors import WorkbenchError

SEVERITIES = (1, 2, 3)
REFERENCE_SIDE = 28   # spatial parameters below are for a 28 px image; they scale with the side


# ---------------------------------------------------------------------------------------------- helpers
def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _scale(images: np.ndarray) -> float:
    return min(images.shape[1], images.shape[2]) / REFERENCE_SIDE


def _gray_mean(images: np.ndarray) -> np.ndarray:
    """Per-image mean luminance, shape (N, 1, 1, 1)."""
    x = images.astype(np.float32)
    if x.shape[-1] == 3:
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)
        return x.mean(axis=(1, 2))[:, None, None, None]
    return x.mean(axis=(1, 2, 3))[:, None, None, None]


def _per_image(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([fn(im).reshape(im.shape) for im in images]) if len(images) else images.copy()


# --------------------------------------------------------------------- primitives (also used by bench/)
def gain(images: np.ndarray, g) -> np.ndarray:
    """Multiply intensities (illumination, exposure, ultrasound gain); ``g`` a scalar or per-pixel map."""
    return _to_uint8(images.astype(np.float32) * np.asarray(g, np.float32))


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Scale each image's deviations from its own mean luminance by ``factor``."""
    m = _gray_mean(images)
    return _to_uint8((images.astype(np.float32) - m) * factor + m)


def window(images: np.ndarray, factor: float, level: float = 127.5) -> np.ndarray:
    """Another display window of the same 8-bit data: intensities stretched by ``factor`` about ``level``
    (factor > 1: a narrower window, clipped; < 1: a wider one)."""
    return _to_uint8((images.astype(np.float32) - level) * factor + level)


def gamma(images: np.ndarray, g: float) -> np.ndarray:
    return _to_uint8(255.0 * (images.astype(np.float32) / 255.0) ** g)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` px (OpenCV, reflect-101 border)."""
    import cv2
    return _per_image(images, lambda im: cv2.GaussianBlur(im, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                                          borderType=cv2.BORDER_REFLECT_101))


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """An antialiased disk of ``radius`` px (the point-spread function of defocus), summing to 1."""
    r = int(np.ceil(radius))
    n = (2 * r + 1) * supersample
    c = (np.arange(n) + 0.5) / supersample - (r + 0.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inside = (yy ** 2 + xx ** 2 <= radius ** 2).astype(np.float32)
    k = inside.reshape(2 * r + 1, supersample, 2 * r + 1, supersample).mean(axis=(1, 3))
    return k / k.sum()


def defocus(images: np.ndarray, radius: float) -> np.ndarray:
    import cv2
    k = disk_kernel(radius)
    return _per_image(images, lambda im: cv2.filter2D(im, -1, k, borderType=cv2.BORDER_REFLECT_101))


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """JPEG re-compression at ``quality`` (OpenCV's encoder)."""
    import cv2
    out = []
    for im in images:
        bgr = im[..., ::-1] if im.shape[-1] == 3 else im
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        dec = cv2.imdecode(buf, cv2.IMREAD_COLOR if im.shape[-1] == 3 else cv2.IMREAD_GRAYSCALE)
        out.append((dec[..., ::-1] if im.shape[-1] == 3 else dec).reshape(im.shape))
    return np.stack(out) if out else images.copy()


def stain(images: np.ndarray, gains) -> np.ndarray:
    """Optical density OD = -log((I + 1) / 256) scaled per channel (Beer-Lambert: more or less stain, or a
    different dye balance), then back to intensities."""
    od = -np.log((images.astype(np.float64) + 1.0) / 256.0)
    out = 256.0 * np.exp(-od * np.asarray(gains, dtype=np.float64)[: images.shape[-1]]) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noise(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Additive Gaussian sensor noise of ``sigma`` grey levels (seeded)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(images + rng.normal(0.0, sigma, images.shape)), 0, 255).astype(np.uint8)


def _hsv(images: np.ndarray, fn) -> np.ndarray:
    """Edit RGB images in float HSV (H in degrees 0-360, S and V in 0-1; OpenCV), then back."""
    import cv2

    def one(im):
        hsv = cv2.cvtColor(im.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        h, s, v = fn(hsv[..., 0], hsv[..., 1], hsv[..., 2])
        return cv2.cvtColor(np.stack([h, s, v], -1).astype(np.float32), cv2.COLOR_HSV2RGB) * 255.0
    return _to_uint8(np.stack([one(im) for im in images])) if len(images) else images.copy()


def saturation_shift(images: np.ndarray, delta: float) -> np.ndarray:
    """HSV saturation + ``delta`` on the 0-1 scale (a stronger or weaker stain batch)."""
    return _hsv(images, lambda h, s, v: (h, np.clip(s + delta, 0, 1), v))


def saturation_scale(images: np.ndarray, factor: float) -> np.ndarray:
    return _hsv(images, lambda h, s, v: (h, np.clip(s * factor, 0, 1), v))


def hue_shift(images: np.ndarray, degrees: float) -> np.ndarray:
    return _hsv(images, lambda h, s, v: (np.mod(h + degrees, 360.0), s, v))


def radial_gain(images: np.ndarray, strength: float) -> np.ndarray:
    """Vignetting: gain 1 at the centre falling to 1 - strength in the corners (quadratic)."""
    h, w = images.shape[1:3]
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5, indexing="ij")
    r2 = (yy ** 2 + xx ** 2) / 0.5
    return gain(images, (1.0 - strength * r2)[None, :, :, None])


def depth_gain(images: np.ndarray, strength: float) -> np.ndarray:
    """A mis-set time-gain compensation: gain 1 + s at the top (near the transducer), 1 - s at the bottom."""
    h = images.shape[1]
    ramp = 1.0 + strength * (1.0 - 2.0 * (np.arange(h) + 0.5) / h)
    return gain(images, ramp[None, :, None, None])


def downsample(images: np.ndarray, factor: float) -> np.ndarray:
    """A coarser detector: down to ``factor`` of the side (area average), back up bilinearly."""
    import cv2
    h, w = images.shape[1:3]
    small = (max(2, int(round(w * factor))), max(2, int(round(h * factor))))
    return _per_image(images, lambda im: cv2.resize(cv2.resize(im, small, interpolation=cv2.INTER_AREA), (w, h),
                                                    interpolation=cv2.INTER_LINEAR))


def shot_noise(images: np.ndarray, photons: float, seed: int) -> np.ndarray:
    """Poisson (quantum) noise: ``photons`` counts at full scale (fewer: noisier)."""
    rng = np.random.default_rng(seed)
    return _to_uint8(rng.poisson(images.astype(np.float64) / 255.0 * photons) / photons * 255.0)


def speckle(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Multiplicative speckle: I · (1 + σ n), n a unit Gaussian field smoothed to a grain of about one
    28-px pixel (the same field on every channel)."""
    import cv2
    rng = np.random.default_rng(seed)
    n, h, w = images.shape[:3]
    field = rng.normal(0.0, 1.0, (n, h, w)).astype(np.float32)
    grain = 0.5 * min(h, w) / REFERENCE_SIDE
    if grain > 0.3:
        field = np.stack([cv2.GaussianBlur(f, (0, 0), grain) for f in field]) if n else field
        field /= max(float(field.std()), 1e-6)
    return _to_uint8(images.astype(np.float32) * (1.0 + sigma * field[..., None]))


def bubbles(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Air bubbles (or dust rings) in the mounting medium: per image ``count`` circles of 12-22 % of the
    side, a dark refractive rim and a slightly brighter inside, at seeded positions."""
    rng = np.random.default_rng(seed)
    n, h, w = images.shape[:3]
    side = min(h, w)
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    rim = max(1.0, 0.05 * side)
    out = images.astype(np.float32)
    for i in range(n):
        g = np.ones((h, w), np.float32)
        for _ in range(count):
            r = rng.uniform(0.12, 0.22) * side
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            ring = np.clip(1.0 - np.abs(d - r) / rim, 0.0, 1.0)          # antialiased rim
            inside = np.clip(r - d, 0.0, 1.0)
            g *= (1.0 - 0.45 * ring) * (1.0 + 0.08 * inside * (1.0 - ring))
        out[i] *= g[..., None]
    return _to_uint8(out)


# ---------------------------------------------------------------------- the registry: severities 1..3
Levels = tuple


def _s(images) -> float:
    return _scale(images)


# name: (kind, label, levels, function(images, level, seed), channels it applies to, random?)
_SPEC: dict[str, tuple] = {
    "darker": ("brightness", "darker (illumination / gain × {})", (0.9, 0.8, 0.7),
               lambda x, v, s: gain(x, v), (1, 3), False),
    "brighter": ("brightness", "brighter (illumination / gain × {})", (1.1, 1.2, 1.3),
                 lambda x, v, s: gain(x, v), (1, 3), False),
    "contrast_down": ("contrast", "contrast × {}", (0.8, 0.65, 0.5), lambda x, v, s: contrast(x, v), (1, 3), False),
    "contrast_up": ("contrast", "contrast × {}", (1.2, 1.4, 1.6), lambda x, v, s: contrast(x, v), (1, 3), False),
    "window_narrow": ("windowing", "narrower window (× {} stretch)", (1.15, 1.35, 1.6),
                      lambda x, v, s: window(x, v), (1, 3), False),
    "window_wide": ("windowing", "wider window (× {} stretch)", (0.85, 0.7, 0.55),
                    lambda x, v, s: window(x, v), (1, 3), False),
    "gamma_up": ("gamma", "gamma {} (darker mid-tones)", (1.25, 1.5, 1.8), lambda x, v, s: gamma(x, v), (1, 3), False),
    "gamma_down": ("gamma", "gamma {} (brighter mid-tones)", (0.8, 0.67, 0.55),
                   lambda x, v, s: gamma(x, v), (1, 3), False),
    "saturation_up": ("saturation", "saturation + {} (0-1 scale)", (0.05, 0.1, 0.15),
                      lambda x, v, s: saturation_shift(x, v), (3,), False),
    "saturation_down": ("saturation", "saturation × {}", (0.8, 0.6, 0.4),
                        lambda x, v, s: saturation_scale(x, v), (3,), False),
    "hue_shift": ("hue", "hue + {}°", (4.0, 8.0, 12.0), lambda x, v, s: hue_shift(x, v), (3,), False),
    "stain_darker": ("stain", "stain darker (OD × {})", (1.15, 1.3, 1.5), lambda x, v, s: stain(x, (v, v, v)),
                     (1, 3), False),
    "stain_lighter": ("stain", "stain lighter (OD × {})", (0.85, 0.75, 0.6), lambda x, v, s: stain(x, (v, v, v)),
                      (1, 3), False),
    "stain_cast": ("stain", "dye balance (OD R×{0} G×1 B×{1})", ((1.1, 0.9), (1.2, 0.8), (1.3, 0.7)),
                   lambda x, v, s: stain(x, (v[0], 1.0, v[1])), (3,), False),
    "gaussian_blur": ("blur", "Gaussian blur σ {} px at 28 px", (0.5, 0.8, 1.2),
                      lambda x, v, s: blur(x, v * _s(x)), (1, 3), False),
    "defocus": ("blur", "defocus (disk radius {} px at 28 px)", (0.6, 1.0, 1.5),
                lambda x, v, s: defocus(x, v * _s(x)), (1, 3), False),
    "jpeg": ("jpeg", "JPEG quality {}", (50, 30, 15), lambda x, v, s: jpeg(x, v), (1, 3), False),
    "gaussian_noise": ("noise", "sensor noise σ {} grey levels", (4.0, 8.0, 12.0), lambda x, v, s: noise(x, v, s),
                       (1, 3), True),
    "shot_noise": ("noise", "quantum (Poisson) noise, {} counts at full scale", (500.0, 200.0, 80.0),
                   lambda x, v, s: shot_noise(x, v, s), (1, 3), True),
    "speckle": ("speckle", "speckle σ {}", (0.08, 0.15, 0.25), lambda x, v, s: speckle(x, v, s), (1, 3), True),
    "vignette": ("illumination", "vignetting (corners × {})", (0.85, 0.7, 0.55),
                 lambda x, v, s: radial_gain(x, 1.0 - v), (1, 3), False),
    "depth_gain": ("illumination", "time-gain ramp ± {}", (0.15, 0.3, 0.45), lambda x, v, s: depth_gain(x, v),
                   (1, 3), False),
    "downsample": ("resolution", "resolution × {} (coarser detector)", (0.75, 0.55, 0.4),
                   lambda x, v, s: downsample(x, v), (1, 3), False),
    "bubbles": ("artefacts", "{} air bubble(s) per image", (1, 2, 3), lambda x, v, s: bubbles(x, v, s), (1, 3), True),
}

KIND: dict[str, str] = {name: spec[0] for name, spec in _SPEC.items()}
LEVELS: dict[str, tuple] = {name: spec[2] for name, spec in _SPEC.items()}
CHANNELS: dict[str, tuple] = {name: spec[4] for name, spec in _SPEC.items()}
RANDOM: frozenset = frozenset(name for name, spec in _SPEC.items() if spec[5])


def label(name: str, severity: int) -> str:
    """A readable description of one corruption at one severity."""
    check_name(name)
    v = LEVELS[name][check_severity(severity) - 1]
    return _SPEC[name][1].format(*v) if isinstance(v, tuple) else _SPEC[name][1].format(v)


def _registered(name: str) -> Callable:
    kind, _, levels, fn, channels, _ = _SPEC[name]

    def corruption(images: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
        return apply(images, name, severity, seed)
    corruption.__name__ = name
    corruption.__doc__ = f"{_SPEC[name][1]} ({kind}); severities 1-3: {levels}."
    return corruption


CORRUPTIONS: dict[str, Callable] = {name: _registered(name) for name in _SPEC}

# ------------------------------------------------------------------------ acquisition changes and families
# The acquisition changes a data card may name (``acquisition.changes: {kind: range}``), with the unit of
# the range and its allowed interval. The ranges drive workbench.augment's photometric augmentation.
CHANGES: dict[str, dict] = {
    "brightness": {"unit": "± fraction of the illumination / gain", "min": 0.0, "max": 0.5},
    "contrast": {"unit": "± fraction of contrast", "min": 0.0, "max": 0.7},
    "saturation": {"unit": "± fraction of saturation (RGB only)", "min": 0.0, "max": 0.7},
    "hue": {"unit": "± degrees of hue (RGB only)", "min": 0.0, "max": 30.0},
    "stain": {"unit": "± fraction of stain optical density, per dye balance half of it", "min": 0.0, "max": 0.6},
    "gamma": {"unit": "± fraction of gamma", "min": 0.0, "max": 0.6},
    "windowing": {"unit": "± fraction of window width", "min": 0.0, "max": 0.6},
    "blur": {"unit": "Gaussian σ up to, px at 28 px", "min": 0.0, "max": 3.0},
    "jpeg": {"unit": "JPEG quality down to", "min": 5, "max": 100},
    "noise": {"unit": "Gaussian σ up to, grey levels", "min": 0.0, "max": 40.0},
    "speckle": {"unit": "multiplicative σ up to", "min": 0.0, "max": 0.6},
    "illumination": {"unit": "uneven illumination: gain loss up to, fraction", "min": 0.0, "max": 0.6},
    "resolution": {"unit": "down-scaling factor down to", "min": 0.2, "max": 1.0},
}
# for cards without ``acquisition``: a conservative default (workbench.augment warns loudly when it is used)
DEFAULT_CHANGES = {"brightness": 0.1, "contrast": 0.1, "blur": 0.5, "noise": 3.0}

# family -> its corruption suite (at least 8 corruptions each; RGB-only ones are dropped for grayscale data)
FAMILIES: dict[str, dict] = {
    "stained microscopy": {
        "about": "bright-field microscopy of stained smears or tissue (Giemsa, H&E): lamp, camera, stain batch, "
                 "focus, compression, mounting artefacts",
        "suite": ("darker", "brighter", "contrast_down", "contrast_up", "saturation_up", "hue_shift", "stain_darker",
                  "stain_cast", "gaussian_blur", "jpeg", "gaussian_noise", "bubbles")},
    "microscopy": {
        "about": "unstained or fluorescence microscopy (grayscale): exposure, gain, focus, photon noise",
        "suite": ("darker", "brighter", "contrast_down", "contrast_up", "gamma_up", "gaussian_blur", "defocus",
                  "jpeg", "gaussian_noise", "shot_noise", "bubbles", "vignette")},
    "ultrasound": {
        "about": "B-mode ultrasound: overall gain, time-gain compensation, dynamic range, speckle, probe resolution",
        "suite": ("darker", "brighter", "depth_gain", "contrast_down", "contrast_up", "speckle", "gaussian_blur",
                  "gaussian_noise", "jpeg", "downsample")},
    "radiograph": {
        "about": "projection radiography: exposure, display window and gamma, quantum noise, detector resolution",
        "suite": ("window_narrow", "window_wide", "gamma_up", "gamma_down", "darker", "shot_noise", "gaussian_noise",
                  "gaussian_blur", "downsample", "jpeg")},
    "ct": {
        "about": "CT slices: reconstruction window, kernel (sharpness), dose (noise), slice resolution",
        "suite": ("window_narrow", "window_wide", "gamma_up", "gamma_down", "gaussian_noise", "shot_noise",
                  "gaussian_blur", "downsample", "jpeg")},
    "oct": {
        "about": "optical coherence tomography B-scans: signal strength, speckle, focus, resolution",
        "suite": ("darker", "brighter", "contrast_down", "gamma_up", "speckle", "gaussian_noise", "gaussian_blur",
                  "downsample", "jpeg")},
    "fundus": {
        "about": "fundus photography: flash and exposure, uneven illumination, white balance, focus, compression",
        "suite": ("darker", "brighter", "vignette", "contrast_down", "contrast_up", "saturation_down", "hue_shift",
                  "gaussian_blur", "defocus", "jpeg", "gaussian_noise")},
    "dermatoscopy": {
        "about": "dermatoscopy: lighting, white balance, focus, vignetting, compression",
        "suite": ("darker", "brighter", "contrast_down", "contrast_up", "saturation_up", "hue_shift", "vignette",
                  "gaussian_blur", "defocus", "jpeg", "gaussian_noise")},
}
# modality text -> family, for cards that do not name one (first match wins)
_KEYWORDS = (
    (("ultrasound", "sonograph", "echograph"), "ultrasound"),
    (("oct", "optical coherence"), "oct"),
    (("fundus", "retina"), "fundus"),
    (("dermat", "skin"), "dermatoscopy"),
    ((" ct", "ct ", "computed tomograph"), "ct"),
    (("x-ray", "xray", "radiograph", "mammograph"), "radiograph"),
    (("h&e", "histolog", "patholog", "stain", "smear", "blood"), "stained microscopy"),
    (("microscop", "cell", "fluorescen"), "microscopy"),
)


def family_of(modality: str) -> str | None:
    """The acquisition family a modality text names (keywords; None when nothing matches)."""
    text = f" {str(modality).lower()} "
    for words, family in _KEYWORDS:
        if any(w in text for w in words):
            return family
    return None


# ---------------------------------------------------------------------------------------- checking, apply
def check_name(name: str) -> str:
    if name not in _SPEC:
        raise WorkbenchError(f"unknown corruption {name!r}; choose one of {', '.join(_SPEC)}")
    return name


def check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise WorkbenchError(f"corruption severity {severity!r} must be an integer 1, 2 or 3")
    return int(severity)


def check_images(images, where: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise WorkbenchError(f"{where}: corruptions take uint8 images (N, H, W, C) with C 1 or 3; got "
                             f"{images.dtype} {images.shape}")
    return images


def apply(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` under corruption ``name`` at ``severity`` (1-3): same shape, uint8, deterministic for
    ``seed`` (only the random corruptions, ``RANDOM``, use it)."""
    check_name(name)
    severity = check_severity(severity)
    images = check_images(images)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WorkbenchError(f"corruption seed {seed!r} must be a non-negative integer")
    if images.shape[-1] not in CHANNELS[name]:
        raise WorkbenchError(f"corruption {name!r} needs RGB images; these have {images.shape[-1]} channel(s)")
    out = _SPEC[name][3](images, LEVELS[name][severity - 1], int(seed))
    return out.reshape(images.shape).astype(np.uint8, copy=False)


def _acquisition(card) -> dict | None:
    extra = getattr(card, "extra", None) or {}
    return extra.get("acquisition")


def suite_names(card_or_family) -> list[str]:
    """The corruption names of a data card's family (or of a family / modality text), restricted to the
    channel count the card states."""
    channels = None
    if isinstance(card_or_family, str):
        family = card_or_family if card_or_family in FAMILIES else family_of(card_or_family)
        if family is None:
            raise WorkbenchError(f"no corruption family for {card_or_family!r}; name one of {', '.join(FAMILIES)} "
                                 "(or pass a data card)")
    else:
        acq = _acquisition(card_or_family)
        family = acq.get("family") if acq else family_of(getattr(card_or_family, "modality", ""))
        channels = getattr(card_or_family, "n_channels", None)
        if family is None:
            family = "microscopy" if channels == 1 else "stained microscopy"
    names = FAMILIES[family]["suite"]
    return [n for n in names if channels is None or channels in CHANNELS[n]]


def suite(card_or_family) -> list[tuple[str, int]]:
    """Every (corruption, severity) a dataset is tested under: its family's suite × severities 1-3.
    Takes a data card (``acquisition.family``; a card without it is mapped from its modality text), a
    family name (``FAMILIES``) or a modality text."""
    return [(n, s) for n in suite_names(card_or_family) for s in SEVERITIES]


def family(card) -> tuple[str, str | None]:
    """(family, warning) of a data card: its ``acquisition.family``, else guessed from the modality text."""
    acq = _acquisition(card)
    if acq:
        return acq["family"], None
    guess = family_of(getattr(card, "modality", "")) if card is not None else None
    name = getattr(card, "name", "(no card)")
    if guess is None:
        guess = "microscopy" if getattr(card, "n_channels", 3) == 1 else "stained microscopy"
    return guess, (f"data card {name} names no acquisition family: corruptions of '{guess}' chosen from its modality "
                   "text; add 'acquisition: {family: ..., changes: {...}, reason: ...}' to its front matter")

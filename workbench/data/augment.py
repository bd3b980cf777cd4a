"""Augmentation presets on albumentations 2.x (the only module that imports albumentations).

A preset is a seeded ``A.Compose``; it is serialised to YAML in the run directory (preset, seed and
the full albumentations dict), and ``load`` rebuilds an identical pipeline: same seed → same output.

Photometric augmentation of acquisition changes (``photometric_ops``): the changes a data card names
as plausible between sites (``acquisition.changes``: brightness, contrast, saturation, hue, stain,
gamma, windowing, blur, JPEG, noise, speckle, illumination, resolution; workbench.corrupt.CHANGES) are
drawn within the card's ranges and appended to the geometric preset. A card without the field gets
``corrupt.DEFAULT_CHANGES`` (mild brightness, contrast, blur and noise) and a warning. The ranges are
written to augment.yaml twice: as the card gave them (``photometric``) and inside the albumentations
pipeline itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import yaml

from ..core.errors import WorkbenchError


class StainJitter(A.ImageOnlyTransform):
    """Stain amount and dye balance in optical density (Beer-Lambert: OD = -log((I + 1) / 256)): one gain
    for every channel drawn from ``od_range``, times a per-channel factor within ±``balance`` (another stain
    batch, staining time or dye ratio), then back to intensities. Works on 1 or 3 channels."""

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        od_range: tuple[float, float]
        balance: float

    def __init__(self, od_range: tuple[float, float] = (0.8, 1.2), balance: float = 0.1, p: float = 0.5):
        super().__init__(p=p)
        self.od_range, self.balance = tuple(od_range), float(balance)

    def get_params(self) -> dict:
        g = self.py_random.uniform(*self.od_range)
        return {"gains": [g * self.py_random.uniform(1 - self.balance, 1 + self.balance) for _ in range(3)]}

    def apply(self, img: np.ndarray, gains=(1.0, 1.0, 1.0), **params) -> np.ndarray:
        od = -np.log((img.astype(np.float32) + 1.0) / 256.0)
        out = 256.0 * np.exp(-od * np.asarray(gains, np.float32)[: img.shape[-1]]) - 1.0
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(img.shape)

    def get_transform_init_args_names(self) -> tuple:
        return ("od_range", "balance")


class WindowJitter(A.ImageOnlyTransform):
    """Another display window of 8-bit radiographs and CT: intensities stretched about mid-grey by a
    factor drawn from ``factor_range`` (> 1 a narrower window, clipped; < 1 a wider one)."""

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        factor_range: tuple[float, float]

    def __init__(self, factor_range: tuple[float, float] = (0.8, 1.25), p: float = 0.5):
        super().__init__(p=p)
        self.factor_range = tuple(factor_range)

    def get_params(self) -> dict:
        return {"factor": self.py_random.uniform(*self.factor_range)}

    def apply(self, img: np.ndarray, factor: float = 1.0, **params) -> np.ndarray:
        out = (img.astype(np.float32) - 127.5) * factor + 127.5
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(img.shape)

    def get_transform_init_args_names(self) -> tuple:
        return ("factor_range",)


# How often each photometric change fires (set a priori, not tuned on any split): colour and illumination
# differ between almost every pair of sites, so the colour jitter fires on most images; the stain and the
# display changes often; degradations (blur, JPEG, noise, speckle, resolution) on a quarter of the images,
# so that most training images stay sharp.
P_COLOR, P_STAIN, P_DEGRADE = 0.8, 0.5, 0.25


def photometric_ops(changes: dict, n_channels: int, side: int = 28, family: str = "") -> list:
    """The albumentations ops for a card's acquisition changes, each within the card's range
    (workbench.corrupt.CHANGES gives each change's unit). ``side``: the image side (blur σ is given at 28 px)."""
    from .corrupt import CHANGES, REFERENCE_SIDE
    unknown = sorted(set(changes) - set(CHANGES))
    if unknown:
        raise WorkbenchError(f"unknown acquisition change(s) {unknown}; known: {', '.join(CHANGES)}")
    c = {k: float(v) for k, v in changes.items()}
    ops = []
    jitter = {}
    if c.get("brightness"):
        jitter["brightness"] = (1 - c["brightness"], 1 + c["brightness"])
    if c.get("contrast"):
        jitter["contrast"] = (1 - c["contrast"], 1 + c["contrast"])
    if n_channels == 3 and c.get("saturation"):
        jitter["saturation"] = (1 - c["saturation"], 1 + c["saturation"])
    if n_channels == 3 and c.get("hue"):
        jitter["hue"] = (-c["hue"] / 360.0, c["hue"] / 360.0)
    if jitter:
        ops.append(A.ColorJitter(**{"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0),
                                    "hue": (0.0, 0.0), **jitter}, p=P_COLOR))
    if c.get("stain"):
        ops.append(StainJitter(od_range=(1 - c["stain"], 1 + c["stain"]), balance=c["stain"] / 2, p=P_STAIN))
    if c.get("gamma"):
        ops.append(A.RandomGamma(gamma_limit=(100 * (1 - c["gamma"]), 100 * (1 + c["gamma"])), p=P_STAIN))
    if c.get("windowing"):
        ops.append(WindowJitter(factor_range=(1 / (1 + c["windowing"]), 1 + c["windowing"]), p=P_STAIN))
    if c.get("illumination"):
        # ultrasound: a time-gain ramp runs with depth (top to bottom); elsewhere uneven light from any side
        angle = (90.0, 90.0) if family == "ultrasound" else (0.0, 360.0)
        ops.append(A.Illumination(mode="linear", intensity_range=(0.01, c["illumination"] / 2), effect_type="both",
                                  angle_range=angle, p=P_STAIN))
    if c.get("blur"):
        ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, max(0.1, c["blur"] * side / REFERENCE_SIDE)),
                                  p=P_DEGRADE))
    if c.get("resolution") and c["resolution"] < 1:
        ops.append(A.Downscale(scale_range=(c["resolution"], 1.0), p=P_DEGRADE))
    if c.get("speckle"):
        ops.append(A.MultiplicativeNoise(multiplier=(1 - c["speckle"], 1 + c["speckle"]), per_channel=False,
                                         elementwise=True, p=P_DEGRADE))
    if c.get("noise"):
        ops.append(A.GaussNoise(std_range=(0.0, c["noise"] / 255.0), p=P_DEGRADE))
    if c.get("jpeg") and c["jpeg"] < 100:
        ops.append(A.ImageCompression(quality_range=(int(c["jpeg"]), 100), p=P_DEGRADE))
    return ops


def photometric_of(card) -> dict:
    """What the photometric augmentation uses for a data card: ``{changes, family, source, warning}``;
    a card without ``acquisition.changes`` (or no card) gets the conservative default and a warning."""
    from . import corrupt
    acq = getattr(card, "acquisition", None) if card is not None else None
    if acq:
        return {"changes": dict(acq["changes"]), "family": acq["family"], "source": f"data card {card.name}",
                "warning": None}
    fam, _ = corrupt.family(card) if card is not None else (None, None)
    name = f"data card {card.name}" if card is not None else "no data card"
    return {"changes": dict(corrupt.DEFAULT_CHANGES), "family": fam, "source": "default (conservative)",
            "warning": (f"WARNING: {name} names no acquisition changes: photometric augmentation uses the conservative "
                        f"default {corrupt.DEFAULT_CHANGES}; add 'acquisition: {{family: ..., changes: {{...}}, "
                        "reason: ...}' to the card's front matter")}


def _none(n_channels: int) -> list:
    return []


def _mild_affine() -> A.Affine:
    return A.Affine(translate_percent=(-0.08, 0.08), scale=(0.92, 1.08), rotate=(-10, 10), border_mode=0, p=0.5)


def _light(n_channels: int) -> list:
    # geometric only: safe for any modality whose orientation is arbitrary (cells, patches)
    return [A.HorizontalFlip(p=0.5), _mild_affine()]


def _microscopy(n_channels: int) -> list:
    # cells and stained slides have no canonical orientation: all flips and 90° turns are valid;
    # mild stain/illumination variation (colour jitter only for RGB) and slight defocus
    ops = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-20, 20),
                 border_mode=4, p=0.6),  # border_mode 4 = reflect-101: no black corners
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.4),
    ]
    if n_channels == 3:
        ops.append(A.HueSaturationValue(hue_shift_limit=4, sat_shift_limit=10, val_shift_limit=0, p=0.3))
    ops.append(A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.6), p=0.1))
    return ops


def _dihedral(n_channels: int) -> list:
    # orientation-free and geometric only: the 8 flips/quarter turns plus light's mild affine, no
    # intensity or blur jitter (at 28 px BloodMNIST colour/blur jitter cost accuracy: bench/results/accuracy.json)
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5), _mild_affine()]


def _fixed(n_channels: int) -> list:
    # orientation-fixed images (radiographs, ultrasound, OCT, CT slices where left and right are different
    # classes): no flips and no quarter turns; small shifts, scale, a rotation of a few degrees (patient
    # positioning) and brightness/contrast (exposure, gain)
    return [A.Affine(translate_percent=(-0.05, 0.05), scale=(0.95, 1.05), rotate=(-5, 5), border_mode=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5)]


PRESETS = {"none": _none, "light": _light, "microscopy": _microscopy, "dihedral": _dihedral, "fixed": _fixed}
# what each preset does to a picture's orientation (None: keeps it). A preset that mirrors or turns images
# is valid only where the data card says flips and quarter turns preserve the labels.
ORIENTATION_CHANGES = {"none": None, "fixed": None, "light": "horizontal flips",
                       "microscopy": "flips and quarter turns", "dihedral": "flips and quarter turns"}
# presets whose flips and quarter turns make up the whole dihedral group: with them the 8-way test-time
# augmentation (workbench.layers.DihedralMean) matches what the model was trained on
DIHEDRAL_PRESETS = ("microscopy", "dihedral")


def reseed(transform: A.Compose, seed: int) -> A.Compose:
    """Seed a pipeline so that its transforms draw from ONE shared random stream.

    albumentations 2.0.8's ``Compose(seed=...)`` / ``set_random_seed`` gives every transform its own
    generator seeded with the same number: transforms that draw alike stay in lockstep, so
    HorizontalFlip(p=0.5) and VerticalFlip(p=0.5) always fire together (a 180° turn, never a mirror
    image) and light's flip fired exactly when its affine did. Sharing the Compose's generators keeps
    the pipeline seeded and reproducible with independent draws (tests/test_augment.py checks both)."""
    transform.set_random_seed(int(seed))  # records the seed on the pipeline
    transform.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))
    return transform


def build(preset: str, seed: int, n_channels: int = 3, photometric: dict | None = None, side: int = 28) -> A.Compose:
    """The preset's pipeline; with ``photometric`` (``photometric_of(card)``) the acquisition changes follow
    the geometric ops."""
    if preset not in PRESETS:
        raise WorkbenchError(f"unknown augmentation preset {preset!r} (parameter 'augment'); choose one of {', '.join(PRESETS)}")
    ops = PRESETS[preset](n_channels)
    if photometric:
        photo = photometric_ops(photometric["changes"], n_channels, side, photometric.get("family") or "")
        share = float(photometric.get("p", 1.0))
        # a share below 1: the acquisition changes as one block, applied to that share of the images
        ops = ops + (photo if share >= 1.0 else [A.Sequential(photo, p=share)])
    return reseed(A.Compose(ops), seed)


CUSTOM_CONTROLS = ("hflip", "vflip", "rotate", "translate", "scale", "brightness", "contrast", "blur")


def custom(controls: dict, seed: int, n_channels: int = 3) -> A.Compose:
    """A pipeline from per-parameter controls (the explore notebook's sliders):
    flip probabilities, max rotation (°), max shift (fraction), scale ±, brightness/contrast limits, blur p."""
    unknown = set(controls) - set(CUSTOM_CONTROLS)
    if unknown:
        raise WorkbenchError(f"unknown augmentation control(s) {sorted(unknown)}; known: {', '.join(CUSTOM_CONTROLS)}")
    c = {"hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "translate": 0.0, "scale": 0.0, "brightness": 0.0,
         "contrast": 0.0, "blur": 0.0, **controls}
    ops = []
    if c["hflip"] > 0:
        ops.append(A.HorizontalFlip(p=c["hflip"]))
    if c["vflip"] > 0:
        ops.append(A.VerticalFlip(p=c["vflip"]))
    if c["rotate"] > 0 or c["translate"] > 0 or c["scale"] > 0:
        ops.append(A.Affine(translate_percent=(-c["translate"], c["translate"]), scale=(1 - c["scale"], 1 + c["scale"]),
                            rotate=(-c["rotate"], c["rotate"]), border_mode=4, p=1.0))
    if c["brightness"] > 0 or c["contrast"] > 0:
        ops.append(A.RandomBrightnessContrast(brightness_limit=c["brightness"], contrast_limit=c["contrast"], p=1.0))
    if c["blur"] > 0:
        ops.append(A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.8), p=c["blur"]))
    return reseed(A.Compose(ops), seed)


def is_identity(transform: A.Compose) -> bool:
    return len(transform.transforms) == 0


def apply(transform: A.Compose, images: np.ndarray) -> np.ndarray:
    """Augment a batch (N, H, W, C) uint8 image by image, keeping dtype and shape."""
    if is_identity(transform):
        return images
    out = np.empty_like(images)
    for i, img in enumerate(images):
        res = transform(image=img)["image"]
        out[i] = res.reshape(img.shape)
    return out


def save(transform: A.Compose, preset: str, seed: int, path: Path, photometric: dict | None = None) -> None:
    doc = {"preset": preset, "seed": int(seed)}
    if photometric is not None:
        doc["photometric"] = photometric
    doc["albumentations"] = A.to_dict(transform)
    Path(path).write_text(yaml.safe_dump(_plain(doc), sort_keys=False))


def load(path: Path) -> tuple[A.Compose, dict]:
    doc = yaml.safe_load(Path(path).read_text())
    t = reseed(A.from_dict(doc["albumentations"]), doc["seed"])
    return t, doc


def _plain(obj):
    """Tuples → lists so the YAML is plain (safe_load-able) data."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ------------------------------------------------------------------------------------------ FixMatch's strong views
# The strong augmentation of FixMatch (Sohn et al., NeurIPS 2020, §2.3 and appendix Table 12: RandAugment with a
# random magnitude, two ops per image, then Cutout), on top of the run's own (weak) preset, within the data card's
# orientation rule: geometry never mirrors or turns an orientation-fixed image (the dihedral ops come only from a
# preset that already has them, i.e. orientation-free data), and the rotation and shear of orientation-fixed data
# stay small (10°: a tilted patient, not another anatomy). The paper's ranges otherwise: rotation ±30°, shear ±0.3
# (≈ 17°), translation ±30 % of the side, posterize 4-8 bits, solarize at any threshold, Cutout up to half the side
# filled with grey. Colour (saturation) only for RGB.
def randaugment_ops(n_channels: int, orientation_free: bool) -> list:
    """The RandAugment op list FixMatch draws two ops from (each at a random magnitude within its range)."""
    rot, shear = (30, 17) if orientation_free else (10, 10)
    ops = [
        A.NoOp(),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.45, contrast_limit=0.0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.45, p=1.0),
        A.Sharpen(alpha=(0.05, 0.95), lightness=(1.0, 1.0), p=1.0),
        A.Posterize(num_bits=(4, 8), p=1.0),
        A.Solarize(threshold_range=(0.0, 1.0), p=1.0),
        A.Affine(rotate=(-rot, rot), border_mode=0, fill=127, p=1.0),
        A.Affine(shear={"x": (-shear, shear), "y": (0, 0)}, border_mode=0, fill=127, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-shear, shear)}, border_mode=0, fill=127, p=1.0),
        A.Affine(translate_percent={"x": (-0.3, 0.3), "y": (0, 0)}, border_mode=0, fill=127, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.3, 0.3)}, border_mode=0, fill=127, p=1.0),
    ]
    if n_channels == 3:
        ops.append(A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(0.05, 1.95), hue=(0.0, 0.0),
                                 p=1.0))
    return ops


def strong(preset: str, seed: int, n_channels: int = 3, photometric: dict | None = None, side: int = 28,
           orientation_free: bool = False) -> A.Compose:
    """FixMatch's strong view: the preset's pipeline (``build``: the weak view), then two RandAugment ops and
    Cutout. Refuses a preset that mirrors or turns images when ``orientation_free`` is False."""
    if ORIENTATION_CHANGES.get(preset) and not orientation_free:
        raise WorkbenchError(f"augmentation preset {preset!r} applies {ORIENTATION_CHANGES[preset]}, but the data are "
                             "orientation-fixed: the strong views would break the orientation rule (parameter 'augment')")
    ops = list(build(preset, seed, n_channels, photometric, side).transforms)
    ops += [A.SomeOf(randaugment_ops(n_channels, orientation_free), n=2, replace=True, p=1.0),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.5), hole_width_range=(0.1, 0.5),
                            fill=127, p=1.0)]
    return reseed(A.Compose(ops), seed)


# ------------------------------------------------------------------------------------------ SimCLR's views
def contrastive(seed: int, n_channels: int = 3, side: int = 28, orientation_free: bool = False) -> A.Compose:
    """The two-view augmentation of self-supervised pretraining (SimCLR, Chen et al. ICML 2020, §3 and appendix A:
    random resized crop, colour distortion, no blur at CIFAR's 32 px), within the data card's orientation rule:
    the 8 flips and quarter turns only for orientation-free data, never a mirror image otherwise. The crop keeps
    35-100 % of the area (SimCLR's 8 % lower bound loses the one cell or lesion a 28 px image holds); colour: the
    paper's jitter at strength 0.5 (brightness, contrast, saturation 0.4, hue 0.1; p 0.8) and grey scale p 0.2 for
    RGB, brightness and contrast only for grey images."""
    ops = [A.RandomResizedCrop(size=(side, side), scale=(0.35, 1.0), ratio=(0.75, 1.333), p=1.0)]
    if orientation_free:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if n_channels == 3:
        ops += [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8), A.ToGray(p=0.2)]
    else:
        ops += [A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=0.8)]
    return reseed(A.Compose(ops), seed)

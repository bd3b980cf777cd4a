"""Augmentation presets on albumentations 2.x (the only module that imports albumentations).

A preset is a seeded ``A.Compose``; it is serialised to YAML in the run directory (preset, seed and
the full albumentations dict), and ``load`` rebuilds an identical pipeline: same seed → same output.
"""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import yaml

from .errors import WorkbenchError


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


def build(preset: str, seed: int, n_channels: int = 3) -> A.Compose:
    if preset not in PRESETS:
        raise WorkbenchError(f"unknown augmentation preset {preset!r} (parameter 'augment'); choose one of {', '.join(PRESETS)}")
    return reseed(A.Compose(PRESETS[preset](n_channels)), seed)


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


def save(transform: A.Compose, preset: str, seed: int, path: Path) -> None:
    doc = {"preset": preset, "seed": int(seed), "albumentations": A.to_dict(transform)}
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

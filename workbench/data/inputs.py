"""The one input path: whatever a run's model sees goes through ``prepare(images, spec)``.

A trained run records its input contract as ``input.json`` (an ``InputSpec``): the image side and
channel count the model takes, the resize policy for images of another size, the preprocessing
recipe (``workbench.preprocess`` spec: denoise → contrast → normalise) and, for DICOM sources, the
window. Train, evaluate, annotate pools (folders, DICOM, ``.npz``), the review widget, the explore
notebook and the widgets all call ``prepare`` (or ``TrainedRun.prepare``, workbench.runload), so a
model never sees pixels prepared another way than those it was trained on.

``prepare`` = ``conform`` (channels gray ↔ RGB, then size by the policy) followed by the
preprocessing spec. ``decode_file`` reads one PNG/JPEG/TIFF or DICOM file into raw uint8 frames
(DICOM: modality LUT, the spec's window, MONOCHROME1 inversion); it never de-identifies: DICOM pools
go through ``workbench.pools``, which does.

Pure numpy/OpenCV/PIL/pydicom: importing this module loads neither Keras, JAX nor matplotlib.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import preprocess as _pre
from ..core.errors import WorkbenchError

INPUT_FILE = "input.json"
SPEC_VERSION = 1
MIN_SIZE, MAX_SIZE = 8, 1024
DEFAULT_DICOM = {"window": "auto", "level": None, "width": None, "frames": "all"}


@dataclass(frozen=True)
class InputSpec:
    """What a model takes and how any image is turned into it."""
    size: int                                # side length (square images)
    channels: int                            # 1 (grayscale) or 3 (RGB)
    resize: str = "none"                     # none | stretch | pad | crop, for images of another size
    preprocess: dict | None = None           # workbench.preprocess spec (None: identity)
    dicom: dict = field(default_factory=lambda: dict(DEFAULT_DICOM))  # window for DICOM sources
    version: int = SPEC_VERSION

    def __post_init__(self):
        self.check()

    def check(self, where: str = "input spec") -> "InputSpec":
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise WorkbenchError(f"{where}: image size {self.size!r} must be an integer from {MIN_SIZE} to {MAX_SIZE}")
        if self.channels not in (1, 3):
            raise WorkbenchError(f"{where}: channels {self.channels!r} must be 1 or 3")
        if self.resize not in _pre.RESIZE:
            raise WorkbenchError(f"{where}: resize policy {self.resize!r} is not one of {', '.join(_pre.RESIZE)}")
        if self.preprocess is not None and not _pre.is_identity(self.preprocess):
            _pre.check_spec(self.preprocess)
        unknown = set(self.dicom) - set(DEFAULT_DICOM)
        if unknown:
            raise WorkbenchError(f"{where}: unknown DICOM option(s) {sorted(unknown)}")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    def with_resize(self, policy: str) -> "InputSpec":
        """The same contract with another policy for images of another size (``""`` keeps it)."""
        return self if not policy else replace(self, resize=policy)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = INPUT_FILE) -> "InputSpec":
        if not isinstance(d, dict) or d.get("version") != SPEC_VERSION:
            raise WorkbenchError(f"{where}: input spec version {d.get('version') if isinstance(d, dict) else None} "
                                 f"is not {SPEC_VERSION}; retrain the run with this workbench")
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise WorkbenchError(f"{where}: unknown field(s) {sorted(extra)}")
        return cls(**{**d, "dicom": {**DEFAULT_DICOM, **(d.get("dicom") or {})}})

    def describe(self) -> str:
        parts = [f"{self.size}x{self.size}x{self.channels}", f"resize {self.resize}",
                 f"preprocessing: {_pre.describe(self.preprocess)}"]
        return "; ".join(parts)


def for_dataset(ds, preprocess: dict | None = None) -> InputSpec:
    """The input contract of a dataset as loaded (its size and channels; the resize policy and DICOM
    window from its data card when it was built from an image folder or a DICOM ingest)."""
    h, w, c = (int(d) for d in ds.images["train"].shape[1:])
    resize, dicom = "none", dict(DEFAULT_DICOM)
    extra = ds.card.extra if ds.card is not None else {}
    if "image_folder" in extra:
        resize = (extra["image_folder"] or {}).get("resize", "none")
    if "ingest" in extra:
        opts = (extra["ingest"] or {}).get("options", {})
        resize = opts.get("resize", resize)
        dicom = {k: opts.get(k, v) for k, v in DEFAULT_DICOM.items()}
    return InputSpec(size=h, channels=c, resize=resize, preprocess=None if _pre.is_identity(preprocess) else preprocess,
                     dicom=dicom)


def save(spec: InputSpec, run) -> Path:
    """Write ``input.json`` into a run (write-once, through ``runs.Run``)."""
    return run.write_json(INPUT_FILE, spec.to_dict())


def load(run_dir) -> InputSpec:
    """A run's input contract: ``input.json``; for runs from before it existed, rebuilt from the input
    shape the train provenance records and ``preprocess.json``."""
    run_dir = Path(run_dir)
    p = run_dir / INPUT_FILE
    if p.is_file():
        return InputSpec.from_dict(json.loads(p.read_text()), where=str(p))
    prov = run_dir / "provenance.json"
    data = json.loads(prov.read_text()).get("train", {}).get("data", {}) if prov.is_file() else {}
    shape = data.get("input_shape")
    if not shape:
        raise WorkbenchError(f"{run_dir} has no {INPUT_FILE} and its provenance records no input shape: "
                             "it is not a trained run of this workbench; train a new run")
    pre = run_dir / "preprocess.json"
    spec = _pre.check_spec(json.loads(pre.read_text())) if pre.is_file() else None
    return InputSpec(size=int(shape[0]), channels=int(shape[2]), preprocess=None if _pre.is_identity(spec) else spec)


# ----------------------------------------------------------------------------------------------- pixels
def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """One (H, W, 1|3) uint8 image → ``channels`` (gray → RGB repeats; RGB → gray is OpenCV's luma)."""
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    import cv2
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[..., None]


def _as_hwc(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise WorkbenchError(f"{where}: image has shape {image.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
    if image.shape[-1] == 4:  # RGBA: alpha dropped
        image = image[..., :3]
    if image.dtype != np.uint8:
        raise WorkbenchError(f"{where}: image has dtype {image.dtype}; expected uint8 (decode_file converts others)")
    return image


def conform_one(image: np.ndarray, spec: InputSpec, where: str = "image") -> np.ndarray:
    """One raw uint8 image (any size, 1 or 3 channels) → the spec's (size, size, channels)."""
    image = to_channels(_as_hwc(image, where), spec.channels)
    try:
        return _pre.resize(image, spec.size, spec.resize)
    except WorkbenchError as e:
        raise WorkbenchError(f"{where}: {e} (the run's resize policy is {spec.resize!r}; pass -p resize "
                             "stretch|pad|crop to choose one)") from None


def conform(images, spec: InputSpec, where: str = "images") -> np.ndarray:
    """A batch (N, H, W[, C]) or a list of raw images → (N, size, size, channels) uint8."""
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype == np.uint8:
        batch = images[..., None] if images.ndim == 3 else images
        if batch.shape[1:] == spec.shape:
            return batch
        if batch.shape[1:3] == (spec.size, spec.size):
            return np.stack([to_channels(im, spec.channels) for im in batch]) if len(batch) else \
                np.zeros((0, *spec.shape), np.uint8)
    out = [conform_one(im, spec, f"{where}[{i}]") for i, im in enumerate(images)]
    return np.stack(out) if out else np.zeros((0, *spec.shape), np.uint8)


def display_spec(spec: InputSpec) -> InputSpec:
    """What a person looks at: the model's size and channels, before preprocessing (the run's resize policy, else
    stretched: a gallery must show every item)."""
    from dataclasses import replace
    return replace(spec, preprocess=None, resize=spec.resize if spec.resize != "none" else "stretch")


def prepare(images, spec: InputSpec, where: str = "images") -> np.ndarray:
    """THE input path: raw images → exactly what the run's model was trained on."""
    return _pre.apply_spec(spec.preprocess, conform(images, spec, where))


def prepare_dataset(ds, spec: InputSpec):
    """Every split of a loaded dataset through ``prepare`` (``ds.preprocess`` records the recipe applied)."""
    from dataclasses import replace as _replace
    images = {s: prepare(x, spec, f"{ds.name} {s}") for s, x in ds.images.items()}
    notes = list(ds.notes)
    if not _pre.is_identity(spec.preprocess):
        notes.append(f"preprocessing: {_pre.describe(spec.preprocess)}")
    return _replace(ds, images=images, preprocess=spec.preprocess, notes=notes)


# ----------------------------------------------------------------------------------------------- files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def decode_image_file(path: Path) -> np.ndarray:
    """One PNG/JPEG/TIFF → (H, W, 1|3) uint8 (16-bit and float images stretched per image)."""
    from .imagefolder import decode
    return decode(Path(path))


def decode_dicom(ds, spec: InputSpec, path="") -> list[tuple[int, np.ndarray]]:
    """The frames of a (already read, and de-identified by the caller) DICOM data set as (frame, raw
    uint8 image) pairs, windowed as the spec says."""
    from . import dicom as _dicom
    d = spec.dicom
    pixels, _ = _dicom.to_uint8(ds, d["window"], d["level"], d["width"], path=path)
    return [(f, pixels[f]) for f in _dicom.select_frames(len(pixels), d["frames"])]

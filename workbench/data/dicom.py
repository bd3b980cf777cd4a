"""DICOM images with pydicom 3: pixel data → modality units → 8-bit display images.

* Modality LUT / rescale slope + intercept gives modality units (Hounsfield units for CT).
* A window maps them to 0-255: a CT preset (``workbench.preprocess.WINDOW_PRESETS``: lung,
  mediastinum, abdomen, bone, brain), a custom level/width, the file's own window (``header``), or a
  per-image min-max stretch; ``auto`` uses the file's window when it has one, else min-max.
* MONOCHROME1 images (minimum = white) are inverted after windowing; PALETTE COLOR goes through its
  colour LUT; YBR is converted to RGB by pydicom.
* Multi-frame files yield one image per frame.
* Compressed transfer syntaxes that no installed plugin decodes raise a ``WorkbenchError`` naming
  the packages that would (from pydicom's own decoder registry).

Headers can hold patient identifiers: this module only reads; ``workbench.ingest`` is the one way
DICOM enters a workbench dataset, and it de-identifies (``workbench.deid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import preprocess as _pre
from ..core.errors import WorkbenchError

WINDOWS = ("auto", "header", "minmax", "custom", *_pre.WINDOW_PRESETS)


def is_dicom(path: Path) -> bool:
    """A Part 10 file ('DICM' after the 128-byte preamble), or any file named *.dcm."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read(path: Path):
    """The dataset with its pixel data (nothing decoded yet); a clear error when it is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        return pydicom.dcmread(str(path))
    except InvalidDicomError:
        # no preamble: a raw data set (older exports) is accepted only if it parses to real attributes
        try:
            ds = pydicom.dcmread(str(path), force=True)
            if "SOPClassUID" in ds or "PixelData" in ds:
                return ds
            reason = "no DICOM header and no DICOM attributes"
        except Exception as e:  # noqa: BLE001 - any parser failure means the same to the user
            reason = f"{type(e).__name__}: {e}"
        raise WorkbenchError(f"{path} is not a readable DICOM file ({reason})") from None
    except Exception as e:  # noqa: BLE001
        raise WorkbenchError(f"{path} is not a readable DICOM file ({type(e).__name__}: {e})") from None


def _pip_names(requirement: str) -> str:
    # pydicom says e.g. "gdcm - requires gdcm>=3.0.10"; the PyPI package of gdcm is python-gdcm
    plugin, _, needs = requirement.partition(" - requires ")
    needs = needs.replace("numpy and ", "")
    pkgs = [p.strip() for p in needs.split(" and ") if p.strip()]
    pkgs = ["python-" + p if p.startswith("gdcm") else p for p in pkgs]
    return " + ".join(pkgs) or plugin


def decoder_hint(transfer_syntax) -> str:
    """Which packages would decode this transfer syntax (empty if it is not compressed)."""
    from pydicom.pixels import get_decoder
    try:
        dec = get_decoder(transfer_syntax)
    except (NotImplementedError, ValueError):
        return "no pydicom decoder exists for it"
    options = [_pip_names(r) for r in dec.missing_dependencies]
    return "install one of: " + "; ".join(options) if options else ""


def pixel_array(ds, path: Path | str = "") -> np.ndarray:
    """Decoded pixels, ``(frames, H, W)`` or ``(frames, H, W, 3)``; errors name the missing decoder."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise WorkbenchError(f"DICOM file {path} has no pixel data (SOP class "
                             f"{getattr(ds.get('SOPClassUID'), 'name', '?')}); it is not an image")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises RuntimeError/NotImplementedError/ValueError
        if ts is not None and ts.is_compressed:
            from pydicom.pixels import get_decoder
            try:
                available = get_decoder(ts).available_plugins
            except (NotImplementedError, ValueError):
                available = ()
            tried = f"the installed plugin(s) {', '.join(available)} failed" if available else "no decoder is installed"
            raise WorkbenchError(
                f"DICOM file {path}: cannot decode '{ts.name}' pixel data ({tried}); {decoder_hint(ts)}"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WorkbenchError(f"DICOM file {path}: cannot read pixel data ({first})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if spp == 1 and arr.ndim != 3 or spp == 3 and arr.ndim != 4:
        raise WorkbenchError(f"DICOM file {path}: pixel array has shape {arr.shape} for {frames} frame(s) "
                             f"with {spp} sample(s) per pixel")
    return arr


@dataclass(frozen=True)
class Window:
    """How one file's values became 0-255 (recorded in the ingest manifest)."""
    kind: str
    level: float | None = None
    width: float | None = None


def _first(value) -> float:
    from pydicom.multival import MultiValue
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def _header_window(ds) -> tuple[float, float] | None:
    """The file's first WindowCenter/WindowWidth pair, if it has one."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c in (None, "") or w in (None, ""):
        return None
    try:
        return _first(c), _first(w)
    except (TypeError, ValueError, IndexError):
        return None


def choose_window(ds, window: str = "auto", level: float | None = None, width: float | None = None,
                  path: Path | str = "") -> Window:
    """Resolve the window for one file (presets are in HU and need CT)."""
    if window not in WINDOWS:
        raise WorkbenchError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    if window == "custom":
        if level is None or width is None:
            raise WorkbenchError("window 'custom' needs a level and a width (--level L --width W)")
        return Window("custom", float(level), float(width))
    if window in _pre.WINDOW_PRESETS:
        modality = str(ds.get("Modality", ""))
        if modality != "CT":
            raise WorkbenchError(
                f"window preset {window!r} is in Hounsfield units but DICOM file {path} has modality "
                f"{modality or 'unknown'}: use window auto, header, minmax or custom"
            )
        lv, wd = _pre.WINDOW_PRESETS[window]
        return Window(window, lv, wd)
    hw = _header_window(ds)
    if window == "header" or (window == "auto" and hw is not None):
        if hw is None:
            raise WorkbenchError(f"DICOM file {path} has no WindowCenter/WindowWidth: use window auto, minmax or custom")
        return Window("header", *hw)
    return Window("minmax")


def to_uint8(ds, window: str = "auto", level: float | None = None, width: float | None = None,
             path: Path | str = "") -> tuple[np.ndarray, Window]:
    """All frames of one file as ``(frames, H, W, C)`` uint8 display images, and the window used."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut
    arr = pixel_array(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds))
        if rgb.dtype != np.uint8:  # 16-bit palettes: scale to 8 bits
            rgb = (rgb.astype(np.float64) / 257.0).round().astype(np.uint8)
        return rgb, Window("palette")
    if arr.ndim == 4:  # RGB (pydicom has already converted YBR to RGB)
        if arr.dtype == np.uint8:
            return arr, Window("rgb")
        return np.stack([_pre.minmax_uint8(f) for f in arr]), Window("minmax")
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    w = choose_window(ds, window, level, width, path)
    if w.kind == "minmax":
        out = np.stack([_pre.minmax_uint8(f) for f in values])
    else:
        out = _pre.window(values, w.level, w.width)
    if photometric == "MONOCHROME1":
        out = _pre.invert(out)
    return out[..., None], w


def select_frames(n_frames: int, frames: str) -> list[int]:
    """``all`` frames, the ``middle`` one, or the ``first``."""
    if frames == "all":
        return list(range(n_frames))
    if frames == "middle":
        return [n_frames // 2]
    if frames == "first":
        return [0]
    raise WorkbenchError(f"frames {frames!r} is not one of all, middle, first")

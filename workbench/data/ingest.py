"""``workbench ingest DICOM_DIR --out DIR``: a DICOM folder → a de-identified workbench dataset.

Writes into the new folder DIR:
* ``<name>.npz`` — MedMNIST layout (``{train,val,test}_{images,labels}``, uint8), images windowed
  (``workbench.dicom``) and resized by an explicit policy, one image per frame;
* ``<name>_manifest.csv`` — one row per image: split, index in the split, label, pseudonymous
  patient/study/series (``P0001``, ``S0001``, ``R0001``), frame, modality, window, and the md5 of
  the source file (to re-link by whoever holds the originals; no paths, no header values);
* ``<name>.md`` — its data card (validated; unknowns are "[More Information Needed]").

Headers are de-identified with the DICOM PS3.15 Basic profile (``workbench.deid``); images marked
``BurnedInAnnotation = YES`` are excluded unless ``allow_burned_in``; the patient is the unit of the
seeded split, so one patient's images never straddle train and test. Before returning, every file
written is searched for each original value the profile removed or replaced; a hit deletes the
outputs and is an error. Source paths are printed to the console for the person running the
ingest, never written to the outputs (folder and file names can carry names).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import cards as _cards
from . import deid as _deid
from . import dicom as _dicom
from . import imagefolder as _if
from . import preprocess as _pre
from ..core.errors import WorkbenchError

LABEL_SOURCES = ("folder", "modality", "csv")
SPLIT_UNITS = ("patient", "image")
ORIENTATIONS = ("free", "fixed")


class BurnedInAnnotationWarning(UserWarning):
    """DICOM images flagged BurnedInAnnotation = YES were excluded from an ingest."""


@dataclass(frozen=True)
class IngestOptions:
    labels: str = ""               # CSV (file relative to DICOM_DIR, label[, split]); sets label_from csv
    file_column: str = "file"
    label_column: str = "label"
    split_column: str = "split"
    label_from: str = "folder"     # folder (first sub-folder name) | modality | csv
    window: str = "auto"           # auto | header | minmax | custom | lung | mediastinum | abdomen | bone | brain
    level: float | None = None
    width: float | None = None
    size: int = 64
    resize: str = "pad"            # stretch | pad | crop | none
    frames: str = "all"            # all | middle | first
    channels: int = 0              # 0: as stored (must not be mixed), 1, 3
    split_by: str = "patient"      # patient | image
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    allow_burned_in: bool = False
    on_error: str = "skip"         # skip (and list) unreadable files, or raise
    name: str = ""                 # dataset name (default: the output folder's name)
    orientation: str = ""          # free | fixed: do flips and 90° turns preserve the labels? ("": not stated → fixed)

    def check(self) -> None:
        if self.label_from not in LABEL_SOURCES:
            raise WorkbenchError(f"label_from {self.label_from!r} is not one of {', '.join(LABEL_SOURCES)}")
        if self.label_from == "csv" and not self.labels:
            raise WorkbenchError("label_from csv needs a labels CSV (--labels FILE)")
        if self.window not in _dicom.WINDOWS:
            raise WorkbenchError(f"window {self.window!r} is not one of {', '.join(_dicom.WINDOWS)}")
        if self.window == "custom" and (self.level is None or self.width is None):
            raise WorkbenchError("window 'custom' needs a level and a width (--level L --width W)")
        _cards.check_size(self.size, "ingest option size")
        if self.orientation not in ("", *ORIENTATIONS):
            raise WorkbenchError(f"orientation {self.orientation!r} is not one of {', '.join(ORIENTATIONS)}")
        if self.split_by not in SPLIT_UNITS:
            raise WorkbenchError(f"split_by {self.split_by!r} is not one of {', '.join(SPLIT_UNITS)}")
        _if.FolderOptions(resize=self.resize, channels=self.channels, on_error=self.on_error,
                          val_fraction=self.val_fraction, test_fraction=self.test_fraction).check("ingest")
        _dicom.select_frames(1, self.frames)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"output folder {out} already exists and is not empty: ingest never overwrites; "
                             "choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def ingest(dicom_dir: Path, out: Path, opts: IngestOptions = IngestOptions(), log=print) -> dict:
    """Ingest ``dicom_dir`` into the new folder ``out``; returns a summary (see module docstring)."""
    dicom_dir, out = Path(dicom_dir), Path(out)
    if opts.labels:
        opts = IngestOptions(**{**asdict(opts), "label_from": "csv"})
    opts.check()
    if not dicom_dir.is_dir():
        raise WorkbenchError(f"DICOM folder {dicom_dir} not found")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"output folder {out} already exists and is not empty: ingest never overwrites; "
                             "choose a new --out")
    if out.resolve() == dicom_dir.resolve() or dicom_dir.resolve() in out.resolve().parents:
        raise WorkbenchError(f"output folder {out} must be outside the DICOM folder {dicom_dir}")
    from ..core import walk
    all_files = [p for p in walk.files(dicom_dir) if p.name != "DICOMDIR"]
    candidates = [p for p in all_files if _dicom.is_dicom(p)]
    if not candidates:
        raise WorkbenchError(f"DICOM folder {dicom_dir} holds no DICOM files (Part 10 'DICM' header or *.dcm)")
    rel = {p: p.relative_to(dicom_dir).as_posix() for p in candidates}

    csv_labels = csv_splits = None
    if opts.label_from == "csv":
        fo = _if.FolderOptions(csv=str(Path(opts.labels).resolve()), file_column=opts.file_column,
                               label_column=opts.label_column, split_column=opts.split_column)
        csv_labels, csv_splits, _ = _if.read_labels(dicom_dir, fo, list(rel.values()))

    _deid.reset_uid_map()
    registry, pseudo = _deid.PHIRegistry(), _deid.Pseudonyms()
    rows, images, skipped, burned, unlabelled = [], [], [], [], []
    it = candidates
    if len(candidates) >= 200:  # a bar only where reading takes a while
        from ..core.progress import tqdm
        it = tqdm(candidates, desc="ingest DICOM", unit="file")
    for path in it:
        r = rel[path]
        if csv_labels is not None and r not in csv_labels:
            unlabelled.append(r)
            continue
        source_md5 = _md5(path)
        where = f"(md5 {source_md5})"  # messages that may reach the card never carry paths
        try:
            try:
                ds = _dicom.read(path)
            except WorkbenchError:
                raise WorkbenchError(f"DICOM file {where} is not readable") from None
            if _deid.burned_in(ds) and not opts.allow_burned_in:
                burned.append(r)
                continue
            patient = pseudo.get("P", ds.get("PatientID"))
            study = pseudo.get("S", ds.get("StudyInstanceUID"))
            series = pseudo.get("R", ds.get("SeriesInstanceUID"))
            modality = str(ds.get("Modality", "") or "unknown")
            _deid.deidentify(ds, registry)
            pixels, win = _dicom.to_uint8(ds, opts.window, opts.level, opts.width, path=where)
        except WorkbenchError as e:
            if opts.on_error == "raise":
                raise WorkbenchError(f"{r}: {e}") from None
            skipped.append((r, source_md5, str(e)))
            continue
        if opts.label_from == "folder":
            if "/" not in r:
                raise WorkbenchError(f"DICOM file {path} is not inside a class sub-folder of {dicom_dir}: "
                                     "use label_from modality or a labels CSV")
            label = r.split("/", 1)[0]
        elif opts.label_from == "modality":
            label = modality
        else:
            label = csv_labels[r]
        for f in _dicom.select_frames(len(pixels), opts.frames):
            images.append(pixels[f])
            rows.append({"label_value": label, "patient": patient, "study": study, "series": series,
                         "frame": f, "modality": modality,
                         "photometric": str(ds.get("PhotometricInterpretation", "")),
                         "window": win.kind, "level": win.level, "width": win.width,
                         "source_md5": source_md5, "_rel": r})

    for r, _, reason in skipped:
        log(f"skipped {r}: {reason}")
    if burned:
        msg = (f"{len(burned)} DICOM file(s) excluded because BurnedInAnnotation is YES (text in the pixels "
               f"may identify the patient; pass allow_burned_in to include them): {', '.join(burned[:5])}")
        warnings.warn(msg, BurnedInAnnotationWarning, stacklevel=2)
        log(f"warning: {msg}")
    if not images:
        first = f"; first problem: {skipped[0][0]}: {skipped[0][2]}" if skipped else ""
        raise WorkbenchError(f"DICOM folder {dicom_dir}: no image could be ingested ({len(candidates)} DICOM file(s), "
                             f"{len(skipped)} skipped, {len(burned)} with burned-in annotations){first}")

    # channels and size
    chans = sorted({im.shape[-1] for im in images})
    channels = opts.channels or (chans[0] if len(chans) == 1 else 0)
    if channels == 0:
        raise WorkbenchError(f"DICOM folder {dicom_dir} mixes grayscale and colour images: set channels 1 or 3")
    import cv2
    x = np.stack([_pre.resize(im if im.shape[-1] == channels else
                              (np.repeat(im, 3, -1) if channels == 3 else cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)[..., None]),
                              opts.size, opts.resize) for im in images])
    labels_by_row = {i: row["label_value"] for i, row in enumerate(rows)}
    index, class_names = _if.class_index({str(i): v for i, v in labels_by_row.items()}, None, "ingest labels")
    y = np.array([index[str(i)] for i in range(len(rows))], dtype=np.int64)

    if csv_splits is not None:
        split = np.array([csv_splits[row["_rel"]] for row in rows])
        split_note = f"split from the labels CSV column {opts.split_column!r}"
    else:
        groups = [row["patient"] if opts.split_by == "patient" else f"{row['source_md5']}:{row['frame']}" for row in rows]
        split = _if.seeded_split(y, groups, opts.val_fraction, opts.test_fraction, opts.seed)
        split_note = (f"seeded stratified split by {opts.split_by} (seed {opts.seed}, val {opts.val_fraction}, "
                      f"test {opts.test_fraction})")
    empty = [s for s in _if.SPLITS if not (split == s).any()]
    if empty:
        n_pat = len({row["patient"] for row in rows})
        raise WorkbenchError(
            f"DICOM folder {dicom_dir}: split(s) {', '.join(empty)} would be empty ({len(rows)} images, "
            f"{n_pat} patient(s)); add data, use split_by image, or give a split column in a labels CSV"
        )

    name = opts.name or out.name
    if not name.replace("_", "").replace("-", "").isalnum():
        raise WorkbenchError(f"dataset name {name!r} must be letters, digits, '-' or '_' (option name)")
    _prepare_out(out)
    written = []
    try:
        arrays, manifest = {}, []
        for s in _if.SPLITS:
            idx = np.flatnonzero(split == s)
            arrays[f"{s}_images"] = x[idx][..., 0] if channels == 1 else x[idx]  # MedMNIST: (N, S, S) grayscale
            arrays[f"{s}_labels"] = y[idx].reshape(-1, 1).astype(np.uint8 if len(class_names) < 256 else np.int64)
            for j, i in enumerate(idx):
                row = {k: v for k, v in rows[i].items() if k not in ("_rel", "label_value")}
                manifest.append({"split": s, "index": j, "label": int(y[i]), "class": class_names[y[i]], **row})
        npz = out / f"{name}.npz"
        tmp = out / f".{name}.npz.part"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, npz)
        written.append(npz)
        import pandas as pd
        man_path = out / f"{name}_manifest.csv"
        pd.DataFrame(manifest).to_csv(man_path, index=False)
        written.append(man_path)
        counts = {s: int((split == s).sum()) for s in _if.SPLITS}
        summary = {
            "name": name, "dataset": str(out), "npz": str(npz), "manifest": str(man_path),
            "images": len(rows), "files_ingested": len({row["source_md5"] for row in rows}),
            "patients": len({row["patient"] for row in rows}), "classes": class_names, "splits": counts,
            "skipped": [{"file": r, "reason": why} for r, _, why in skipped],
            "burned_in_excluded": burned, "unlabelled": unlabelled,
            "phi_values_checked": len(registry), "split": split_note,
        }
        card_path = out / f"{name}.md"
        card_path.write_text(_card_text(name, class_names, channels, counts, _md5(npz), opts, rows, y, split,
                                        skipped, burned, unlabelled, split_note, len(registry)), encoding="utf-8")
        written.append(card_path)
        hits = _deid.audit(written, registry)
        if hits:
            raise WorkbenchError(
                "PHI guard: original identifying values were found in the outputs ("
                + "; ".join(f"{Path(f).name} holds a value of {kw}" for f, kw in hits[:5])
                + "): nothing was kept; rename the class folders/labels that repeat header values and ingest again"
            )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # it was new or empty (_prepare_out): nothing else is lost
        raise
    summary["card"] = str(card_path)
    return summary


def _card_text(name, class_names, channels, counts, md5, opts, rows, y, split, skipped, burned, unlabelled,
               split_note, n_phi) -> str:
    U = _cards.UNKNOWN
    modalities = sorted({row["modality"] for row in rows})
    n_pat = len({row["patient"] for row in rows})
    per_class = "\n".join(
        f"- {i}: {c} (train/val/test: " + "/".join(str(int(((y == i) & (split == s)).sum())) for s in _if.SPLITS) + ")"
        for i, c in enumerate(class_names))
    window = opts.window if opts.window != "custom" else f"custom (level {opts.level}, width {opts.width})"
    if opts.window in _pre.WINDOW_PRESETS:
        lv, wd = _pre.WINDOW_PRESETS[opts.window]
        window += f" (level {lv:g} HU, width {wd:g} HU)"
    options = {k: v for k, v in asdict(opts).items() if k not in ("labels", "name", "orientation")}
    if opts.orientation:
        orientation = _cards.orientation_meta(
            opts.orientation == "free", f"stated at ingest (--orientation {opts.orientation}): flips and 90° turns "
            + ("preserve" if opts.orientation == "free" else "do not preserve") + " the labels")
    else:
        orientation = _cards.orientation_meta(False, _cards.ORIENTATION_UNSTATED)
    meta = {
        "name": name, "pretty_name": f"{name} (ingested DICOM)", "version": "1", "license": U,
        "source": {"url": U, "citation": U}, "modality": ", ".join(modalities),
        "task": "binary-class" if len(class_names) == 2 else "multi-class",
        "label_classes": {i: c for i, c in enumerate(class_names)}, "n_channels": int(channels),
        "orientation": orientation,
        "splits": counts, "files": {int(opts.size): {"file": f"{name}.npz", "md5": md5}},
        "ingest": {"options": options, "deidentification": f"{_deid.PROFILE} ({_deid.PROFILE_TABLES})"},
    }
    skipped_lines = "".join(f"\n- {why}" for _, _, why in skipped[:20])
    sections = {
        "Summary": (f"{len(rows)} images ({', '.join(modalities)}) from {len({r['source_md5'] for r in rows})} "
                    f"DICOM file(s) of {n_pat} pseudonymous patient(s), ingested and de-identified by "
                    f"`workbench ingest`. Task `{meta['task']}` with {len(class_names)} classes. "
                    f"Purpose and provenance of the source data: {U}"),
        "Dataset Structure": (
            f"`{name}.npz` in the MedMNIST layout: `{{train,val,test}}_images` uint8 "
            f"(N, {opts.size}, {opts.size}{'' if channels == 1 else ', 3'}) and `{{train,val,test}}_labels` (N, 1). "
            f"`{name}_manifest.csv` has one row per image in npz order: split, index, label, class, patient, study, "
            f"series, frame, modality, photometric, window, level, width, source_md5.\n\n"
            f"Splits: train {counts['train']} / val {counts['val']} / test {counts['test']}; {split_note}.\n\n"
            f"Classes (label value → name):\n\n{per_class}"),
        "Source Data": (
            f"DICOM files read with pydicom; modality LUT / rescale slope and intercept applied (Hounsfield units "
            f"for CT); window: {window}; MONOCHROME1 inverted; frames: {opts.frames}; resize policy "
            f"{opts.resize} to {opts.size}×{opts.size}; {channels} channel(s). "
            f"{len(skipped)} file(s) skipped{':' if skipped else '.'}{skipped_lines}\n\n"
            f"Acquisition sites, devices and protocols: {U}"),
        "Annotations": (f"Labels from {opts.label_from}"
                        + (f" (column {opts.label_column!r} of a labels CSV)" if opts.label_from == "csv" else "")
                        + (f"; {len(unlabelled)} file(s) not in the CSV were left out" if unlabelled else "")
                        + f". Annotation protocol and annotators: {U}"),
        "Bias, Risks & Limitations": f"{U} Images are downsampled to {opts.size} px and windowed; diagnostic detail is lost.",
        "Privacy": (
            f"Headers were de-identified with the {_deid.PROFILE} (Table E.1-1, dicom-anonymizer tables "
            f"{_deid.PROFILE_TABLES}): names, IDs, dates and other identifying attributes replaced, emptied or "
            f"removed, UIDs replaced consistently, private tags removed. Only pseudonyms (patient P…, study S…, "
            f"series R…) and technical attributes are written; no source paths. "
            f"{len(burned)} file(s) flagged BurnedInAnnotation = YES were "
            f"{'included because allow_burned_in was set' if opts.allow_burned_in else 'excluded'}. "
            f"All outputs were searched for {n_phi} original identifying values; none was found. Text burned into "
            f"the pixels of files without the flag cannot be detected by header checks: review the images "
            f"(ultrasound and secondary captures often carry it)."),
        "Intended & Out-of-Scope Use": f"Research and education only; not for clinical use. {U}",
        "Citation": U,
    }
    return _cards.render(meta, sections, title=meta["pretty_name"], where=f"drafted card for {name}")

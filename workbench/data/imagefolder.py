"""Image folder + labels CSV → arrays in the MedMNIST layout.

A folder of PNG/JPEG/TIFF images (grayscale or RGB, any depth in sub-folders) is labelled either by
a CSV (default ``labels.csv`` inside the folder; file and label column names configurable; an
optional split column with train/val/test) or, without a CSV, by the name of each image's class
sub-folder. Without a split column a seeded stratified 70/10/20 split is made in which files with
identical content always share a split.

Nothing is guessed silently: images must already be ``size``×``size`` unless a resize policy
(stretch, pad, crop) is chosen; mixed grayscale/RGB needs an explicit channel count; a CSV that
names missing files, unknown label values or an unknown split is an error; an unreadable image is
skipped *with its label* and listed (or is an error with ``on_error='raise'``); identical files in
different splits (by content hash) are reported. The options live in the folder's data card
(``<folder>.md``, drafted by ``workbench card init``) under ``image_folder:``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import preprocess as _pre
from ..core.errors import WorkbenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FolderOptions:
    csv: str = "labels.csv"       # inside the folder (or absolute); absent default → class sub-folders
    file_column: str = "file"
    label_column: str = "label"
    split_column: str = "split"   # used when the CSV has it
    resize: str = "none"          # none | stretch | pad | crop
    channels: int = 0             # 0: as stored (must not be mixed), 1: grayscale, 3: RGB
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    on_error: str = "skip"        # skip (and list) unreadable images, or raise

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "image_folder") -> "FolderOptions":
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise WorkbenchError(f"{where}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        opts = cls(**d)
        opts.check(where)
        return opts

    def check(self, where: str = "image folder") -> None:
        if self.resize not in _pre.RESIZE:
            raise WorkbenchError(f"{where}: resize {self.resize!r} is not one of {', '.join(_pre.RESIZE)}")
        if self.channels not in (0, 1, 3):
            raise WorkbenchError(f"{where}: channels {self.channels!r} must be 0 (as stored), 1 or 3")
        if self.on_error not in ("skip", "raise"):
            raise WorkbenchError(f"{where}: on_error {self.on_error!r} must be skip or raise")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise WorkbenchError(f"{where}: val_fraction and test_fraction must be in (0, 1) with a sum below 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FolderData:
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    files: dict[str, list[str]]
    class_names: list[str]
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _list_images(root: Path) -> list[str]:
    from ..core import walk
    return walk.relative(root, suffixes=IMAGE_SUFFIXES)


def _few(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" … ({len(items)} in all)" if len(items) > n else "")


def normalise_file(name: str) -> str:
    """A file column entry as a path relative to the folder, POSIX form: backslashes to slashes, leading
    "./" and doubled slashes removed, so that ``a.png``, ``./a.png`` and ``.\\a.png`` name one file."""
    import posixpath
    f = str(name).strip().replace("\\", "/")
    while f.startswith("./"):
        f = f[2:]
    return posixpath.normpath(f) if f else f


def labels_table(csv: Path, on_disk, file_column: str = "file", label_column: str = "label", where: str = "",
                 root=None):
    """The one reader of a labels CSV (image-folder datasets, folder pools' ``labels_csv``): columns checked,
    file names normalised (``normalise_file``), labels stripped; an empty label, a file listed twice (also
    under two spellings of one path, e.g. ``a.png`` and ``./a.png``) or a file not in ``on_disk`` is a one-line
    error naming the CSV. Returns the table with the normalised file column."""
    import pandas as pd
    where = where or f"labels CSV {csv}"
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for a bad CSV
        raise WorkbenchError(f"{where} cannot be read ({type(e).__name__}: {e})") from None
    for col in (file_column, label_column):
        if col not in table.columns:
            raise WorkbenchError(f"{where} has no column {col!r} (columns: {', '.join(table.columns)}); "
                                 "set file_column / label_column")
    given = table[file_column].astype(str)
    table[file_column] = [normalise_file(f) for f in given]
    table[label_column] = table[label_column].str.strip()
    rows = lambda mask: [int(i) + 2 for i in np.flatnonzero(mask)]  # noqa: E731  (CSV line numbers)
    empty = rows(table[label_column] == "")
    if empty:
        raise WorkbenchError(f"{where}: empty label on line(s) {_few(empty)}")
    dup = table[file_column].duplicated(keep=False)
    if dup.any():
        spellings = sorted(set(given[dup].str.strip()))
        raise WorkbenchError(f"{where} lists file(s) more than once (lines {_few(rows(dup))}: {_few(spellings)}); "
                             "keep one row per file")
    present = set(on_disk)
    missing = [f for f in table[file_column] if f not in present]
    if missing:
        raise WorkbenchError(f"{where} names {len(missing)} file(s) not in {root or 'the folder'} "
                             f"(or not readable images): {_few(missing)}")
    return table


def read_labels(root: Path, opts: FolderOptions, on_disk: list[str]) -> tuple[dict[str, str], dict[str, str] | None, str]:
    """file → label, file → split (or None), and where the labels came from."""
    csv = Path(opts.csv)
    csv = csv if csv.is_absolute() else root / csv
    if not csv.is_file():
        if opts.csv != FolderOptions.csv:
            raise WorkbenchError(f"labels CSV {csv} not found (option csv)")
        loose = [f for f in on_disk if "/" not in f]
        if loose:
            raise WorkbenchError(
                f"image folder {root} has no {opts.csv} and images outside class sub-folders ({_few(loose)}): "
                "add a labels CSV with file and label columns, or put each image in a folder named by its class"
            )
        return {f: f.split("/", 1)[0] for f in on_disk}, None, "class sub-folder names"
    table = labels_table(csv, on_disk, opts.file_column, opts.label_column, f"labels CSV {csv}", root)
    labels = dict(zip(table[opts.file_column], table[opts.label_column]))
    splits = None
    if opts.split_column in table.columns:
        values = table[opts.split_column].str.strip().str.lower()
        bad = sorted(set(values) - set(SPLITS))
        if bad:
            raise WorkbenchError(f"labels CSV {csv}: column {opts.split_column!r} has value(s) {_few(bad)}; "
                                 "expected train, val or test")
        splits = dict(zip(table[opts.file_column], values))
    return labels, splits, f"{csv.name} (columns {opts.file_column!r}, {opts.label_column!r})"


def class_index(labels: dict[str, str], class_names: list[str] | None, where: str) -> tuple[dict[str, int], list[str]]:
    """Map label values to indices: by the card's class names (or their 0..K-1 indices), else sorted
    names (all-integer labels are taken as indices)."""
    values = sorted(set(labels.values()))
    if class_names is not None:
        lookup = {name: i for i, name in enumerate(class_names)}
        lookup.update({str(i): i for i in range(len(class_names))})
        unknown = [v for v in values if v not in lookup]
        if unknown:
            files = [f for f, v in labels.items() if v in unknown]
            raise WorkbenchError(
                f"{where}: unknown label value(s) {_few(unknown)} (e.g. {_few(files, 3)}); "
                f"the data card's classes are {_few(class_names, 20)}"
            )
        return {f: lookup[v] for f, v in labels.items()}, list(class_names)
    if all(v.isdigit() for v in values):
        k = max(int(v) for v in values) + 1
        return {f: int(v) for f, v in labels.items()}, [str(i) for i in range(k)]
    return {f: values.index(v) for f, v in labels.items()}, values


def decode(path: Path) -> np.ndarray:
    """One image file → (H, W, 1|3) uint8. 16-bit and float images are stretched per image to
    0-255 (recorded as a note); alpha is dropped; palettes become RGB or grayscale."""
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA")
            mode = "RGBA"
        if mode in ("RGBA", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
            arr = np.asarray(im.convert("RGB"))
        elif mode == "LA":
            arr = np.asarray(im.convert("L"))
        elif mode in ("1", "L", "RGB"):
            arr = np.asarray(im.convert("L") if mode == "1" else im)
        elif mode.startswith("I") or mode == "F":
            arr = _pre.minmax_uint8(np.asarray(im, dtype=np.float64))
        else:
            raise ValueError(f"unsupported image mode {mode}")
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        arr = _pre.minmax_uint8(arr)
    return arr


def file_md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def seeded_split(labels: np.ndarray, groups: list[str], val_fraction: float, test_fraction: float,
                 seed: int) -> np.ndarray:
    """Split names per item, stratified by class, keeping each group (identical content) together."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gidx = np.array([group_ids[g] for g in groups])
    for c in np.unique(labels):
        members = np.unique(gidx[labels == c])  # groups whose (first) label is c
        members = rng.permutation(members)
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        for j, g in enumerate(members):
            split = "test" if j < n_test else "val" if j < n_test + n_val else "train"
            out[(gidx == g) & (out == None)] = split  # noqa: E711 - object array
    return out.astype(str)


def load_folder(root: Path, size: int, opts: FolderOptions = FolderOptions(),
                class_names: list[str] | None = None) -> FolderData:
    root = Path(root)
    if not root.is_dir():
        raise WorkbenchError(f"image folder {root} not found")
    opts.check(f"image folder {root}")
    on_disk = _list_images(root)
    if not on_disk:
        raise WorkbenchError(f"image folder {root} holds no PNG, JPEG or TIFF images")
    labels_by_file, splits_by_file, label_source = read_labels(root, opts, on_disk)
    index, class_names = class_index(labels_by_file, class_names, f"labels of image folder {root}")
    files = sorted(labels_by_file)
    unlabelled = sorted(set(on_disk) - set(files))

    images, kept, skipped, hashes = [], [], [], []
    shapes = {}
    it = files
    if len(files) >= 500:  # a bar only where reading takes a while
        from ..core.progress import tqdm
        it = tqdm(files, desc="read images", unit="img")
    for f in it:
        try:
            img = decode(root / f)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip(": ")
            if opts.on_error == "raise":
                raise WorkbenchError(f"image {root / f} cannot be read ({reason}); fix or remove it, "
                                     "or set on_error skip") from None
            skipped.append((f, reason))
            continue
        shapes.setdefault(img.shape[-1], f)
        images.append(img)
        kept.append(f)
        hashes.append(file_md5(root / f))
    if not kept:
        raise WorkbenchError(f"image folder {root}: none of the {len(files)} labelled images could be read "
                             f"(first: {skipped[0][0]}: {skipped[0][1]})")
    channels = opts.channels
    if channels == 0:
        if len(shapes) > 1:
            n_gray = sum(im.shape[-1] == 1 for im in images)
            raise WorkbenchError(
                f"image folder {root} mixes channel counts: {n_gray} grayscale (e.g. {shapes[1]}) and "
                f"{len(images) - n_gray} RGB (e.g. {shapes[3]}) images; set channels 1 or 3 to convert"
            )
        channels = next(iter(shapes))
    import cv2
    out = []
    for f, img in zip(kept, images):
        if img.shape[-1] != channels:
            img = (np.repeat(img, 3, axis=-1) if channels == 3
                   else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None])
        try:
            out.append(_pre.resize(img, size, opts.resize))
        except WorkbenchError as e:
            raise WorkbenchError(f"image {root / f}: {e}") from None
    x = np.stack(out)
    y = np.array([index[f] for f in kept], dtype=np.int64)

    if splits_by_file is not None:
        split = np.array([splits_by_file[f] for f in kept])
        split_source = f"column {opts.split_column!r}"
    else:
        split = seeded_split(y, hashes, opts.val_fraction, opts.test_fraction, opts.seed)
        split_source = (f"seeded stratified split (seed {opts.seed}, val {opts.val_fraction}, "
                        f"test {opts.test_fraction}; identical files kept together)")
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise WorkbenchError(f"image folder {root}: split(s) {', '.join(empty)} would be empty with "
                             f"{len(kept)} images; add images or give a split column")

    duplicates = []
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        by_hash.setdefault(h, []).append(i)
    for h, idx in by_hash.items():
        if len(idx) > 1:
            duplicates.append({"md5": h, "files": [kept[i] for i in idx],
                               "splits": sorted(set(split[idx].tolist())),
                               "labels": sorted({class_names[y[i]] for i in idx})})
    notes = [f"labels from {label_source}", f"splits from {split_source}",
             f"resize policy {opts.resize} to {size}x{size}", f"{channels} channel(s)"]
    if skipped:
        notes.append(f"{len(skipped)} unreadable image(s) skipped with their labels: {_few(f for f, _ in skipped)}")
    if unlabelled:
        notes.append(f"{len(unlabelled)} image(s) not in the labels CSV ignored: {_few(unlabelled)}")
    cross = [d for d in duplicates if len(d["splits"]) > 1]
    if cross:
        notes.append(f"{len(cross)} group(s) of identical files fall in different splits (leakage): "
                     f"{_few(' = '.join(d['files']) for d in cross)}")
    conflicting = [d for d in duplicates if len(d["labels"]) > 1]
    if conflicting:
        notes.append(f"{len(conflicting)} group(s) of identical files carry different labels: "
                     f"{_few(' = '.join(d['files']) for d in conflicting)}")

    lines = [f"{f}\t{h}\t{class_names[c]}\t{s}" for f, h, c, s in zip(kept, hashes, y, split)]
    recipe = json.dumps({"size": size, "channels": channels, "resize": opts.resize}, sort_keys=True)
    fingerprint = hashlib.md5(("\n".join(lines) + "\n" + recipe).encode()).hexdigest()
    data = FolderData(images={}, labels={}, files={}, class_names=class_names, fingerprint=fingerprint,
                      skipped=skipped, duplicates=duplicates, unlabelled=unlabelled, notes=notes)
    for s in SPLITS:
        m = split == s
        data.images[s], data.labels[s] = x[m], y[m]
        data.files[s] = [f for f, keep in zip(kept, m) if keep]
    return data


def folder_card_path(folder: Path) -> Path:
    """An image folder's card sits beside it: ``<folder>.md``."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.md"


def draft_card(folder: Path, sizes=(28,), opts: FolderOptions = FolderOptions(), name: str = "",
               modality: str = "", license: str = "", force: bool = False,
               orientation: dict | None = None) -> Path:
    """Write ``<folder>.md``: a data card drafted from the folder itself (classes, splits, a content
    fingerprint per size, the loading options, what was skipped or duplicated); everything the folder
    cannot tell is "[More Information Needed]". ``orientation`` ({flips, quarter_turns, reason}) is
    written as given; without it the card says orientation-fixed, reason not stated. The card is
    validated before it is written."""
    from . import cards as _cards
    folder = Path(folder)
    target = folder_card_path(folder)
    if target.exists() and not force:
        raise WorkbenchError(f"data card {target} already exists: edit it, or redraft with --force")
    U = _cards.UNKNOWN
    sizes = sorted({_cards.check_size(s, f"drafted card {target}") for s in sizes})
    if not sizes:
        raise WorkbenchError(f"drafted card {target}: give at least one image size")
    loaded = {s: load_folder(folder, s, opts) for s in sizes}
    data = loaded[sizes[0]]
    name = name or "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in folder.name)
    k = len(data.class_names)
    counts = {s: int(len(data.labels[s])) for s in SPLITS}
    if not all(counts.values()):
        raise WorkbenchError(f"image folder {folder}: every split needs images (got {counts})")
    n_channels = int(data.images["train"].shape[-1])
    meta = {
        "name": name, "pretty_name": name, "version": "1", "license": license or U,
        "source": {"url": U, "citation": U}, "modality": modality or U,
        "task": "binary-class" if k == 2 else "multi-class",
        "label_classes": {i: c for i, c in enumerate(data.class_names)}, "n_channels": n_channels,
        "orientation": dict(orientation) if orientation else _cards.orientation_meta(False, _cards.ORIENTATION_UNSTATED),
        "splits": counts, "files": {s: {"file": f"{folder.name}/", "md5": loaded[s].fingerprint} for s in sizes},
        "image_folder": opts.to_dict(),
    }
    per_class = "\n".join(
        f"- {i}: {c} (train/val/test: " + "/".join(str(int((data.labels[s] == i).sum())) for s in SPLITS) + ")"
        for i, c in enumerate(data.class_names))
    notes = "\n".join(f"- {n}" for n in data.notes)
    dup_cross = [d for d in data.duplicates if len(d["splits"]) > 1]
    sections = {
        "Summary": f"{sum(counts.values())} images in {k} classes from the image folder `{folder.name}/`. "
                   f"What they show and why they were collected: {U}",
        "Dataset Structure": (
            f"Images are read from `{folder.name}/` at load time (sizes {', '.join(map(str, sizes))}; "
            f"`files` holds a fingerprint of file contents, labels, splits and the resize recipe, not a file md5). "
            f"Splits: train {counts['train']} / val {counts['val']} / test {counts['test']}; {n_channels} channel(s).\n\n"
            f"Classes (label value → name):\n\n{per_class}\n\nLoading notes:\n\n{notes}"),
        "Source Data": U,
        "Annotations": f"Labels from {data.notes[0].removeprefix('labels from ')}. Annotation protocol: {U}",
        "Bias, Risks & Limitations": U + (f" {len(dup_cross)} group(s) of identical files fall in different "
                                          "splits (see Dataset Structure)." if dup_cross else ""),
        "Privacy": f"{U} Check that neither the images (burned-in text) nor the file names carry patient identifiers.",
        "Intended & Out-of-Scope Use": f"{U} Not for clinical use.",
        "Citation": U,
    }
    text = _cards.render(meta, sections, title=name, where=f"drafted card {target}")
    target.write_text(text, encoding="utf-8")
    return target

"""Loaders → one ``Dataset`` type.

The ``dataset`` parameter is a data card name or a path, dispatched by kind:
* a ``.npz`` file (MedMNIST format, below);
* a folder written by ``workbench ingest`` (one ``.npz`` with its card and manifest): its ``.npz``;
* an image folder (PNG/JPEG/TIFF + labels CSV or class sub-folders, ``workbench.imagefolder``),
  described by the card ``<folder>.md`` beside it (``workbench card init`` drafts one);
* a DICOM file or folder is refused with a pointer to ``workbench ingest``: DICOM enters a dataset
  only through the de-identifying ingest, never straight into a run's reports.

MedMNIST-format ``.npz`` files (``{train,val,test}_{images,labels}``) are validated against their
data card: keys, shapes, dtypes, label range, class count, split counts and md5. A file whose md5
matches a card uses that card; a card named ``<stem>.md`` next to the file is used for derived
datasets; any other valid file is accepted as a custom dataset (classes from its labels) with a
warning. Data files are never unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import cards as _cards
from ..core.errors import WorkbenchError
from ..core.paths import CARDS_DIR, DATA_DIR

SPLITS = ("train", "val", "test")
_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))


class CustomDatasetWarning(UserWarning):
    """A valid npz that matches no data card was loaded as a custom dataset."""


MULTILABEL = "multi-label, binary-class"


@dataclass
class Dataset:
    name: str
    images: dict[str, np.ndarray]          # split -> (N, H, W, C) uint8
    labels: dict[str, np.ndarray]          # split -> (N,) int64; multi-label: (N, L) int64 in {0, 1}
    class_names: list[str]
    task: str
    path: Path | None = None
    md5: str | None = None
    card: _cards.Card | None = None
    size: int = 28
    notes: list[str] = field(default_factory=list)
    preprocess: dict | None = None          # the spec applied to ``images`` (None: as loaded)

    @property
    def num_classes(self) -> int:
        """K classes, or L labels for a multi-label dataset."""
        return len(self.class_names)

    @property
    def is_multilabel(self) -> bool:
        return self.labels["train"].ndim == 2

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images["train"].shape[1:])

    @property
    def is_custom(self) -> bool:
        return self.card is None

    def counts(self) -> dict[str, list[int]]:
        """Images per class per split; multi-label: images with each label positive, per split."""
        if self.is_multilabel:
            return {s: self.labels[s].sum(axis=0).astype(int).tolist() for s in SPLITS}
        return {s: np.bincount(self.labels[s], minlength=self.num_classes).tolist() for s in SPLITS}

    def describe(self) -> dict:
        out = {
            "name": self.name, "path": str(self.path) if self.path else None, "md5": self.md5,
            "card": self.card.name if self.card else None, "task": self.task, "size": self.size,
            "input_shape": list(self.input_shape), "num_classes": self.num_classes,
            "class_names": list(self.class_names), "multilabel": self.is_multilabel,
            "split_sizes": {s: int(len(self.labels[s])) for s in SPLITS}, "notes": list(self.notes),
            "preprocess": self.preprocess,
        }
        if self.is_multilabel:  # label cardinality: mean number of positive labels per image
            out["labels_per_image"] = {s: round(float(self.labels[s].sum(axis=1).mean()), 4) for s in SPLITS}
        return out

    def preprocessed(self, spec: dict | None) -> "Dataset":
        """Every split through ``preprocess.apply_spec``: the one place where train, evaluate and
        annotate apply a run's preprocessing (the identity spec returns this dataset unchanged)."""
        from . import preprocess as _pre
        if _pre.is_identity(spec):
            return self
        images = {s: _pre.apply_spec(spec, self.images[s]) for s in SPLITS}
        return replace(self, images=images, preprocess=spec,
                       notes=[*self.notes, f"preprocessing: {_pre.describe(spec)}"])

    def subsample(self, max_per_split: int, seed: int) -> "Dataset":
        """A stratified, seeded subset with at most ``max_per_split`` images per split (0 = all); for
        multi-label data every label with a positive keeps one where the budget allows (``stratified_indices``)."""
        if max_per_split <= 0:
            return self
        images, labels = {}, {}
        for s in SPLITS:
            idx = stratified_indices(self.labels[s], max_per_split, seed)
            images[s], labels[s] = self.images[s][idx], self.labels[s][idx]
        note = f"stratified subset: at most {max_per_split} images per split (seed {seed})"
        return replace(self, images=images, labels=labels, notes=[*self.notes, note])


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``n`` items keeping class proportions (every class ≥ 1).
    Multi-label ``labels`` (N, L): see ``_multilabel_indices``."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    if labels.ndim == 2:
        return _multilabel_indices(labels, n, seed)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if n < len(classes):
        raise WorkbenchError(f"a stratified subset of {n} cannot hold all {len(classes)} classes: "
                             f"ask for at least {len(classes)} images per split (parameter 'max_per_split')")
    quota = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(int)
    # hand out what rounding left over to the largest classes first …
    for c in np.argsort(-counts):
        if quota.sum() >= n:
            break
        quota[c] += 1
    # … and take back what the "every class ≥ 1" floor added beyond n, from the largest quotas
    while quota.sum() > n:
        quota[np.argmax(quota)] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=min(q, cnt), replace=False)
              for c, q, cnt in zip(classes, quota, counts)]
    return np.sort(np.concatenate(picked))


def _multilabel_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` rows of a (N, L) 0/1 matrix that keeps every label with a positive present
    when ``n`` allows: labels are visited rarest first and, while a label has no positive among the picked
    rows, one of its positive rows is drawn (preferring rows that also cover other missing labels); the
    rest of the budget is a uniform draw from the remaining rows, so frequencies stay close to the source."""
    rng = np.random.default_rng(seed)
    pos = labels.astype(bool)
    picked: list[int] = []
    covered = np.zeros(labels.shape[1], dtype=bool)
    for j in np.argsort(pos.sum(axis=0), kind="stable"):
        if len(picked) >= n or covered[j] or not pos[:, j].any():
            continue
        rows = np.setdiff1d(np.flatnonzero(pos[:, j]), picked)
        gain = pos[rows][:, ~covered].sum(axis=1)
        best = rows[gain == gain.max()]
        r = int(rng.choice(best))
        picked.append(r)
        covered |= pos[r]
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    fill = rng.choice(rest, size=n - len(picked), replace=False) if n > len(picked) else np.array([], int)
    return np.sort(np.concatenate([np.array(picked, dtype=int), fill.astype(int)]))


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_data_dir() -> Path:
    """Where card-named files live: $WORKBENCH_DATA_DIR if set (tests, shared storage), else data/."""
    env = os.environ.get("WORKBENCH_DATA_DIR")
    return Path(env).expanduser().resolve() if env else DATA_DIR


def default_cards_dir() -> Path:
    """Where the data cards live: $WORKBENCH_CARDS_DIR if set, else data_cards/."""
    env = os.environ.get("WORKBENCH_CARDS_DIR")
    return Path(env).expanduser().resolve() if env else CARDS_DIR


def _looks_like_path(spec: str, cards_dir: Path) -> bool:
    if spec.endswith((".npz", ".dcm")) or "/" in spec or "\\" in spec:
        return True
    # a bare name is a card first; only an existing file or folder that no card claims is a path
    return Path(spec).exists() and spec not in _cards.card_names(cards_dir)


def resolve(spec: str, size: int = 28, cards_dir: Path | None = None,
            data_dir: Path | None = None) -> tuple[Path, _cards.Card | None]:
    """Map the ``dataset`` parameter (card name or path) to a file and the card it was named by."""
    cards_dir = Path(cards_dir) if cards_dir else default_cards_dir()
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not isinstance(spec, str) or not spec.strip():
        raise WorkbenchError("parameter 'dataset' is empty: give a card name (e.g. bloodmnist) or a path to a .npz")
    if _looks_like_path(spec, cards_dir):
        return Path(spec).expanduser(), None
    card = _cards.load_card(spec, cards_dir)
    entry = card.files.get(int(size))
    if entry is None:
        raise WorkbenchError(
            f"data card {card.name} lists no file of size {size}; sizes: {', '.join(map(str, sorted(card.files)))}"
        )
    path = data_dir / entry["file"]
    if not path.is_file():
        raise WorkbenchError(
            f"dataset {card.name} (size {size}) is not in {data_dir}: run 'workbench fetch {card.name} --size {size}' "
            f"(downloads {entry['file']}, md5 {entry['md5']}) or pass a path with -p dataset PATH"
        )
    return path, card


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise WorkbenchError(f"dataset file {path} not found: check the path (parameter 'dataset')")
    if not zipfile.is_zipfile(path):
        # checked first: for a non-zip file numpy would otherwise try (and we would refuse) pickle
        raise WorkbenchError(
            f"dataset file {path} is truncated or corrupt (not a readable .npz archive); "
            "re-download or re-create it (np.savez)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in _KEYS if k not in keys]
            if missing:
                raise WorkbenchError(
                    f"dataset file {path} lacks key(s) {', '.join(missing)}; a MedMNIST-format npz needs "
                    f"{', '.join(_KEYS)} (found: {', '.join(sorted(keys)) or 'none'})"
                )
            return {k: z[k] for k in _KEYS}
    except WorkbenchError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise WorkbenchError(
                f"dataset file {path} holds Python objects (pickled arrays), which workbench never loads: "
                "save plain numeric arrays with np.savez"
            ) from None
        raise WorkbenchError(f"dataset file {path} is not a readable .npz ({e}); re-download or re-create it") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise WorkbenchError(
            f"dataset file {path} is truncated or corrupt ({type(e).__name__}: {e}); re-download or re-create it"
        ) from None


def _check_arrays(arrays: dict[str, np.ndarray], path: Path) -> tuple[dict, dict]:
    images, labels = {}, {}
    ref_shape = None
    for s in SPLITS:
        x, y = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if x.dtype != np.uint8:
            raise WorkbenchError(f"dataset file {path}: {s}_images has dtype {x.dtype}; expected uint8 (0-255) images")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] not in (1, 3) or len(x) == 0:
            raise WorkbenchError(
                f"dataset file {path}: {s}_images has shape {arrays[f'{s}_images'].shape}; "
                "expected (N, S, S) grayscale or (N, S, S, 3) RGB with N > 0"
            )
        if ref_shape is None:
            ref_shape = x.shape[1:]
        elif x.shape[1:] != ref_shape:
            raise WorkbenchError(
                f"dataset file {path}: {s}_images are {x.shape[1:]} but train_images are {ref_shape}; all splits need one shape"
            )
        multi = y.ndim == 2 and y.shape[1] > 1
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] < 1) or len(y) != len(x):
            raise WorkbenchError(
                f"dataset file {path}: {s}_labels has shape {y.shape} for {len(x)} images; expected ({len(x)}, 1) "
                f"or ({len(x)},) class indices, or ({len(x)}, L) 0/1 multi-label columns"
            )
        if s != "train" and multi != (labels["train"].ndim == 2):
            raise WorkbenchError(
                f"dataset file {path}: {s}_labels has shape {y.shape} but train_labels has shape "
                f"{arrays['train_labels'].shape}; all splits need one label layout: (N, 1) class indices or "
                "(N, L) 0/1 multi-label columns"
            )
        if multi and s != "train" and y.shape[1] != labels["train"].shape[1]:
            raise WorkbenchError(
                f"dataset file {path}: {s}_labels has {y.shape[1]} multi-label columns but train_labels has "
                f"{labels['train'].shape[1]}; every split needs the same labels"
            )
        if not (np.issubdtype(y.dtype, np.integer) or (multi and y.dtype == np.bool_)):
            raise WorkbenchError(f"dataset file {path}: {s}_labels has dtype {y.dtype}; expected integer "
                                 + ("0/1 multi-label values" if multi else "class indices"))
        if multi:
            y = y.astype(np.int64)
            bad = np.setdiff1d(np.unique(y), [0, 1])
            if bad.size:
                raise WorkbenchError(
                    f"dataset file {path}: {s}_labels is multi-label (shape {y.shape}) but holds value(s) "
                    f"{', '.join(map(str, bad[:5].tolist()))}; multi-label columns must be 0 or 1"
                )
        else:
            y = y.reshape(-1).astype(np.int64)
            if y.min() < 0:
                raise WorkbenchError(f"dataset file {path}: {s}_labels contains negative label {int(y.min())}")
        images[s], labels[s] = x, y
    return images, labels


def _sibling_card(path: Path) -> _cards.Card | None:
    candidate = path.with_suffix(".md")
    return _cards.read_card(candidate) if candidate.is_file() else None


def path_kind(path: Path) -> str:
    """``npz``, ``ingested`` (a folder written by workbench ingest), ``folder`` (images) or ``dicom``."""
    from .dicom import is_dicom
    if path.is_dir():
        npzs = sorted(path.glob("*.npz"))
        if len(npzs) == 1 and npzs[0].with_suffix(".md").is_file():
            return "ingested"
        from ..core import walk
        for i, f in enumerate(walk.iter_files(path)):
            if is_dicom(f):
                return "dicom"
            if i >= 200:
                break
        return "folder"
    if path.is_file() and path.suffix.lower() != ".npz" and is_dicom(path):
        return "dicom"
    return "npz"


def _check_against_card(images: dict, labels: dict, card: _cards.Card, card_size: int, where: str) -> None:
    k = card.num_classes
    if images["train"].shape[1] != card_size or images["train"].shape[3] != card.n_channels:
        raise WorkbenchError(
            f"{where}: images are {images['train'].shape[1:]} but card {card.name} says "
            f"{card_size}x{card_size}x{card.n_channels}"
        )
    multi = labels["train"].ndim == 2
    if multi != (card.task == MULTILABEL):
        layout = f"(N, {labels['train'].shape[1]}) multi-label columns" if multi else "(N,) class indices"
        raise WorkbenchError(
            f"{where}: labels are {layout} but card {card.name} has task {card.task!r}; "
            + ("a multi-label file needs task 'multi-label, binary-class' on its card" if multi else
               f"a '{MULTILABEL}' card needs (N, {k}) 0/1 label columns")
        )
    for s in SPLITS:
        if multi and labels[s].shape[1] != k:
            raise WorkbenchError(
                f"{where}: {s}_labels has {labels[s].shape[1]} label columns but card {card.name} has {k} "
                f"label_classes; they must match"
            )
        if not multi and len(labels[s]) and labels[s].max() >= k:
            raise WorkbenchError(
                f"{where}: {s}_labels contains label {int(labels[s].max())} but card {card.name} "
                f"has {k} classes (0..{k - 1})"
            )
        if len(labels[s]) != card.splits[s]:
            raise WorkbenchError(
                f"{where}: {s} has {len(labels[s])} images but card {card.name} says {card.splits[s]}"
            )


class DuplicateImagesWarning(UserWarning):
    """Identical image files fall in different splits (or carry different labels)."""


def _load_image_folder(path: Path, size: int) -> Dataset:
    from . import imagefolder as _if
    card_path = _if.folder_card_path(path)
    card = _cards.read_card(card_path) if card_path.is_file() else None
    opts = _if.FolderOptions.from_dict(card.extra.get("image_folder") if card else None,
                                       where=f"data card {card_path} (image_folder)")
    data = _if.load_folder(path, size, opts, class_names=card.class_names if card else None)
    notes = list(data.notes)
    if card is not None:
        expected = card.md5_for_size(size)
        if expected is None:
            raise WorkbenchError(
                f"data card {card_path} lists no size {size} for image folder {path} (sizes: "
                f"{', '.join(map(str, sorted(card.files)))}): pass one of them as size, or redraft the card with "
                f"'workbench card init {path} --size {size} --force'"
            )
        if expected != data.fingerprint:
            raise WorkbenchError(
                f"image folder {path} has fingerprint {data.fingerprint} but its card {card_path} says {expected}: "
                "images, labels or splits changed after the card was written; restore them or redraft the card "
                "(workbench card init --force)"
            )
        _check_against_card(data.images, data.labels, card, size, f"image folder {path}")
        class_names, task, name = card.class_names, card.task, card.name
        notes.insert(0, f"described by its own data card {card_path.name}")
    else:
        k = len(data.class_names)
        class_names, task, name = data.class_names, ("binary-class" if k == 2 else "multi-class"), path.name
        warnings.warn(f"image folder {path} has no data card {card_path.name} beside it: loaded as custom dataset "
                      f"'{name}' with classes {', '.join(class_names)}; draft one with 'workbench card init {path}'",
                      CustomDatasetWarning, stacklevel=3)
        notes.append("custom dataset (no data card)")
    for n in notes:
        if "(leakage)" in n or "carry different labels" in n:
            warnings.warn(f"image folder {path}: {n}", DuplicateImagesWarning, stacklevel=3)
    return Dataset(name=name, images=data.images, labels=data.labels, class_names=class_names, task=task,
                   path=path.resolve(), md5=data.fingerprint, card=card, size=size, notes=notes)


def load_dataset(spec: str, size: int = 28, max_per_split: int = 0, seed: int = 0,
                 cards_dir: Path | None = None, data_dir: Path | None = None) -> Dataset:
    """Load and validate a dataset given by card name or path (see module docstring)."""
    cards_dir = Path(cards_dir) if cards_dir else default_cards_dir()
    path, named_card = resolve(spec, size, cards_dir, data_dir)
    kind = path_kind(path)
    if kind == "dicom":
        raise WorkbenchError(
            f"dataset {path} is DICOM: run 'workbench ingest {path} --out DIR' first (it de-identifies the headers "
            "and writes a workbench dataset) and pass DIR as dataset"
        )
    if kind == "folder":
        return _load_image_folder(path, int(size)).subsample(max_per_split, seed)
    if kind == "ingested":
        path = next(path.glob("*.npz"))
    arrays = _read_npz(path)
    md5 = file_md5(path)
    images, labels = _check_arrays(arrays, path)
    notes: list[str] = []

    card, card_size = named_card, int(size)
    if named_card is not None:
        expected = named_card.md5_for_size(size)
        if md5 != expected:
            raise WorkbenchError(
                f"dataset file {path} has md5 {md5} but data card {named_card.name} says {expected} for size {size}: "
                "the file is corrupt or not the official release; re-download it"
            )
    else:
        match = _cards.card_for_md5(md5, cards_dir)
        if match is not None:
            card, card_size = match
            notes.append(f"md5 matches data card {card.name} (size {card_size})")
        else:
            card = _sibling_card(path)
            if card is not None:
                expected = card.files.get(int(images["train"].shape[1]), {}).get("md5")
                if expected and expected != md5:
                    raise WorkbenchError(
                        f"dataset file {path} has md5 {md5} but its card {card.path} says {expected}: "
                        "the file changed after the card was written; restore it or update the card"
                    )
                card_size = int(images["train"].shape[1])
                notes.append(f"described by its own data card {card.path.name}")

    if card is not None:
        _check_against_card(images, labels, card, card_size, f"dataset file {path}")
        class_names, task, name = card.class_names, card.task, card.name
    elif labels["train"].ndim == 2:
        n_labels = int(labels["train"].shape[1])
        class_names = [str(i) for i in range(n_labels)]
        task, name = MULTILABEL, path.stem
        absent = np.flatnonzero(labels["train"].sum(axis=0) == 0).tolist()
        msg = (f"{path} matches no data card: loaded as custom multi-label dataset '{name}' ({n_labels} 0/1 label "
               "columns named by their index; task 'multi-label, binary-class'); write a card to name them "
               "(data_cards/ or <file>.md beside it)")
        if absent:
            msg += f"; labels {absent} have no positive training image"
        warnings.warn(msg, CustomDatasetWarning, stacklevel=2)
        notes.append("custom multi-label dataset (no data card)")
    else:
        k = int(max(labels[s].max() for s in SPLITS)) + 1
        class_names = [str(i) for i in range(k)]
        task = "binary-class" if k == 2 else "multi-class"
        name = path.stem
        absent = sorted(set(range(k)) - set(np.unique(labels["train"]).tolist()))
        msg = (f"{path} matches no data card: loaded as custom dataset '{name}' with {k} classes "
               "named by their label index; write a card to name them (data_cards/ or <file>.md beside it)")
        if absent:
            msg += f"; classes {absent} have no training images"
        warnings.warn(msg, CustomDatasetWarning, stacklevel=2)
        notes.append("custom dataset (no data card)")

    ds = Dataset(name=name, images=images, labels=labels, class_names=class_names, task=task,
                 path=path.resolve(), md5=md5, card=card, size=int(images["train"].shape[1]), notes=notes)
    return ds.subsample(max_per_split, seed)

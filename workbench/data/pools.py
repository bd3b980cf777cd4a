"""Pools: the images the annotate stage labels, streamed through a run's input path.

``open_pool(spec)`` opens one of three kinds:

* ``"train"`` / ``"val"`` / ``"test"``: a split of the run's dataset (``kind = "dataset-split"``; ids
  ``test:17``; its labels are the ground truth, for reporting only);
* a folder (``kind = "folder"``), searched recursively: PNG, JPEG, TIFF and DICOM files; an item's id
  is its path relative to the folder, POSIX style (``sub/dir/img_001.png``), and each frame of a
  multi-frame DICOM file is an item of its own (``series1/IM0001.dcm#3``, frames counted from 0);
  an optional labels CSV (columns ``file``, ``label``) gives ground truth for reporting;
* a MedMNIST-style ``.npz`` (``kind = "npz"``): the key ``images`` or the one ``*_images`` key
  (``FILE.npz:test`` picks ``test_images`` when there are several); ids ``<stem>:<index>``; labels
  from the matching ``*_labels`` key when present.

Nothing is held in memory but one batch: files are decoded lazily, ``pool.batches(spec, n)`` yields
``(positions, images)`` with at most ``n`` images prepared by ``workbench.inputs.prepare``. The first
full pass (``pool.scan(spec)``, or the first complete ``batches`` pass) lists and hashes the files and
records the items: ``ids``, ``md5``, ``labels``, ``rejected``, ``duplicates`` and ``pool_id`` are final
after it; later passes re-use it (no re-listing; a file changed since is an error).

Nothing is dropped silently: every file in a folder pool that is not hidden and not the labels CSV is
either an item or in ``pool.rejected`` with a one-line reason (unreadable, truncated, empty, not an
image, burned-in annotation); ``on_error="raise"`` stops at the first bad file instead.

DICOM files are de-identified before any header value is used (``workbench.deid``: the PS3.15 Basic
profile, as ``workbench ingest`` does); files flagged ``BurnedInAnnotation = YES`` are rejected unless
``allow_burned_in``. The pool keeps the registry of original identifying values in memory only, and
``pool.audit(paths)`` searches outputs for them. Folder and file names can carry names, IDs or dates:
an id whose relative path holds any registered value is replaced by a pseudonymous one
(``dicom/P0001/S0001/R0001/I0001#3``; other files ``withheld/F0001.png``), and only the count of such
replacements is kept (``pool.pseudonymised``). Pool name, slug, source and reasons get the same check.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import warnings
import zipfile
from array import array
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import deid as _deid
from . import dicom as _dicom
from . import inputs as _inputs
from . import preprocess as _pre
from ..core.errors import WorkbenchError

SPLITS = ("train", "val", "test")
KINDS = ("dataset-split", "folder", "npz")
ON_ERROR = ("skip", "raise")
IMAGE_SUFFIXES = _inputs.IMAGE_SUFFIXES
BURNED_IN_REASON = "BurnedInAnnotation = YES (pass allow_burned_in)"
WITHHELD = "(withheld: holds an identifying DICOM header value)"
DEFAULT_BATCH = 256
_NPZ_SPEC = re.compile(r"^(?P<path>.*\.npz)(?::(?P<key>[A-Za-z0-9_]+))?$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------- opening
def open_pool(spec: str, dataset=None, labels_csv: str = "", on_error: str = "skip",
              allow_burned_in: bool = False, class_names: list[str] | None = None) -> "Pool":
    """A pool from a split name (needs ``dataset``: a ``workbench.data.Dataset`` as the run loads it),
    a folder, or an ``.npz`` file (``FILE.npz:PREFIX`` picks ``PREFIX_images`` / ``PREFIX_labels``).

    ``labels_csv`` (folder pools only): a CSV with columns ``file`` (relative to the folder) and
    ``label`` (a class name of ``class_names`` or its index; without ``class_names`` only indices);
    it may cover some files only. ``on_error``: ``skip`` lists bad files in ``pool.rejected``,
    ``raise`` stops at the first. A folder named like a split is opened as ``./test``."""
    if on_error not in ON_ERROR:
        raise WorkbenchError(f"pool on_error {on_error!r} must be skip or raise")
    given = str(spec).strip()
    if not given:
        raise WorkbenchError("pool is empty: give a split name (train, val, test), a folder of images or an .npz file")
    if labels_csv and (given in SPLITS or _NPZ_SPEC.match(given)):
        raise WorkbenchError(f"labels_csv applies to folder pools only; pool {given!r} takes its labels "
                             "from the dataset split or the npz *_labels key")
    if given in SPLITS:
        if dataset is None:
            raise WorkbenchError(f"pool {given!r} is a split of the run's dataset, but no dataset was given")
        return _SplitPool(dataset, given, on_error)
    m = _NPZ_SPEC.match(given)
    if m:
        path = Path(m["path"]).expanduser()
        if not path.is_file():
            raise WorkbenchError(f"pool file {path} not found")
        return _NpzPool(path, m["key"] or "", given, on_error, class_names)
    path = Path(given).expanduser()
    if path.is_dir():
        return _FolderPool(path, given, labels_csv, on_error, allow_burned_in, class_names)
    what = "is a file, not a folder or an .npz" if path.exists() else "not found"
    raise WorkbenchError(f"pool {given!r} {what}: a pool is a split name (train, val, test), a folder of "
                         "PNG/JPEG/TIFF/DICOM images or a MedMNIST-style .npz")


def _slug(stem: str, key: str) -> str:
    """A filesystem-safe directory name: the stem and a short hash of the resolved location."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:40] or "pool"
    return f"{clean}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------------- the pool
class Pool:
    """Images to annotate, streamed; see the module docstring. Attributes after the scan:

    ``ids`` (list[str]), ``md5`` (list[str], one per item), ``labels`` (np.ndarray aligned with ids,
    -1 where a labels CSV does not cover an item; None when no ground truth is known), ``rejected``
    (list of ``{"id", "reason"}``), ``duplicates`` (groups of ids with identical content),
    ``pool_id`` (fingerprint of ids and md5s), ``pseudonymised`` (how many ids were replaced).
    Always: ``name``, ``slug`` (directory name; read it after the scan), ``kind``, ``source``."""

    kind = ""
    unit = "image"

    def __init__(self, name: str, slug: str, source: dict, on_error: str):
        self._name, self._slug, self._source = name, slug, dict(source)
        self.on_error = on_error
        self.progress = True                       # tqdm bar (terminal only) while streaming
        self.registry = _deid.PHIRegistry()        # original DICOM values: in memory only, never written
        self.spec: _inputs.InputSpec | None = None  # the spec of the scan (DICOM window, frames)
        self._reset()

    def _reset(self) -> None:
        self._scanned = False
        self._ids: list[str] = []
        self._md5: list[str] = []
        self._labels = None
        self._rejected: list[dict] = []
        self._pool_id = None
        self.pseudonymised = 0

    # ----------------------------------------------------------------------------- state
    def _need_scan(self, what: str):
        if not self._scanned:
            raise WorkbenchError(f"pool {self.name}: {what} is known after the first full pass; "
                                 "call pool.scan(spec) (or read all of pool.batches(spec)) first")

    @property
    def scanned(self) -> bool:
        return self._scanned

    @property
    def name(self) -> str:
        return self._name

    @property
    def slug(self) -> str:
        return self._slug

    @property
    def source(self) -> dict:
        return dict(self._source)

    @property
    def ids(self) -> list[str]:
        self._need_scan("ids")
        return self._ids

    @property
    def md5(self) -> list[str]:
        self._need_scan("md5")
        return self._md5

    @property
    def labels(self):
        self._need_scan("labels")
        return self._labels

    @property
    def rejected(self) -> list[dict]:
        self._need_scan("rejected")
        return self._rejected

    def __len__(self) -> int:
        return len(self.ids)

    def __bool__(self) -> bool:   # a pool is never "empty" before its scan; an empty one is an error
        return True

    def _dup_keys(self) -> list:
        return self._md5

    @property
    def duplicates(self) -> list[list[str]]:
        """Groups (≥ 2) of item ids with identical content, in order of first appearance."""
        self._need_scan("duplicates")
        groups: dict = {}
        for i, k in enumerate(self._dup_keys()):
            groups.setdefault(k, []).append(i)
        return [[self._ids[i] for i in g] for g in groups.values() if len(g) > 1]

    @property
    def pool_id(self) -> str:
        """Fingerprint of the ids and their content md5s (not of the labels): a review log belongs to one pool."""
        self._need_scan("pool_id")
        if self._pool_id is None:
            h = hashlib.sha256(json.dumps([self._ids, self._md5]).encode())
            self._pool_id = h.hexdigest()[:16]
        return self._pool_id

    # ----------------------------------------------------------------------------- passes
    def scan(self, spec: _inputs.InputSpec) -> "Pool":
        """One full pass that records the items (decode + conform, no preprocessing); a no-op after it."""
        if not self._scanned:
            for _ in self._pass(spec, 512, prepare=False):
                pass
        return self

    def batches(self, spec: _inputs.InputSpec, batch_size: int = DEFAULT_BATCH):
        """Iterator of ``(positions, images)``: int64 positions into ``ids`` and their images
        ``(B, S, S, C)`` prepared by the input path, at most ``batch_size`` at a time. The first
        complete pass is also the scan."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise WorkbenchError(f"pool batch_size {batch_size!r} must be a positive integer")
        return self._pass(spec, int(batch_size), prepare=True)

    def _check_spec(self, spec) -> _inputs.InputSpec:
        if not isinstance(spec, _inputs.InputSpec):
            raise WorkbenchError(f"pool {self.name}: expected an InputSpec (workbench.inputs), "
                                 f"got {type(spec).__name__}")
        return spec

    def _pass(self, spec, batch_size: int, prepare: bool):
        spec = self._check_spec(spec)
        first = not self._scanned
        if first:
            self._reset()
            self.spec = spec
            self._before_scan()
        else:
            self._check_same_dicom(spec)
        from ..core.progress import tqdm
        bar = tqdm(total=self._units(), desc="scan pool" if first else "pool", unit=self.unit,
                   disable=not self.progress)
        try:
            stream = self._scan_stream(spec, bar) if first else self._stream(spec, bar, None)
            pos, imgs = [], []
            for p, raw in stream:
                imgs.append(_inputs.conform_one(raw, spec, where=self._where(p)))
                pos.append(p)
                if len(pos) == batch_size:
                    yield self._emit(pos, imgs, spec, prepare)
                    pos, imgs = [], []
            if pos:
                yield self._emit(pos, imgs, spec, prepare)
        finally:
            bar.close()
        if first:
            self._finish()
            self._scanned = True

    def _emit(self, pos, imgs, spec, prepare):
        batch = np.stack(imgs)
        if prepare:
            batch = self._prepare(batch, spec)
        return np.asarray(pos, dtype=np.int64), batch

    def _prepare(self, conformed: np.ndarray, spec) -> np.ndarray:
        return _inputs.prepare(conformed, spec, where=f"pool {self.name}")

    def _positions(self, positions) -> np.ndarray:
        self._need_scan("random access")
        p = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(p) and (p.min() < 0 or p.max() >= len(self._ids)):
            raise WorkbenchError(f"pool {self.name}: positions must be in 0..{len(self._ids) - 1}")
        return p

    def raw(self, positions) -> list[np.ndarray]:
        """The decoded images before the input path (display): (H, W, 1|3) uint8 each, in the given order."""
        p = self._positions(positions)
        return self._read(p, self.spec)

    def images(self, positions, spec: _inputs.InputSpec) -> np.ndarray:
        """Random access: the images at ``positions`` prepared by the input path, in the given order."""
        spec = self._check_spec(spec)
        p = self._positions(positions)
        self._check_same_dicom(spec)
        raw = self._read(p, spec)
        conformed = [_inputs.conform_one(im, spec, where=self._where(int(i))) for i, im in zip(p, raw)]
        batch = np.stack(conformed) if conformed else np.zeros((0, *spec.shape), np.uint8)
        return self._prepare(batch, spec)

    def _where(self, position: int) -> str:
        if self._scanned:
            return f"pool item {self._ids[position]}"
        return f"pool {self.name} item {position}"

    # ----------------------------------------------------------------------------- outputs
    def write_rejected(self, path) -> Path:
        """``rejected.csv``: id, reason (header only when nothing was rejected)."""
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "reason"])
            for r in self.rejected:
                w.writerow([r["id"], r["reason"]])
        return path

    def write_duplicates(self, path) -> Path:
        """``duplicates.csv``: group, id, md5 (one row per member of each group of identical items)."""
        path = Path(path)
        pos = {i: k for k, i in enumerate(self.ids)}
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["group", "id", "md5"])
            for g, ids in enumerate(self.duplicates, 1):
                for i in ids:
                    w.writerow([g, i, self._md5[pos[i]]])
        return path

    def audit(self, paths) -> list[tuple[str, str]]:
        """Every (file, attribute) where an original identifying DICOM value appears in ``paths``
        (files or folders); empty for pools without DICOM files."""
        return _deid.audit(paths, self.registry) if len(self.registry) else []

    # ----------------------------------------------------------------------------- for subclasses
    def _units(self) -> int:
        return 0

    def _check_same_dicom(self, spec) -> None:
        pass

    def _before_scan(self) -> None:
        pass

    def _scan_stream(self, spec, bar):
        raise NotImplementedError

    def _stream(self, spec, bar, positions):
        raise NotImplementedError

    def _read(self, positions: np.ndarray, spec) -> list[np.ndarray]:
        raise NotImplementedError

    def _finish(self) -> None:
        if not self._ids:
            first = f"; first: {self._rejected[0]['id']}: {self._rejected[0]['reason']}" if self._rejected else ""
            raise WorkbenchError(f"pool {self.name} holds no readable image ({len(self._rejected)} rejected{first})")

    def __repr__(self) -> str:
        n = f"{len(self._ids)} items" if self._scanned else "not scanned"
        return f"<Pool {self.kind} {self.name!r}: {n}>"


@contextmanager
def _quiet_dicom(counter: list):
    """pydicom warns (and logs) with header values in the message, e.g. an invalid UID: keep them out of
    consoles and notebook outputs; only their number is kept (``source["dicom_warnings"]``)."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        counter[0] += len(caught)
    finally:
        logger.setLevel(level)


def _md5(blob) -> str:
    return hashlib.md5(blob).hexdigest()


def _same_preprocess(a, b) -> bool:
    if _pre.is_identity(a) or _pre.is_identity(b):
        return _pre.is_identity(a) and _pre.is_identity(b)
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------- splits
class _SplitPool(Pool):
    """A split of a loaded dataset (in memory already). When the dataset's images were preprocessed
    with the spec's recipe (``Dataset.preprocessed``), they are only conformed, never preprocessed twice."""

    kind = "dataset-split"

    def __init__(self, ds, split: str, on_error: str):
        if split not in ds.images:
            raise WorkbenchError(f"dataset {ds.name} has no split {split!r} (pool)")
        super().__init__(f"{ds.name}:{split}", split, {
            "kind": self.kind, "root": split, "dataset": ds.name, "dataset_md5": ds.md5, "split": split,
            "notes": list(ds.notes)}, on_error)
        self._x = ds.images[split]
        self._y = ds.labels.get(split)
        self._ds_pre = getattr(ds, "preprocess", None)
        self._scan_now()

    def _scan_now(self):
        self._reset()
        self._ids = [f"{self._source['split']}:{i}" for i in range(len(self._x))]
        self._md5 = [_md5(np.ascontiguousarray(im).tobytes()) for im in self._x]
        self._labels = self._y
        if not self._ids:
            raise WorkbenchError(f"pool {self.name} holds no image (the split is empty)")
        self._scanned = True

    def scan(self, spec) -> "Pool":
        self._check_spec(spec)
        return self

    def _units(self) -> int:
        return len(self._x)

    def _pass(self, spec, batch_size, prepare):
        spec = self._check_spec(spec)
        from ..core.progress import tqdm
        with tqdm(total=len(self._x), desc="pool", unit=self.unit, disable=not self.progress) as bar:
            for start in range(0, len(self._x), batch_size):
                p = np.arange(start, min(start + batch_size, len(self._x)), dtype=np.int64)
                x = _inputs.conform(self._x[p], spec, where=f"pool {self.name}")
                yield p, (self._prepare(x, spec) if prepare else x)
                bar.update(len(p))

    def _prepare(self, conformed, spec):
        if _pre.is_identity(self._ds_pre):
            return super()._prepare(conformed, spec)
        if _same_preprocess(self._ds_pre, spec.preprocess):
            return conformed   # the dataset is already preprocessed with this recipe
        raise WorkbenchError(f"pool {self.name}: the dataset was preprocessed with {_pre.describe(self._ds_pre)} "
                             f"but the input spec asks for {_pre.describe(spec.preprocess)}; load the dataset as "
                             "the run does (workbench.runload)")

    def _read(self, positions, spec):
        return [self._x[int(i)] for i in positions]


# ------------------------------------------------------------------------------------------- npz
class _NpyMember:
    """One array of an .npz read row by row straight from the zip member (deflated or stored)."""

    def __init__(self, path: Path, member: str):
        self.path, self.member = path, member
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise WorkbenchError(f"{path}: array {member} has .npy format version {version}; "
                                     "save it with numpy.savez (format 1.0 or 2.0)")
            self.offset = f.tell()
        if dtype.hasobject:
            raise WorkbenchError(f"{path}: array {member} holds Python objects; it is never unpickled")
        if fortran and len(shape) > 1:
            raise WorkbenchError(f"{path}: array {member} is stored in Fortran order; save it C-ordered "
                                 "(numpy.ascontiguousarray) to stream it")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def _rows(self, blob: bytes, n: int) -> np.ndarray:
        return np.frombuffer(blob, dtype=self.dtype, count=n * int(np.prod(self.shape[1:], dtype=np.int64))
                             ).reshape(n, *self.shape[1:])

    def chunks(self, n: int):
        with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
            f.seek(self.offset)
            for start in range(0, len(self), n):
                k = min(n, len(self) - start)
                blob = f.read(k * self.row_bytes)
                if len(blob) != k * self.row_bytes:
                    raise WorkbenchError(f"{self.path}: array {self.member} ends early (truncated file)")
                yield start, self._rows(blob, k)

    def take(self, positions: np.ndarray) -> list[np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
            for i in sorted(set(int(p) for p in positions)):  # forward seeks only: one decompression pass
                f.seek(self.offset + i * self.row_bytes)
                out[i] = self._rows(f.read(self.row_bytes), 1)[0]
        return [out[int(p)] for p in positions]


class _NpzPool(Pool):
    kind = "npz"

    def __init__(self, path: Path, key: str, given: str, on_error: str, class_names):
        try:
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as e:
            raise WorkbenchError(f"pool file {path} is not a readable .npz ({type(e).__name__}: {e})") from None
        image_keys = [n for n in names if n == "images" or n.endswith("_images")]
        if key:
            want = key if key.endswith("images") else f"{key}_images"
            if want not in names:
                raise WorkbenchError(f"pool file {path} has no array {want!r}; its arrays: {', '.join(sorted(names))}")
            images_key = want
        elif "images" in names:
            images_key = "images"
        elif len(image_keys) == 1:
            images_key = image_keys[0]
        elif image_keys:
            prefixes = [k[:-len("_images")] for k in sorted(image_keys)]
            example = "test" if "test" in prefixes else prefixes[0]
            raise WorkbenchError(f"pool file {path} holds {', '.join(sorted(image_keys))}: name one as "
                                 f"{path}:{example} (one of {', '.join(prefixes)})")
        else:
            raise WorkbenchError(f"pool file {path} has no 'images' or '*_images' array; its arrays: "
                                 f"{', '.join(sorted(names)) or 'none'}")
        labels_key = images_key[:-len("images")] + "labels"
        self._labels_key = labels_key if labels_key in names else ""
        stem = path.stem
        resolved = f"{path.resolve()}:{images_key}"
        super().__init__(f"{stem}:{images_key}" if images_key != "images" else stem,
                         _slug(stem if images_key == "images" else f"{stem}-{images_key[:-len('_images')]}", resolved),
                         {"kind": self.kind, "root": given, "key": images_key,
                          "labels_key": self._labels_key or None}, on_error)
        self._arr = _NpyMember(path, images_key + ".npy")
        shape, dtype = self._arr.shape, self._arr.dtype
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3, 4)):
            raise WorkbenchError(f"pool file {path}: {images_key} has shape {shape}; "
                                 "expected (N, H, W) or (N, H, W, C)")
        if dtype != np.uint8:
            raise WorkbenchError(f"pool file {path}: {images_key} has dtype {dtype}; expected uint8 (MedMNIST layout)")
        self._path, self._stem, self._class_names = path, stem, class_names

    def _units(self) -> int:
        return len(self._arr)

    def _chunk(self) -> int:
        return max(1, (32 << 20) // max(self._arr.row_bytes, 1))   # rows per read: about 32 MiB

    def _scan_stream(self, spec, bar):
        for start, rows in self._arr.chunks(self._chunk()):
            for j, im in enumerate(rows):
                self._ids.append(f"{self._stem}:{start + j}")
                self._md5.append(_md5(im.tobytes()))
                yield start + j, im
            bar.update(len(rows))

    def _stream(self, spec, bar, positions):
        for start, rows in self._arr.chunks(self._chunk()):
            for j, im in enumerate(rows):
                yield start + j, im
            bar.update(len(rows))

    def _read(self, positions, spec):
        return self._arr.take(positions)

    def _finish(self) -> None:
        super()._finish()
        if self._labels_key:
            with np.load(self._path, allow_pickle=False) as z:
                y = np.asarray(z[self._labels_key])
            if len(y) != len(self._ids):
                raise WorkbenchError(f"pool file {self._path}: {len(y)} {self._labels_key} for {len(self._ids)} images")
            y = y.reshape(len(y), -1)
            y = (y[:, 0] if y.shape[1] == 1 else y).astype(np.int64)
            k = len(self._class_names) if self._class_names is not None else 0
            if k and y.ndim == 1 and len(y) and (y.min() < 0 or y.max() >= k):
                raise WorkbenchError(f"pool file {self._path}: {self._labels_key} has values outside 0.."
                                     f"{len(self._class_names) - 1} (the run's {len(self._class_names)} classes)")
            self._labels = y


# ------------------------------------------------------------------------------------------- folders
class _FolderPool(Pool):
    kind = "folder"
    unit = "file"

    def __init__(self, root: Path, given: str, labels_csv: str, on_error: str, allow_burned_in: bool,
                 class_names):
        resolved = root.resolve()
        stem = resolved.name or "root"
        super().__init__(stem, _slug(stem, str(resolved)), {"kind": self.kind, "root": given}, on_error)
        self.root = root
        self.allow_burned_in = bool(allow_burned_in)
        self._class_names = class_names
        self._csv = None
        if labels_csv:
            csv_path = Path(labels_csv).expanduser()
            if not csv_path.is_file():
                raise WorkbenchError(f"labels CSV {csv_path} not found (labels_csv)")
            self._csv = csv_path.resolve()
            self._source["labels_csv"] = csv_path.name
        self._files: list[str] | None = None

    # listing -------------------------------------------------------------------
    def _list(self) -> list[str]:
        from ..core import walk
        return [p.relative_to(self.root).as_posix() for p in walk.files(self.root)
                if self._csv is None or p.resolve() != self._csv]

    def _units(self) -> int:
        return len(self._files or ())

    def _reset(self) -> None:
        super()._reset()
        self._file_md5: list[str] = []
        self._file_stat = array("q")          # size, mtime_ns per file: later passes check nothing changed
        self._file_kind: list[str] = []       # "image" | "dicom" | "" (rejected before decoding)
        self._file_pseudo: dict[int, tuple] = {}   # DICOM file → (P, S, R, I) pseudonyms
        self._file_multi: set[int] = set()    # multi-frame DICOM files
        self._item_file = array("q")
        self._item_frame = array("q")         # -1: single-frame file
        self._rejected_files: list[tuple[int, str]] = []
        self._pseudo = _deid.Pseudonyms()
        self._dicom_files = 0
        self._dicom_warnings = [0]
        self._csv_labels: dict[str, int] | None = None

    def _where(self, position: int) -> str:
        if self._scanned:
            return super()._where(position)
        fr = self._item_frame[position]
        name = self._withhold(self._files[self._item_file[position]])
        return f"pool file {name}" + (f" frame {fr}" if fr >= 0 else "")

    # helpers -------------------------------------------------------------------
    def _withhold(self, text: str) -> str:
        return WITHHELD if len(self.registry) and _deid.find_values(text, self.registry) else text

    def _reject(self, fi: int, reason: str, policy: bool = False) -> None:
        reason = " ".join(str(reason).split())
        if self.on_error == "raise" and not policy:
            raise WorkbenchError(f"pool {self._withhold(self.name)}: {self._withhold(self._files[fi])}: {reason} "
                                 "(on_error raise; on_error skip lists bad files in rejected.csv instead)")
        self._rejected_files.append((fi, reason))

    def _accept(self, fi: int, frame: int) -> int:
        self._item_file.append(fi)
        self._item_frame.append(frame)
        return len(self._item_file) - 1

    @staticmethod
    def _kind_of(rel: str, head: bytes) -> str:
        name = rel.rsplit("/", 1)[-1]
        suffix = Path(name).suffix.lower()
        if name.upper() == "DICOMDIR":
            return "dicomdir"
        if suffix in IMAGE_SUFFIXES:
            return "image"
        if suffix == ".dcm" or (len(head) >= 132 and head[128:132] == b"DICM"):
            return "dicom"
        return ""

    def _stat(self, path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def _decode_image(self, path: Path) -> np.ndarray:
        return _inputs.decode_image_file(path)

    def _image_reason(self, e: Exception, path: Path, suffix: str) -> str:
        from PIL import UnidentifiedImageError
        if isinstance(e, UnidentifiedImageError):
            return f"not a readable image (content is not {suffix.lstrip('.').upper() or 'an image'})"
        msg = str(e).replace(str(path), "file").splitlines()[0] if str(e) else ""
        if "truncated" in msg.lower():
            return f"truncated or damaged image ({msg})"
        return f"cannot be decoded ({type(e).__name__}{': ' + msg if msg else ''})"

    def _read_dicom(self, path: Path, fi: int, spec, first: bool):
        """De-identify, then decode: (frames, n_frames) or raise WorkbenchError with a path-free reason."""
        with _quiet_dicom(self._dicom_warnings):
            return self._read_dicom_quietly(path, fi, spec, first)

    def _read_dicom_quietly(self, path: Path, fi: int, spec, first: bool):
        try:
            ds = _dicom.read(path)
        except WorkbenchError as e:
            raise WorkbenchError(str(e).replace(str(path), "file")) from None
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        burned = _deid.burned_in(ds)
        if first:
            # pseudonyms come from the original values, in memory only (as workbench ingest does)
            self._file_pseudo[fi] = (self._pseudo.get("P", ds.get("PatientID")),
                                     self._pseudo.get("S", ds.get("StudyInstanceUID")),
                                     self._pseudo.get("R", ds.get("SeriesInstanceUID")),
                                     self._pseudo.get("I", ds.get("SOPInstanceUID")))
        try:
            _deid.deidentify(ds, self.registry)
        except WorkbenchError:
            # the profile could not be applied: nothing of the file is used, and every value of its
            # original header counts as identifying (ids, reasons and outputs are checked against it)
            with _quiet_dicom([0]):
                _deid.register_all(_dicom.read(path), self.registry)
            raise WorkbenchError("de-identification failed (PS3.15 Basic profile); the file is left out") from None
        if burned and not self.allow_burned_in:
            return None, n_frames
        frames = _inputs.decode_dicom(ds, spec, path="")
        return frames, n_frames

    # the first pass --------------------------------------------------------------
    def _before_scan(self) -> None:
        self._files = self._list()

    def _scan_stream(self, spec, bar):
        labels = self._read_csv() if self._csv is not None else None
        dicom_seen = False
        for fi, rel in enumerate(self._files):
            path = self.root / rel
            bar.update(1)
            try:
                blob = path.read_bytes()
                stat = self._stat(path)
            except OSError as e:
                self._file_md5.append("")
                self._file_stat.extend((0, 0))
                self._file_kind.append("")
                self._reject(fi, f"cannot be read ({e.strerror or type(e).__name__})")
                continue
            self._file_md5.append(_md5(blob))
            self._file_stat.extend(stat)
            kind = self._kind_of(rel, blob[:132])
            self._file_kind.append(kind)
            suffix = Path(rel).suffix.lower()
            if kind == "dicomdir":
                self._reject(fi, "DICOMDIR (a DICOM directory index, not an image)")
                continue
            if not kind:
                self._reject(fi, f"not an image file ({suffix or 'no suffix'}; a pool holds PNG, JPEG, TIFF or DICOM)")
                continue
            if not blob:
                self._reject(fi, "empty file (0 bytes)")
                continue
            del blob
            if kind == "image":
                try:
                    img = self._decode_image(path)
                except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
                    self._reject(fi, self._image_reason(e, path, suffix))
                    continue
                yield self._accept(fi, -1), img
                continue
            if not dicom_seen:
                _deid.reset_uid_map()   # one original → new UID map per pool, as per ingest
                dicom_seen = True
            self._dicom_files += 1
            try:
                frames, n_frames = self._read_dicom(path, fi, spec, first=True)
            except WorkbenchError as e:
                self._reject(fi, str(e).replace(" :", ":"))
                continue
            if frames is None:
                self._reject(fi, BURNED_IN_REASON, policy=True)
                continue
            if n_frames > 1:
                self._file_multi.add(fi)
            for f, img in frames:
                yield self._accept(fi, f if n_frames > 1 else -1), img
        self._csv_labels = labels

    def _finish(self) -> None:
        # ids: relative paths, unless they carry an identifying value of a DICOM header
        replaced, used = 0, set()
        pseudo_file: dict[int, str] = {}

        def file_id(fi: int) -> str:
            nonlocal replaced
            rel = self._files[fi]
            if not (len(self.registry) and _deid.find_values(rel, self.registry)):
                return rel
            if fi not in pseudo_file:
                if fi in self._file_pseudo:
                    base = "dicom/" + "/".join(self._file_pseudo[fi])
                else:
                    base = f"withheld/{self._pseudo.get('F', rel)}{Path(rel).suffix.lower()}"
                cand, k = base, 1
                while cand in used:
                    k += 1
                    cand = f"{base}-{k}"
                used.add(cand)
                pseudo_file[fi] = cand
            replaced += 1
            return pseudo_file[fi]

        ids = []
        for fi, fr in zip(self._item_file, self._item_frame):
            base = file_id(fi)
            ids.append(base if fr < 0 else f"{base}#{fr}")
        self._rejected = [{"id": file_id(fi), "reason": self._withhold(reason)} for fi, reason in self._rejected_files]
        if len(set(ids)) != len(ids):  # a pseudonymous id can only collide with a real path by accident
            raise WorkbenchError(f"pool {self.name}: item ids are not unique after pseudonymisation; "
                                 "rename the folder's files")
        self._ids = ids
        self._md5 = [self._file_md5[fi] for fi in self._item_file]
        self.pseudonymised = replaced
        if len(self.registry):
            if self._withhold(self._name) != self._name:
                self._name = "withheld"
            if self._withhold(self._slug) != self._slug:
                self._slug = "pool-" + self._slug.rsplit("-", 1)[-1]
            self._source = {k: self._withhold(v) if isinstance(v, str) else v for k, v in self._source.items()}
        self._source.update({"files": len(self._files), "items": len(ids), "rejected": len(self._rejected),
                             "dicom_files": self._dicom_files})
        if self._dicom_files:
            self._source["deidentification"] = f"{_deid.PROFILE} ({_deid.PROFILE_TABLES})"
            self._source["dicom"] = dict(self.spec.dicom)
            self._source["dicom_warnings"] = self._dicom_warnings[0]   # pydicom's, not shown: they can quote values
        super()._finish()
        if self._csv_labels is not None:
            y = np.full(len(ids), -1, dtype=np.int64)
            for k, fi in enumerate(self._item_file):
                y[k] = self._csv_labels.get(self._files[fi], -1)
            self._labels = y

    def _dup_keys(self) -> list:
        return [(m, fr) for m, fr in zip(self._md5, self._item_frame)]

    def _read_csv(self) -> dict[str, int]:
        """file → class index from the labels CSV (columns file, label; workbench.imagefolder.labels_table)."""
        from .imagefolder import labels_table
        where = f"labels CSV {self._csv.name}"
        table = labels_table(self._csv, self._files, "file", "label", where, "the pool folder")
        names = self._class_names
        lookup = {str(i): i for i in range(len(names))} if names is not None else None
        if names is not None:
            lookup.update({n: i for i, n in enumerate(names)})
        out, unknown = {}, []
        for f, v in zip(table["file"], table["label"]):
            idx = lookup.get(v) if lookup is not None else (int(v) if v.isdigit() else None)
            if idx is None:
                unknown.append(v)
                continue
            out[f] = idx
        if unknown:
            hint = (f"the run's classes are {', '.join(names[:20])}" if names is not None
                    else "without the run's class names only class indices are accepted")
            raise WorkbenchError(f"{where}: unknown label value(s) {', '.join(sorted(set(unknown))[:5])}; {hint}")
        return out

    # later passes ----------------------------------------------------------------
    def _check_same_dicom(self, spec) -> None:
        if self._dicom_files and self.spec is not None and spec.dicom != self.spec.dicom:
            raise WorkbenchError(f"pool {self.name} was scanned with the DICOM options {self.spec.dicom}, "
                                 f"not {spec.dicom}: open the pool again for other DICOM options")

    def _load_file(self, fi: int, spec) -> dict[int, np.ndarray]:
        """frame (-1: single) → raw image of one file, checked unchanged since the scan."""
        rel = self._files[fi]
        path = self.root / rel
        try:
            stat = self._stat(path)
        except OSError:
            stat = None
        if stat != (self._file_stat[2 * fi], self._file_stat[2 * fi + 1]):
            item = next(i for i, f in enumerate(self._item_file) if f == fi)
            raise WorkbenchError(f"pool item {self._ids[item]} changed or disappeared since the pool was scanned: "
                                 "open the pool again")
        if self._file_kind[fi] == "image":
            return {-1: self._decode_image(path)}
        frames, n_frames = self._read_dicom(path, fi, spec, first=False)
        multi = fi in self._file_multi
        return {(f if multi else -1): img for f, img in frames or ()}

    def _stream(self, spec, bar, positions):
        n, k = len(self._item_file), 0
        done = 0
        while k < n:
            fi = self._item_file[k]
            done_to = fi + 1
            imgs = self._load_file(fi, spec)
            while k < n and self._item_file[k] == fi:
                yield k, imgs[self._item_frame[k]]
                k += 1
            bar.update(done_to - done)
            done = done_to
        bar.update(len(self._files) - done)

    def _read(self, positions, spec):
        cache: dict[int, dict[int, np.ndarray]] = {}
        out = []
        for p in positions:
            fi = self._item_file[int(p)]
            if fi not in cache:
                cache[fi] = self._load_file(fi, spec)
            out.append(cache[fi][self._item_frame[int(p)]])
        return out


def phi_registry(spec: str):
    """The original identifying values of a folder pool's DICOM headers, re-read (headers only, never
    pixels) and kept in memory only: what the annotate stage searches its outputs for once the executed
    notebook and its HTML report exist (the pool object that read them lived in the notebook's kernel).
    None when ``spec`` is not a folder (split and .npz pools carry no DICOM headers)."""
    import pydicom
    root = Path(str(spec)).expanduser()
    if not str(spec).strip() or not root.is_dir():
        return None
    registry = _deid.PHIRegistry()
    from ..core import walk
    for path in walk.files(root):       # the folder pool's own listing: linked folders included
        if not _dicom.is_dicom(path):
            continue
        try:
            with _quiet_dicom([0]):
                ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
                try:
                    _deid.deidentify(ds, registry)
                except WorkbenchError:  # as the pool does: all values of a file the profile failed on
                    _deid.register_all(pydicom.dcmread(str(path), stop_before_pixels=True, force=True), registry)
        except Exception:  # noqa: BLE001 - an unreadable file was rejected by the pool; nothing of it was used
            continue
    return registry

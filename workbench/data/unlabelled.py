"""The unlabelled images of semi-supervised training (workbench.semisup) and label budgets: the data side, with no
Keras (the command line checks a pool with it before a run directory is made).

* ``check(params, ds)``: one-line errors, before anything is trained: the task (single-label only), the pool's
  path, kind and arrays (``workbench.pools.open_pool``, the annotate stage's pools), val/test refused, and
  ``train`` only with a label budget.
* ``label_subset`` / ``held_out``: ``label_fraction`` keeps a stratified, seeded share of the train labels; the
  rest of the train split is the pool ``train``.
* ``load_unlabelled``: the pool read once through the run's input path, held in memory (uint8), items byte-identical
  to a val or test image left out; its labels (where known) are kept for the report only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..core import tasks as _tasks
from ..core.errors import WorkbenchError

SUPPORTED_TASKS = (_tasks.BINARY, _tasks.MULTICLASS, _tasks.ORDINAL)
EXCLUDED_SPLITS = ("val", "test")
MAX_POOL_BYTES = 4 << 30      # the pool is held in memory (uint8, after the input path)


def check(params, ds) -> None:
    """Fail with one line, before anything is trained, on what semi-supervised training cannot do here."""
    if not params.unlabelled:
        return
    if ds.task not in SUPPORTED_TASKS:
        raise WorkbenchError(f"parameter 'unlabelled': semi-supervised training (FixMatch) supports single-label tasks "
                             f"({', '.join(SUPPORTED_TASKS)}); dataset {ds.name} is {ds.task}: train without "
                             "unlabelled images")
    if params.class_weights:
        raise WorkbenchError("parameter 'class_weights' is not supported with 'unlabelled' (FixMatch's loss is "
                             "unweighted): leave it false")
    _check_spec(params)
    _open(params, ds)    # the path, the .npz keys and dtype: one line each (workbench.pools)


def _check_spec(params) -> None:
    spec = params.unlabelled.strip()
    if spec in EXCLUDED_SPLITS:
        raise WorkbenchError(f"parameter 'unlabelled' = {spec!r}: the {spec} split "
                             f"{'picks the checkpoint' if spec == 'val' else 'is scored by the evaluate stage'}; "
                             "learning from its images, even unlabelled, would make that optimistic: give train "
                             "(with label_fraction < 1), a folder or an .npz")
    if spec == "train" and params.label_fraction >= 1.0:
        raise WorkbenchError("parameter 'unlabelled' = 'train': every train image is already labelled; set "
                             "label_fraction below 1 to hold labels out, or give a folder or an .npz of unlabelled images")


def preflight(values: dict) -> None:
    """What can be checked of ``unlabelled`` from the parameters alone (the command line, before a run directory is
    made): val/test refused, ``train`` needs a label budget, a folder or .npz must open (workbench.pools)."""
    spec = str(values.get("unlabelled", "") or "").strip()
    if not spec:
        return
    if spec in EXCLUDED_SPLITS or spec == "train":
        from types import SimpleNamespace
        from ..core.params import fields
        frac = float(values.get("label_fraction", fields("train")["label_fraction"].default))
        _check_spec(SimpleNamespace(unlabelled=spec, label_fraction=frac))
        return
    from .pools import open_pool
    try:
        open_pool(spec)
    except WorkbenchError as e:
        raise WorkbenchError(f"parameter 'unlabelled': {e}") from None


def labelled_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the images that keep their labels: ``floor(fraction * N)`` of them (at least one per
    class), stratified by class and seeded (``workbench.data.stratified_indices``)."""
    from .loaders import stratified_indices
    labels = np.asarray(labels)
    if fraction >= 1.0:
        return np.arange(len(labels))
    k = len(np.unique(labels)) if labels.ndim == 1 else 1
    n = max(k, int(math.floor(fraction * len(labels) + 1e-9)))
    return stratified_indices(labels, n, seed)


def label_subset(ds, fraction: float, seed: int):
    """The dataset whose train split keeps only ``labelled_indices`` (val and test untouched)."""
    if fraction >= 1.0:
        return ds
    keep = labelled_indices(ds.labels["train"], fraction, seed)
    note = (f"label budget: {len(keep)} of {len(ds.labels['train'])} train labels kept ({fraction:g}, stratified, "
            f"seed {seed})")
    return replace(ds, images={**ds.images, "train": ds.images["train"][keep]},
                   labels={**ds.labels, "train": ds.labels["train"][keep]}, notes=[*ds.notes, note])


def held_out(ds_full, fraction: float, seed: int):
    """The dataset whose train split holds the images ``label_subset`` took the labels from (the pool 'train')."""
    keep = labelled_indices(ds_full.labels["train"], fraction, seed)
    rest = np.setdiff1d(np.arange(len(ds_full.labels["train"])), keep)
    return replace(ds_full, images={**ds_full.images, "train": ds_full.images["train"][rest]},
                   labels={**ds_full.labels, "train": ds_full.labels["train"][rest]},
                   notes=[*ds_full.notes, f"the {len(rest)} train images whose labels label_fraction held out"])


def _open(params, ds):
    from .pools import open_pool
    spec = params.unlabelled.strip()
    source = None
    if spec == "train":
        from .loaders import load_dataset
        source = held_out(load_dataset(params.dataset, size=params.size, max_per_split=params.max_per_split,
                                       seed=params.seed), params.label_fraction, params.seed)
    try:
        return open_pool(spec, dataset=source, class_names=list(ds.class_names))
    except WorkbenchError as e:
        raise WorkbenchError(f"parameter 'unlabelled': {e}") from None


# ------------------------------------------------------------------------------------------- the pool in memory
@dataclass
class Unlabelled:
    """The unlabelled images after the input path (uint8, the model's shape), and what the report may know."""
    images: np.ndarray
    labels: np.ndarray | None             # ground truth where the pool has it: NEVER used for training
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def _md5s(images: np.ndarray) -> list[str]:
    import hashlib
    return [hashlib.md5(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def read_pool(pool, spec, exclude=(), what: str = "unlabelled") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Every item of an opened pool through the input path ``spec``, in memory: (images, labels or None, info).
    Items byte-identical to an image of ``exclude`` (arrays of the val and test images) are left out."""
    shape = tuple(spec.shape)
    chunks, positions = [], []
    nbytes = 0
    try:
        for pos, imgs in pool.batches(spec, 512):
            nbytes += imgs.nbytes
            if nbytes > MAX_POOL_BYTES:
                raise WorkbenchError(f"pool {pool.name} exceeds {MAX_POOL_BYTES >> 30} GiB at {shape[0]} px; give a "
                                     "smaller pool (a sub-folder or a sample)")
            chunks.append(imgs)
            positions.append(pos)
    except WorkbenchError as e:      # an empty folder, an image of another size than the run's, ...: say which parameter
        raise WorkbenchError(f"parameter '{what}': {e}") from None
    images = np.concatenate(chunks) if chunks else np.zeros((0, *shape), np.uint8)
    order = np.argsort(np.concatenate(positions)) if positions else np.zeros(0, int)
    images = images[order]
    seen = set().union(*(set(_md5s(x)) for x in exclude)) if len(exclude) else set()
    dup = np.array([m in seen for m in _md5s(images)], dtype=bool)
    images = images[~dup]
    labels = pool.labels
    if labels is not None:
        labels = np.asarray(labels)
        # single-label ground truth covering every item, or nothing (a labels CSV may cover some files only)
        labels = labels[~dup] if labels.ndim == 1 and (labels >= 0).all() else None
    if not len(images):
        raise WorkbenchError(f"parameter '{what}': pool {pool.name} holds no image outside val and test")
    info = {"name": pool.name, "kind": pool.kind, "source": pool.source, "pool_id": pool.pool_id,
            "n": int(len(images)), "rejected": len(pool.rejected), "left_out_as_val_or_test_images": int(dup.sum()),
            "labels_known": labels is not None}
    msg = f"{what} pool {pool.name} ({pool.kind}): {len(images)} images"
    if dup.any():
        msg += f"; {int(dup.sum())} left out (byte-identical to val or test images)"
    if pool.rejected:
        msg += f"; {len(pool.rejected)} file(s) rejected"
    print(msg)
    return images, labels, info


def load_unlabelled(params, ds, spec, run=None) -> Unlabelled | None:
    """Read the pool ``params.unlabelled`` once through the input path ``spec`` (the dataset ``ds`` already went
    through it); items byte-identical to a val or test image are left out. None without ``unlabelled``."""
    if not params.unlabelled:
        return None
    images, labels, info = read_pool(_open(params, ds), spec, (ds.images["val"], ds.images["test"]))
    info = {"spec": params.unlabelled, **info}
    if labels is not None:
        print("the pool's labels are known: read only to report the pseudo-labels' accuracy, never trained on")
    if run is not None:
        from ..core import runs as _runs
        _runs.add_provenance(run, unlabelled=info)
    return Unlabelled(images, labels, info)

"""Multi-label data from real single-label images, exact by construction.

A mosaic is a ``grid``×``grid`` tiling of real cells (e.g. BloodMNIST) drawn from ONE split of a
single-label dataset; its label vector is the set of classes whose cells it shows, so every label is
exact: label j is 1 if and only if a tile of class j is in the mosaic. Label cardinality cycles through
1..grid² (capped at the number of classes) and classes are drawn least-used first, so every class and
every cardinality appears as soon as there are enough mosaics. Train mosaics use train cells only, val
mosaics val cells, test mosaics test cells: the source split is never crossed.

``write_mosaic_dataset`` writes a MedMNIST-layout ``.npz`` (labels (N, K) uint8) and a sibling data card
``<stem>.md`` (task "multi-label, binary-class", provenance, generator and seed), so the file loads by
path with ``workbench.data.load_dataset``. The npz is written with fixed zip timestamps: the same source,
sizes and seed give a byte-identical file (and md5).

These are compositions for testing and benchmarking multi-label code paths, not natural multi-label
medical images; the card says so.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from . import cards as _cards
from ..core.errors import WorkbenchError

SPLITS = ("train", "val", "test")


def mosaic_plan(labels: np.ndarray, n: int, seed: int, grid: int = 2,
                num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which source cells go where: (n, grid²) indices into ``labels`` (row-major tile order) and the
    (n, K) 0/1 label matrix they imply. Pure and seeded (``np.random.default_rng(seed)``)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if n < 1:
        raise WorkbenchError(f"mosaic: n must be at least 1 (got {n})")
    if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool) or grid < 1:
        raise WorkbenchError(f"mosaic: grid must be a positive integer (got {grid!r})")
    if len(labels) == 0:
        raise WorkbenchError("mosaic: the source split has no images")
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    if labels.min() < 0 or labels.max() >= k:
        raise WorkbenchError(f"mosaic: source labels must be class indices 0..{k - 1}")
    rng = np.random.default_rng(seed)
    tiles = grid * grid
    present = np.unique(labels)
    by_class = {int(c): np.flatnonzero(labels == c) for c in present}
    max_card = min(tiles, len(present))
    # cardinalities 1..max_card in equal shares, in a seeded order
    cardinality = rng.permutation(np.arange(n) % max_card + 1)
    used = np.zeros(k, dtype=np.int64)
    src = np.empty((n, tiles), dtype=np.int64)
    y = np.zeros((n, k), dtype=np.uint8)
    for i, c in enumerate(cardinality):
        # least-used classes first (random among ties): every class appears once n allows
        order = present[np.lexsort((rng.random(len(present)), used[present]))]
        chosen = order[:c]
        used[chosen] += 1
        cell_classes = np.concatenate([chosen, rng.choice(chosen, size=tiles - c)])
        rng.shuffle(cell_classes)
        for t, cls in enumerate(cell_classes):
            src[i, t] = rng.choice(by_class[int(cls)])
        y[i, chosen] = 1
    return src, y


def assemble(images: np.ndarray, src: np.ndarray, grid: int = 2) -> np.ndarray:
    """Tile ``images[src[i]]`` row-major into (n, grid·S, grid·S[, C]) mosaics."""
    images = np.asarray(images)
    tiles = images[src]                                  # (n, grid², S, S[, C])
    n, _, s = tiles.shape[:3]
    rest = tiles.shape[4:]
    tiles = tiles.reshape(n, grid, grid, s, s, *rest)
    order = (0, 1, 3, 2, 4, *range(5, tiles.ndim))       # (n, row, y, col, x, C)
    return tiles.transpose(order).reshape(n, grid * s, grid * s, *rest)


def make_mosaic(images: np.ndarray, labels: np.ndarray, class_names, n: int, seed: int,
                grid: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` mosaics of ``grid``×``grid`` real cells from one split: (n, grid·S, grid·S[, C]) uint8 images
    and (n, K) uint8 labels, K = len(class_names); label j is 1 iff a tile of class j is present."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[1] != images.shape[2]:
        raise WorkbenchError(f"mosaic: images must be (N, S, S) or (N, S, S, C) uint8 (got {images.shape} "
                             f"{images.dtype})")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images):
        raise WorkbenchError(f"mosaic: labels must be single-label class indices, one per image "
                             f"(got {labels.shape} for {len(images)} images)")
    src, y = mosaic_plan(labels, n, seed, grid, num_classes=len(class_names))
    return assemble(images, src, grid), y


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: identical arrays give an identical file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def _split_sizes(n_per_split) -> dict[str, int]:
    if isinstance(n_per_split, dict):
        if set(n_per_split) != set(SPLITS):
            raise WorkbenchError(f"mosaic: n_per_split needs train, val and test (got {sorted(n_per_split)})")
        sizes = {s: n_per_split[s] for s in SPLITS}
    else:
        sizes = {s: n_per_split for s in SPLITS}
    for s, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise WorkbenchError(f"mosaic: n_per_split[{s}] must be a positive integer (got {v!r})")
    return {s: int(v) for s, v in sizes.items()}


def write_mosaic_dataset(source_ds, out_npz, n_per_split, seed: int, grid: int = 2) -> Path:
    """Write ``out_npz`` (MedMNIST layout, labels (N, K) uint8) and its card ``<stem>.md`` from a loaded
    single-label ``workbench.data.Dataset``. ``n_per_split``: an int or {train, val, test}. The split
    with index i uses seed ``seed + i`` (train 0, val 1, test 2). Returns the npz path."""
    out_npz = Path(out_npz)
    if out_npz.suffix != ".npz":
        raise WorkbenchError(f"mosaic: output {out_npz} must end in .npz")
    if source_ds.is_multilabel:
        raise WorkbenchError(f"mosaic: source dataset {source_ds.name} is multi-label; mosaics need single-label cells")
    stem = out_npz.stem
    if not stem.replace("_", "").replace("-", "").isalnum():
        raise WorkbenchError(f"mosaic: output name {stem!r} must be letters, digits, '-' or '_'")
    sizes = _split_sizes(n_per_split)
    names = list(source_ds.class_names)
    arrays, ys = {}, {}
    for i, s in enumerate(SPLITS):
        x, y = make_mosaic(source_ds.images[s], source_ds.labels[s], names, sizes[s], seed + i, grid)
        arrays[f"{s}_images"] = x[..., 0] if x.shape[-1] == 1 else x   # MedMNIST: grayscale is (N, S, S)
        arrays[f"{s}_labels"] = y
        ys[s] = y
    out_npz.parent.mkdir(parents=True, exist_ok=True)
    save_npz(out_npz, arrays)
    from .loaders import file_md5
    text = mosaic_card_text(source_ds, stem, ys, int(arrays["train_images"].shape[1]), file_md5(out_npz),
                            seed, grid, sizes, out=_relative(out_npz))
    out_npz.with_suffix(".md").write_text(text, encoding="utf-8")
    return out_npz


def _source_spec(ds) -> str:
    """How to name the source again: its card name when loaded by name, else its path (repo-relative)."""
    from ..core.paths import DATA_DIR
    if ds.path is None:
        return ds.name
    path = Path(ds.path)
    if ds.card is not None and path.parent == DATA_DIR and ds.card.md5_for_size(ds.size) == ds.md5:
        return ds.card.name
    return _relative(path)


def _relative(path) -> str:
    from ..core.paths import ROOT
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def mosaic_card_text(source_ds, stem: str, ys: dict, size: int, md5: str, seed: int, grid: int,
                     sizes: dict, out: str = "") -> str:
    U = _cards.UNKNOWN
    card = source_ds.card
    names = list(source_ds.class_names)
    orient, note = _cards.orientation_of(card)
    src_orient = (card.orientation or {}) if card else {}
    free = orient["flips"] and orient["quarter_turns"]
    reason = (f"tiles are {source_ds.name} cells, which are orientation-free ({src_orient.get('reason', '')}); "
              "a mosaic's label set does not depend on where a tile lies" if free else
              f"the source {source_ds.name} is not orientation-free ({note or src_orient.get('reason', U)})")
    pretty = card.pretty_name if card else source_ds.name
    src_url = card.source.get("url", U) if card else U
    src_cite = card.source.get("citation", U) if card else U
    meta = {
        "name": stem, "pretty_name": f"{pretty} {grid}x{grid} mosaics (multi-label, derived)",
        "version": "1", "license": card.license if card else U,
        "source": {"url": src_url, "citation": src_cite,
                   "derived_from": f"{source_ds.name} (md5 {source_ds.md5})"},
        "modality": f"{card.modality if card else U} ({grid}x{grid} mosaics of real cells)",
        "task": "multi-label, binary-class",
        "label_classes": {i: c for i, c in enumerate(names)},
        "n_channels": int(source_ds.images["train"].shape[-1]),
        "orientation": _cards.orientation_meta(free, reason),
        "splits": {s: int(len(ys[s])) for s in SPLITS},
        "files": {size: {"file": f"{stem}.npz", "md5": md5}},
        "published_baselines": {},
    }
    card_counts = "\n".join(
        f"- {j}: {c} (positives train/val/test: " + "/".join(str(int(ys[s][:, j].sum())) for s in SPLITS) + ")"
        for j, c in enumerate(names))
    cardinality = "; ".join(
        f"{s}: " + ", ".join(f"{k} label(s) {int((ys[s].sum(1) == k).sum())}" for k in range(1, grid * grid + 1)
                             if (ys[s].sum(1) == k).any()) for s in SPLITS)
    cmd = (f"tools/make_mosaic.py --source {_source_spec(source_ds)} "
           f"--out {out or stem + '.npz'} --train {sizes['train']} --val {sizes['val']} --test {sizes['test']} "
           f"--seed {seed} --grid {grid}")
    sections = {
        "Summary": (
            f"{sum(len(ys[s]) for s in SPLITS)} images, each a {grid}x{grid} mosaic of real {pretty} cells "
            f"({source_ds.size} px each, {size} px in all), labelled with the set of classes its tiles show: a "
            f"multi-label dataset whose labels are exact by construction, for testing and benchmarking "
            f"multi-label code paths. It is a composition, not a set of natural multi-label medical images."),
        "Dataset Structure": (
            f"`{stem}.npz` in the MedMNIST layout: `{{train,val,test}}_images` uint8 (N, {size}, {size}"
            f"{'' if meta['n_channels'] == 1 else ', 3'}) and `{{train,val,test}}_labels` uint8 (N, {len(names)}), "
            f"one 0/1 column per class. Splits: train {len(ys['train'])} / val {len(ys['val'])} / test "
            f"{len(ys['test'])}.\n\nLabels (column → class, with the number of mosaics showing it):\n\n{card_counts}"
            f"\n\nLabels per image: {cardinality}."),
        "Source Data": (
            f"Tiles are unchanged images of {source_ds.name} (md5 {source_ds.md5}; card {card.name if card else U}). "
            f"Each split's mosaics are made only from the same split of the source (train from train, val from "
            f"val, test from test), so no source image crosses splits. Generator: "
            f"`workbench.mosaic.write_mosaic_dataset` (grid {grid}, seed {seed}; split i uses seed {seed} + i): "
            f"label cardinality cycles through 1..{min(grid * grid, len(names))} in a seeded order, classes are "
            f"drawn least-used first, the remaining tiles repeat the chosen classes, and each tile is a seeded "
            f"draw from the source images of its class. Re-create with `{cmd}`."),
        "Annotations": (
            "Exact by construction: label j is 1 if and only if at least one tile is a source image of class j. "
            f"Tile labels are the source's own labels, so any label error of {source_ds.name} carries over."),
        "Bias, Risks & Limitations": (
            "Label co-occurrence is set by the generator (near-uniform), not by biology; tile borders are sharp "
            "seams no real image has; a class's frequency reflects the generator's balancing, not prevalence. "
            "Use for software tests and method comparisons only."),
        "Privacy": (f"As the source ({source_ds.name}); the npz holds only pixels and labels, no identifiers. "
                    f"Source privacy statement: {'see its card' if card else U}."),
        "Intended & Out-of-Scope Use": ("Intended: tests and benchmarks of multi-label training, evaluation and "
                                        "annotation. Out of scope: any clinical or biological conclusion. "
                                        "Not for clinical use."),
        "Citation": f"Cite the source dataset: {src_cite}",
    }
    return _cards.render(meta, sections, title=meta["pretty_name"], where=f"mosaic card {stem}.md")

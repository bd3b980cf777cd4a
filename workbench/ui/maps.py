"""The embedding map: a 2-D projection of a run's embeddings (UMAP or t-SNE), computed once per run, with
new points (a pool) placed on it; its static figure and, in JupyterLab, the interactive widget
(workbench.widgets.EmbeddingMap).

* **Embedding map** (``project``, ``map_data``, ``map_figure``, ``EmbeddingMap``): a 2-D projection
  (UMAP, or t-SNE) of train/val/test/pool points coloured by label, prediction, confidence, split, audit
  flag or OOD score: a plotly ``FigureWidget`` (WebGL ``Scattergl``; lasso, box or click selection shows the
  selected images) in JupyterLab, a matplotlib figure headless.

No Keras, JAX or plotly at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import tasks as _tasks
from ..model.embeddings import Features, split_features, split_id, FEATURES_VERSION
from ..core.errors import WorkbenchError
from ..model.neighbours import Index, OODScorer, unit_rows

UMAP_FROM = 5000           # projection "auto": UMAP from this many points, t-SNE below (see ``project``)
MAX_UMAP_FIT = 20000       # UMAP is fitted on at most this many points (seeded sample); the rest are transformed
MAX_THUMBNAILS = 32        # the map shows at most this many images of a selection (a seeded sample)
MAX_CATEGORIES = 20        # categorical colourings: the most frequent categories beyond this become "other"


# ============================================================================================ projection
def project(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates (N, 2) of unit vectors and the method used.

    ``auto``: UMAP (umap-learn; cosine geometry as Euclidean on centred unit vectors) from ``UMAP_FROM``
    points, t-SNE (scikit-learn, Barnes-Hut, PCA start) below. UMAP's numba functions compile in every new
    process: 30-40 s on the shared 2 cores before the first point (measured), while t-SNE maps a
    few thousand points in seconds; past that t-SNE grows faster than UMAP. ``umap`` falls back to t-SNE
    where umap-learn cannot be imported. UMAP is fitted on at most ``MAX_UMAP_FIT`` points (a seeded
    sample) and the rest are placed by ``transform``. ``pca``: the first two principal components."""
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if method not in ("auto", "umap", "tsne", "pca"):
        raise WorkbenchError(f"projection method {method!r} must be auto, umap, tsne or pca")
    if n < 4 or method == "pca":
        c = x - x.mean(0) if n else x
        if n < 2:
            return np.zeros((n, 2), np.float32), "pca"
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        out = c @ vt[:2].T
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))).astype(np.float32), "pca"
    use_umap = method == "umap" or (method == "auto" and n >= UMAP_FROM)
    if use_umap:
        try:
            import umap
        except ImportError:
            use_umap = False
    if use_umap:
        rng = np.random.default_rng(seed)
        fit = np.sort(rng.choice(n, size=min(n, MAX_UMAP_FIT), replace=False))
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1)
        out = np.empty((n, 2), np.float32)
        out[fit] = reducer.fit_transform(x[fit])
        rest = np.setdiff1d(np.arange(n), fit)
        if len(rest):
            out[rest] = reducer.transform(x[rest])
        return out, "umap"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    # one OpenMP thread: on a busy 2-core machine more threads spin against each other (500 points: 78 s
    # with the default threads, 7.5 s with one, measured under load)
    with threadpool_limits(limits=1, user_api="openmp"):
        out = TSNE(n_components=2, perplexity=float(min(30, max(2, (n - 1) / 3))), init="pca",
                   random_state=seed).fit_transform(x)
    return out.astype(np.float32), "t-SNE"


# ============================================================================================ the map
@dataclass
class MapData:
    """Points of an embedding map: coordinates, where each point comes from, its colourings."""
    xy: np.ndarray                       # (N, 2)
    source: np.ndarray                   # (N,) source name per point ("train", "val", "test", the pool's)
    position: np.ndarray                 # (N,) index within its source
    colourings: dict                     # name -> (N,) values: strings (categories) or floats (continuous)
    images: dict                         # source name -> callable(positions) -> uint8 images (display)
    method: str = ""
    title: str = "Embedding map"

    def __len__(self) -> int:
        return len(self.xy)

    def thumbnails(self, points: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Images and captions of the given points (in that order)."""
        points = np.asarray(points, dtype=int)
        out, caps = [None] * len(points), [""] * len(points)
        label = self.colourings.get("label")
        for s in np.unique(self.source[points]) if len(points) else []:
            sel = np.flatnonzero(self.source[points] == s)
            imgs = self.images[s](self.position[points[sel]])
            for j, im in zip(sel, imgs):
                out[j] = im
                p = points[j]
                caps[j] = f"{s}:{self.position[p]}" + (f"\n{str(label[p])[:14]}" if label is not None else "")
        if not len(points):
            return np.zeros((0, 1, 1, 1), np.uint8), []
        side = max(im.shape[0] for im in out)
        ch = max(im.shape[-1] for im in out)
        from ..data.inputs import InputSpec, conform
        return conform(out, InputSpec(size=side, channels=ch, resize="stretch")), caps


def categories(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer codes and names; beyond MAX_CATEGORIES the rarest become "other"."""
    vals = np.asarray(values).astype(str)
    names, counts = np.unique(vals, return_counts=True)
    order = names[np.argsort(-counts, kind="stable")]
    if len(order) > MAX_CATEGORIES:
        keep = list(order[:MAX_CATEGORIES - 1])
        lookup = {v: i for i, v in enumerate(keep)}
        codes = np.array([lookup.get(v, len(keep)) for v in vals])
        return codes, keep + ["other"]
    keep = sorted(order.tolist(), key=lambda v: (v in ("unknown", "n/a", "not audited"), v))
    lookup = {v: i for i, v in enumerate(keep)}
    return np.array([lookup[v] for v in vals]), keep


def is_continuous(values) -> bool:
    a = np.asarray(values)
    return a.dtype.kind in "fc"


def palette(n: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(cmap(i % cmap.N)) for i in range(n)]


def map_figure(data: MapData, colourings: tuple[str, ...] = ("label", "split"), point_size: float = 0.0):
    """The static face (headless reports): one panel per colouring, every point drawn (rasterised)."""
    from matplotlib.figure import Figure
    names = [c for c in colourings if c in data.colourings] or list(data.colourings)[:1]
    n = len(data)
    size = point_size or float(np.clip(3000 / max(n, 1), 0.3, 12))
    fig = Figure(figsize=(5.2 * len(names), 4.6), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        values = data.colourings[name]
        if is_continuous(values):
            v = np.asarray(values, dtype=float)
            sc = ax.scatter(data.xy[:, 0], data.xy[:, 1], c=v, s=size, cmap="viridis", linewidths=0, rasterized=True)
            fig.colorbar(sc, ax=ax, shrink=0.8)
        else:
            codes, cats = categories(values)
            pal = palette(len(cats))
            ax.scatter(data.xy[:, 0], data.xy[:, 1], c=[pal[c] for c in codes], s=size, linewidths=0,
                       rasterized=True)
            for c, cat in enumerate(cats):
                ax.scatter([], [], c=pal[c], s=20, label=str(cat)[:22])
            ax.legend(fontsize=6, markerscale=1, loc="best", frameon=False, ncols=1 if len(cats) <= 12 else 2)
        ax.set_title(f"coloured by {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{data.title}: {n} points ({data.method})" if data.method else f"{data.title}: {n} points")
    return fig


def map_data(parts: list[dict], method: str = "auto", seed: int = 0, center: np.ndarray | None = None,
             title: str = "Embedding map", xy: np.ndarray | None = None, used: str = "") -> MapData:
    """Project several sources together. Each part: ``name``, ``embeddings`` (n, D), ``images``
    (callable(positions) → uint8 display images), ``colourings`` {name: (n,) values}. Every part gets a
    ``split`` colouring (its name). Coordinates come from ``project`` on centred unit vectors (``center``:
    the train mean, as the kNN search uses)."""
    if not parts:
        raise WorkbenchError("an embedding map needs at least one set of points")
    if xy is None:      # else: coordinates given (a run's cached projection, see ``run_projection``)
        emb = np.concatenate([np.asarray(p["embeddings"], dtype=np.float32) for p in parts])
        c = center if center is not None else np.asarray(parts[0]["embeddings"], dtype=np.float32).mean(0)
        xy, used = project(unit_rows(emb - c), method, seed)
    names = sorted({k for p in parts for k in p.get("colourings", {})} | {"split"},
                   key=lambda k: ("label", "prediction", "confidence", "split").index(k)
                   if k in ("label", "prediction", "confidence", "split") else 10)
    col = {}
    for name in names:
        vals = []
        continuous = any(is_continuous(p.get("colourings", {}).get(name, [])) for p in parts
                         if name in p.get("colourings", {}))
        for p in parts:
            n = len(p["embeddings"])
            if name == "split":
                vals.append(np.full(n, p["name"], dtype=object))
            elif name in p.get("colourings", {}):
                v = np.asarray(p["colourings"][name])
                vals.append(v.astype(float) if continuous else v.astype(str).astype(object))
            else:
                vals.append(np.full(n, np.nan) if continuous else np.full(n, "n/a", dtype=object))
        col[name] = np.concatenate(vals)
    source = np.concatenate([np.full(len(p["embeddings"]), p["name"], dtype=object) for p in parts])
    position = np.concatenate([np.arange(len(p["embeddings"])) for p in parts])
    return MapData(xy=xy, source=source, position=position, colourings=col,
                   images={p["name"]: p["images"] for p in parts}, method=used, title=title)


def thumbnail_png(images: np.ndarray, captions: list[str] | None = None, ncols: int = 8, tile: int = 84) -> bytes:
    """A PNG mosaic of images with captions under each, drawn with Pillow: about 20 ms for 32 images where a
    matplotlib grid takes 2-3 s, so that a selection on the map answers at once."""
    import io

    from PIL import Image, ImageDraw, ImageFont
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    band = 24 if captions else 0
    sheet = Image.new("RGB", (ncols * (tile + 4), nrows * (tile + band + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, im in enumerate(images):
        a = np.asarray(im)
        a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]
        pil = Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).resize(
            (tile, tile), Image.NEAREST if a.shape[0] * 2 <= tile else Image.BILINEAR)
        x, y = (i % ncols) * (tile + 4) + 2, (i // ncols) * (tile + band + 4) + 2
        sheet.paste(pil, (x, y))
        if captions:
            for j, line in enumerate(str(captions[i]).split("\n")[:2]):
                draw.text((x, y + tile + 1 + 11 * j), line[:16], fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ maps of a run
def _split_part(trained, split: str, feats: Features, raw, extra: dict | None = None) -> dict:
    names = trained.class_names
    y = trained.dataset().labels[split]
    pred = _tasks.decide(feats.probs, trained.task)
    col = {"label": [_tasks.label_names(r, names, trained.task) if _tasks.is_multilabel(trained.task) else names[int(r)]
                     for r in y],
           "prediction": [_tasks.label_names(r, names, trained.task) if _tasks.is_multilabel(trained.task)
                          else names[int(r)] for r in pred],
           "confidence": np.asarray(_conf(feats.probs, trained.task), dtype=float)}
    col.update(extra or {})
    images = raw.images[split]
    return {"name": split, "embeddings": feats.embeddings, "colourings": col,
            "images": lambda pos, _im=images: _im[np.asarray(pos, dtype=int)]}


def _conf(probs, task):
    c = _tasks.confidence(probs, task)
    return c.min(1) if np.ndim(c) == 2 else c


def audit_flags(run_dir, n_train: int) -> np.ndarray | None:
    """Train images listed in any label_issues.csv of the run's annotated pools (None when there is none)."""
    import pandas as pd
    found = sorted(Path(run_dir).glob("annotate/*/label_issues.csv"))
    if not found:
        return None
    flag = np.zeros(n_train, dtype=bool)
    for f in found:
        t = pd.read_csv(f)
        if "index" in t and len(t):
            idx = t["index"].to_numpy(dtype=int)
            flag[idx[(idx >= 0) & (idx < n_train)]] = True
    return flag


def _flag_text(flags: np.ndarray) -> np.ndarray:
    return np.where(flags, "flagged (label audit)", "not flagged")


def run_map(run_dir, method: str = "auto", seed: int = 0, splits=("train", "val", "test"), batch_size: int = 512):
    """MapData of a trained run's splits (embeddings cached in the run), coloured by label, prediction,
    confidence, split and, where the run has a label audit, audit flag."""
    from ..model import runload
    trained = runload.load(run_dir)
    raw = trained.dataset(raw=True)
    feats = {s: split_features(trained, s, batch_size) for s in splits}
    flags = audit_flags(trained.path, len(raw.labels["train"])) if "train" in splits else None
    parts = []
    for s in splits:
        extra = {}
        if flags is not None:
            extra["audit flag"] = _flag_text(flags) if s == "train" else np.full(len(feats[s]), "not audited")
        parts.append(_split_part(trained, s, feats[s], raw, extra))
    center = feats["train"].embeddings.mean(0) if "train" in feats else None
    return map_data(parts, method, seed, center, title=f"Embedding map of {Path(trained.path).name}")


def run_projection(trained, train: Features, val: Features, method: str = "auto", seed: int = 0) -> dict:
    """The 2-D map of a run's train and val embeddings, computed once per model and kept in the run's cache
    (RUN/cache/map-<key>.npz): every annotated pool is drawn on the same map instead of fitting UMAP again
    (its numba functions compile in every new process: 30-40 s; then the fit). Returns train_xy, val_xy, method."""
    from ..core import runs as _runs
    key = {"model": trained.model_hash, "train": split_id(trained, "train"), "val": split_id(trained, "val"),
           "method": method, "seed": int(seed), "layer": train.layer, "version": FEATURES_VERSION}
    path = _runs.run_cache_path(trained.path, "map", key).with_suffix(".npz")
    center = train.embeddings.mean(0)

    def compute():
        xy, used = project(unit_rows(np.concatenate([train.embeddings, val.embeddings]) - center), method, seed)
        return {"train_xy": xy[:len(train)], "val_xy": xy[len(train):], "method": np.array(used)}
    arrays, hit = _runs.cached_arrays(path, compute)
    return {"train_xy": arrays["train_xy"], "val_xy": arrays["val_xy"], "method": str(arrays["method"]),
            "cached": hit, "path": path}


def place(anchor_xy: np.ndarray, idx: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """New points on an existing map: each at the similarity-weighted mean of its nearest anchors' positions
    (weights: the centred cosine, floored at a small positive value). A point far from all anchors lands among
    its nearest ones; the OOD colouring tells them apart."""
    w = np.maximum(np.asarray(sims, dtype=np.float64), 1e-3)
    pts = np.asarray(anchor_xy, dtype=np.float64)[np.asarray(idx)]          # (N, k, 2)
    return ((pts * w[..., None]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)


def annotate_map(fx, trained, pool, table, issues=None, params=None, pool_name: str = "pool",
                 method: str = "auto"):
    """The annotate report's map data (``widgets.show_map`` draws it): train and val on the run's map, the pool
    placed on it, coloured by label (pool: its known label, else "unknown"), prediction, confidence, split, audit
    flag (train) and OOD score (``fx``: annotate.PoolFeatures)."""
    from ..data.inputs import conform
    seed = getattr(params, "seed", 0)
    raw = trained.dataset(raw=True)
    names, task = trained.class_names, trained.task
    flags = None
    if issues is not None and len(issues):
        flags = np.zeros(len(raw.labels["train"]), dtype=bool)
        flags[np.asarray(issues["index"], dtype=int)] = True
    index = Index(fx.train.embeddings)
    scorer = OODScorer(fx.train.embeddings, raw.labels["train"], task)
    parts = []
    for s, f in (("train", fx.train), ("val", fx.val)):
        extra = {"OOD score": fx.val_ood if s == "val" else scorer.scores(f.embeddings)}
        if flags is not None:
            extra["audit flag"] = _flag_text(flags) if s == "train" else np.full(len(f), "not audited")
        parts.append(_split_part(trained, s, f, raw, extra))
    labels = getattr(pool, "labels", None)
    if labels is not None:
        lab = [("unknown" if (np.asarray(r) < 0).any() else
                (_tasks.label_names(r, names, task) if _tasks.is_multilabel(task) else names[int(r)])) for r in labels]
    else:
        lab = ["unknown"] * len(fx.pool)
    pool_col = {"label": lab, "prediction": table["predicted_class"].astype(str).to_numpy(),
                "confidence": table["confidence"].to_numpy(dtype=float), "OOD score": fx.ood}
    if flags is not None:
        pool_col["audit flag"] = np.full(len(fx.pool), "not audited")
    from ..data.inputs import display_spec
    spec = display_spec(trained.input)
    parts.append({"name": pool_name, "embeddings": fx.pool.embeddings, "colourings": pool_col,
                  "images": lambda pos: conform(pool.raw(np.asarray(pos, dtype=int)), spec)})
    proj = run_projection(trained, fx.train, fx.val, method, seed)
    if fx.knn_idx is not None and len(fx.pool):
        pool_xy = place(proj["train_xy"], fx.knn_idx, fx.knn_sims)
    else:
        pool_xy = np.zeros((len(fx.pool), 2), np.float32)
    xy = np.concatenate([proj["train_xy"], proj["val_xy"], pool_xy])
    data = map_data(parts, method, seed, index.center, title=f"Train, val and pool {pool.name}", xy=xy,
                    used=f"{proj['method']} of train and val (the run's map, {'cached' if proj['cached'] else 'new'}); "
                         "pool items placed among their 11 nearest train images")
    return data

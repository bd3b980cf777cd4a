"""Features of a trained run: embeddings you can see, search and use for annotation.

* **Global embeddings** (``split_features``, ``pool_features``, ``embed_images``): the pooled penultimate
  layer, i.e. the output of the ``gap`` layer (GlobalAveragePooling2D) of the run's network. A model saved
  with test-time augmentation is unwrapped first (``models.backbone``), so an embedding is that of the image
  as given (one view, no TTA); a model without a ``gap`` layer gives the input of its last layer (averaged
  over space when it is a feature map). The same pass also returns the network's own probabilities for the
  image as given (one view), used to colour the map. Batched (one compiled shape, ``predict.pad_batch``) with
  a progress bar; pools are streamed (``pool.batches``), never all in memory.
* **Local features** (``local_features``, ``overlay``): the spatial feature map (N, h, w, C) of a chosen layer
  (default: Grad-CAM's, ``explain.default_layer``), upsampled to the image for overlays.
* **Cache**: ``RUN/features/<source>-<key>.npz`` in the trained run (embeddings float16, the network's
  probabilities float32, ids for pools). ``key`` hashes the model file's md5 (``TrainedRun.model_hash``),
  the source's identity (a pool's ``pool_id`` and the input spec; for a split the dataset md5, the split,
  size, subset and input spec) and the layer: a changed model or pool gets a new key and so a new file.
  Files are write-once (a new file appears atomically and is never overwritten).
* **Geometry**: cosine similarity of *centred* embeddings (the train mean subtracted, then unit length).
  The embeddings come after ReLU and average pooling, so they all lie in the positive orthant, where the
  plain cosine of any two images is high (0.8-0.99): centring makes 0 mean "as unrelated as an average
  pair". ``Index`` holds the train split's centred unit vectors and their labels.
* **kNN second opinion** (``knn_vote``): majority vote of the k = 11 nearest labelled train images
  (MedMNIST+'s k); ties go to the class with the higher summed similarity.
* **Out-of-distribution score** (``OODScorer``): the Mahalanobis score of Lee et al. (NeurIPS 2018): the
  smallest squared Mahalanobis distance of an embedding to a train class mean under one shared (within-class)
  covariance, ridge-regularised (multi-label tasks: one Gaussian for all train images). Chosen by
  measurement over the mean cosine distance to the k nearest train embeddings (Sun et al., ICML 2022;
  ``Index.ood_scores``, kept for comparison): on the BloodMNIST demo model (bench/results/features.md)
  Mahalanobis separates BreastMNIST test images from BloodMNIST test images with AUROC 0.999 against 0.96-0.98
  for the kNN distance (centred or plain cosine), and blurred images better too (σ 2 px: 0.98 against 0.86).
  The covariance accounts for how much each feature varies among blood cells; a cosine treats every
  direction alike. Cost: one D×D covariance (D = 64 for the demo CNN, 512 for ResNet-18). Scores are read
  against the val split's (in-distribution) scores: ``ood_flag`` marks items above val's 99th percentile.
* **Near-duplicates** of pool items in the train split: top-1 centred cosine ≥ ``NEAR_DUPLICATE`` (0.9995: on
  BloodMNIST the 5 test images byte-identical to train images score ≥ 0.9999999, the next most similar pair
  0.9991 with a mean pixel difference of 22 grey levels).
* **Baselines** (``baselines``): kNN (k = 11) and a linear probe (scikit-learn LogisticRegression) on the
  train embeddings, scored on test with the bootstrap intervals of ``metrics.headline_intervals``.
* **Embedding map** (``project``, ``map_data``, ``map_figure``, ``EmbeddingMap``): a 2-D projection
  (UMAP, or t-SNE) of train/val/test/pool points coloured by label, prediction, confidence, split, audit
  flag or OOD score: a plotly ``FigureWidget`` (WebGL ``Scattergl``; lasso, box or click selection shows the
  selected images) in JupyterLab, a matplotlib figure headless.

No Keras, JAX or plotly at import time (they are imported inside the functions that need them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import metrics as _metrics
from . import tasks as _tasks
from .errors import WorkbenchError

FEATURES_DIR = "features"
FEATURES_VERSION = 2        # 2: embeddings computed in fixed chunks of EMBED_CHUNK (bit-identical on any batching)
EMBED_LAYER = "gap"
KNN_K = 11                 # MedMNIST+ (Doerrich et al. 2024) reports kNN baselines with k = 11
OOD_QUANTILE = 0.99        # an item is flagged when its score exceeds this quantile of val's scores
NEAR_DUPLICATE = 0.9995    # centred cosine of a pool item and its nearest train image (see the docstring)
PROBE_C = (0.01, 0.1, 1.0, 10.0)   # linear probe: inverse regularisation, chosen on val
UMAP_FROM = 5000           # projection "auto": UMAP from this many points, t-SNE below (see ``project``)
MAX_UMAP_FIT = 20000       # UMAP is fitted on at most this many points (seeded sample); the rest are transformed
MAX_THUMBNAILS = 32        # the map shows at most this many images of a selection (a seeded sample)
MAX_CATEGORIES = 20        # categorical colourings: the most frequent categories beyond this become "other"
# Embeddings are always computed in chunks of exactly this many images (the last one padded), whatever batch
# size the caller asks for and however a pool streams its files. XLA:CPU picks its kernels' blocking by the
# batch shape, so the same image embedded in a batch of 16 and of 32 can differ in the last bits (seen on an
# AVX2-only AMD EPYC); with one shape and the same chunking, a split or pool gives bit-identical embeddings on
# any call, which is what the cache in RUN/features/ promises.
EMBED_CHUNK = 128


# ============================================================================================ extraction
def embedding_layer(model) -> str:
    """The layer whose output is the embedding: ``gap`` in every registry model (``""`` when absent: then
    the input of the last layer is used)."""
    from .models import backbone
    net = backbone(model)
    return EMBED_LAYER if EMBED_LAYER in [layer.name for layer in net.layers] else ""


def extractor(model):
    """image → (embedding, probabilities) of the network (a TTA model's backbone), cached on the model."""
    import keras

    from .models import backbone
    cache = model.__dict__.setdefault("_workbench_extractor", {})
    if "fn" not in cache:
        net = backbone(model)
        layer = embedding_layer(model)
        emb = net.get_layer(layer).output if layer else net.layers[-1].input
        if len(emb.shape) == 4:
            emb = keras.layers.GlobalAveragePooling2D(name="wb_features_gap")(emb)
        elif len(emb.shape) != 2:
            raise WorkbenchError(f"model {net.name!r}: the penultimate output has shape {tuple(emb.shape)}; "
                                 "embeddings need a (N, D) vector or a (N, H, W, C) feature map")
        cache["fn"] = keras.Model(net.inputs, [emb, net.outputs[0]], name="wb_extractor")
        cache["layer"] = layer or f"{net.layers[-1].name}.input"
    return cache["fn"]


def _run_batch(fn, x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from .predict import pad_batch
    out = fn.predict_on_batch(pad_batch(np.asarray(x).astype("float32"), size))
    return np.asarray(out[0])[:len(x)], np.asarray(out[1])[:len(x)]


def _chunks(batches):
    """Re-cut a stream of ``(positions, images)`` batches into chunks of exactly ``EMBED_CHUNK`` items in arrival
    order (the last one shorter): the chunking depends only on the order of the items, not on the batches."""
    pos_buf, img_buf, n = [], [], 0
    for positions, images in batches:
        positions, images = np.asarray(positions), np.asarray(images)
        start = 0
        while start < len(images):
            take = min(EMBED_CHUNK - n, len(images) - start)
            pos_buf.append(positions[start:start + take])
            img_buf.append(images[start:start + take])
            n += take
            start += take
            if n == EMBED_CHUNK:
                yield np.concatenate(pos_buf), np.concatenate(img_buf)
                pos_buf, img_buf, n = [], [], 0
    if n:
        yield np.concatenate(pos_buf), np.concatenate(img_buf)


def embed_images(model, images: np.ndarray, batch_size: int = 512, desc: str = "embed",
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, D) float32, probabilities (N, K) float32) for uint8 images already through the run's
    input path, with a progress bar. ``batch_size`` is accepted for symmetry with ``predict``; the network
    always runs on chunks of ``EMBED_CHUNK`` (see there): the result does not depend on it, bit for bit."""
    images = np.asarray(images)
    return embed_stream(model, ((np.arange(i, min(i + EMBED_CHUNK, len(images))), images[i:i + EMBED_CHUNK])
                                for i in range(0, len(images), EMBED_CHUNK)),
                        len(images), desc=desc, progress=progress)


def embed_stream(model, batches, total: int, batch_size: int = 512,
                 desc: str = "embed", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and probabilities of images arriving as ``(positions, images)`` batches (a pool streamed
    from disk); rows in position order. The batches are re-cut into chunks of ``EMBED_CHUNK`` (``_chunks``),
    so the same items in the same order give bit-identical rows whatever the batches were."""
    from .progress import tqdm
    fn = extractor(model)
    d, k = int(fn.outputs[0].shape[-1]), int(fn.outputs[1].shape[-1])
    emb = np.full((total, d), np.nan, np.float32)
    prob = np.full((total, k), np.nan, np.float32)
    bar = tqdm(total=total, desc=desc, unit="image", disable=not progress)
    try:
        for positions, images in _chunks(batches):
            e, p = _run_batch(fn, images, EMBED_CHUNK)
            emb[positions] = e
            prob[positions] = p
            bar.update(len(images))
    finally:
        bar.close()
    return emb, prob


# ============================================================================================ local features
def local_features(model, images: np.ndarray, layer: str = "", batch_size: int = 64) -> np.ndarray:
    """The feature map (N, h, w, C) float32 that ``layer`` (default: Grad-CAM's, ``explain.default_layer``)
    of the network produces for uint8 images already through the run's input path."""
    import keras

    from .explain import check_layer
    from .models import backbone
    net = backbone(model)
    layer = check_layer(net, layer)
    cache = model.__dict__.setdefault("_workbench_local", {})
    if layer not in cache:
        cache[layer] = keras.Model(net.inputs, net.get_layer(layer).output, name=f"wb_local_{layer}")
    fn = cache[layer]
    images = np.asarray(images)
    if images.ndim != 4:
        raise WorkbenchError(f"local_features needs a batch of images (N, H, W, C); got shape {images.shape}")
    from .predict import pad_batch
    out = []
    size = max(1, min(batch_size, len(images)))
    for i in range(0, len(images), size):
        x = images[i:i + size]
        out.append(np.asarray(fn.predict_on_batch(pad_batch(x.astype("float32"), size)))[:len(x)])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1, 1, 1), np.float32)


def upsample(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(N, h, w, C) → (N, H, W, C), bilinear (OpenCV), for overlays on the image."""
    import cv2
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    out = np.empty((len(maps), h, w, maps.shape[-1]), np.float32)
    for i, m in enumerate(maps):
        for c0 in range(0, m.shape[-1], 512):   # OpenCV resizes at most 512 channels at once
            chunk = cv2.resize(np.ascontiguousarray(m[..., c0:c0 + 512]), (w, h), interpolation=cv2.INTER_LINEAR)
            out[i, ..., c0:c0 + 512] = chunk.reshape(h, w, -1)
    return out


def overlay(maps: np.ndarray, size: int | tuple[int, int], mode: str = "pca") -> np.ndarray:
    """Local features for an overlay: ``pca`` → (N, H, W, 3) in [0, 1], the first three principal components
    of all the maps' feature vectors as RGB (parts of images the layer sees alike get alike colours);
    ``norm`` → (N, H, W) in [0, 1], each position's feature norm (how strongly the layer responds)."""
    maps = np.asarray(maps, dtype=np.float32)
    if mode == "norm":
        n = np.linalg.norm(maps, axis=-1, keepdims=True)
        up = upsample(n, size)[..., 0]
        peak = up.reshape(len(up), -1).max(1).reshape(-1, 1, 1)
        return np.where(peak > 0, up / np.maximum(peak, 1e-12), 0.0).astype(np.float32)
    if mode != "pca":
        raise WorkbenchError(f"overlay mode {mode!r} must be pca or norm")
    flat = maps.reshape(-1, maps.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat[:: max(1, len(flat) // 20000)], full_matrices=False)
    comps = vt[:3] if len(vt) >= 3 else np.pad(vt, ((0, 3 - len(vt)), (0, 0)))
    rgb = (flat @ comps.T).reshape(*maps.shape[:3], 3)
    lo, hi = np.percentile(rgb, 1, axis=(0, 1, 2)), np.percentile(rgb, 99, axis=(0, 1, 2))
    rgb = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return np.clip(upsample(rgb.astype(np.float32), size), 0, 1)


def local_feature_figure(images: np.ndarray, maps: np.ndarray, captions: list[str] | None = None, title: str = ""):
    """Each image beside its local features (PCA colours) and their norm, upsampled to the image."""
    from matplotlib.figure import Figure
    side = images.shape[1:3]
    rgb, norm = overlay(maps, side, "pca"), overlay(maps, side, "norm")
    n = len(images)
    fig = Figure(figsize=(6.0, 2.0 * max(n, 1) + 0.4), layout="constrained")
    axes = fig.subplots(max(n, 1), 3, squeeze=False)
    for i in range(n):
        img = images[i]
        show = img[..., 0] if img.shape[-1] == 1 else img
        cmap = "gray" if img.shape[-1] == 1 else None
        axes[i, 0].imshow(show, cmap=cmap, vmin=0, vmax=255)
        axes[i, 1].imshow(rgb[i])
        axes[i, 2].imshow(show, cmap=cmap, vmin=0, vmax=255)
        axes[i, 2].imshow(norm[i], cmap="magma", alpha=0.55)
        if captions:
            axes[i, 0].set_title(captions[i], fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 1].set_title("local features (PCA → RGB)", fontsize=7)
    axes[0, 2].set_title("feature norm", fontsize=7)
    fig.suptitle(title or f"Local features ({maps.shape[1]}×{maps.shape[2]}×{maps.shape[3]} map, upsampled)")
    return fig


# ============================================================================================ the cache
@dataclass
class Features:
    """Embeddings of one source (a split or a pool) by one model."""
    source: str                      # "train", "val", "test" or "pool:<name>"
    key: str
    embeddings: np.ndarray           # (N, D) float32 (stored float16)
    probs: np.ndarray                # (N, K) float32: the network on the image as given (one view)
    layer: str = EMBED_LAYER
    ids: list[str] | None = None
    path: Path | None = None
    cached: bool = False             # read from an existing file

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def cache_key(model_hash: str, source_id: str, layer: str) -> str:
    """Key of a cached set of embeddings: model file md5 + source identity + layer (16 hex digits)."""
    doc = json.dumps({"model": model_hash, "source": source_id, "layer": layer, "version": FEATURES_VERSION},
                     sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def split_id(trained, split: str, spec=None) -> str:
    """Identity of a split of the run's data: dataset md5, split, size, subset and the input spec."""
    ds = trained.dataset(raw=True)
    tp = trained.params
    spec = spec or trained.input
    doc = {"dataset_md5": ds.md5, "dataset": str(tp.dataset), "split": split, "size": tp.size,
           "max_per_split": tp.max_per_split, "seed": tp.seed, "n": int(len(ds.labels[split])),
           "input": spec.to_dict()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_source_id(pool, spec) -> str:
    """Identity of a scanned pool seen through an input spec (its ``pool_id`` and the spec)."""
    doc = {"pool_id": pool.pool_id, "input": spec.to_dict()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_name(source: str, key: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._-")[:60] or "source"
    return f"{clean}-{key}.npz"


def cache_path(run_dir, source: str, key: str) -> Path:
    return Path(run_dir) / FEATURES_DIR / _file_name(source, key)


def _read(path: Path, key: str, source: str) -> Features | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            ids = z["ids"].tolist() if "ids" in z.files else None
            return Features(source=source, key=key, embeddings=z["embeddings"].astype(np.float32),
                            probs=z["probs"].astype(np.float32), layer=str(z["layer"]), ids=ids, path=path,
                            cached=True)
    except (OSError, ValueError, KeyError):
        return None


def _write(path: Path, f: Features, model_hash: str, source_id: str) -> Path:
    """Write-once: the file appears whole (hard link of a finished temporary file) or not at all; an existing
    file is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arrays = {"embeddings": f.embeddings.astype(np.float16), "probs": f.probs.astype(np.float32),
              "key": np.array(f.key), "model_hash": np.array(model_hash), "source": np.array(f.source),
              "source_id": np.array(source_id), "layer": np.array(f.layer),
              "version": np.array(FEATURES_VERSION)}
    if f.ids is not None:
        arrays["ids"] = np.array(f.ids, dtype="U")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _cached(trained, source: str, source_id: str, compute, ids=None, cache: bool = True) -> Features:
    model_hash = trained.model_hash
    extractor(trained.model)
    layer = trained.model.__dict__["_workbench_extractor"]["layer"]
    key = cache_key(model_hash, source_id, layer)
    path = cache_path(trained.path, source, key)
    if cache and path.is_file():
        got = _read(path, key, source)
        if got is not None:
            # float16 storage: the network's own rounding is what a later session reads, so reuse it as is
            return got
    emb, probs = compute()
    f = Features(source=source, key=key, embeddings=emb, probs=probs, layer=layer, ids=ids, path=None)
    if cache:
        f.path = _write(path, f, model_hash, source_id)
        f.embeddings = f.embeddings.astype(np.float16).astype(np.float32)   # as a later read gives it
    return f


def split_features(trained, split: str, batch_size: int = 512, cache: bool = True) -> Features:
    """Embeddings of a split of the run's data (through the run's input path), cached in the run."""
    ds = trained.dataset()
    if split not in ds.images:
        raise WorkbenchError(f"split {split!r} is not in the run's dataset (splits: {', '.join(ds.images)})")
    return _cached(trained, split, split_id(trained, split),
                   lambda: embed_images(trained.model, ds.images[split], batch_size, desc=f"embed {split}"),
                   cache=cache)


def pool_features(trained, pool, spec=None, batch_size: int = 512, cache: bool = True) -> Features:
    """Embeddings of a pool (streamed through ``spec``, default the run's input path), cached in the run.
    An unscanned pool is scanned first (its ``pool_id`` is part of the key)."""
    spec = spec or trained.input
    if not pool.scanned:
        pool.scan(spec)
    source = f"pool:{pool.slug}"

    def compute():
        was, pool.progress = pool.progress, False
        try:
            return embed_stream(trained.model, pool.batches(spec, batch_size), len(pool), batch_size,
                                desc=f"embed pool ({pool.name})")
        finally:
            pool.progress = was
    return _cached(trained, source, pool_source_id(pool, spec), compute, ids=list(pool.ids), cache=cache)


# ============================================================================================ geometry
def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Index:
    """Train embeddings for cosine search: centred by their mean (``center=False``: as they are), unit length."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray | None = None, center: bool = True):
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or not len(x):
            raise WorkbenchError(f"a feature index needs embeddings (N, D) with N > 0; got shape {x.shape}")
        self.center = x.mean(0) if center else np.zeros(x.shape[1], np.float32)
        self.vectors = _unit(x - self.center)
        self.labels = None if labels is None else np.asarray(labels)

    def __len__(self) -> int:
        return len(self.vectors)

    def unit(self, queries: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(queries, dtype=np.float32) - self.center)

    def search(self, queries: np.ndarray, k: int = KNN_K, exclude_self: bool = False,
               chunk: int = 2048, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (N, k), train indices (N, k)), most similar first. ``exclude_self``: the queries are
        the indexed vectors themselves (row i never finds itself)."""
        q = self.unit(queries)
        kk = min(int(k), len(self) - (1 if exclude_self else 0))
        if kk < 1:
            raise WorkbenchError(f"nearest neighbours: k = {k} but the index holds {len(self)} vectors")
        sims = np.empty((len(q), kk), np.float32)
        idx = np.empty((len(q), kk), np.int64)
        steps = range(0, len(q), chunk)
        if progress:
            from .progress import tqdm
            steps = tqdm(steps, desc="nearest neighbours", unit="chunk")
        for s in steps:
            sim = q[s:s + chunk] @ self.vectors.T
            if exclude_self:
                r = np.arange(len(sim))
                sim[r, s + r] = -np.inf
            part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            ps = np.take_along_axis(sim, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
            sims[s:s + chunk] = np.take_along_axis(ps, order, axis=1)
        return sims, idx

    def ood_scores(self, queries=None, k: int = KNN_K, neighbours=None) -> np.ndarray:
        """Mean cosine distance (1 - centred cosine, 0..2) to the k nearest indexed vectors."""
        sims, _ = neighbours if neighbours is not None else self.search(queries, k)
        return (1.0 - sims[:, :k].astype(np.float64).mean(1))


def knn_vote(labels: np.ndarray, idx: np.ndarray, sims: np.ndarray, num_classes: int,
             task: str = _tasks.MULTICLASS) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, K): each class's share of the k neighbours' votes — for multi-label tasks each
    label's share of neighbours carrying it —, decided labels: majority class, ties to the higher summed
    similarity; multi-label: labels carried by more than half of the neighbours)."""
    labels = np.asarray(labels)
    k = idx.shape[1]
    if _tasks.is_multilabel(task):
        probs = labels[idx].astype(np.float64).mean(1)
        return probs, (probs > 0.5).astype(np.int64)
    flat = labels.reshape(len(labels))[idx]                     # (N, k)
    probs = np.zeros((len(idx), num_classes))
    simsum = np.zeros((len(idx), num_classes))
    rows = np.repeat(np.arange(len(idx)), k)
    np.add.at(probs, (rows, flat.ravel()), 1.0)
    np.add.at(simsum, (rows, flat.ravel()), sims.ravel().astype(np.float64))
    decided = np.argmax(probs + 1e-3 * (simsum + k) / (2 * k + 1), axis=1)   # tie-break < one vote
    return probs / k, decided


def knn_predict(index: Index, queries: np.ndarray, num_classes: int, task: str = _tasks.MULTICLASS,
                k: int = KNN_K) -> tuple[np.ndarray, np.ndarray]:
    sims, idx = index.search(queries, k)
    return knn_vote(index.labels, idx, sims, num_classes, task)


class OODScorer:
    """Mahalanobis OOD score (see the module docstring): class means of the train embeddings and their
    shared within-class covariance (+ ``ridge`` × its mean variance on the diagonal, so that features that
    never vary on train — dead ReLU channels — stay finite and count strongly when they do fire)."""

    def __init__(self, train: np.ndarray, labels: np.ndarray | None = None, task: str = _tasks.MULTICLASS,
                 ridge: float = 1e-3):
        x = np.asarray(train, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise WorkbenchError(f"the OOD score needs at least 2 train embeddings (N, D); got shape {x.shape}")
        if labels is None or _tasks.is_multilabel(task):
            y = np.zeros(len(x), dtype=int)
        else:
            y = np.asarray(labels).reshape(len(x))
        classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - self.means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(x)
        cov += ridge * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
        w, v = np.linalg.eigh(cov)
        self.whiten = v / np.sqrt(np.maximum(w, 1e-12))          # x @ whiten: unit covariance
        self.white_means = self.means @ self.whiten

    def scores(self, queries: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per query (higher: more unusual)."""
        q = np.asarray(queries, dtype=np.float64)
        out = np.empty(len(q))
        m2 = (self.white_means ** 2).sum(1)
        for s in range(0, len(q), chunk):
            z = q[s:s + chunk] @ self.whiten
            d = (z ** 2).sum(1, keepdims=True) - 2 * z @ self.white_means.T + m2[None, :]
            out[s:s + chunk] = np.maximum(d.min(1), 0.0)
        return out


def mahalanobis_scores(train: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                       task: str = _tasks.MULTICLASS) -> np.ndarray:
    return OODScorer(train, labels, task).scores(queries)


def near_duplicate_pairs(sims: np.ndarray, idx: np.ndarray,
                         threshold: float = NEAR_DUPLICATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, train indices, similarities) of every neighbour at or above ``threshold``."""
    r, c = np.nonzero(sims >= threshold)
    return r, idx[r, c], sims[r, c]


# ============================================================================================ baselines
def _full_probs(model, x: np.ndarray, k: int) -> np.ndarray:
    """predict_proba with a column per class, also for classes absent from the fit."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), k))
    out[:, np.asarray(model.classes_, dtype=int)] = p
    return out


def linear_probe(train_x, train_y, val_x, val_y, task: str, num_classes: int, seed: int = 0,
                 grid=PROBE_C) -> tuple[object, dict]:
    """LogisticRegression on standardised train embeddings (multinomial; one per label for multi-label
    tasks), its inverse regularisation C chosen on val accuracy from ``grid``. Returns (predict-probabilities
    function, {"C": chosen, "val_acc": {C: acc}})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(train_x)
    tx, vx = scaler.transform(train_x), scaler.transform(val_x)
    ml = _tasks.is_multilabel(task)

    def fit(c):
        if ml:
            ys = np.asarray(train_y)
            parts = []
            for j in range(ys.shape[1]):
                if len(np.unique(ys[:, j])) < 2:
                    parts.append(float(ys[0, j]))
                else:
                    parts.append(LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(tx, ys[:, j]))

            def proba(x):
                return np.stack([np.full(len(x), p) if isinstance(p, float) else p.predict_proba(x)[:, 1]
                                 for p in parts], axis=1)
            return proba
        m = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(tx, np.asarray(train_y).reshape(-1))
        return lambda x: _full_probs(m, x, num_classes)

    scores, fns = {}, {}
    for c in grid:
        fns[c] = fit(c)
        scores[c] = float(_metrics.medmnist_acc_auc(val_y, fns[c](vx), task)["acc"])
    best = max(grid, key=lambda c: (scores[c], -c))     # ties: the stronger regularisation
    info = {"C": float(best), "val_acc": {str(c): s for c, s in scores.items()}}
    return (lambda x: fns[best](scaler.transform(x))), info


_HEAD_KEYS = ("acc", "auc", "balanced_acc", "exact_match", "mae", "qwk")


def _headline(y, probs, task, n_resamples, seed) -> dict:
    h = _metrics.headline_intervals(y, probs, task, n_resamples=n_resamples, seed=seed)
    out = {}
    for k in _HEAD_KEYS:
        if k in h:
            out[k] = h[k]
            out[f"{k}_ci95"] = h.get(f"{k}_ci95")
    out["n"] = int(h["n"])
    return out


def baselines(trained, ds, n_resamples: int = 1000, seed: int = 0, batch_size: int = 512, k: int = KNN_K) -> dict:
    """kNN (k = 11, cosine on centred embeddings) and a linear probe on the run's train embeddings, scored
    on test with bootstrap intervals (``metrics.headline_intervals``): what the network's features alone
    give, beside the network's own numbers. Train/val/test embeddings are cached in the run."""
    task = ds.task
    feats = {s: split_features(trained, s, batch_size) for s in ("train", "val", "test")}
    y = {s: ds.labels[s] for s in feats}
    out = {"layer": feats["train"].layer, "dim": feats["train"].dim, "k": int(k),
           "metric": "cosine similarity of centred embeddings (train mean subtracted)",
           "features": {s: str(f.path.relative_to(trained.path)) if f.path else None for s, f in feats.items()}}
    classes_present = np.unique(y["train"].reshape(len(y["train"]), -1), axis=0)
    if len(classes_present) < 2:
        out["skipped"] = "the train split holds a single class: nothing to compare"
        return out
    index = Index(feats["train"].embeddings, y["train"])
    kp, _ = knn_predict(index, feats["test"].embeddings, ds.num_classes, task, k)
    out["knn"] = {"method": f"majority vote of the {min(k, len(index))} nearest train images",
                  **_headline(y["test"], kp, task, n_resamples, seed)}
    proba, info = linear_probe(feats["train"].embeddings, y["train"], feats["val"].embeddings, y["val"], task,
                               ds.num_classes, seed)
    out["linear_probe"] = {"method": "LogisticRegression on standardised train embeddings, C chosen on val",
                           **info, **_headline(y["test"], proba(feats["test"].embeddings), task, n_resamples, seed)}
    return out


def baselines_table(result: dict):
    """The network beside kNN and the linear probe on its features (test, 95 % intervals)."""
    import pandas as pd

    from .viz import Markdown
    fb = result.get("feature_baselines")
    if not fb:
        return Markdown("No feature baselines in metrics.json.")
    if fb.get("skipped"):
        return Markdown(f"Feature baselines skipped: {fb['skipped']}.")

    def cell(d, key):
        v, ci = d.get(key), d.get(f"{key}_ci95")
        if v is None:
            return "undefined"
        return f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and ci[0] is not None and ci[1] is not None else "")

    keys = [k for k in ("acc", "auc", "balanced_acc", "exact_match", "mae", "qwk") if k in result["test"]]
    rows = {"network (this run)": {k.upper() if k in ("acc", "auc") else k: cell(result["test"], k) for k in keys}}
    rows[f"kNN (k = {fb['k']}) on its features"] = {k.upper() if k in ("acc", "auc") else k: cell(fb["knn"], k)
                                                  for k in keys}
    rows[f"linear probe (C = {fb['linear_probe']['C']:g}) on its features"] = {
        k.upper() if k in ("acc", "auc") else k: cell(fb["linear_probe"], k) for k in keys}
    return pd.DataFrame(rows).T


# ============================================================================================ annotate
def _decided(probs: np.ndarray, task: str) -> np.ndarray:
    return _tasks.decide(probs, task)


def _label_text(row, task: str, sep: str = ";") -> str | int:
    if _tasks.is_multilabel(task):
        return sep.join(str(j) for j in np.flatnonzero(np.asarray(row)))
    return int(row)


precision_coverage = _metrics.accepted_precision_coverage


@dataclass
class PoolFeatures:
    """What the features say about an annotated pool (workbench.annotate uses ``columns`` and ``summary``)."""
    train: Features
    val: Features
    pool: Features
    task: str
    class_names: list[str]
    k: int
    knn_probs: np.ndarray
    knn_label: np.ndarray
    model_label: np.ndarray
    ood: np.ndarray
    val_ood: np.ndarray
    near: object                     # pandas DataFrame: train_near_duplicates.csv
    threshold: float = NEAR_DUPLICATE
    extra: dict = field(default_factory=dict)
    knn_idx: np.ndarray | None = None     # (N, k) train indices of each pool item's nearest neighbours
    knn_sims: np.ndarray | None = None    # (N, k) their centred cosine similarities

    @property
    def knn_agree(self) -> np.ndarray:
        if _tasks.is_multilabel(self.task):
            return (self.knn_label == self.model_label).all(1)
        return self.knn_label == self.model_label

    @property
    def ood_threshold(self) -> float:
        return float(np.quantile(self.val_ood, OOD_QUANTILE)) if len(self.val_ood) else float("inf")

    @property
    def ood_flag(self) -> np.ndarray:
        return self.ood > self.ood_threshold

    def columns(self) -> dict:
        """Per-item columns appended to annotations.csv: the kNN label, whether it agrees with the model,
        the OOD score."""
        return {"knn_label": [_label_text(r, self.task) for r in self.knn_label],
                "knn_agree": self.knn_agree, "ood_score": np.round(self.ood, 6)}

    def summary(self, table, pool, n_resamples: int = 1000, seed: int = 0, auto: str = "auto-accepted") -> dict:
        """``knn``, ``ood`` and ``train_near_duplicates`` for annotation_summary.json."""
        accepted = (table["status"] == auto).to_numpy()
        agree = self.knn_agree
        knn = {"k": self.k, "metric": "cosine similarity of centred embeddings",
               "layer": self.train.layer, "agreement": float(agree.mean()) if len(agree) else None,
               "agreement_auto_accepted": float(agree[accepted].mean()) if accepted.any() else None,
               "n_auto_accepted_and_agree": int((accepted & agree).sum())}
        labels = getattr(pool, "labels", None)
        if labels is not None:
            y = np.asarray(labels)
            known = (y >= 0).all(1) if y.ndim == 2 else y >= 0
            if known.any():
                if _tasks.is_multilabel(self.task):   # item-level: the whole label set right
                    yy = np.array([";".join(map(str, np.flatnonzero(r))) for r in y[known]])
                    pred = np.array([";".join(map(str, np.flatnonzero(r))) for r in self.model_label[known]])
                    codes = {v: i for i, v in enumerate(sorted(set(yy) | set(pred)))}
                    yy = np.array([codes[v] for v in yy])
                    pred = np.array([codes[v] for v in pred])
                else:
                    yy, pred = y[known].reshape(-1), self.model_label[known]
                knn["achieved"] = {
                    "model": precision_coverage(yy, pred, accepted[known], n_resamples, seed),
                    "model_and_knn_agree": precision_coverage(yy, pred, (accepted & agree)[known], n_resamples, seed),
                    "n_labelled": int(known.sum()),
                    "what": "multi-label: item-level, the whole label set right" if _tasks.is_multilabel(self.task)
                            else "precision of the auto-accepted labels"}
        q = (0.5, 0.9, 0.99)
        order = np.argsort(-self.ood, kind="stable")[:10]
        ood = {"method": "Mahalanobis: smallest squared distance to a train class mean, shared covariance "
                         "(Lee et al. 2018)", "reference": "val split (in distribution)",
               "threshold": self.ood_threshold, "threshold_quantile_of_val": OOD_QUANTILE,
               "val_quantiles": {str(x): float(np.quantile(self.val_ood, x)) for x in q} if len(self.val_ood) else {},
               "pool_quantiles": {str(x): float(np.quantile(self.ood, x)) for x in q} if len(self.ood) else {},
               "pool_mean": float(self.ood.mean()) if len(self.ood) else None,
               "n_flagged": int(self.ood_flag.sum()),
               "share_flagged": float(self.ood_flag.mean()) if len(self.ood) else None,
               "expected_share_if_like_val": 1 - OOD_QUANTILE,
               "most_unusual": [{"id": self.pool.ids[i] if self.pool.ids else str(i), "score": float(self.ood[i])}
                                for i in order],
               "column": "ood_score (annotations.csv)"}
        near = {"threshold": self.threshold, "n_pairs": int(len(self.near)),
                "n_pool_items": int(self.near["id"].nunique()) if len(self.near) else 0,
                "csv": "train_near_duplicates.csv",
                "metric": "cosine similarity of centred embeddings to the nearest train images"}
        return {"knn": knn, "ood": ood, "train_near_duplicates": near}


def annotate_pool(run, trained, pool, params, pool_probs: np.ndarray, k: int = KNN_K,
                  threshold: float = NEAR_DUPLICATE) -> PoolFeatures:
    """Train, val and pool embeddings (cached in the trained run), the kNN second opinion, OOD scores and
    near-duplicates of pool items in the train split (``train_near_duplicates.csv`` in the pool directory)."""
    import pandas as pd
    spec = trained.input.with_resize(getattr(params, "resize", ""))    # the stage's input path for this pool
    bs = getattr(params, "batch_size", 512)
    ds = trained.dataset()
    tr, va = split_features(trained, "train", bs), split_features(trained, "val", bs)
    po = pool_features(trained, pool, spec, bs)
    index = Index(tr.embeddings, ds.labels["train"])
    sims, idx = index.search(po.embeddings, k, progress=len(po) > 20000)
    kk = idx.shape[1]
    knn_probs, knn_label = knn_vote(index.labels, idx, sims, len(trained.class_names), trained.task)
    scorer = OODScorer(tr.embeddings, ds.labels["train"], trained.task)
    ood, val_ood = scorer.scores(po.embeddings), scorer.scores(va.embeddings)
    rows, cols, s = near_duplicate_pairs(sims, idx, threshold)
    ytr = ds.labels["train"]
    near = pd.DataFrame({
        "id": [pool.ids[i] for i in rows], "index": rows.astype(int), "train_index": cols.astype(int),
        "train_id": [f"train:{j}" for j in cols],
        "train_label": [_label_text(ytr[j], trained.task) for j in cols],
        "similarity": np.round(s.astype(np.float64), 6)}).sort_values(["similarity", "index"], ascending=[False, True],
                                                                      kind="stable")
    near.to_csv(run.file("train_near_duplicates.csv"), index=False)
    model_label = _decided(np.asarray(pool_probs), trained.task)
    fx = PoolFeatures(train=tr, val=va, pool=po, task=trained.task, class_names=list(trained.class_names), k=kk,
                      knn_probs=knn_probs, knn_label=knn_label, model_label=model_label, ood=ood, val_ood=val_ood,
                      near=near, threshold=threshold, knn_idx=idx, knn_sims=sims)
    print(f"features: kNN (k = {kk}) agrees with the model on {fx.knn_agree.mean():.3f} of the pool; "
          f"{int(fx.ood_flag.sum())} item(s) above val's {OOD_QUANTILE:.0%} OOD quantile; "
          f"{near['id'].nunique() if len(near) else 0} item(s) with a train near-duplicate (cosine ≥ {threshold})")
    return fx


def display_spec(trained):
    """The images a person looks at: the model's size and channels, before preprocessing."""
    spec = trained.input
    return replace(spec, preprocess=None, resize=spec.resize if spec.resize != "none" else "stretch")


def ood_gallery(fx: PoolFeatures, pool, trained, n: int = 24):
    """The pool's most unusual items (highest OOD score first)."""
    from .inputs import conform
    from .viz import image_grid
    order = np.argsort(-fx.ood, kind="stable")[:n]
    caps = [f"{str(fx.pool.ids[i])[-14:]}\nOOD {fx.ood[i]:.3f}" + (" ⚑" if fx.ood_flag[i] else "") for i in order]
    colors = ["red" if fx.ood_flag[i] else "black" for i in order]
    images = conform(pool.raw(order), display_spec(trained)) if len(order) else np.zeros((0, 1, 1, 1), np.uint8)
    return image_grid(images, caps, ncols=8, cell=1.5, caption_colors=colors,
                      title=f"Most unusual pool items (OOD score; red: above val's {OOD_QUANTILE:.0%} quantile "
                            f"{fx.ood_threshold:.3f}; {int(fx.ood_flag.sum())} of {len(fx.ood)} flagged)")


def agreement_table(summary: dict):
    """Auto-accept precision and coverage with and without the kNN agreement rule (labels known)."""
    import pandas as pd
    knn = summary.get("knn") or {}
    a = knn.get("achieved")
    if not a:
        return pd.DataFrame({"note": [f"kNN agrees with the model on {knn.get('agreement', float('nan')):.3f} of the "
                                      "pool; the pool's labels are unknown, so precision cannot be measured"]})

    def ci(v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]" if v and v[0] is not None and v[1] is not None else "undefined"
    rows = {}
    for name, key in (("model (auto-accept rule)", "model"), ("model and kNN agree", "model_and_knn_agree")):
        r = a[key]
        rows[name] = {"precision": f"{r['precision']:.4f}" if np.isfinite(r["precision"]) else "undefined",
                      "precision 95% CI": ci(r["precision_ci95"]), "coverage": f"{r['coverage']:.4f}",
                      "coverage 95% CI": ci(r["coverage_ci95"]), "accepted": r["n_accepted"]}
    return pd.DataFrame(rows).T


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
        from .inputs import InputSpec, conform
        return conform(out, InputSpec(size=side, channels=ch, resize="stretch")), caps


def _categories(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
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


def _is_continuous(values) -> bool:
    a = np.asarray(values)
    return a.dtype.kind in "fc"


def _palette(n: int) -> list[str]:
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
        if _is_continuous(values):
            v = np.asarray(values, dtype=float)
            sc = ax.scatter(data.xy[:, 0], data.xy[:, 1], c=v, s=size, cmap="viridis", linewidths=0, rasterized=True)
            fig.colorbar(sc, ax=ax, shrink=0.8)
        else:
            codes, cats = _categories(values)
            pal = _palette(len(cats))
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
        xy, used = project(_unit(emb - c), method, seed)
    names = sorted({k for p in parts for k in p.get("colourings", {})} | {"split"},
                   key=lambda k: ("label", "prediction", "confidence", "split").index(k)
                   if k in ("label", "prediction", "confidence", "split") else 10)
    col = {}
    for name in names:
        vals = []
        continuous = any(_is_continuous(p.get("colourings", {}).get(name, [])) for p in parts
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


class EmbeddingMap:
    """The interactive map: a plotly ``FigureWidget`` with one WebGL scatter (``Scattergl``) of every point
    and a colour menu; a lasso/box selection or a click shows the selected points' images (a seeded sample of
    at most ``max_thumbnails``: the points are never subsampled, the thumbnails are). ``select(points)`` does
    what a selection in the browser does. Display it as the cell's value."""

    def __init__(self, data: MapData, colour: str = "", max_thumbnails: int = MAX_THUMBNAILS, seed: int = 0,
                 height: int = 520):
        import ipywidgets as W
        import plotly.graph_objects as go
        self.data, self.max_thumbnails, self.seed = data, int(max_thumbnails), seed
        self.selected = np.zeros(0, dtype=int)
        self.shown = np.zeros(0, dtype=int)
        colour = colour or ("label" if "label" in data.colourings else next(iter(data.colourings)))
        self.menu = W.Dropdown(options=list(data.colourings), value=colour, description="colour by")
        self.info = W.HTML("Select points (lasso or box in the toolbar, or click one) to see their images.")
        self.info.add_class("wb-map-info")
        self.thumbs = W.Image(format="png", layout=W.Layout(max_width="520px", display="none"))
        self.thumbs.add_class("wb-map-thumbs")
        self.figure = go.FigureWidget(layout=dict(
            height=height, width=620, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10),
            title=dict(text=f"{data.title}: {len(data)} points ({data.method})", font=dict(size=13)),
            xaxis=dict(visible=False), yaxis=dict(visible=False), legend=dict(itemsizing="constant"),
            hovermode="closest"))
        self.figure.add_scattergl(x=data.xy[:, 0], y=data.xy[:, 1], mode="markers", name="points",
                                  showlegend=False, customdata=np.arange(len(data)),
                                  hovertemplate="point %{customdata}<extra></extra>",
                                  marker=dict(size=float(np.clip(2400 / max(len(data), 1) ** 0.75, 2, 8)),
                                              opacity=0.8))
        self.points = self.figure.data[0]
        self.points.on_selection(self._on_selection)
        self.points.on_click(self._on_selection)
        self.recolour(colour)
        self.menu.observe(lambda ch: self.recolour(ch["new"]), names="value")
        self.widget = W.VBox([W.HBox([self.menu, self.info]), W.HBox([self.figure, self.thumbs])])
        self.widget.add_class("wb-embedding-map")

    # ------------------------------------------------------------------ colours
    def recolour(self, name: str) -> None:
        values = self.data.colourings[name]
        with self.figure.batch_update():
            self.figure.data = self.figure.data[:1]
            if _is_continuous(values):
                v = np.asarray(values, dtype=float)
                self.points.marker.update(color=np.nan_to_num(v, nan=np.nanmin(v) if np.isfinite(v).any() else 0.0),
                                          colorscale="Viridis", showscale=True, cmin=None, cmax=None,
                                          colorbar=dict(title=dict(text=name), thickness=12))
            else:
                codes, cats = _categories(values)
                pal = _palette(len(cats))
                k = len(cats)
                scale = []
                for c in range(k):      # a stepped colour scale: code c ↦ its palette colour
                    scale += [[c / k, pal[c]], [(c + 1) / k, pal[c]]]
                self.points.marker.update(color=codes.astype(np.float32), colorscale=scale, cmin=-0.5,
                                          cmax=k - 0.5, showscale=False)
                for c, cat in enumerate(cats):     # legend entries only (no points)
                    self.figure.add_scattergl(x=[None], y=[None], mode="markers", name=str(cat)[:24],
                                              marker=dict(color=pal[c], size=8), hoverinfo="skip")
        self.colour = name

    # ------------------------------------------------------------------ selection
    def _on_selection(self, trace, points, selector=None) -> None:
        self.select(points.point_inds)

    def select(self, points) -> None:
        """Show the images of these points (indices into the map)."""
        pts = np.unique(np.asarray(points, dtype=int).reshape(-1))
        pts = pts[(pts >= 0) & (pts < len(self.data))]
        self.selected = pts
        if not len(pts):
            self.shown = pts
            self.info.value = "nothing selected"
            self.thumbs.layout.display = "none"
            return
        rng = np.random.default_rng(self.seed)
        shown = pts if len(pts) <= self.max_thumbnails else np.sort(rng.choice(pts, self.max_thumbnails, replace=False))
        self.shown = shown
        images, caps = self.data.thumbnails(shown)
        by = self.data.colourings.get("split")
        counts = ", ".join(f"{s} {n}" for s, n in zip(*np.unique(by[pts].astype(str), return_counts=True))) \
            if by is not None else ""
        self.info.value = (f"<b>{len(pts)} selected</b> ({counts}); showing "
                           f"{len(shown) if len(shown) < len(pts) else 'all'}"
                           f"{' (a random sample)' if len(shown) < len(pts) else ''}")
        self.thumbs.value = thumbnail_png(images, caps)
        self.thumbs.layout.display = ""

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


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


def show_map(data: MapData, colour: str = "", seed: int = 0):
    """The interactive map in JupyterLab; its static face (a matplotlib figure) when headless."""
    from .progress import headless
    if headless():
        return map_figure(data, tuple(c for c in (colour or "label", "split") if c in data.colourings))
    return EmbeddingMap(data, colour=colour, seed=seed)


# ------------------------------------------------------------------------------------ maps of a run
def _split_part(trained, split: str, feats: Features, raw, extra: dict | None = None) -> dict:
    names = trained.class_names
    y = trained.dataset().labels[split]
    pred = _decided(feats.probs, trained.task)
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
    from . import runload
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


def explore_map(run_dir="", method: str = "auto", seed: int = 0):
    """The explore notebook's map: a run's train/val/test embeddings (``run_dir`` empty: the latest run with
    predictions; "none": skip)."""
    from IPython.display import HTML
    if str(run_dir).lower() == "none":
        return HTML("<p>Embedding map skipped (predictions_run is 'none').</p>")
    if not run_dir:
        from .paths import runs_root
        root = runs_root()
        found = sorted((p for p in root.glob("*/") if (p / "predictions.npz").is_file()), reverse=True) \
            if root.is_dir() else []
        if not found:
            return HTML("<p>No trained run yet: run the pipeline (<code>make demo</code>) and re-run this cell.</p>")
        run_dir = found[0]
    return show_map(run_map(run_dir, method, seed), "label", seed)


def run_projection(trained, train: Features, val: Features, method: str = "auto", seed: int = 0) -> dict:
    """The 2-D map of a run's train and val embeddings, computed once per model and kept in the run's cache
    (RUN/cache/map-<key>.npz): every annotated pool is drawn on the same map instead of fitting UMAP again
    (its numba functions compile in every new process: 30-40 s; then the fit). Returns train_xy, val_xy, method."""
    from . import runs as _runs
    key = {"model": trained.model_hash, "train": split_id(trained, "train"), "val": split_id(trained, "val"),
           "method": method, "seed": int(seed), "layer": train.layer, "version": FEATURES_VERSION}
    path = _runs.run_cache_path(trained.path, "map", key).with_suffix(".npz")
    center = train.embeddings.mean(0)

    def compute():
        xy, used = project(_unit(np.concatenate([train.embeddings, val.embeddings]) - center), method, seed)
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


def annotate_map(fx: PoolFeatures, trained, pool, table, issues=None, params=None, pool_name: str = "pool",
                 method: str = "auto"):
    """The annotate report's map: train, val and the pool, coloured by label (pool: its known label, else
    "unknown"), prediction, confidence, split, audit flag (train) and OOD score."""
    from .inputs import conform
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
    spec = display_spec(trained)
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
    return show_map(data, "label", seed)


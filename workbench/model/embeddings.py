"""Embeddings of a trained run: extraction, and the write-once cache in the run.

* **Global embeddings** (``split_features``, ``pool_features``, ``embed_images``): the pooled penultimate
  layer, i.e. the output of the ``gap`` layer (GlobalAveragePooling2D) of the run's network. A model saved
  with test-time augmentation is unwrapped first (``models.backbone``), so an embedding is that of the image
  as given (one view, no TTA); a model without a ``gap`` layer gives the input of its last layer (averaged
  over space when it is a feature map). The same pass also returns the network's own probabilities for the
  image as given (one view), used to colour the map. Batched (one compiled shape, ``predict.pad_batch``) with
  a progress bar; pools are streamed (``pool.batches``), never all in memory.
* **Cache**: ``RUN/features/<source>-<key>.npz`` in the trained run (embeddings float16, the network's
  probabilities float32, ids for pools). ``key`` hashes the model file's md5 (``TrainedRun.model_hash``),
  the source's identity (a pool's ``pool_id`` and the input spec; for a split the dataset md5, the split,
  size, subset and input spec) and the layer: a changed model or pool gets a new key and so a new file.
  Files are write-once (a new file appears atomically and is never overwritten).

No Keras or JAX at import time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import WorkbenchError
from ..core.runs import write_npz_once

FEATURES_DIR = "features"
FEATURES_VERSION = 2        # 2: embeddings computed in fixed chunks of EMBED_CHUNK (bit-identical on any batching)
EMBED_LAYER = "gap"
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
    from ..core.progress import tqdm
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
    """Write-once (core.runs.write_npz_once): the file appears whole or not at all, never replaced."""
    arrays = {"embeddings": f.embeddings.astype(np.float16), "probs": f.probs.astype(np.float32),
              "key": np.array(f.key), "model_hash": np.array(model_hash), "source": np.array(f.source),
              "source_id": np.array(source_id), "layer": np.array(f.layer),
              "version": np.array(FEATURES_VERSION)}
    if f.ids is not None:
        arrays["ids"] = np.array(f.ids, dtype="U")
    return write_npz_once(path, arrays)


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

"""Explanations on JAX: Grad-CAM (``keras.ops`` + ``jax.grad``, no TensorFlow) and occlusion sensitivity.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps ``A`` of a convolutional layer by the
spatial mean of the gradient of the class *logit* with respect to them, keeps the positive part and
upsamples it to the image. Our models end in ``Dense(softmax)`` (or ``Dense(sigmoid)`` for multi-label
tasks), so the logit is recomputed from that layer's kernel and bias: the gradient of a softmax
probability would also depend on every other class. This is the only Grad-CAM in the package (the
evaluate galleries, the explore inspector and the review widget all call ``gradcam``).

The model is split at the chosen layer into two functional sub-models (image → ``A`` and ``A`` →
penultimate features); ``jax.grad`` differentiates the second one, run in inference mode (dropout
off, batch-norm moving statistics). Works for every model in ``workbench.models.MODELS`` and any
functional Keras model whose chosen layer's output feeds the rest of the graph alone.
"""

from __future__ import annotations

import jax
import keras
import numpy as np
from keras import ops

from ..core.errors import WorkbenchError
from .models import backbone
from .predict import pad_batch, predict

_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def _is_feature_map(layer) -> bool:
    shape = getattr(layer.output, "shape", None)
    return (shape is not None and len(shape) == 4 and not isinstance(layer, (keras.layers.InputLayer, *_POOLING))
            and not isinstance(layer, keras.layers.Rescaling))


def _split(model: keras.Model, layer: str):
    """(image → A, A → the last layer's input, last layer); ValueError when the rest of the graph does not
    depend on the image through this layer alone (e.g. inside a residual block)."""
    target = model.get_layer(layer).output
    last = model.layers[-1]
    head = keras.Model(target, last.input)
    features = keras.Model(model.inputs[0], target)
    return features, head, last


def _splittable(model: keras.Model, layer: str) -> bool:
    cache = model.__dict__.setdefault("_workbench_splittable", {})
    if layer not in cache:
        try:
            _split(model, layer)
            cache[layer] = True
        except ValueError:
            cache[layer] = False
    return cache[layer]


def feature_layers(model: keras.Model) -> list[str]:
    """Layers with a 4-D (N, H, W, C) output (pooling excluded) through which the whole image → output
    graph passes (so not inside a residual block): the Grad-CAM candidates, input to output."""
    return [layer.name for layer in model.layers if _is_feature_map(layer) and _splittable(model, layer.name)]


MIN_CAM_SIDE = 7


def default_layer(model: keras.Model) -> str:
    """The last convolutional feature map that is still at least 7×7 (``MIN_CAM_SIDE``).

    Grad-CAM's resolution is that of its layer. The usual choice, the very last feature map, is 4×4 in
    ResNet-18 on 28 px images (one cell per 7 pixels): too coarse to say which part of a cell the model
    used. On larger inputs the last map is ≥ 7×7 and this is the usual choice."""
    maps = [layer for layer in model.layers if _is_feature_map(layer)]
    fallback = None
    for layer in reversed(maps):
        if not _splittable(model, layer.name):
            continue
        fallback = fallback or layer.name
        if min(layer.output.shape[1:3]) >= MIN_CAM_SIDE:
            return layer.name
    if fallback is None:
        raise WorkbenchError(f"model {model.name!r} has no convolutional feature map (4-D layer output): "
                             "Grad-CAM needs one; use occlusion sensitivity instead")
    return fallback


def check_layer(model: keras.Model, layer: str = "") -> str:
    """The Grad-CAM layer to use (parameter 'cam_layer'; empty: ``default_layer``)."""
    model = backbone(model)
    if not layer:
        return default_layer(model)
    names = [n.name for n in model.layers]
    if layer not in names or not _is_feature_map(model.get_layer(layer)) or not _splittable(model, layer):
        valid = feature_layers(model)
        raise WorkbenchError(f"parameter 'cam_layer' = {layer!r} is not a feature map of model {model.name!r} "
                             f"that Grad-CAM can use; choose one of {', '.join(valid[-8:])} (or leave it empty)")
    return layer


def _logits_fn(head, last):
    # softmax (one class) and sigmoid (multi-label) heads: the class's logit is the Dense layer's output
    # before its activation
    is_logit_dense = (isinstance(last, keras.layers.Dense)
                      and getattr(last.activation, "__name__", "") in ("softmax", "sigmoid"))

    def logits(a):
        h = head(a, training=False)
        if is_logit_dense:
            return ops.matmul(h, last.kernel) + last.bias
        return ops.log(ops.clip(last(h, training=False), 1e-12, 1.0))  # log-probabilities otherwise
    return logits


def _cam_fn(model: keras.Model, layer: str, side: tuple[int, int]):
    """A jit-compiled (images, classes) → Grad-CAM function for one model and layer (cached on the model:
    compiling costs seconds, so every gallery reuses it, batches padded to one shape)."""
    cache = model.__dict__.setdefault("_workbench_cam_fns", {})
    key = (layer, side)
    if key not in cache:
        features, head, last = _split(model, layer)
        logits = _logits_fn(head, last)

        def cam_fn(x, cls):
            a = features(x, training=False)
            cls = ops.where(cls < 0, ops.cast(ops.argmax(logits(a), axis=-1), "int32"), cls)  # -1: predicted class

            def score(a_):  # each image's logit depends only on its own maps: the sum's gradient splits per image
                return ops.sum(ops.take_along_axis(logits(a_), ops.expand_dims(cls, -1), axis=-1))

            grads = jax.grad(score)(a)
            weights = ops.mean(grads, axis=(1, 2), keepdims=True)           # (B, 1, 1, C)
            cam = ops.relu(ops.sum(weights * a, axis=-1, keepdims=True))     # (B, h', w', 1)
            cam = ops.image.resize(cam, side, interpolation="bilinear")[..., 0]
            peak = ops.max(cam, axis=(1, 2), keepdims=True)
            return ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), 0.0)

        cache[key] = jax.jit(cam_fn)
    return cache[key]


def gradcam(model: keras.Model, images: np.ndarray, class_index=None, layer: str = "",
            batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heat maps (N, H, W) in [0, 1], one per image, for ``class_index`` (an int, one per image,
    or None: the predicted class). An all-zero map means no positive evidence for that class."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise WorkbenchError(f"gradcam needs a batch of images (N, H, W, C); got shape {images.shape}")
    # a model saved with test-time augmentation: explain its network on the image as given
    model = backbone(model)
    layer = check_layer(model, layer)
    n, h, w = images.shape[:3]
    classes = np.broadcast_to(np.asarray(-1 if class_index is None else class_index, dtype=np.int64), (n,))
    k = model.output_shape[-1]
    if class_index is not None and (classes.min(initial=0) < 0 or classes.max(initial=0) >= k):
        raise WorkbenchError(f"gradcam: class index out of range 0..{k - 1}")
    fn = _cam_fn(model, layer, (h, w))
    out = np.zeros((n, h, w), dtype=np.float32)
    for i in range(0, n, batch_size):
        x = pad_batch(images[i:i + batch_size].astype("float32"), batch_size)
        c = pad_batch(classes[i:i + batch_size], batch_size).astype("int32")
        out[i:i + batch_size] = np.asarray(fn(x, c))[:min(batch_size, n - i)]
    return out


def default_patch(image_side: int) -> int:
    """Occlusion patch side: about a seventh of the image (4 px at 28 px), at least 2."""
    return max(2, int(round(image_side / 7)))


def occlusion(model: keras.Model, images: np.ndarray, class_index=None, patch: int = 0, stride: int = 0,
              batch_size: int = 512) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus, 2014): the drop in the class probability when a square patch
    is replaced by the image's mean colour, averaged over the patches covering each pixel. (N, H, W);
    positive where hiding the pixels lowers the class's probability."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    patch = patch or default_patch(min(h, w))
    stride = stride or max(1, patch // 2)
    if not 1 <= patch <= min(h, w):
        raise WorkbenchError(f"occlusion patch {patch} must be between 1 and the image side {min(h, w)}")
    ys = list(range(0, h - patch + 1, stride))
    xs = list(range(0, w - patch + 1, stride))
    if ys[-1] != h - patch:
        ys.append(h - patch)
    if xs[-1] != w - patch:
        xs.append(w - patch)
    boxes = [(y0, x0) for y0 in ys for x0 in xs]
    cover = np.zeros((h, w))
    for y0, x0 in boxes:
        cover[y0:y0 + patch, x0:x0 + patch] += 1
    # per image one batch: the image itself, then every occluded copy (one shape, so one compilation)
    chunk = min(batch_size, len(boxes) + 1)
    out = np.zeros((n, h, w), dtype=np.float64)
    for j in range(n):
        variants = np.repeat(images[j][None].astype("float32"), len(boxes) + 1, axis=0)
        fill = images[j].reshape(-1, c).mean(0)
        for v, (y0, x0) in enumerate(boxes, start=1):
            variants[v, y0:y0 + patch, x0:x0 + patch] = fill
        probs = predict(model, variants, chunk, progress=False)
        cj = int(probs[0].argmax()) if class_index is None else int(np.broadcast_to(np.asarray(class_index), (n,))[j])
        drop = probs[0, cj] - probs[1:, cj]
        total = np.zeros((h, w))
        for v, (y0, x0) in enumerate(boxes):
            total[y0:y0 + patch, x0:x0 + patch] += drop[v]
        out[j] = total / np.maximum(cover, 1)
    return out.astype(np.float32)


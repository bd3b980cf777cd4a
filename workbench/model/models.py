"""Model registry: ``MODELS = {name: build_fn}``; every builder is
``build_*(input_shape, num_classes, **hp) -> keras.Model`` (functional API).

``conv_impl`` ("fast", the default, or "stock") picks the layers of the fast CPU training path
(workbench.layers); both give the same outputs and gradients and the same weights.

Models take raw pixel values (0-255, float) and rescale inside, so a saved ``model.keras`` is
self-contained; they output probabilities (float32): softmax over the classes, or one sigmoid per
label for multi-label tasks (``activation="sigmoid"``, workbench.tasks.activation).

Any square input from 8 to 1024 px: the stride schedule follows the input size (``stem_downsamples``)
so the last feature map stays about 4-8 px whatever the image size. At 28 px (and 64 px) the
networks are exactly those of earlier releases.
"""

from __future__ import annotations

import keras
from keras import layers

from . import layers as _fast
from ..core.errors import WorkbenchError

# PyTorch's BN momentum (0.1 ≙ Keras 0.9): Keras' default 0.99 leaves the moving statistics far from the
# batch statistics for the first epochs on small datasets, which made val accuracy swing (0.10 → 0.81 → 0.65
# over epochs 2–6 on BloodMNIST) and early stopping pick noise.
BN_MOMENTUM = 0.9


def _conv_cls(conv_impl: str):
    """Convolutions are Keras' own in both paths: the fast path changes the backend's convolution
    kernels (workbench.runtime.configure_backend), not the layer."""
    if conv_impl not in _fast.CONV_IMPLS:
        raise WorkbenchError(f"unknown conv_impl {conv_impl!r} (parameter 'conv_impl'); "
                             f"choose one of {', '.join(_fast.CONV_IMPLS)}")
    return layers.Conv2D


def _pool_cls(conv_impl: str):
    """2×2 max-pooling: workbench.layers.MaxPooling2D (cheap gradient) on the fast path, Keras' otherwise."""
    return _fast.MaxPooling2D if conv_impl == "fast" else layers.MaxPooling2D


def _conv_bn_relu(x, filters: int, stride: int = 1, name: str = "", conv_impl: str = "fast"):
    x = _conv_cls(conv_impl)(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _head(x, num_classes: int, dropout: float, activation: str = "softmax"):
    if activation not in ("softmax", "sigmoid"):
        raise WorkbenchError(f"unknown output activation {activation!r}: softmax (one class) or sigmoid (multi-label)")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation=activation, dtype="float32", name="probs")(x)


def stem_downsamples(size: int, limit: int = 64) -> int:
    """How many stride-2 steps to add before the network's own stages so that they run on at most
    ``limit`` px: 0 for the sizes the networks were designed for (≤ 64 px), one more per doubling beyond."""
    k = 0
    while size / (2 ** k) > limit:
        k += 1
    return k


def _check_input(input_shape) -> tuple:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] not in (1, 3) or not 8 <= shape[0] <= 1024:
        raise WorkbenchError(f"model input shape {shape}: expected square images of 8-1024 px with 1 or 3 channels")
    return shape


def build_cnn(input_shape, num_classes: int, width: int = 16, dropout: float = 0.3,
              conv_impl: str = "fast", activation: str = "softmax") -> keras.Model:
    """Compact VGG-style CNN: 3 stages of two 3x3 conv-BN-ReLU (width, 2w, 4w) with 2x2 max-pooling.

    Inputs above 64 px first pass ``stem_downsamples(size)`` stride-2 conv-BN-ReLU steps (width/2
    filters), so the three stages run on 48-64 px and end at 6-8 px (28 px: 3 px, as designed)."""
    input_shape = _check_input(input_shape)
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i in range(stem_downsamples(input_shape[0])):
        x = _conv_bn_relu(x, max(width // 2, 4), stride=2, name=f"down{i + 1}", conv_impl=conv_impl)
    for stage, mult in enumerate((1, 2, 4), start=1):
        x = _conv_bn_relu(x, width * mult, name=f"s{stage}a", conv_impl=conv_impl)
        x = _conv_bn_relu(x, width * mult, name=f"s{stage}b", conv_impl=conv_impl)
        x = _pool_cls(conv_impl)(name=f"s{stage}_pool")(x)
    return keras.Model(inputs, _head(x, num_classes, dropout, activation), name="cnn")


def _basic_block(x, filters: int, stride: int, name: str, conv_impl: str):
    conv = _conv_cls(conv_impl)
    shortcut = x
    y = _conv_bn_relu(x, filters, stride, name=f"{name}_1", conv_impl=conv_impl)
    y = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_2_bn")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = conv(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj_conv")(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnet18(input_shape, num_classes: int, width: int = 64, dropout: float = 0.0,
                   stem_stride: int | None = None, conv_impl: str = "fast", activation: str = "softmax") -> keras.Model:
    """ResNet-18 as in the MedMNIST baselines: 3x3 stem, no max-pool, blocks [2, 2, 2, 2].

    For inputs ≥ 64 px the stem uses stride 2 (``stem_stride=None`` picks it from the input size); from
    128 px on, ``stem_downsamples(size / 2)`` 2x2 max-pools follow the stem (ImageNet ResNet's
    stride-4 stem at 224 px), so the last stage stays 4-8 px (224 px: 7 px)."""
    input_shape = _check_input(input_shape)
    if stem_stride is None:
        stem_stride = 2 if input_shape[0] >= 64 else 1
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_bn_relu(x, width, stride=stem_stride, name="stem", conv_impl=conv_impl)
    for i in range(stem_downsamples(input_shape[0] // stem_stride)):
        x = _pool_cls(conv_impl)(name=f"stem_pool{i + 1}")(x)
    for stage, mult in enumerate((1, 2, 4, 8), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            x = _basic_block(x, width * mult, stride, name=f"layer{stage}_{block}", conv_impl=conv_impl)
    return keras.Model(inputs, _head(x, num_classes, dropout, activation), name="resnet18")


MODELS = {"cnn": build_cnn, "resnet18": build_resnet18}


def build(name: str, input_shape, num_classes: int, **hp) -> keras.Model:
    if name not in MODELS:
        raise WorkbenchError(f"unknown model {name!r} (parameter 'model'); choose one of {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), int(num_classes), **hp)


def load(path, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file with ``safe_mode`` on (no arbitrary code from the file)."""
    try:
        return keras.saving.load_model(str(path), compile=compile, safe_mode=True)
    except (OSError, ValueError, KeyError) as e:
        raise WorkbenchError(f"cannot load model {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                             "re-run the train stage") from None


def backbone(model: keras.Model) -> keras.Model:
    """The bare network inside a model saved with test-time augmentation (its ``tta`` wrapper layer),
    else the model itself: what Grad-CAM explains and what ``init_from`` copies weights from."""
    names = [layer.name for layer in model.layers]
    return model.get_layer("tta").backbone if "tta" in names else model

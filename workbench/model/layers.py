"""The fast CPU training path for Keras-on-JAX: one layer and two backend settings.

Profiling the train step on XLA:CPU (JAX 0.10, 2-core AMD EPYC, batch 128, 28×28×3) found three
costs that PyTorch does not pay; ``conv_impl="fast"`` (the default) removes all three, and
``conv_impl="stock"`` keeps plain Keras layers on the default backend for comparison:

1. **Max-pooling's gradient.** JAX differentiates ``reduce_window(max)`` through a variadic
   reduce-window carrying one int32 index tensor per window position (four full-size ``iota``
   arrays for a 2×2 pool); it was the largest single cost of the compact CNN's step.
   ``MaxPooling2D`` below has the same forward values and the same gradient (routed to the first
   maximum of each window, as ``lax`` does) as one compare-and-select: ``max_pool_2x2``.
2. **Convolutions on YNNPACK.** XLA:CPU hands convolutions to YNNPACK by default; its weight
   gradient ("backward filter") ran 1.3–1.8× slower than the forward conv of the same size, and its
   forward pass was slower than Eigen's on the small spatial sizes of ResNet's late stages. The
   fast path keeps YNNPACK for dots, element-wise ops and reductions but leaves convolutions to
   XLA's Eigen kernels (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=…`` without
   ``individual_convolution``). This is a process-wide setting that takes effect only if made
   before JAX's backend starts: ``workbench.runtime.configure_backend`` does it (or records that it came too late).
   A ``jax.custom_vjp`` conv whose weight gradient is ``kh·kw`` GEMMs over shifted input slices
   was tried too: faster than YNNPACK's backward filter on the 7×7/4×4 ResNet layers, slower than
   Eigen's everywhere and slower than stock on the compact CNN, so it is not used.
3. **Page faults.** XLA:CPU allocates each step's temporaries (≈160 MB for the reference CNN) in
   one block from a worker thread; glibc serves that with a fresh ``mmap`` every step (≈40 000
   minor page faults per step). ``ALLOCATOR_ENV`` (one glibc arena, no mmap for large blocks, no
   trimming) makes the block reusable; it must be in the environment when the process starts, so
   the stage runner puts it in the kernel's environment (``workbench.runtime.kernel_env``).

What remains of the gap to PyTorch is the convolution kernels themselves (``make bench`` times each
convolution of the benchmarked models alone in both frameworks); docs/results.md "Performance" lists what else
was tried.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras

from ..core.runtime import CONV_IMPLS  # noqa: F401  (the choice; backend settings live in workbench.runtime)


# ---------------------------------------------------------------------------------------------------
# 2×2 max-pooling with a cheap gradient

def _pool_windows(x):
    n, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x):
    """Valid 2×2/stride-2 max-pooling of NHWC ``x`` (an odd last row/column is dropped, as in Keras)."""
    return _pool_windows(x).max(axis=(2, 4))


def _max_pool_fwd(x):
    win = _pool_windows(x)
    return win.max(axis=(2, 4)), (x.shape, win)


def _max_pool_bwd(res, g):
    shape, win = res
    n, h2, _, w2, _, c = win.shape
    flat = win.transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c, 4)
    first = jax.nn.one_hot(jnp.argmax(flat, axis=-1), 4, dtype=g.dtype)  # ties: the first maximum, as lax
    dx = (first * g[..., None]).reshape(n, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * h2, 2 * w2, c)
    if dx.shape != shape:
        dx = jnp.pad(dx, ((0, 0), (0, shape[1] - dx.shape[1]), (0, shape[2] - dx.shape[2]), (0, 0)))
    return (dx,)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


@keras.saving.register_keras_serializable(package="workbench")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` whose 2×2/stride-2/valid/channels-last case uses ``max_pool_2x2``
    (same outputs, same gradient, far cheaper on CPU); any other setting uses the stock op. Same
    constructor and config as the stock layer; registered for ``.keras`` files loaded in safe_mode."""

    def _fast_ok(self) -> bool:
        return (keras.backend.backend() == "jax" and tuple(self.pool_size) == (2, 2)
                and tuple(self.strides) == (2, 2) and self.padding == "valid" and self.data_format == "channels_last")

    def call(self, inputs):
        if self._fast_ok():
            return max_pool_2x2(keras.ops.convert_to_tensor(inputs))
        return super().call(inputs)


# ---------------------------------------------------------------------------------------------------
# test-time augmentation inside the saved model

@keras.saving.register_keras_serializable(package="workbench")
class DihedralMean(keras.layers.Layer):
    """Mean of ``backbone``'s outputs over the 8 symmetries of the square (identity, flips, transpose and
    their compositions = all flips and quarter turns). Valid only for images without a canonical
    orientation (cells, tissue patches); the backbone is serialised inside the config, its weights
    with the layer, so a saved model stays one self-contained ``.keras`` file."""

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        ops = keras.ops
        outs = []
        for transpose in (False, True):
            x = ops.transpose(inputs, (0, 2, 1, 3)) if transpose else inputs
            for flip_h in (False, True):
                xh = ops.flip(x, axis=2) if flip_h else x
                for flip_v in (False, True):
                    outs.append(self.backbone(ops.flip(xh, axis=1) if flip_v else xh, training=training))
        return ops.mean(ops.stack(outs, axis=0), axis=0)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

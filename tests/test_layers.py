"""The fast CPU training path (workbench.layers): same values, same gradients, same files as stock Keras.

Seeded synthetic arrays only (shapes, ties, odd sizes); the real-data checks live in the pipeline tests."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend)
import jax
import jax.numpy as jnp
import keras
from jax import lax

from conftest import ROOT
from workbench import layers, models, runtime
from workbench.errors import WorkbenchError


def _ref_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 7, 5), (1, 3, 5, 2)])
def test_max_pool_forward_and_gradient_match_lax(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape).astype("float32"))
    np.testing.assert_array_equal(layers.max_pool_2x2(x), _ref_pool(x))
    w = jnp.asarray(rng.normal(size=_ref_pool(x).shape).astype("float32"))
    g_fast = jax.grad(lambda a: jnp.sum(layers.max_pool_2x2(a) * w))(x)
    g_ref = jax.grad(lambda a: jnp.sum(_ref_pool(a) * w))(x)
    np.testing.assert_array_equal(g_fast, g_ref)


def test_max_pool_gradient_with_ties_goes_to_the_first_maximum_like_lax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(0, 3, size=(2, 6, 6, 4)).astype("float32"))  # many ties per window
    g_fast = jax.grad(lambda a: jnp.sum(layers.max_pool_2x2(a) ** 2))(x)
    g_ref = jax.grad(lambda a: jnp.sum(_ref_pool(a) ** 2))(x)
    np.testing.assert_array_equal(g_fast, g_ref)
    assert float(jnp.sum(g_fast != 0)) <= x.size / 4  # one routed entry per window at most


def test_fast_and_stock_models_agree_on_outputs_and_gradients():
    """Same weights → same forward values and the same loss gradient for every weight (float tolerance)."""
    x = np.random.default_rng(2).uniform(0, 255, size=(6, 28, 28, 3)).astype("float32")
    y = np.array([0, 1, 2, 3, 4, 5])
    fast = models.build("cnn", (28, 28, 3), 8, width=4, dropout=0.0, conv_impl="fast")  # no random masks
    stock = models.build("cnn", (28, 28, 3), 8, width=4, dropout=0.0, conv_impl="stock")
    stock.set_weights(fast.get_weights())
    np.testing.assert_allclose(fast(x, training=False), stock(x, training=False), rtol=1e-5, atol=1e-6)
    assert [type(l).__name__ for l in fast.layers if "pool" in l.name] == ["MaxPooling2D"] * 3
    assert all(isinstance(l, layers.MaxPooling2D) for l in fast.layers if "pool" in l.name)
    assert not any(isinstance(l, layers.MaxPooling2D) for l in stock.layers)

    def grads(model):
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        def loss(tv):
            probs, _ = model.stateless_call(tv, ntv, x, training=True)
            return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        return jax.grad(loss)(tv)

    for gf, gs in zip(grads(fast), grads(stock)):
        np.testing.assert_allclose(gf, gs, rtol=1e-4, atol=1e-6)


def test_fast_model_keeps_keras_config_and_round_trips_in_safe_mode(tmp_path):
    pool = layers.MaxPooling2D(name="p")
    stock_cfg = keras.layers.MaxPooling2D(name="p").get_config()
    assert pool.get_config() == stock_cfg
    model = models.build("cnn", (28, 28, 3), 8, width=4, conv_impl="fast")
    x = np.random.default_rng(3).uniform(0, 255, size=(4, 28, 28, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    back = models.load(tmp_path / "m.keras")  # safe_mode=True
    assert isinstance(back.get_layer("s1_pool"), layers.MaxPooling2D)
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_unknown_conv_impl_is_a_clear_error():
    with pytest.raises(WorkbenchError, match="conv_impl"):
        models.build("cnn", (28, 28, 3), 8, conv_impl="turbo")
    with pytest.raises(WorkbenchError, match="conv_impl"):
        runtime.configure_backend("turbo")


def test_dihedral_mean_is_the_mean_over_the_8_symmetries_and_round_trips(tmp_path):
    backbone = models.build("cnn", (28, 28, 3), 8, width=4)
    from workbench.train import with_tta
    tta = with_tta(backbone)
    x = np.random.default_rng(4).uniform(0, 255, size=(3, 28, 28, 3)).astype("float32")
    views = [v for t in (x, x.transpose(0, 2, 1, 3)) for h in (t, t[:, :, ::-1]) for v in (h, h[:, ::-1])]
    expected = np.mean([backbone.predict(np.ascontiguousarray(v), verbose=0) for v in views], axis=0)
    got = tta.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tta.predict(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))), verbose=0), got,
                               rtol=1e-4, atol=1e-6)  # invariant to a quarter turn
    tta.save(tmp_path / "tta.keras")
    np.testing.assert_allclose(models.load(tmp_path / "tta.keras").predict(x, verbose=0), got, atol=1e-6)


def test_kernel_env_respects_the_users_settings(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    env = runtime.kernel_env("fast")
    assert env["MALLOC_ARENA_MAX"] == "1" and env["MALLOC_MMAP_MAX_"] == "0"
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {runtime.YNN_FLAG}"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    env = runtime.kernel_env("fast")
    assert "MALLOC_ARENA_MAX" not in env and "XLA_FLAGS" not in env  # the user's own values stay
    assert runtime.kernel_env("stock") == {}


_BACKEND_CHILD = r"""
import json, sys
import numpy as np
from workbench import runtime
info = runtime.configure_backend(sys.argv[1])
import jax, jax.numpy as jnp
from jax import lax
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 7, 7, 3)).astype("float32"); w = rng.normal(size=(3, 3, 3, 4)).astype("float32")
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
y = conv(x, w); gx, gw = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))(x, w)
hlo = jax.jit(conv).lower(x, w).compile().as_text()
late = runtime.configure_backend("fast")["backend_settings_applied"]
np.savez(sys.argv[2], y=y, gx=gx, gw=gw)
print(json.dumps({**info, "ynn_conv": "ynn" in hlo, "late_applied": late}))
"""


def _numpy_conv_same(x, w):
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd], w[i, j]) for i in range(3) for j in range(3))


def test_fast_backend_settings_keep_convolution_values_and_gradients(tmp_path):
    """In a fresh process: the fast setting takes convolutions off YNNPACK, and conv outputs and gradients
    still equal a NumPy reference (dW = Σ shifted xᵀ·dY, dX = conv of dY with the flipped kernel)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = {}
    for impl in ("fast", "stock"):
        proc = subprocess.run([sys.executable, "-c", _BACKEND_CHILD, impl, str(tmp_path / f"{impl}.npz")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fast"]["backend_settings_applied"] and runtime.YNN_FLAG in out["fast"]["xla_flags"]
    assert not out["fast"]["ynn_conv"]
    assert out["stock"]["xla_flags"] == "" and out["stock"]["late_applied"] is False  # too late once started
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    w = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    y = _numpy_conv_same(x.astype("float64"), w.astype("float64"))
    g = 2 * y
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    xp = np.pad(x.astype("float64"), ((0, 0), (1, 1), (1, 1), (0, 0)))
    gw = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + 7, j:j + 7], g) for j in range(3)])
                   for i in range(3)])
    gx = sum(np.einsum("nhwo,co->nhwc", gp[:, 2 - i:9 - i, 2 - j:9 - j], w[i, j]) for i in range(3) for j in range(3))
    for impl in ("fast", "stock"):
        with np.load(tmp_path / f"{impl}.npz") as z:
            for name, ref in (("y", y), ("gx", gx), ("gw", gw)):
                np.testing.assert_allclose(z[name], ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max(), err_msg=(impl, name))

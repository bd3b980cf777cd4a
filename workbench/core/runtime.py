"""Process-wide runtime settings, in one place: the Keras backend (JAX) and the XLA/allocator settings
of the fast CPU training path (see workbench.layers for why they help).

Nothing here imports Keras or JAX at module import: ``select_backend`` must run before Keras is
imported anywhere (``import workbench`` calls it), and the XLA flags must be set before JAX's backend
starts (``configure_backend`` does it, or records that it came too late).
"""

from __future__ import annotations

import os
import sys

from .errors import WorkbenchError


def select_backend() -> None:
    """Select the JAX backend for Keras; refuse a process where Keras already runs on another one."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    if os.environ["KERAS_BACKEND"] != "jax":
        raise ImportError(
            f"workbench needs Keras on the JAX backend but KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}; "
            "unset it or set KERAS_BACKEND=jax and restart the kernel"
        )
    if "keras" in sys.modules:
        kb = sys.modules["keras"].backend.backend()
        if kb != "jax":
            raise ImportError(
                f"keras was imported with the {kb!r} backend before workbench; "
                "restart the kernel and import workbench first (or set KERAS_BACKEND=jax)"
            )


# "fast": workbench.layers' pooling + Eigen convolutions (+ the allocator env where a kernel is started);
# "stock": plain Keras layers on the backend's defaults
CONV_IMPLS = ("fast", "stock")

# every YNNPACK fusion type XLA:CPU offers except individual convolutions
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,dot,eltwise,reduce"

ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def _backend_started() -> bool:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())


def configure_backend(conv_impl: str) -> dict:
    """Apply the backend side of ``conv_impl`` (before JAX starts) and say what is in effect.

    Returns a dict for provenance: the choice, the XLA flags and allocator settings in effect, and
    ``applied`` (False when the backend had already started with other settings: the layers still
    follow ``conv_impl``, the backend keeps what it started with)."""
    if conv_impl not in CONV_IMPLS:
        raise WorkbenchError(f"parameter 'conv_impl' = {conv_impl!r} is not one of {', '.join(CONV_IMPLS)}")
    flags = os.environ.get("XLA_FLAGS", "")
    user_set = "xla_cpu_experimental_ynn_fusion_type" in flags
    applied = True
    if conv_impl == "fast" and not user_set:
        if _backend_started():
            applied = False
        else:
            os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    elif conv_impl == "stock" and YNN_FLAG in flags:
        applied = False  # a fast-configured process cannot go back to the stock backend
    return {
        "conv_impl": conv_impl, "backend_settings_applied": applied,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "allocator_env": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
    }


def kernel_env(conv_impl: str = "fast") -> dict[str, str]:
    """Environment for a process (a notebook kernel) that will train with ``conv_impl``; values the
    user already set win."""
    if conv_impl != "fast":
        return {}
    env = dict(ALLOCATOR_ENV)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        env["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return {k: v for k, v in env.items() if k == "XLA_FLAGS" or k not in os.environ}


# the notebook kernel this process is, when workbench.execute.StageKernel runs several stages of a run in it:
# the stages it ran before the current one (recorded in each stage's provenance)
KERNEL: dict = {"earlier_stages": []}

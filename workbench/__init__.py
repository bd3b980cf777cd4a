"""workbench: train -> evaluate -> annotate medical image classifiers, Keras 3 on JAX.

Importing the package selects the JAX backend for Keras before Keras is imported anywhere else
(also in a plain ``jupyter lab`` kernel). If Keras was already imported with another backend the
import fails with a clear message instead of silently running on the wrong backend.
"""

import os as _os
import sys as _sys

_os.environ.setdefault("KERAS_BACKEND", "jax")

if _os.environ["KERAS_BACKEND"] != "jax":
    raise ImportError(
        f"workbench needs Keras on the JAX backend but KERAS_BACKEND={_os.environ['KERAS_BACKEND']!r}; "
        "unset it or set KERAS_BACKEND=jax and restart the kernel"
    )
if "keras" in _sys.modules:
    _kb = _sys.modules["keras"].backend.backend()
    if _kb != "jax":
        raise ImportError(
            f"keras was imported with the {_kb!r} backend before workbench; "
            "restart the kernel and import workbench first (or set KERAS_BACKEND=jax)"
        )

__version__ = "0.1.0"

from .errors import WorkbenchError  # noqa: E402

_SUBMODULES = ("active", "annotate", "audit", "augment", "calibration", "cards", "data", "deid", "dicom", "evaluate", "execute", "explain",
               "explore", "fetch", "imagefolder", "ingest", "metrics", "models", "params", "paths", "preprocess",
               "progress", "report", "review", "runs", "train", "viz", "widgets")
__all__ = ["WorkbenchError", "__version__", *_SUBMODULES]


def __getattr__(name):
    # submodules load on first use (``wb.viz``) so ``import workbench`` stays cheap
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

"""workbench: train -> evaluate -> annotate medical image classifiers, Keras 3 on JAX.

Importing the package selects the JAX backend for Keras before Keras is imported anywhere else
(also in a plain ``jupyter lab`` kernel). If Keras was already imported with another backend the
import fails with a clear message instead of silently running on the wrong backend.
"""

from .runtime import select_backend as _select_backend

_select_backend()

__version__ = "0.1.0"

from .errors import WorkbenchError  # noqa: E402

_SUBMODULES = ("active", "annotate", "audit", "augment", "calibration", "cards", "data", "deid", "dicom", "evaluate", "execute", "explain",
               "explore", "fetch", "imagefolder", "ingest", "metrics", "models", "params", "paths", "preprocess",
               "progress", "report", "review", "runs", "train", "viz", "widgets", "inputs", "runtime", "features", "pools",
               "predict", "runload", "shift", "tasks", "cells", "notebooks", "sweep", "cache", "mosaic", "layers")
__all__ = ["WorkbenchError", "__version__", *_SUBMODULES]


def __getattr__(name):
    # submodules load on first use (``wb.viz``) so ``import workbench`` stays cheap
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")

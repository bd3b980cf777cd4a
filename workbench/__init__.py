"""workbench: train -> evaluate -> annotate medical image classifiers, Keras 3 on JAX.

Importing the package selects the JAX backend for Keras before Keras is imported anywhere else
(also in a plain ``jupyter lab`` kernel). If Keras was already imported with another backend the
import fails with a clear message instead of silently running on the wrong backend.

The package is layered; a module imports only from its own layer and the ones before it
(``tests/test_architecture.py`` enforces it):

=========  ==========================================================================================
core       errors, paths, runtime, progress, walk, tasks, params, cells, runs, viz
data       cards, loaders, dicom, deid, imagefolder, ingest, fetch, pools, inputs, preprocess, augment,
           corrupt, mosaic, unlabelled, review
stats      metrics, calibration, shift, certify (numbers only: numpy, scipy, scikit-learn)
model      layers, models, predict, explain, runload, embeddings, neighbours, audit, active, adapt,
           robustness
stages     explore, pretrain, train, evaluate, annotate, semisup, agreement, report
ui         widgets, maps
run        execute, cache, sweep, notebooks, cli
=========  ==========================================================================================

The flat names that notebooks, users and earlier versions import stay valid: ``from workbench import
annotate`` is ``workbench.stages.annotate`` itself (the same module object, not a copy), and
``workbench.data`` (the layer) re-exports the dataset loaders that ``workbench.data`` always held.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from .core.runtime import select_backend as _select_backend

_select_backend()

__version__ = "0.1.0"

from .core.errors import WorkbenchError  # noqa: E402

LAYERS = ("core", "data", "stats", "model", "stages", "ui", "run")
# flat name -> its place in the layers (``workbench.data`` is the data layer itself, see its __init__)
MOVED = {
    "errors": "core.errors", "paths": "core.paths", "runtime": "core.runtime", "progress": "core.progress",
    "walk": "core.walk", "tasks": "core.tasks", "params": "core.params", "cells": "core.cells", "runs": "core.runs",
    "viz": "core.viz",
    "cards": "data.cards", "dicom": "data.dicom", "deid": "data.deid",
    "imagefolder": "data.imagefolder", "ingest": "data.ingest", "inputs": "data.inputs",
    "preprocess": "data.preprocess", "augment": "data.augment", "corrupt": "data.corrupt", "fetch": "data.fetch",
    "mosaic": "data.mosaic", "pools": "data.pools", "unlabelled": "data.unlabelled", "review": "data.review",
    "metrics": "stats.metrics", "calibration": "stats.calibration", "shift": "stats.shift",
    "certify": "stats.certify",
    "layers": "model.layers", "models": "model.models", "predict": "model.predict", "explain": "model.explain",
    "runload": "model.runload", "active": "model.active", "adapt": "model.adapt", "robustness": "model.robustness",
    "audit": "model.audit", "embeddings": "model.embeddings", "neighbours": "model.neighbours",
    "train": "stages.train", "evaluate": "stages.evaluate", "annotate": "stages.annotate",
    "explore": "stages.explore", "pretrain": "stages.pretrain", "semisup": "stages.semisup",
    "agreement": "stages.agreement", "report": "stages.report",
    "widgets": "ui.widgets", "maps": "ui.maps",
    "execute": "run.execute", "cache": "run.cache", "sweep": "run.sweep", "cli": "run.cli",
    "notebooks": "run.notebooks",
}


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import workbench.annotate`` gives ``workbench.stages.annotate`` (the module object itself)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, name = fullname.rpartition(".")
        if head == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__     # the import system sets __spec__ to this alias's spec ...
        return module

    def exec_module(self, module):
        # ... so it gets its own back (its __package__ and relative imports must agree); the module ran when
        # create_module imported it
        alias = module.__spec__
        if alias.loader is self and alias.loader_state is not None:
            module.__spec__ = alias.loader_state


if not any(isinstance(f, _FlatNames) for f in sys.meta_path):
    sys.meta_path.append(_FlatNames())

__all__ = ["WorkbenchError", "__version__", *LAYERS, *MOVED]   # not the deprecated features


def __getattr__(name):
    # modules load on first use (``wb.viz``) so ``import workbench`` stays cheap
    if name in MOVED or name in LAYERS or name == "features":
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

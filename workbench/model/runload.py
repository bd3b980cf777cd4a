"""One reload of a trained run: everything a later stage, the review, the explore notebook or a widget
needs, read back from the run directory in one place.

``load(run_dir)`` → ``TrainedRun`` with the validated train parameters, the input contract
(``input.json``, workbench.inputs), the task and class names, and lazily the model (Keras safe_mode),
the temperature(s) fitted by the evaluate stage and the training data (same file md5 as at training
time, same subset, through the same input path). ``TrainedRun.prepare(raw_images)`` is the input path
for images from anywhere else (pools, the review, explore).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import inputs as _inputs
from ..core import runs as _runs
from ..core.errors import WorkbenchError
from ..core.params import TrainParams, make


@dataclass
class TrainedRun:
    path: Path
    params: TrainParams
    input: _inputs.InputSpec
    task: str
    class_names: list[str]
    data_md5: str | None = None
    _model: object = field(default=None, repr=False)
    _dataset: object = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------- the model
    @property
    def model(self):
        """The trained model (``model.keras``, loaded once, Keras safe_mode)."""
        if self._model is None:
            from .models import load
            self._model = load(self.path / "model.keras")
        return self._model

    @property
    def model_hash(self) -> str:
        from ..data.loaders import file_md5
        return file_md5(self.path / "model.keras")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def temperature(self):
        """The temperature fitted on val by the evaluate stage (a float; a list per label for multi-label
        tasks), or None when the run has not been evaluated."""
        from ..stats.calibration import load_temperature
        return load_temperature(self.path)

    # ------------------------------------------------------------------------------------- the data
    def prepare(self, images, where: str = "images") -> np.ndarray:
        """Raw images (any size, 1 or 3 channels) → what this run's model takes (workbench.inputs.prepare)."""
        return _inputs.prepare(images, self.input, where)

    def dataset(self, raw: bool = False):
        """The data the model was trained on: same file (md5 checked), same subset; through the input path
        unless ``raw``."""
        from ..data.loaders import load_dataset
        tp = self.params
        ds = load_dataset(tp.dataset, size=tp.size, max_per_split=tp.max_per_split, seed=tp.seed)
        if tp.label_fraction < 1.0:   # a label budget: the train split is the labelled subset the model saw
            from ..data.unlabelled import label_subset
            ds = label_subset(ds, tp.label_fraction, tp.seed)
        if self.data_md5 and ds.md5 != self.data_md5:
            raise WorkbenchError(
                f"dataset {ds.path} has md5 {ds.md5} but the model in {self.path} was trained on md5 {self.data_md5}: "
                "restore the original file or train a new run")
        if raw:
            return ds
        if self._dataset is None:
            self._dataset = _inputs.prepare_dataset(ds, self.input)
        return self._dataset

    def describe(self) -> dict:
        return {"run_dir": str(self.path), "task": self.task, "classes": len(self.class_names),
                "input": self.input.describe(), "model": self.params.model, "dataset": self.params.dataset}


def load(run_dir) -> TrainedRun:
    """Read a trained run back (one clear line when it is not one)."""
    run_dir = Path(run_dir).expanduser().resolve()
    _runs.require(run_dir, _runs.TRAIN_ARTIFACTS, "train")
    tp = make("train", json.loads((run_dir / "params" / "train.json").read_text()))
    prov = json.loads((run_dir / "provenance.json").read_text()) if (run_dir / "provenance.json").is_file() else {}
    data = prov.get("train", {}).get("data", {})
    spec = _inputs.load(run_dir)
    task, names = data.get("task"), data.get("class_names")
    if not task or not names:
        # runs from before the provenance recorded them: the dataset itself says (loaded once here)
        from ..data.loaders import load_dataset
        ds = load_dataset(tp.dataset, size=tp.size, max_per_split=tp.max_per_split, seed=tp.seed)
        task, names = ds.task, list(ds.class_names)
    return TrainedRun(path=run_dir, params=tp, input=spec, task=task, class_names=list(names),
                      data_md5=data.get("md5"))


def from_stage(run: "_runs.Run") -> TrainedRun:
    """The trained run a stage's directory belongs to (the run itself, or the run an annotate pool
    directory sits in)."""
    return load(_runs.trained_run_dir(run.path))

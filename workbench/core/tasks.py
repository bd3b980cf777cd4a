"""Task types (the data card's ``task``) and what depends on them: the model's head and loss, how a
prediction is decided, and how results are reported. One place, so no stage guesses.

* ``binary-class``: two classes, softmax over both; reported at threshold 0.5 on class 1 plus an
  operating point at a target sensitivity (evaluate).
* ``multi-class``: any number of classes ≥ 2; softmax; arg-max.
* ``ordinal-regression``: graded classes 0..K-1 (e.g. RetinaMNIST's diabetic-retinopathy grades);
  trained and reported by the MedMNIST protocol as multi-class, plus mean absolute error and
  quadratic-weighted kappa of the predicted grade.
* ``multi-label, binary-class``: L independent yes/no labels per image (ChestMNIST layout, labels
  (N, L) in {0, 1}); sigmoid outputs and binary cross-entropy; a label is present at p > 0.5.

Pure Python/numpy: no Keras import.
"""

from __future__ import annotations

import numpy as np

from .errors import WorkbenchError

BINARY, MULTICLASS, ORDINAL, MULTILABEL = "binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"
TASKS = (MULTICLASS, BINARY, MULTILABEL, ORDINAL)


def check(task: str) -> str:
    if task not in TASKS:
        raise WorkbenchError(f"unknown task {task!r}; a data card's task is one of {', '.join(TASKS)}")
    return task


def is_multilabel(task: str) -> bool:
    return check(task) == MULTILABEL


def activation(task: str) -> str:
    """The output layer's activation: independent sigmoids for multi-label, softmax otherwise."""
    return "sigmoid" if is_multilabel(task) else "softmax"


def loss(task: str) -> str:
    return "binary_crossentropy" if is_multilabel(task) else "sparse_categorical_crossentropy"


def accuracy_metric(task: str):
    """The Keras training metric named ``acc`` (history.csv and the training curves read that name)."""
    import keras
    if is_multilabel(task):
        return keras.metrics.BinaryAccuracy(name="acc", threshold=0.5)
    return keras.metrics.SparseCategoricalAccuracy(name="acc")


def decide(probs: np.ndarray, task: str) -> np.ndarray:
    """The prediction: (N, L) 0/1 at p > 0.5 for multi-label; else the class index (arg-max; binary at
    p(class 1) > 0.5, the MedMNIST protocol)."""
    probs = np.asarray(probs)
    if is_multilabel(task):
        return (probs > 0.5).astype(np.int64)
    if task == BINARY:
        return (probs[:, -1] > 0.5).astype(np.int64)
    return probs.argmax(1)


def confidence(probs: np.ndarray, task: str) -> np.ndarray:
    """Confidence of each decision: top-1 probability, or per label max(p, 1 - p) for multi-label (N, L)."""
    probs = np.asarray(probs, dtype=np.float64)
    if is_multilabel(task):
        return np.maximum(probs, 1.0 - probs)
    if task == BINARY:
        return np.maximum(probs[:, -1], 1.0 - probs[:, -1])
    return probs.max(1)


def label_names(pred_row, class_names: list[str], task: str) -> str:
    """Human-readable prediction of one item: a class name, or the present labels joined by '; '."""
    if is_multilabel(task):
        present = [class_names[i] for i in np.flatnonzero(np.asarray(pred_row))]
        return "; ".join(present) if present else "(none)"
    return class_names[int(pred_row)]


def describe(task: str, n: int) -> str:
    what = {BINARY: "binary classification", MULTICLASS: f"multi-class classification ({n} classes)",
            ORDINAL: f"ordinal regression ({n} grades, reported as multi-class + MAE and quadratic-weighted kappa)",
            MULTILABEL: f"multi-label classification ({n} labels, each present or absent)"}
    return what[check(task)]

"""workbench.tasks directly: the one place that says what each task type means."""

import numpy as np
import pytest

from workbench import tasks
from workbench.errors import WorkbenchError


def test_task_names_and_heads():
    assert set(tasks.TASKS) == {"binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"}
    assert tasks.activation(tasks.MULTILABEL) == "sigmoid" and tasks.loss(tasks.MULTILABEL) == "binary_crossentropy"
    for t in (tasks.BINARY, tasks.MULTICLASS, tasks.ORDINAL):
        assert tasks.activation(t) == "softmax" and tasks.loss(t) == "sparse_categorical_crossentropy"
        assert not tasks.is_multilabel(t)
    with pytest.raises(WorkbenchError, match="unknown task 'regression'"):
        tasks.check("regression")


def test_decide_and_confidence_per_task():
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert tasks.decide(p, tasks.MULTICLASS).tolist() == [1, 0] == tasks.decide(p, tasks.ORDINAL).tolist()
    assert np.allclose(tasks.confidence(p, tasks.MULTICLASS), [0.5, 0.6])
    b = np.array([[0.45, 0.55], [0.8, 0.2]])
    assert tasks.decide(b, tasks.BINARY).tolist() == [1, 0]                # p(class 1) > 0.5
    assert np.allclose(tasks.confidence(b, tasks.BINARY), [0.55, 0.8])
    m = np.array([[0.9, 0.1, 0.5], [0.2, 0.7, 0.51]])
    assert tasks.decide(m, tasks.MULTILABEL).tolist() == [[1, 0, 0], [0, 1, 1]]  # present at p > 0.5 exactly
    assert np.allclose(tasks.confidence(m, tasks.MULTILABEL), [[0.9, 0.9, 0.5], [0.8, 0.7, 0.51]])


def test_label_names_and_descriptions():
    names = ["effusion", "mass", "nodule"]
    assert tasks.label_names([1, 0, 1], names, tasks.MULTILABEL) == "effusion; nodule"
    assert tasks.label_names([0, 0, 0], names, tasks.MULTILABEL) == "(none)"
    assert tasks.label_names(2, names, tasks.MULTICLASS) == "nodule"
    assert "5 grades" in tasks.describe(tasks.ORDINAL, 5) and "14 labels" in tasks.describe(tasks.MULTILABEL, 14)
    assert tasks.describe(tasks.BINARY, 2) == "binary classification"


def test_training_metric_is_named_acc_for_every_task():
    import workbench  # noqa: F401
    for t in tasks.TASKS:
        assert tasks.accuracy_metric(t).name == "acc"

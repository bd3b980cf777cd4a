"""The evaluate stage in-process (no notebook): TTA, seed ensembles, binary operating points, parameter errors.

Run directories are made the way the train stage leaves them (model.keras, params/train.json, the data
md5 in provenance.json, augment.yaml), with tiny untrained models on the real fixture images: this checks
the stage's mechanics and bookkeeping, not accuracy.
"""

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import workbench  # noqa: F401,I001  (JAX backend before keras)
import keras  # noqa: E402
from conftest import TINY
from workbench import augment, calibration, data, evaluate, models
from workbench.data import CustomDatasetWarning
from workbench.errors import WorkbenchError
from workbench.params import make, to_dict
from workbench.runs import Run


def make_run(root, name, seed, dataset=TINY, augment_preset="microscopy", max_per_split=0):
    d = root / name
    (d / "params").mkdir(parents=True)
    tp = make("train", {"run_dir": str(d), "dataset": str(dataset), "width": 4, "epochs": 1, "seed": seed,
                        "augment": augment_preset, "max_per_split": max_per_split})
    (d / "params" / "train.json").write_text(json.dumps(to_dict(tp)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CustomDatasetWarning)
        ds = data.load_dataset(str(dataset), max_per_split=max_per_split, seed=seed)
    keras.utils.set_random_seed(seed)
    models.build("cnn", ds.input_shape, ds.num_classes, width=4).save(d / "model.keras")
    (d / "provenance.json").write_text(json.dumps({"train": {"data": ds.describe()}}))
    augment.save(augment.build(augment_preset, seed), augment_preset, seed, d / "augment.yaml")
    return d


def params(run_dir, **kw):
    return make("evaluate", {"run_dir": str(run_dir), "n_resamples": 100, "gallery_size": 4, **kw})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_run(root, "a", 0), make_run(root, "b", 1)


def test_tta_and_ensemble(two_runs):
    a, b = two_runs
    out = evaluate.run(params(a, tta_passes=2, ensemble=str(b)))
    m = json.loads((a / "metrics.json").read_text())
    assert out["test"]["acc"] == m["test"]["acc"]
    with np.load(a / "predictions.npz") as z:
        p = {k: z[k] for k in z.files}
    y = p["test_labels"]
    # the ensemble is the mean of this model's and the member's test probabilities
    member = models.load(b / "model.keras").predict(data.load_dataset(str(TINY)).images["test"].astype("float32"),
                                                    verbose=0)
    np.testing.assert_allclose(p["test_probs_ensemble"], (p["test_probs"] + member) / 2, atol=1e-5)
    ens = m["variants"]["ensemble"]
    assert ens["members"] == [str(a), str(b)]
    assert ens["acc"] == pytest.approx(accuracy_score(y, p["test_probs_ensemble"].argmax(1)))
    assert ens["acc_gain"] == pytest.approx(ens["acc"] - m["test"]["acc"])
    lo, hi = ens["acc_gain_ci95"]
    assert lo <= ens["acc_gain"] <= hi
    tta = m["variants"]["tta"]
    assert tta["passes"] == 2 and p["test_probs_tta"].shape == p["test_probs"].shape
    assert not np.allclose(p["test_probs_tta"], p["test_probs"])  # augmented copies changed the average
    assert tta["acc"] == pytest.approx(accuracy_score(y, p["test_probs_tta"].argmax(1)))
    # calibration saved with the model, used for the calibrated test probabilities
    t = calibration.load_temperature(a)
    assert t == pytest.approx(m["test"]["temperature"])
    np.testing.assert_allclose(p["test_probs_calibrated"], calibration.apply_temperature(p["test_probs"], t))
    card = (a / "model_card.md").read_text()
    assert "test-time augmentation (2 passes)" in card and "ensemble of 2 runs" in card
    assert json.loads((a / "provenance.json").read_text())["evaluate"]["ensemble"] == [str(b)]


def test_binary_task_gets_an_operating_point(tmp_path):
    """A derived binary task on the fixture's real images (platelet vs the rest; a custom dataset)."""
    with np.load(TINY) as z:
        arrays = {k: (z[k] == 7).astype(np.uint8) if k.endswith("labels") else z[k] for k in z.files}
    npz = tmp_path / "platelet_vs_rest.npz"
    np.savez(npz, **arrays)
    d = make_run(tmp_path, "bin", 0, dataset=npz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CustomDatasetWarning)
        evaluate.run(params(d, target_sensitivity=0.9))
    m = json.loads((d / "metrics.json").read_text())
    op = m["operating_point"]
    assert m["task"] == "binary-class" and op["target_sensitivity"] == 0.9
    with np.load(d / "predictions.npz") as z:
        sv, yv, st, yt = z["val_probs"][:, 1], z["val_labels"], z["test_probs"][:, 1], z["test_labels"]
    assert np.mean(sv[yv == 1] >= op["threshold"]) >= 0.9
    assert op["test"]["sensitivity"] == pytest.approx(np.mean(st[yt == 1] >= op["threshold"]))
    assert "Operating point (binary)" in (d / "model_card.md").read_text()
    # the report's table and ROC figure show the chosen point
    table = evaluate.operating_points(m)
    assert table.loc["threshold (chosen on val)", "value"] == f"{op['threshold']:.4f}"
    preds = evaluate.load_predictions(Run(path=d, stage="evaluate"))
    fig = evaluate.roc_figure(SimpleNamespace(class_names=m["class_names"]), preds, m)
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().texts)
    assert f"threshold {op['threshold']:.4f}" in legend and "target sensitivity 0.9" in legend


def _nothing_written(d):
    return not (d / "params" / "evaluate.json").exists() and not (d / "metrics.json").exists()


def test_parameter_errors_before_anything_is_written(tmp_path, two_runs):
    a = make_run(tmp_path, "fresh", 0)
    none = make_run(tmp_path, "noaug", 2, augment_preset="none")
    other = make_run(tmp_path, "other", 3, max_per_split=50)
    cases = [
        (params(a, ensemble=str(tmp_path / "missing")), "does not exist"),
        (params(a, ensemble=str(a)), "lists the evaluated run"),
        (params(a, ensemble=f"{two_runs[1]}, {two_runs[1]}"), "twice"),
        (params(a, ensemble=str(tmp_path)), "holds no trained model"),
        (params(a, cam_layer="s9_relu"), "parameter 'cam_layer'"),
        (params(none, tta_passes=2), "changes nothing"),
    ]
    for p, msg in cases:
        with pytest.raises(WorkbenchError, match=msg):
            evaluate.open_stage(p)
        assert _nothing_written(a) and _nothing_written(none)
    # a member trained on another subset is found once its data is loaded
    with pytest.raises(WorkbenchError, match="trained on other data"):
        evaluate.run(params(a, ensemble=str(other)))


def test_parameter_ranges():
    for k, v in (("n_resamples", 10), ("tta_passes", -1), ("target_sensitivity", 0.2), ("gallery_size", 0)):
        with pytest.raises(WorkbenchError, match=f"parameter '{k}'"):
            make("evaluate", {k: v})

"""Every task type end to end on tiny real subsets: multi-label (2x2 mosaics of real BloodMNIST cells, labels
exact by construction; the three notebooks executed by papermill), ordinal (RetinaMNIST) and 15 classes (the
union of the embedded files' classes). The ordinal and 15-class runs execute every cell of the three stages,
display cells included (workbench.cells.run_cells): the figures, galleries and previews that crashed on more
than 8 classes are built."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from conftest import FIXTURES, read_json, run_cli

pytestmark = pytest.mark.slow
MOSAIC = FIXTURES / "bloodmosaic_tiny.npz"
RETINA = FIXTURES / "retinamnist_tiny.npz"
UNION = FIXTURES / "union15_tiny.npz"
QUICK = {"epochs": 1, "width": 8, "batch_size": 32}


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = run_cli("pipeline", "--name", "mosaic", "-q", "-p", "dataset", str(MOSAIC), "-p", "epochs", "1",
                   "-p", "width", "8", "-p", "batch_size", "32", "-p", "audit_folds", "0", "-p", "n_resamples", "200",
                   "-p", "bootstrap", "200", "-p", "gallery_size", "4", "-p", "target_precision", "0.9",
                   "-p", "guarantee", "0", env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_multilabel_model_metrics_and_calibration(mosaic_run):
    d = mosaic_run
    s = read_json(d / "train_summary.json")
    assert (s["task"], s["output_activation"], s["loss"]) == ("multi-label, binary-class", "sigmoid",
                                                                 "binary_crossentropy")
    m = read_json(d / "metrics.json")
    with np.load(d / "predictions.npz", allow_pickle=False) as z:
        p, y = z["test_probs"], z["test_labels"]
    assert y.shape == p.shape == (24, 8) and set(np.unique(y)) <= {0, 1}
    assert not np.allclose(p.sum(1), 1)  # independent sigmoids, not a softmax
    # the MedMNIST protocol: ACC at 0.5 and AUC, each the mean over labels
    acc = np.mean([accuracy_score(y[:, j], p[:, j] > 0.5) for j in range(8)])
    aucs = [roc_auc_score(y[:, j], p[:, j]) for j in range(8) if 0 < y[:, j].sum() < len(y)]
    assert m["test"]["acc"] == pytest.approx(acc) and m["test"]["auc"] == pytest.approx(np.mean(aucs))
    lo, hi = m["test"]["exact_match_ci95"]
    assert lo <= m["test"]["exact_match"] <= hi
    assert list(m["test"]["per_class_ci95"]) == m["class_names"] and len(m["class_names"]) == 8
    row = m["test"]["per_class_ci95"][m["class_names"][0]]
    assert {"sensitivity_ci95", "auc_ci95", "accuracy"} <= set(row)  # per-label intervals
    temps = read_json(d / "calibration.json")["temperature"]
    assert isinstance(temps, list) and len(temps) == 8  # per-label calibration


def test_multilabel_annotation_review_and_coco_export(mosaic_run):
    import workbench  # noqa: F401
    from workbench import annotate, train
    from workbench.params import TrainParams
    pool = mosaic_run / "annotate" / "test"
    summary = read_json(pool / "annotation_summary.json")
    assert summary["thresholds"]["mode"] == "per-label" and len(summary["thresholds"]["per_class"]) == 8
    table = pd.read_csv(pool / "annotations.csv", dtype={"predicted_label": str}, keep_default_na=False)
    with np.load(pool / "pool_predictions.npz") as z:
        probs = z["probs"]
    names = read_json(mosaic_run / "metrics.json")["class_names"]
    for i in range(3):  # predicted labels: the labels with p > 0.5, by name
        want = ";".join(names[j] for j in np.flatnonzero(probs[i] > 0.5))
        assert table["predicted_class"][i] == want
    thr = np.array([r["threshold"] for r in summary["thresholds"]["per_class"]], dtype=float)
    conf = np.maximum(probs, 1 - probs)
    auto = (conf >= thr[None, :]).all(1)
    if not summary["shift"]["fired"]:
        assert (table["status"] == "auto-accepted").to_numpy().tolist() == auto.tolist()
    assert "per_label" in summary["achieved"]  # the pool's labels are known: per-label precision and coverage
    # review: toggle labels of the first queued image, accept the second; the export has several categories
    inputs = annotate.open_review(pool, annotator="t")
    s = inputs.session
    if s.done:
        pytest.skip("every item was auto-accepted")
    s.label([0, 5])
    if not s.done:
        s.accept()
    out = annotate.export_review(inputs)
    coco = json.loads(Path(out["coco"]).read_text())
    first = s.queue[0]
    image_id = next(im["id"] for im in coco["images"] if im["file_name"] == first)
    cats = sorted(a["category_id"] for a in coco["annotations"] if a["image_id"] == image_id)
    assert cats == [0, 5]  # several categories per image
    with np.load(out["npz"], allow_pickle=False) as z:
        assert z["labels"].ndim == 2 and z["labels"].shape[1] == 8
    # and the loop closes: the export extends the train split of the same dataset (its test split is refused)
    from workbench.errors import WorkbenchError
    with pytest.raises(WorkbenchError, match="leak"):
        train.load_data(TrainParams(dataset=str(MOSAIC), extra_labels=str(Path(out["npz"]).parent)))


def _stages(dataset, tmp_path, monkeypatch, **train_extra):
    """train → evaluate → annotate in-process, every cell (code and display) of each stage."""
    import workbench  # noqa: F401
    from workbench import annotate, cells, evaluate, params, train
    monkeypatch.setenv("WORKBENCH_HEADLESS", "1")
    run_dir = tmp_path / "run"
    tp = params.make("train", {"run_dir": str(run_dir), "dataset": str(dataset), **QUICK, **train_extra})
    cells.run_cells(train.NOTEBOOK, tp, include_show=True)
    ev = cells.run_cells(evaluate.NOTEBOOK, params.make("evaluate", {"run_dir": str(run_dir), "n_resamples": 200,
                                                                     "gallery_size": 4}), include_show=True)
    an = cells.run_cells(annotate.NOTEBOOK, params.make("annotate", {"run_dir": str(run_dir), "audit_folds": 2,
                                                                     "audit_epochs": 1, "bootstrap": 200,
                                                                     "gallery_size": 4}), include_show=True)
    return run_dir, ev["result"], an["summary"]


def test_ordinal_retinamnist_reports_mae_and_kappa(tmp_path, monkeypatch):
    run_dir, m, summary = _stages(RETINA, tmp_path, monkeypatch)
    assert m["task"] == "ordinal-regression" and len(m["class_names"]) == 5
    with np.load(run_dir / "predictions.npz") as z:
        p, y = z["test_probs"], z["test_labels"]
    pred = p.argmax(1)
    assert m["test"]["acc"] == pytest.approx(accuracy_score(y, pred))  # the MedMNIST protocol: as multi-class
    assert m["test"]["mae"] == pytest.approx(np.abs(pred - y).mean())
    assert m["test"]["qwk"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic", labels=range(5)))
    for k in ("mae", "qwk"):
        lo, hi = m["test"][f"{k}_ci95"]
        assert lo <= m["test"][k] <= hi
    card = (run_dir / "model_card.md").read_text()
    assert "quadratic-weighted kappa" in card and "ordinal" in card
    assert summary["pool_size"] == len(y)


def test_fifteen_classes_through_every_cell(tmp_path, monkeypatch):
    run_dir, m, summary = _stages(UNION, tmp_path, monkeypatch)
    assert len(m["class_names"]) == 15 and m["class_names"][0].startswith("blood: ")
    assert len(m["test"]["per_class_ci95"]) == 15
    p = read_json(run_dir / "params" / "train.json")
    assert (p["augment"], p["tta"]) == ("fixed", "no")  # its card: orientation-fixed (breast images in it)
    queue = pd.read_csv(run_dir / "annotate" / "test" / "review_queue.csv")
    assert queue["second_label"].max() < 15
    assert read_json(run_dir / "annotate" / "test" / "label_audit.json")["folds"] == 2

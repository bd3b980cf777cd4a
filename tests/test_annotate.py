"""Annotate stage pieces: pools, per-class thresholds, achieved precision/coverage with intervals, and
the review export read back by 10_train as extra training labels."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from workbench import annotate, data, inputs, pools
from workbench.errors import WorkbenchError
from workbench.params import TrainParams
from workbench.review import ReviewSession, export


@pytest.fixture(scope="module")
def ds():
    return data.load_dataset(str(TINY))


def _probs(conf, pred, k=3):
    p = np.full((len(conf), k), 0.0)
    for i, (c, y) in enumerate(zip(conf, pred)):
        p[i] = (1 - c) / (k - 1)
        p[i, y] = c
    return p


def test_per_class_thresholds_reach_the_target_per_class():
    # class 0: confident and right down to 0.6; class 1: wrong above 0.8 except at the top
    conf = np.array([0.99, 0.9, 0.8, 0.7, 0.6] * 6 + [0.99, 0.95, 0.85, 0.8, 0.7] * 6)
    pred = np.array([0] * 30 + [1] * 30)
    truth = pred.copy()
    truth[30:][np.isin(conf[30:], [0.85, 0.8, 0.7])] = 2  # class-1 predictions below 0.9 are wrong
    choice = annotate.per_class_thresholds(_probs(conf, pred), truth, 0.99, "per-class", min_class_val=5)
    thr = choice["thresholds"]
    assert thr[0] == pytest.approx(0.6) and thr[1] == pytest.approx(0.95)
    assert choice["per_class"][2]["source"].startswith("global")  # never predicted: global fallback
    assert choice["val_precision"] >= 0.99
    glob = annotate.per_class_thresholds(_probs(conf, pred), truth, 0.99, "global")
    assert len(set(glob["thresholds"])) == 1 and glob["thresholds"][0] == pytest.approx(0.9)
    assert choice["val_coverage"] > glob["val_coverage"]  # per-class accepts more at the same target


def test_achieved_precision_coverage_with_intervals():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    pred = np.where(rng.random(400) < 0.9, y, (y + 1) % 4)
    accepted = rng.random(400) < 0.7
    a = annotate.achieved(y, pred, accepted, n_resamples=300, seed=0)
    assert a["precision"] == pytest.approx((pred[accepted] == y[accepted]).mean())
    assert a["coverage"] == pytest.approx(accepted.mean())
    for k in ("precision", "coverage"):
        lo, hi = a[f"{k}_ci95"]
        assert lo <= a[k] <= hi and hi - lo < 0.15
    assert a["bootstrap"]["n_resamples"] == 300


def _export(tmp_path, pool, ds, name="export"):
    """Accept, correct to class 3 and skip the first three items of a (scanned) pool, then export."""
    pred = {i: int(c) for i, c in zip(pool.ids, pool.labels)}
    s = ReviewSession(tmp_path / f"{name}.jsonl", pool.ids[:5], pred, ds.class_names, pool.pool_id, "m", annotator="t")
    s.accept()
    s.label(3)
    s.skip()
    import pandas as pd
    table = pd.DataFrame({"index": range(len(pool)), "predicted_label": pool.labels,
                          "predicted_class": [ds.class_names[c] for c in pool.labels],
                          "confidence": 0.5, "status": "needs-review", "id": pool.ids})
    spec = inputs.for_dataset(ds)
    return export(s, table, tmp_path / name, images=lambda pos: inputs.conform(pool.raw(pos), spec), source=pool.source)


def _folder_pool(tmp_path, images, labels):
    """A folder of real images saved as PNG (an outside pool: images the dataset does not hold as val/test)."""
    from PIL import Image
    root = tmp_path / "newscans"
    (root / "batch1").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / "batch1" / f"img{i}.png")
    (root / "labels.csv").write_text("file,label\n" + "".join(f"batch1/img{i}.png,{int(c)}\n" for i, c in enumerate(labels)))
    return root


def test_extra_labels_extend_the_train_split(tmp_path, ds):
    # an outside pool (as an image folder would give): images the dataset does not hold as val/test
    with np.load(TINY) as z:
        images, labels = z["val_images"][:10], z["val_labels"].reshape(-1)[:10]
    spec = inputs.for_dataset(ds)
    root = _folder_pool(tmp_path, images, labels)
    pool = pools.open_pool(str(root), labels_csv=str(root / "labels.csv"),
                           class_names=ds.class_names).scan(spec)
    assert pool.ids[0] == "batch1/img0.png"  # ids: paths relative to the pool root
    out = _export(tmp_path, pool, ds)
    params = TrainParams(dataset=str(TINY), extra_labels=str(tmp_path / "export"))
    from workbench import train
    ext, info = train.load_data(params)
    assert len(ext.labels["train"]) == 240 + 2  # accept + corrected label; the skip adds nothing
    first = pool.ids.index("batch1/img0.png")
    np.testing.assert_array_equal(ext.images["train"][240], images[first])  # the export carries its images
    assert ext.labels["train"][240] == labels[first] and ext.labels["train"][241] == 3
    assert any("extended by 2 labelled images" in n for n in ext.notes) and info["n"] == 2
    # the csv path works too; the val split of the same file is refused (leakage)
    assert len(train.load_data(TrainParams(dataset=str(TINY), extra_labels=out["csv"]))[0].labels["train"]) == 242
    leak = _export(tmp_path, pools.open_pool("test", dataset=ds).scan(spec), ds, name="leak")
    with pytest.raises(WorkbenchError, match="test split .* leak"):
        train.load_data(TrainParams(dataset=str(TINY), extra_labels=str(tmp_path / "leak")))
    assert leak["n_labelled"] == 2
    with pytest.raises(WorkbenchError, match="no labelled.npz"):
        train.load_data(TrainParams(dataset=str(TINY), extra_labels=str(tmp_path)))


def test_calibrated_probabilities_when_the_run_has_a_temperature(tmp_path, capsys):
    from workbench.calibration import apply_temperature
    from workbench.params import AnnotateParams

    class Trained:  # what annotate.temperature reads of a workbench.runload.TrainedRun
        def temperature(self):
            from workbench.calibration import load_temperature
            return load_temperature(tmp_path)
    run = Trained()
    assert annotate.temperature(run, AnnotateParams()) is None
    assert "no calibration.json" in capsys.readouterr().out
    (tmp_path / "calibration.json").write_text('{"method": "temperature", "temperature": 1.7}')
    assert annotate.temperature(run, AnnotateParams()) == pytest.approx(1.7)
    assert annotate.temperature(run, AnnotateParams(calibrate=False)) is None
    # a temperature > 1 softens confidences: the same target needs a lower threshold on them
    conf = np.linspace(0.5, 0.99, 60)
    pred = np.arange(60) % 3
    truth = np.where(conf > 0.8, pred, (pred + 1) % 3)
    raw = _probs(conf, pred)
    cal = apply_temperature(raw, 1.7)
    t_raw = annotate.per_class_thresholds(raw, truth, 0.99, "global")["thresholds"][0]
    t_cal = annotate.per_class_thresholds(cal, truth, 0.99, "global")["thresholds"][0]
    assert t_cal < t_raw
    assert ((raw.max(1) >= t_raw) == (cal.max(1) >= t_cal)).all()  # same items accepted: ranking kept


def test_per_class_thresholds_with_guarantee_fall_back_to_global_for_small_classes():
    rng = np.random.default_rng(0)
    # class 0: 600 val predictions, right; class 1: 100 (fewer than the test's n_min = 230), right
    conf = np.r_[rng.uniform(0.9, 1.0, 600), rng.uniform(0.9, 1.0, 100)]
    pred = np.r_[np.zeros(600, int), np.ones(100, int)]
    choice = annotate.per_class_thresholds(_probs(conf, pred), pred.copy(), 0.99, "per-class", guarantee=0.9)
    rows = choice["per_class"]
    assert rows[0]["source"] == "class" and rows[1]["source"].startswith("global")
    assert choice["global"]["n_min"] == 230 and choice["guarantee"] == 0.9
    assert choice["thresholds"][1] == pytest.approx(choice["global"]["threshold"])
    assert np.isfinite(choice["thresholds"][0])
    # without a guarantee class 1 has enough predictions (≥ min_class_val) for its own threshold
    point = annotate.per_class_thresholds(_probs(conf, pred), pred.copy(), 0.99, "per-class")
    assert point["per_class"][1]["source"] == "class"


def test_evaluate_and_annotate_record_the_features(tiny_run, tmp_path):
    """The features through the stages' in-process run(): evaluate's feature baselines, annotate's kNN/OOD columns,
    and what belongs to the run computed once (a copy of the shared tiny run: the stages write into it)."""
    import shutil

    from workbench import annotate, evaluate, params
    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")
    r = evaluate.run(params.make("evaluate", {"run_dir": str(tiny_run), "n_resamples": 100, "gallery_size": 2}))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    fb = metrics["feature_baselines"]
    assert fb == r["feature_baselines"] and fb["k"] == 11 and fb["dim"] == 32
    for name in ("knn", "linear_probe"):
        assert 0 <= fb[name]["acc"] <= 1 and fb[name]["acc_ci95"][0] <= fb[name]["acc"] <= fb[name]["acc_ci95"][1]
    assert fb["linear_probe"]["C"] in (0.01, 0.1, 1.0, 10.0)
    out = annotate.run(params.make("annotate", {"run_dir": str(tiny_run), "pool": "test", "audit_folds": 2,
                                                "audit_epochs": 1, "bootstrap": 100}))
    pool_dir = tiny_run / "annotate" / "test"
    table = pd.read_csv(pool_dir / "annotations.csv")
    assert list(table.columns) == [*annotate.ANNOTATION_COLUMNS, "knn_label", "knn_agree", "ood_score"]
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    assert summary["ood"]["n_flagged"] == int((table["ood_score"] > summary["ood"]["threshold"]).sum())
    assert summary["knn"]["agreement"] == pytest.approx(
        (table["knn_label"] == table["predicted_label"]).mean())
    ach = summary["knn"]["achieved"]
    assert ach["model_and_knn_agree"]["n_accepted"] <= ach["model"]["n_accepted"] == out["n_auto_accepted"]
    near = pd.read_csv(pool_dir / "train_near_duplicates.csv")
    assert summary["train_near_duplicates"]["n_pairs"] == len(near)
    assert list(near.columns) == ["id", "index", "train_index", "train_id", "train_label", "similarity"]
    # what belongs to the run is computed once: a second pool reads the audit, val's predictions and the map
    cache = tiny_run / "cache"
    made = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert {"val", "audit"} <= {n.split("-")[0] for n in made}     # (the map is drawn by the notebook only)
    assert json.loads((pool_dir / "label_audit.json").read_text())["computed"].startswith("computed now")
    annotate.run(params.make("annotate", {"run_dir": str(tiny_run), "pool": "val", "audit_folds": 2,
                                          "audit_epochs": 1, "bootstrap": 100}))
    second = tiny_run / "annotate" / "val"
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == made          # read, never rewritten
    assert json.loads((second / "label_audit.json").read_text())["computed"] == "read from the run's cache"
    assert (second / "label_issues.csv").read_bytes() == (pool_dir / "label_issues.csv").read_bytes()

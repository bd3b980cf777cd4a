"""End to end: the three stage notebooks really executed by papermill (via the CLI) on real images."""

import csv
import json
import re

import nbformat
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from conftest import FIXTURES, read_json

pytestmark = pytest.mark.slow


def _pool(d):
    """The pipeline's annotated pool: the test split, in its own directory inside the run."""
    return d / "annotate" / "test"


def test_run_directory_holds_every_artifact(pipeline_run):
    d = pipeline_run["dir"]
    for name in ("10_train.ipynb", "10_train.html", "20_evaluate.ipynb", "20_evaluate.html",
                 "params/train.json", "params/evaluate.json", "input.json", "preprocess.json",
                 "provenance.json", "model.keras", "history.csv", "augment.yaml", "metrics.json",
                 "predictions.npz", "train_summary.json", "calibration.json", "model_card.md"):
        assert (d / name).is_file(), name
    for name in ("30_annotate.ipynb", "30_annotate.html", "params/annotate.json", "provenance.json",
                 "annotations.csv", "annotation_summary.json", "pool_predictions.npz", "rejected.csv",
                 "duplicates.csv", "review_queue.csv", "label_issues.csv", "label_audit.json", "audit_probs.npz"):
        assert (_pool(d) / name).is_file(), name
    assert not (d / "annotations.csv").exists()  # each pool in its own directory
    assert d.parent.name.startswith("runs")  # WORKBENCH_RUNS_DIR was honoured
    spec = read_json(d / "input.json")
    assert (spec["size"], spec["channels"], spec["resize"], spec["preprocess"]) == (28, 3, "none", None)


def test_params_and_provenance_recorded(pipeline_run):
    d = pipeline_run["dir"]
    p = read_json(d / "params/train.json")
    assert p["epochs"] == 1 and p["width"] == 8 and p["dataset"].endswith("bloodmnist_tiny.npz")
    prov = read_json(d / "provenance.json")
    assert set(prov) == {"train", "evaluate"}
    pool_prov = read_json(_pool(d) / "provenance.json")["annotate"]
    # the run directory the pool was annotated with (where the pipeline made it: the fixture may be a copy)
    assert pool_prov["trained_run"] == str(pipeline_run["built_dir"]) and pool_prov["pool"]["kind"] == "dataset-split"
    tr = prov["train"]
    assert tr["keras_backend"] == "jax"
    assert tr["packages"]["keras"].startswith("3.")
    assert tr["packages"]["albumentations"] == "2.0.8"
    assert tr["data"]["md5"] == "591edc0d96e21fc043d6aa4380bf1e75"
    assert tr["data"]["card"] == "bloodmnist_tiny"
    assert tr["seed"] == 0 and "sha" in tr["git"]


def test_metrics_match_predictions(pipeline_run):
    """metrics.json is recomputable from predictions.npz with scikit-learn (MedMNIST protocol)."""
    d = pipeline_run["dir"]
    m = read_json(d / "metrics.json")
    with np.load(d / "predictions.npz", allow_pickle=False) as z:
        probs, y = z["test_probs"], z["test_labels"]
    assert probs.shape == (120, 8) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert m["test"]["n"] == 120
    assert m["test"]["acc"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert m["test"]["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert set(m["test"]["per_class"]) >= {"basophil", "platelet", "macro avg"}


def test_history_and_training_summary(pipeline_run):
    d = pipeline_run["dir"]
    with open(d / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and {"loss", "val_loss", "acc", "val_acc"} <= set(rows[0])
    s = read_json(d / "train_summary.json")
    assert s["epochs_run"] == 1 and s["best_epoch"] == 1 and s["num_params"] > 0
    assert "albumentations" in (d / "augment.yaml").read_text()


def test_annotations_follow_threshold(pipeline_run):
    d = pipeline_run["dir"]
    summary = read_json(_pool(d) / "annotation_summary.json")
    with open(_pool(d) / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["pool_size"] == 120
    assert list(rows[0]) == ["index", "id", "predicted_label", "predicted_class", "confidence", "status",
                             "threshold", "reason", "label", "certified_by", "in_certification_sample",
                             "knn_label", "knn_agree", "ood_score"]   # annotate.features_of appends the last 3
    assert summary["shift"]["status"] in ("no shift detected", "shift", "too little data")
    cert = summary["certification"]
    assert cert["certified_by"] in ("val", "none") and cert["route"] == ("pool" if summary["shift"]["fired"] else "val")
    per_class = [c["threshold"] for c in summary["thresholds"]["per_class"]]
    assert summary["thresholds"]["mode"] == "global" and len(per_class) == 8 and summary["guarantee"] == 0.9
    ood_threshold = summary["ood"]["threshold"]
    for r in rows:
        t = per_class[int(r["predicted_label"])]
        assert float(r["threshold"]) == pytest.approx(t) or (t == float("inf") and r["threshold"] == "inf")
        gated = float(r["ood_score"]) > ood_threshold + 1e-6        # never auto-accepted, whatever the confidence
        expected = "auto-accepted" if float(r["confidence"]) >= t and not gated else "needs-review"
        assert r["status"] == expected and r["certified_by"] == cert["certified_by"]
        if gated and float(r["confidence"]) >= t:
            assert r["reason"].startswith("out of distribution")
        assert r["id"] == f"test:{r['index']}"
    assert summary["n_auto_accepted"] + summary["n_needs_review"] == 120
    # pool labels are known for the test split: precision/coverage achieved are reported, with intervals
    truth = np.load(FIXTURES / "bloodmnist_tiny.npz")["test_labels"].reshape(-1)
    acc = [r for r in rows if r["status"] == "auto-accepted"]
    cov = len(acc) / len(rows)
    a = summary["achieved"]
    assert a["coverage"] == pytest.approx(cov)
    assert a["coverage_ci95"][0] <= cov <= a["coverage_ci95"][1]
    assert a["bootstrap"]["n_resamples"] == 1000
    if acc:
        prec = np.mean([int(r["predicted_label"]) == truth[int(r["index"])] for r in acc])
        assert a["precision"] == pytest.approx(prec)
    # evaluate fitted a temperature on val (calibration.json): annotate used the calibrated probabilities
    assert summary["temperature"] == pytest.approx(read_json(d / "calibration.json")["temperature"])
    assert len(summary["model_hash"]) == 32 and len(summary["pool_id"]) == 16


def test_review_queue_ranks_the_needs_review_items(pipeline_run):
    import pandas as pd
    d = pipeline_run["dir"]
    table = pd.read_csv(_pool(d) / "annotations.csv")
    queue = pd.read_csv(_pool(d) / "review_queue.csv")
    assert set(queue["index"]) == set(table.index[table["status"] == "needs-review"])
    assert (queue["strategy"] == "margin").all() and queue["rank"].tolist() == list(range(1, len(queue) + 1))
    assert np.all(np.diff(queue["score"].to_numpy()) <= 1e-9)  # most uncertain first
    with np.load(_pool(d) / "pool_predictions.npz", allow_pickle=False) as z:
        p = z["probs"][queue["index"].to_numpy()]
    top2 = np.sort(p, axis=1)[:, -2:]
    np.testing.assert_allclose(queue["score"], 1 - (top2[:, 1] - top2[:, 0]), atol=1e-5)  # margin score


def test_label_audit_with_out_of_sample_probabilities(pipeline_run):
    import pandas as pd
    d = pipeline_run["dir"]
    meta = read_json(_pool(d) / "label_audit.json")
    assert meta["n"] == 240 and meta["folds"] == 3 and meta["split"] == "train"
    issues = pd.read_csv(_pool(d) / "label_issues.csv")
    assert meta["n_issues"] == len(issues)
    assert list(issues.columns[:4]) == ["rank", "index", "split", "id"]
    with np.load(_pool(d) / "audit_probs.npz", allow_pickle=False) as z:
        probs, folds, labels = z["probs"], z["folds"], z["labels"]
    truth = np.load(FIXTURES / "bloodmnist_tiny.npz")["train_labels"].reshape(-1)
    assert np.array_equal(labels, truth) and probs.shape == (240, 8) and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert set(folds.tolist()) == {0, 1, 2}
    for f in range(3):  # stratified folds: every class held out in every fold
        assert set(truth[folds == f].tolist()) == set(truth.tolist())
    if len(issues):
        i = issues.iloc[0]
        assert i["given_label"] == truth[i["index"]] and i["suggested_label"] == probs[i["index"]].argmax()


def test_reports_are_self_contained_without_code(pipeline_run):
    d = pipeline_run["dir"]
    for stem, must, n_figures in (("10_train", "Training", 2), ("20_evaluate", "published baselines", 9),
                                  ("30_annotate", "Needs review", 2), ("30_annotate", "Label audit", 2),
                                  ("30_annotate", "Review (static view", 2), ("30_annotate", "Shift check", 2)):
        html = ((_pool(d) if stem.startswith("30") else d) / f"{stem}.html").read_text()
        assert must in html
        assert html.count("data:image/png;base64") >= n_figures, stem  # figures inline
        assert "import workbench" not in html  # code hidden
        assert "<script src=\"http" not in html or "require.js" in html
        assert "it/s]" not in html and "batch/s]" not in html and "%|" not in html  # no progress bars in reports


def test_executed_notebooks_have_no_errors_and_injected_params(pipeline_run):
    d = pipeline_run["dir"]
    for stem in ("10_train", "20_evaluate", "30_annotate"):
        nb = nbformat.read(str((_pool(d) if stem.startswith("30") else d) / f"{stem}.ipynb"), as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert ["injected-parameters"] in tags
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, stem


def test_cli_prints_summary_and_run_dir_last(pipeline_run):
    out = pipeline_run["stdout"].strip().splitlines()
    assert out[-1] == str(pipeline_run["dir"])
    assert any(line.startswith("test ACC ") and "AUC" in line for line in out)
    assert any(line.startswith("reports: ") and "30_annotate.html" in line for line in out)


def test_model_loads_in_safe_mode_and_reproduces_predictions(pipeline_run):
    import workbench  # noqa: F401  (JAX backend)
    from workbench.models import load
    d = pipeline_run["dir"]
    model = load(d / "model.keras")
    x = np.load(FIXTURES / "bloodmnist_tiny.npz")["test_images"][:16].astype("float32")
    with np.load(d / "predictions.npz") as z:
        np.testing.assert_allclose(model.predict(x, verbose=0), z["test_probs"][:16], atol=1e-5)


def test_stage_refuses_to_run_twice(pipeline_run):
    from conftest import run_cli
    proc = run_cli("run", "evaluate", "--run", str(pipeline_run["dir"]), "-q")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: stage evaluate already ran in")
    assert json.loads((pipeline_run["dir"] / "metrics.json").read_text())["test"]["n"] == 120  # untouched


def test_evaluate_intervals_calibration_and_explanations(pipeline_run):
    """The evaluate stage's new numbers are in metrics.json and recomputable from predictions.npz."""
    from sklearn.metrics import balanced_accuracy_score, recall_score

    import workbench  # noqa: F401
    from workbench import calibration
    d = pipeline_run["dir"]
    m = json.loads((d / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    t = m["test"]
    with np.load(d / "predictions.npz", allow_pickle=False) as z:
        probs, y, calibrated = z["test_probs"], z["test_labels"], z["test_probs_calibrated"]
    for key in ("acc", "auc", "balanced_acc"):
        lo, hi = t[f"{key}_ci95"]
        assert lo <= t[key] <= hi, key
    assert t["bootstrap"]["n_resamples"] == 1000 and t["bootstrap"]["seed"] == 0  # the default
    assert t["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert list(t["per_class_ci95"]) == m["class_names"]
    sens = recall_score(y, probs.argmax(1), labels=list(range(8)), average=None, zero_division=0)
    for c, (name, row) in enumerate(t["per_class_ci95"].items()):
        assert set(row) >= {"sensitivity", "specificity", "ppv", "npv", "f1", "sensitivity_ci95", "npv_ci95"}
        assert row["sensitivity"] == pytest.approx(sens[c])
        assert row["support"] == int((y == c).sum())
    # calibration: ECE before/after, the temperature saved with the model and used for calibrated probabilities
    temperature = calibration.load_temperature(d)
    assert temperature == pytest.approx(t["temperature"])
    assert t["ece"] == pytest.approx(calibration.ece(probs, y, 15))
    assert t["ece_after_temperature"] == pytest.approx(calibration.ece(calibrated, y, 15))
    np.testing.assert_allclose(calibrated, calibration.apply_temperature(probs, temperature), atol=1e-9)
    assert len(m["calibration"]["reliability"]["count"]) == 15
    assert m["variants"] == {} and m["published_baselines"] == {}  # TTA/ensembles off; the tiny card has none
    html = (d / "20_evaluate.html").read_text()
    for text in ("Top losses", "Grad-CAM", "occlusion", "ECE after temperature", "precision-recall", "Model card",
                 "Not for clinical use", "95 % intervals"):
        assert text in html, text


def test_run_and_the_executed_notebooks_write_the_same_artifacts(pipeline_run, tmp_path, monkeypatch):
    """Each stage's run() executes the notebook's own code cells (workbench.cells): the same files result."""
    import workbench  # noqa: F401
    from workbench import annotate, evaluate, params, train
    monkeypatch.setenv("WORKBENCH_HEADLESS", "1")
    d, run_dir = pipeline_run["dir"], tmp_path / "direct"
    tiny = {"dataset": str(FIXTURES / "bloodmnist_tiny.npz"), "epochs": 1, "width": 8, "batch_size": 64}
    train.run(params.make("train", {**tiny, "run_dir": str(run_dir)}))
    evaluate.run(params.make("evaluate", {"run_dir": str(run_dir), "gallery_size": 8}))
    annotate.run(params.make("annotate", {"run_dir": str(run_dir), "gallery_size": 8}))

    def files(root):  # complete/: the command line's markers of finished stages (workbench.cache), not the stage's
        # features/<source>-<key>.npz: the key hashes the model file, which differs between the two runs
        # cache/<name>-<key>: the run's cache (val predictions, the audit, the map), keyed by model or run
        return sorted(re.sub(r"^(features/.+|cache/[^/]+)-[0-9a-f]{16}(\.npz|/|$)", r"\1-KEY\2", str(p.relative_to(root)))
                      for p in root.rglob("*")
                      if p.is_file() and p.suffix not in (".ipynb", ".html") and p.relative_to(root).parts[0] != "complete"
                      # the map's projection is cached where the map is drawn: by the notebook's display cells
                      and not p.name.startswith("map-"))
    assert files(run_dir) == files(d)
    assert len(files(d)) > 20


def test_the_stages_share_one_kernel_each_numbered_from_one(pipeline_run):
    """workbench pipeline runs its stages in one kernel (workbench.execute.StageKernel), each on a clean slate."""
    d = pipeline_run["dir"]
    prov = read_json(d / "provenance.json")
    pool = read_json(_pool(d) / "provenance.json")["annotate"]
    assert prov["train"]["kernel"]["pid"] == prov["evaluate"]["kernel"]["pid"] == pool["kernel"]["pid"]
    assert [prov["train"]["kernel"]["earlier_stages"], prov["evaluate"]["kernel"]["earlier_stages"],
            pool["kernel"]["earlier_stages"]] == [[], ["train"], ["train", "evaluate"]]
    for nb in (d / "10_train.ipynb", d / "20_evaluate.ipynb", _pool(d) / "30_annotate.ipynb"):
        counts = [c.execution_count for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), nb.name


def test_a_fresh_kernel_per_stage_gives_the_same_results(pipeline_run, tmp_path):
    """evaluate and annotate, each in a kernel of its own (workbench run) on the pipeline's trained model, write
    what they wrote in the kernel shared with the earlier stages: nothing of train leaks into them."""
    from workbench import cache
    from conftest import run_cli
    d, fresh = pipeline_run["dir"], tmp_path / "fresh"
    fresh.mkdir()
    key = read_json(cache.marker_path(d, "train"))["key"]
    cache.reuse(d, fresh, ["train"], {"train": key})
    for stage, done in (("evaluate", d), ("annotate", _pool(d))):   # the parameters the pipeline gave the stage
        given = {k: v for k, v in read_json(done / "params" / f"{stage}.json").items() if k not in ("run_dir", "out_dir")}
        proc = run_cli("run", stage, "--run", str(fresh), "-q", *[a for k, v in given.items() for a in ("-p", k, str(v))])
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_json(fresh / "provenance.json")["evaluate"]["kernel"]["earlier_stages"] == []

    def metrics(run):  # features/<source>-<key>.npz: the key hashes the model file (a copy: same bytes here)
        m = read_json(run / "metrics.json")
        for k in ("seconds", "time_utc"):
            m.pop(k, None)
        return m
    assert metrics(fresh) == metrics(d)
    for name in ("predictions.npz", "calibration.json"):
        assert (fresh / name).read_bytes() == (d / name).read_bytes(), name
    for name in ("annotations.csv", "review_queue.csv", "label_issues.csv", "pool_predictions.npz", "audit_probs.npz"):
        assert (_pool(fresh) / name).read_bytes() == (_pool(d) / name).read_bytes(), name

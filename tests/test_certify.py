"""workbench.certify (certifying auto-accept on the pool's own labelled sample), the OOD gate, and the whole
route through the annotate notebook (papermill) on the tiny real fixture."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FIXTURES, run_cli
from workbench import certify, metrics
from workbench.errors import WorkbenchError


# ---------------------------------------------------------------------- sizes
def test_n_required_is_the_exact_binomial_bound():
    from scipy.stats import binom
    assert [metrics.n_required(0.99, 0.9, e) for e in range(3)] == [230, 388, 531]
    for e in range(4):
        n = metrics.n_required(0.95, 0.8, e)
        assert binom.cdf(e, n, 0.05) <= 0.2 < binom.cdf(e, n - 1, 0.05)
    cost = certify.cost_of_errors(0.99, 0.9, 2)
    assert [r["extra_over_no_error"] for r in cost] == [0, 158, 301]
    with pytest.raises(WorkbenchError, match="guarantee"):
        metrics.n_required(0.99, 1.0)


def test_queue_size_and_the_candidate_region():
    q = certify.queue_size(0.99, 0.9, 5000)
    assert q["size"] == 288 and q["n_required_no_error"] == 230         # 230 / 0.8
    assert certify.queue_size(0.99, 0.9, 100)["size"] == 100             # never more than the region
    assert certify.queue_size(0.99, 0.9, 5000, requested=400)["size"] == 400
    probs = np.array([[0.99, 0.01], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95]])
    assert certify.region(probs, [0.9, 0.9], "binary-class").tolist() == [True, False, False, True]
    assert certify.region(probs, [0.9, 0.9], "binary-class", exclude=[True, False, False, False]).tolist() == \
        [False, False, False, True]
    assert certify.region(probs, [np.inf, np.inf], "binary-class").all()    # val reaches nothing: the whole pool
    inside = np.arange(1000) % 3 == 0
    s = certify.sample("p", inside, 50, 0)
    assert len(s) == 50 and inside[s].all() and len(set(s)) == 50
    assert np.array_equal(certify.sample("p", inside, 80, 0)[:50], s)    # a longer queue extends the same sample


def test_order_is_seeded_by_pool_and_seed_and_prefixes_extend_the_same_sample():
    a = certify.order("poolA", 1000, 0)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, certify.order("poolA", 1000, 0))
    assert not np.array_equal(a, certify.order("poolA", 1000, 1))
    assert not np.array_equal(a, certify.order("poolB", 1000, 0))


# ---------------------------------------------------------------------- labels
def test_read_labels_names_indices_exports_and_errors(tmp_path):
    ids = ["a.png", "b.png", "c.png"]
    names = ["basophil", "eosinophil", "platelet"]
    f = tmp_path / "labels.csv"
    f.write_text("id,label\na.png,2\nb.png,Eosinophil\n")
    assert certify.read_labels(f, ids, names, "multi-class") == {"a.png": 2, "b.png": 1}
    export = tmp_path / "export"
    export.mkdir()
    pd.DataFrame({"id": ["a.png", "b.png", "c.png"], "label": ["0", "1", "2"],
                  "label_source": ["corrected", "auto-accepted", "accepted"]}).to_csv(export / "annotations.csv",
                                                                                     index=False)
    assert certify.read_labels(export, ids, names, "multi-class") == {"a.png": 0, "c.png": 2}  # people only
    ml = certify.read_labels(pd.DataFrame({"id": ["a.png"], "label": ["0;platelet"]}), ids, names,
                             "multi-label, binary-class")
    assert ml["a.png"].tolist() == [1, 0, 1]
    for text, match in [("id,label\nz.png,1\n", "not an item of this pool"),
                        ("id,label\na.png,7\n", "out of range"),
                        ("id,label\na.png,monocyte\n", "neither a class name"),
                        ("id,label\na.png,1\na.png,2\n", "two different labels"),
                        ("file,label\na.png,1\n", "missing column"),
                        ("id,label\n", "no labelled rows")]:
        f.write_text(text)
        with pytest.raises(WorkbenchError, match=match) as e:
            certify.read_labels(f, ids, names, "multi-class")
        assert "\n" not in str(e.value) and str(f) in str(e.value)
    with pytest.raises(WorkbenchError, match="not found"):
        certify.read_labels(tmp_path / "nope.csv", ids, names, "multi-class")


# ---------------------------------------------------------------------- certification on the sample
def _pool(n=3000, k=4, acc=0.97, seed=0):
    """Probabilities whose confidence ranks correct predictions above most wrong ones."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    right = rng.random(n) < acc
    pred = np.where(right, y, (y + 1 + rng.integers(0, k - 1, n)) % k)
    conf = np.where(right, rng.uniform(0.8, 1.0, n), rng.uniform(0.3, 0.9, n))
    probs = np.full((n, k), 0.0)
    probs[np.arange(n), pred] = conf
    rest = (1 - conf) / (k - 1)
    probs += np.where(probs == 0, rest[:, None], 0)
    return probs, y


def test_certify_pool_reaches_the_target_and_the_rest_of_the_pool_holds_it():
    probs, y = _pool()
    ids = [f"i{j}" for j in range(len(y))]
    queue = certify.order("p", len(y), 0)[:700]
    labels = {ids[j]: int(y[j]) for j in queue}
    choice = certify.certify_pool(probs, labels, ids, queue, "multi-class", 0.99, 0.9)
    c = choice["certification"]
    assert c["reached"] and c["n_labels"] == 700 and c["n_counted"] == 700 and c["n_skipped_counted_wrong"] == 0
    assert c["precision_lower_bound"] >= 0.99 - 1e-9 and c["sample_precision_ci95"][0] <= c["sample_precision"]
    thr = choice["thresholds"][0]
    rest = np.setdiff1d(np.arange(len(y)), queue)
    acc = probs[rest].max(1) >= thr
    assert acc.mean() > 0.3 and (probs[rest][acc].argmax(1) == y[rest][acc]).mean() >= 0.99


def test_skipped_queue_items_count_as_wrong_and_outside_labels_never_enter_the_test():
    probs, y = _pool(seed=1)
    ids = [f"i{j}" for j in range(len(y))]
    queue = certify.order("p", len(y), 0)[:400]
    labels = {ids[j]: int(y[j]) for j in queue[:300]}
    del labels[ids[queue[10]]]                                           # skipped inside the labelled prefix
    labels.update({ids[j]: int(y[j]) for j in np.setdiff1d(np.arange(len(y)), queue)[:500]})   # not a sample
    c = certify.certify_pool(probs, labels, ids, queue, "multi-class", 0.99, 0.9)["certification"]
    assert c["n_counted"] == 300 and c["n_skipped_counted_wrong"] == 1 and c["n_labels_outside_queue"] == 500
    # the skipped item is scored as an error: a perfect-looking label set cannot hide it
    part = certify.sample_in_queue(queue, {int(j) for j in queue[:300]} - {int(queue[10])})
    assert part["prefix"] == 300 and part["skipped"].tolist() == [int(queue[10])]


def test_certification_fails_on_a_bad_pool_and_needs_a_guarantee():
    probs, y = _pool(acc=0.6, seed=2)
    ids = [f"i{j}" for j in range(len(y))]
    queue = certify.order("p", len(y), 0)[:300]
    labels = {ids[j]: int(y[j]) for j in queue}
    c = certify.certify_pool(probs, labels, ids, queue, "multi-class", 0.99, 0.9)
    assert not c["certification"]["reached"] and not np.isfinite(c["thresholds"]).any()
    with pytest.raises(WorkbenchError, match="guarantee"):
        certify.certify_pool(probs, labels, ids, queue, "multi-class", 0.99, 0.0)


def test_ood_gated_items_are_left_out_of_the_choice():
    probs, y = _pool(seed=3)
    exclude = np.zeros(len(y), bool)
    exclude[:100] = True
    ch = metrics.auto_accept_thresholds(probs, y, "multi-class", 0.99, guarantee=0.9, exclude=exclude)
    ref = metrics.auto_accept_thresholds(probs[100:], y[100:], "multi-class", 0.99, guarantee=0.9)
    assert ch["thresholds"] == ref["thresholds"] and ch["n_excluded"] == 100


# ---------------------------------------------------------------------- the OOD gate in the decisions
def test_an_item_above_the_ood_threshold_is_never_auto_accepted(tmp_path):
    from types import SimpleNamespace

    from workbench import annotate, params, runs
    run = runs.open_stage("annotate", params.make("annotate", {}), path=tmp_path / "pool")
    probs = np.array([[0.999, 0.001], [0.999, 0.001], [0.6, 0.4]])
    class Pool:
        ids, labels = ["a", "b", "c"], None

        def __len__(self):
            return 3
    pool = Pool()
    trained = SimpleNamespace(class_names=["x", "y"], task="binary-class")
    fx = SimpleNamespace(val_ood=np.linspace(0, 1, 101), ood=np.array([0.5, 7.0, 0.1]), ood_threshold=0.99)
    cert = {"choice": {"thresholds": [0.9, 0.9]}, "certified_by": "val", "labels": {}}
    table = annotate.decide(run, trained, pool, probs, cert, params.make("annotate", {}), fx=fx)
    assert table["status"].tolist() == ["auto-accepted", "needs-review", "needs-review"]
    assert table["reason"][1].startswith("out of distribution") and table["reason"][2].startswith("confidence below")
    off = annotate.decide(runs.open_stage("annotate", params.make("annotate", {}), path=tmp_path / "p2"), trained,
                          pool, probs, cert, params.make("annotate", {"ood_gate": False}), fx=fx)
    assert off["status"].tolist()[:2] == ["auto-accepted", "auto-accepted"]


# ---------------------------------------------------------------------- end to end, through the notebook
def test_certification_runs_end_to_end_through_the_notebook(pipeline_run, tmp_path):
    """certify pool on the tiny test split: the first run writes the blind queue and accepts nothing; labels for
    the queue (here the fixture's true labels, as a reviewer would give them) certify the rest of the pool."""
    src = pipeline_run["dir"]
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("annotate"))
    from workbench import annotate, params
    settings = {"certify": "pool", "target_precision": 0.9, "guarantee": 0.8, "audit_folds": 0, "bootstrap": 100,
                "gallery_size": 4}
    # the first pass in-process (the stage's cells without a kernel), the second through papermill's notebook
    first = annotate.run(params.make("annotate", {"run_dir": str(run), **settings}))
    pool_dir = run / "annotate" / "test"
    assert first["run_dir"] == str(pool_dir)
    queue = pd.read_csv(pool_dir / "certification_queue.csv", dtype={"id": str})
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    c = summary["certification"]
    assert c["route"] == "pool" and c["certified_by"] == "none" and summary["n_auto_accepted"] == 0
    assert len(queue) == c["queue_size"] == min(c["queue_sizing"]["region_size"], c["queue_sizing"]["auto_size"])
    assert queue["rank"].tolist() == list(range(1, len(queue) + 1)) and queue["id"].is_unique
    assert f"Label these {len(queue)} images" in c["message"]

    truth = np.load(FIXTURES / "bloodmnist_tiny.npz")["test_labels"].reshape(-1)
    # a reviewer labels the queue blind in the review widget (the true labels, typed as class numbers 1-8)
    from workbench import widgets
    w = widgets.review_run(pool_dir, annotator="ana", queue="certification", headless=False)
    for i in queue["id"]:
        assert w.session.current == i
        w.keys.value = str(int(truth[int(i.split(":")[1])]) + 1)
    common = [x for k, v in settings.items() for x in ("-p", k, str(v))]
    second = run_cli("run", "annotate", "--run", str(run), "-q", *common, "-p", "certify_labels", str(pool_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    pool2 = run / "annotate" / "test-2"
    html = (pool2 / "30_annotate.html").read_text()
    assert "Certify on the pool" in html and "What each error costs" in html
    s2 = json.loads((pool2 / "annotation_summary.json").read_text())
    c2 = s2["certification"]
    assert c2["n_labels"] == len(queue) and c2["queue_size"] == len(queue) and c2["attempt"] == 1
    table = pd.read_csv(pool2 / "annotations.csv", dtype={"id": str, "label": str}, keep_default_na=False)
    lab = table[table["status"] == "labelled"]
    assert set(lab["id"]) == set(queue["id"])                              # the people's labels are final
    assert (lab["label"].astype(int).to_numpy() == truth[lab["index"].to_numpy()]).all()
    auto = table[table["status"] == "auto-accepted"]
    if c2["certified_by"] == "pool":
        assert c2["precision_lower_bound"] >= 0.9 - 1e-9 and len(auto) == s2["n_auto_accepted"] > 0
        thr = s2["thresholds"]["per_class"][0]["threshold"]
        assert (auto["confidence"] >= thr - 1e-6).all() and s2["thresholds"]["chosen_on"] == "pool"
    else:   # the 1-epoch model may not be good enough to certify 0.9: then nothing is accepted, and it says so
        assert len(auto) == 0 and not c2["reached"] and "not certified" in c2["message"]
    assert s2["achieved"]["n_labelled"] == 120 - len(queue)                 # precision of the machine's labels only

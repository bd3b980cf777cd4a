"""Agreement between annotators (workbench.agreement): kappas and alpha against hand-computed and published
values, consensus and annotator quality (cleanlab CROWDLAB), a pool's agreement.json / consensus.csv."""

import json

import numpy as np
import pandas as pd
import pytest

from workbench import agreement as A
from workbench.review import ReviewSession, annotator_log

nan = np.nan


def test_cohen_kappa_hand_computed():
    # 2x2 table [[20, 5], [10, 15]]: p_o = 35/50 = 0.7, p_e = (25*30 + 25*20)/50^2 = 0.5, kappa = 0.4
    a = np.array([0] * 25 + [1] * 25)
    b = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    assert A.cohen_kappa(a, b, 2) == pytest.approx(0.4)
    # quadratic weights, 3 grades, 6 items (0,0) (0,1) (1,1) (1,2) (2,2) (2,0): agreement weights
    # 1 - (i-j)^2/4 give p_o = (1 + .75 + 1 + .75 + 1 + 0)/6 = 0.75; uniform margins give p_e = 6/9;
    # kappa_w = (0.75 - 2/3) / (1 - 2/3) = 0.25 (unweighted: p_o = 0.5, p_e = 1/3, kappa = 0.25 too)
    x, y = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    assert A.cohen_kappa(x, y, 3, "quadratic") == pytest.approx(0.25)
    x2, y2 = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 1])   # (2,0) -> (2,1): closer, higher
    # p_o = (1 + .75 + 1 + .75 + 1 + .75)/6 = 0.875; margins a (1/3 each), b (1/6, 1/2, 1/3):
    # p_e = sum_ij w_ij a_i b_j = (1/3)(1/6 + 3/8 + 0) + (1/3)(1/8 + 1/2 + 1/4) + (1/3)(0 + 3/8 + 1/3) = 0.7083
    assert A.cohen_kappa(x2, y2, 3, "quadratic") == pytest.approx((0.875 - 0.708333) / (1 - 0.708333), abs=1e-4)
    assert np.isnan(A.cohen_kappa([1], [1], 3))


def test_fleiss_kappa_published_example():
    # Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories: kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    m = np.array([[c for c in range(5) for _ in range(row[c])] for row in table], dtype=float)
    assert A.fleiss_kappa(m, 5) == pytest.approx(0.2099, abs=1e-4)


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011) "Computing Krippendorff's alpha-reliability": 4 coders, 12 units, missing values;
    # nominal 0.743, ordinal 0.815, interval 0.849
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
              [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    m = np.array(coders).T
    assert A.krippendorff_alpha(m, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert A.krippendorff_alpha(m, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert A.krippendorff_alpha(m, "interval") == pytest.approx(0.849, abs=5e-4)
    assert np.isnan(A.krippendorff_alpha(np.array([[1.0, nan], [2.0, nan]])))   # nothing pairable


def test_specific_agreement_and_confusion_by_hand():
    m = np.array([[0, 0], [0, 1], [1, 1], [1, 1]], dtype=float)
    assert A.specific_agreement(m, 0) == (pytest.approx(2 / 3), 3)    # 2·1 / (2 + 1)
    assert A.specific_agreement(m, 1) == (pytest.approx(4 / 5), 5)    # 2·2 / (1 + 2 + 2)
    conf = A.between_confusion(m, 2)
    assert conf.tolist() == [[2, 1], [1, 4]]                           # both orders of each pair


def test_agreement_stats_intervals_and_ordinal_weights():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 150)
    m = np.where(rng.random((150, 3)) < 0.8, truth[:, None], rng.integers(0, 5, (150, 3))).astype(float)
    m[:20, 2] = nan                                                    # cleo read fewer items
    st = A.agreement_stats(m, ["ana", "ben", "cleo"], 5, resamples=200, seed=1)
    f, a = st["fleiss_kappa"], st["krippendorff_alpha"]
    assert f["n_items"] == 130 and f["annotators_per_item"] == 3       # the items all three read
    assert f["ci95"][0] < f["value"] < f["ci95"][1] and a["ci95"][0] < a["value"] < a["ci95"][1]
    assert 0.6 < a["value"] < 0.9 and a["n_items"] == 150
    pairs = {tuple(p["annotators"]): p for p in st["pairwise"]}
    assert set(pairs) == {("ana", "ben"), ("ana", "cleo"), ("ben", "cleo")} and pairs[("ana", "cleo")]["n_items"] == 130
    k = pairs[("ana", "ben")]
    assert k["cohen_kappa"] == pytest.approx(A.cohen_kappa(m[:, 0], m[:, 1], 5), abs=1e-4)
    assert k["cohen_kappa_ci95"][0] < k["cohen_kappa"] < k["cohen_kappa_ci95"][1]
    assert A.agreement_stats(m, ["ana", "ben", "cleo"], 5, resamples=50, seed=1) == \
        A.agreement_stats(m, ["ana", "ben", "cleo"], 5, resamples=50, seed=1)            # seeded
    # ordinal: neighbouring grades count as near-agreement
    near = np.clip(truth[:, None] + rng.integers(-1, 2, (150, 2)), 0, 4).astype(float)
    ordn = A.agreement_stats(near, ["a", "b"], 5, ordinal=True, resamples=0)
    assert ordn["krippendorff_alpha"]["level"] == "ordinal" and ordn["pairwise"][0]["weights"] == "quadratic"
    assert ordn["krippendorff_alpha"]["value"] > ordn["krippendorff_alpha_nominal"]["value"] + 0.3


def _simulated(n=400, k=4, errors=(0.05, 0.15, 0.35), seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    labels = np.stack([np.where(rng.random(n) < e, (truth + rng.integers(1, k, n)) % k, truth) for e in errors], 1)
    probs = rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), truth] += 1.5
    return truth, labels.astype(float), probs / probs.sum(1, keepdims=True)


def test_crowdlab_consensus_and_annotator_quality():
    truth, labels, probs = _simulated()
    ann = A.Annotations([f"i{i}" for i in range(len(truth))], ["good", "fair", "poor"], labels,
                        np.ones(labels.shape, bool), ["a", "b", "c", "d"])
    items, stats, info = A.consensus(ann, probs)
    assert "CROWDLAB" in info["method"] and info["model_weight"] > 0
    assert list(items.columns[:3]) == ["consensus_label", "consensus_quality", "num_annotations"]
    assert (items["num_annotations"] == 3).all() and items["consensus_quality"].between(0, 1).all()
    q = stats["annotator_quality"]
    assert q["good"] > q["fair"] > q["poor"]                            # the true order of the error rates
    vote, tied = A.majority(ann)
    acc_crowd = (items["consensus_label"].to_numpy() == truth).mean()
    assert acc_crowd >= (vote == truth).mean() and acc_crowd > 0.95
    # one annotator only: their labels, scored against the model; no quality without a second reading
    one = A.Annotations(ann.items, ["good"], labels[:, :1], np.ones((len(truth), 1), bool), ["a", "b", "c", "d"])
    items1, stats1, info1 = A.consensus(one, probs)
    assert (items1["consensus_label"].to_numpy() == labels[:, 0]).all() and "single reading" in info1["method"]
    assert stats1["annotator_quality"].isna().all()


def _pool(tmp_path, task="multi-class", names=("a", "b", "c"), n=30, seed=0):
    """A pool directory as the annotate stage leaves it (summary, predictions), without images."""
    pool = tmp_path / "pool"
    (pool / "review").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = [f"test:{i}" for i in range(n)]
    probs = rng.dirichlet(np.ones(len(names)), n).astype(np.float32)
    np.savez_compressed(pool / "pool_predictions.npz", probs=probs, ids=np.array(ids), pool_id=np.array("pool1"))
    (pool / "annotation_summary.json").write_text(json.dumps({"pool_id": "pool1", "model_hash": "model1",
                                                              "task": task, "pool": "test"}))
    return pool, ids, probs


def _label(pool, name, items, labels, names=("a", "b", "c"), task="multi-class", blind=()):
    predicted = {i: [] if task != "multi-class" else 0 for i in items}
    s = ReviewSession(annotator_log(pool / "review", name), list(items), predicted, list(names), "pool1", "model1",
                      owner=name, task=task, blind=frozenset(blind))
    for lab in labels:
        s.label(lab)


def test_pool_agreement_json_consensus_and_adjudication(tmp_path):
    pool, ids, probs = _pool(tmp_path)
    model = probs.argmax(1)
    first = ids[:20]
    ana = [int(model[i]) for i in range(20)]                           # ana agrees with the model
    ben = [c if i % 5 else (c + 1) % 3 for i, c in enumerate(ana)]    # ben differs on items 0, 5, 10, 15
    _label(pool, "ana", first, ana, blind=first[:10])
    _label(pool, "ben", first, ben, blind=first)
    _label(pool, "cleo", ids[20:25], [0] * 5)                          # read by cleo alone
    res = A.analyse(pool, resamples=100, seed=0)
    doc = json.loads((pool / "agreement.json").read_text())
    for key in ("fleiss_kappa", "krippendorff_alpha", "pairwise"):
        assert key in doc
    assert doc["fleiss_kappa"]["value"] == pytest.approx(A.fleiss_kappa(np.array([ana, ben], float).T, 3), abs=1e-4)
    pair = doc["pairwise"][0]
    assert pair["annotators"] == ["ana", "ben"] and pair["n_items"] == 20 and pair["percent_agreement"] == 0.8
    assert pair["cohen_kappa"] == pytest.approx(A.cohen_kappa(np.array(ana), np.array(ben), 3), abs=1e-4)
    assert len(pair["cohen_kappa_ci95"]) == 2
    mv = doc["model_vs"]["annotators"]
    assert mv["ana"]["all"]["percent_agreement"] == 1.0 and mv["ana"]["blind"]["n_items"] == 10
    assert mv["ben"]["all"]["percent_agreement"] == 0.8 and mv["ben"]["blind"]["n_items"] == 20
    assert doc["annotators"] == ["ana", "ben", "cleo"] and doc["n_items_labelled"] == 25
    cons = pd.read_csv(pool / "consensus.csv", dtype={"id": str})
    assert list(cons.columns[:4]) == ["id", "consensus_label", "consensus_quality", "num_annotations"]
    assert len(cons) == 25 and cons.set_index("id").loc["test:22", "num_annotations"] == 1
    adj = pd.read_csv(pool / "adjudication_queue.csv", dtype={"id": str})
    assert {"test:0", "test:5", "test:10", "test:15"} <= set(adj["id"])       # the readers disagree there
    assert adj["consensus_quality"].is_monotonic_increasing and res["adjudication"]["n_items"] == len(adj)
    assert (pool / "agreement_confusion.png").stat().st_size > 1000
    assert "Fleiss' kappa" in A.text_table(res) and "ana / ben" in A.text_table(res)


def test_pool_agreement_multilabel(tmp_path):
    names = ("effusion", "nodule", "mass")
    task = "multi-label, binary-class"
    pool, ids, _ = _pool(tmp_path, task=task, names=names)
    sets_a = [[0], [1, 2], [], [0, 2]] * 5
    sets_b = [[0], [1], [], [0, 2]] * 5
    _label(pool, "ana", ids[:20], sets_a, names=names, task=task)
    _label(pool, "ben", ids[:20], sets_b, names=names, task=task)
    A.analyse(pool, resamples=50)
    doc = json.loads((pool / "agreement.json").read_text())
    assert set(doc["per_label"]) == set(names) and doc["fleiss_kappa"]["labels_averaged"] >= 2
    assert doc["per_label"]["effusion"]["krippendorff_alpha"]["value"] == pytest.approx(1.0)
    assert doc["per_label"]["mass"]["pairwise"][0]["percent_agreement"] == pytest.approx(0.75)
    cons = pd.read_csv(pool / "consensus.csv", dtype={"id": str, "consensus_label": str}, keep_default_na=False)
    assert cons.set_index("id").loc["test:0", "consensus_label"] == "0"


def test_report_section_without_and_with_reviews(tmp_path):
    pool, ids, probs = _pool(tmp_path)
    assert "no review of `pool` yet" in A.report(pool)
    _label(pool, "ana", ids[:6], [0, 1, 2, 0, 1, 2])
    _label(pool, "ben", ids[:6], [0, 1, 2, 0, 1, 1])
    text = A.report(pool, resamples=20)
    assert "Cohen's kappa ana / ben" in text and "data:image/png;base64," in text
    assert not (pool / "agreement.json").exists()                    # a report writes nothing in the pool


def test_pool_with_one_annotator_says_agreement_needs_two(tmp_path):
    pool, ids, probs = _pool(tmp_path)
    _label(pool, "ana", ids[:5], [0, 1, 2, 0, 1])
    res = A.analyse(pool, resamples=50)
    assert "needs items labelled by two or more annotators" in res["note"]
    assert res["fleiss_kappa"]["value"] is None and res["pairwise"] == []
    assert "single reading" in res["consensus"]["method"] and res["annotator_quality"]["ana"]["quality"] is None
    cons = pd.read_csv(pool / "consensus.csv", dtype={"id": str})
    assert cons["consensus_label"].tolist() == [0, 1, 2, 0, 1] and not (pool / "agreement_confusion.png").exists()
    assert "note:" in A.text_table(res)

"""workbench.shift: the pool-vs-val check. Seeded synthetic probabilities only (shape and edge cases; the
measurements on real images and real models are in bench/certify.py)."""

import numpy as np
import pytest

from workbench import metrics, shift
from workbench.errors import WorkbenchError

ML = shift.MULTI_LABEL


def softmax_probs(rng, n, k, signal=4.0, prior=None, noise=1.0):
    """Labels drawn from ``prior`` and probabilities whose true class gets ``signal`` extra logit: a
    model that is right most of the time, with confidence spread below 1."""
    y = rng.choice(k, size=n, p=prior) if prior is not None else rng.integers(0, k, n)
    logits = rng.normal(scale=noise, size=(n, k))
    logits[np.arange(n), y] += signal
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), y


def multilabel_probs(rng, n, n_labels, rates=None, signal=3.0):
    rates = np.full(n_labels, 0.3) if rates is None else np.asarray(rates)
    y = (rng.uniform(size=(n, n_labels)) < rates).astype(np.int64)
    logits = rng.normal(size=(n, n_labels)) + np.where(y == 1, signal, -signal)
    return 1 / (1 + np.exp(-logits)), y


def ltt_threshold(probs, y):
    return metrics.threshold_for_precision(probs.max(1), probs.argmax(1) == y, 0.99, 0.9)["threshold"]


def test_exchangeable_draws_rarely_fire_and_p_values_are_valid():
    """Val and pool from one distribution, 200 seeded repetitions: the check fires at most at about
    alpha, and even with every floor at zero (p-values alone) the rate stays near alpha (Holm keeps the
    family-wise error at alpha)."""
    rng = np.random.default_rng(0)
    fired, significant = 0, 0
    reps = 200
    for _ in range(reps):
        vp, vy = softmax_probs(rng, 600, 8)
        pp, _ = softmax_probs(rng, 900, 8)
        thr = ltt_threshold(vp, vy)
        fired += shift.check(vp, vy, pp, thresholds=thr)["fired"]
        significant += shift.check(vp, vy, pp, thresholds=thr, floors={k: 0.0 for k in shift.FLOORS})["fired"]
    assert fired / reps <= 0.01
    assert significant / reps <= 0.03  # alpha 0.01; 6 of 200 is beyond the binomial's 99.9th percentile


def test_lower_confidence_fires_with_the_confidence_reasons():
    rng = np.random.default_rng(1)
    vp, vy = softmax_probs(rng, 1500, 8, signal=4.0)
    pp, _ = softmax_probs(rng, 2000, 8, signal=2.5)  # a harder pool: confidences drawn lower
    res = shift.check(vp, vy, pp, thresholds=ltt_threshold(vp, vy))
    assert res["fired"] and res["status"] == "shift"
    fired = {t["name"] for t in res["tests"] if t["fired"]}
    assert {"confidence", "doc", "accept_share"} <= fired
    assert "predicted_classes" not in fired  # the classes are as frequent as on val
    text = " ".join(res["reasons"])
    assert "less sure of the pool" in text and "not an accuracy estimate" in text
    doc = next(t for t in res["tests"] if t["name"] == "doc")
    assert doc["difference"] < -0.05 and "estimated_pool_accuracy" not in doc   # no label-free accuracy claim
    assert all(t["p_adjusted"] <= shift.ALPHA and t["effect"] > t["floor"] for t in res["tests"] if t["fired"])
    assert "cannot vouch" in shift.message(res) and res["differs"] == sorted(fired)


def test_class_proportions_changed_fires_naming_the_class():
    rng = np.random.default_rng(2)
    names = [f"class{c}" for c in range(6)]
    vp, vy = softmax_probs(rng, 1500, 6)
    prior = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    pp, _ = softmax_probs(rng, 1500, 6, prior=prior)
    res = shift.check(vp, vy, pp, class_names=names)
    fired = [t for t in res["tests"] if t["fired"]]
    assert [t["name"] for t in fired] == ["predicted_classes"]
    assert "'class0'" in res["reasons"][0] and "predicted classes differ" in res["reasons"][0]
    t = fired[0]
    # w of the true shares against the mixture of both: 0.5 vs 1/6 on class 0 and 0.1 vs 1/6 on the rest
    a, b = np.full(6, 1 / 6), prior
    c = (a + b) / 2
    assert t["effect"] == pytest.approx(np.sqrt(((a - b) ** 2 / c).sum()), abs=0.05)
    assert 0 < t["cramers_v"] < t["effect"] and 0.3 < t["tvd"] < 0.37


def test_effect_floor_keeps_a_tiny_but_significant_difference_from_firing():
    """Large pools make tiny differences significant: the plain test of no difference rejects, the minimum-effect
    test (is the difference larger than the floor?) does not."""
    rng = np.random.default_rng(3)
    vp, vy = softmax_probs(rng, 40000, 4, signal=4.0)
    pp, _ = softmax_probs(rng, 40000, 4, signal=3.9)
    res = shift.check(vp, vy, pp, floors={"confidence": 0.05, "doc": 0.05, "predicted_classes": 0.1})
    conf = next(t for t in res["tests"] if t["name"] == "confidence")
    assert conf["p_no_difference"] < 1e-4 and conf["effect"] < conf["floor"] and not res["fired"]
    assert shift.check(vp, vy, pp, floors={"confidence": 0.0})["fired"]


@pytest.mark.parametrize("n", [100, 1000, 20000])
def test_minimum_effect_z_test_keeps_false_alarms_below_alpha_at_every_size(n):
    """A true difference of half the floor must not fire more often than alpha, however large the pool (the
    rule 'significant and effect above the floor' fired at random on small pools, and a plain test on every
    large one); a difference of twice the floor fires on a large pool."""
    rng = np.random.default_rng(12)
    floor, reps = 0.02, 300
    fired = 0
    for _ in range(reps):
        xv = rng.binomial(1, 0.50, n).astype(float)
        xp = rng.binomial(1, 0.50 + floor / 2, n).astype(float)
        fired += shift._z_min_effect(xv, xp, floor)[2] <= 0.01
    assert fired / reps <= 0.02
    xv = rng.binomial(1, 0.5, 20000).astype(float)
    xp = rng.binomial(1, 0.5 + 2 * floor, 20000).astype(float)
    assert shift._z_min_effect(xv, xp, floor)[2] < 0.01


def test_p_at_floor_reproduces_the_checks_p_values():
    """The benchmark that chooses the floors recomputes each test's p-value at other floors from what check records."""
    rng = np.random.default_rng(14)
    vp, vy = softmax_probs(rng, 800, 5, signal=4.0)
    pp, _ = softmax_probs(rng, 600, 5, signal=3.0, prior=[0.4, 0.15, 0.15, 0.15, 0.15])
    flags = rng.random(600) < 0.05
    res = shift.check(vp, vy, pp, thresholds=ltt_threshold(vp, vy), val_ood=rng.random(800) < 0.01, pool_ood=flags)
    assert {t["name"] for t in res["tests"]} == {"confidence", "predicted_classes", "accept_share", "doc", "ood_share"}
    for t in res["tests"]:
        assert shift.p_at_floor(t, t["floor"]) == pytest.approx(t["p_value"], rel=1e-9, abs=1e-12), t["name"]
        other = shift.check(vp, vy, pp, thresholds=ltt_threshold(vp, vy), val_ood=rng.random(800) < 0.01,
                            pool_ood=flags, floors={t["name"]: 0.0})
        again = next(x for x in other["tests"] if x["name"] == t["name"])
        if t["name"] != "ood_share":           # (its val flags were redrawn)
            assert shift.p_at_floor(t, 0.0) == pytest.approx(again["p_value"], rel=1e-9, abs=1e-12), t["name"]


def test_chi2_minimum_effect_p_value():
    """At w exactly the floor the statistic is at its null's centre (p near 0.5); far above it, p is tiny."""
    lam_stat = 0.1 ** 2 * 1000 * 1000 / 2000 + 7      # E[chi2] at w = floor, df 7
    assert 0.3 < shift._chi2_min_effect(lam_stat, 7, 1000, 1000, 0.1) < 0.7
    assert shift._chi2_min_effect(200.0, 7, 1000, 1000, 0.1) < 1e-6
    assert shift._chi2_min_effect(200.0, 7, 1000, 1000, 0.0) == pytest.approx(
        __import__("scipy").stats.chi2.sf(200.0, 7))


def test_ood_share_fires_when_many_pool_items_are_novel():
    rng = np.random.default_rng(13)
    vp, vy = softmax_probs(rng, 1500, 5)
    pp, _ = softmax_probs(rng, 1500, 5)
    fv = rng.random(1500) < 0.01
    quiet = shift.check(vp, vy, pp, val_ood=fv, pool_ood=rng.random(1500) < 0.012)
    loud = shift.check(vp, vy, pp, val_ood=fv, pool_ood=rng.random(1500) < 0.15, ood_quantile=0.99)
    assert not quiet["fired"] and loud["differs"] == ["ood_share"]
    assert "outside the training data's feature space" in loud["reasons"][0] and "99%" in loud["reasons"][0]
    with pytest.raises(WorkbenchError, match="one flag per item"):
        shift.check(vp, vy, pp, val_ood=fv[:10], pool_ood=fv)


@pytest.mark.parametrize("n_pool", [0, 1, 5])
def test_tiny_pools_do_not_crash_and_do_not_fire_on_uncomputable_tests(n_pool):
    rng = np.random.default_rng(4)
    vp, vy = softmax_probs(rng, 800, 8)
    pp, _ = softmax_probs(rng, n_pool, 8)
    res = shift.check(vp, vy, pp, thresholds=ltt_threshold(vp, vy))
    assert res["status"] == "too little data" and not res["fired"]
    assert res["notes"][0].startswith("too little data") and f"{n_pool} item" in res["notes"][0]
    by = {t["name"]: t for t in res["tests"]}
    for name in ("predicted_classes", "accept_share", "doc"):
        assert not by[name]["computed"] and by[name]["p_value"] is None and not by[name]["fired"]
    assert by["confidence"]["computed"] == (n_pool > 0)
    assert "too little data" in shift.message(res)


def test_tiny_pool_can_fire_only_through_a_computable_test():
    """Five items far below every val confidence: the exact KS p-value is computable and small; the
    tests that need more items stay silent."""
    rng = np.random.default_rng(5)
    vp, vy = softmax_probs(rng, 1000, 4, signal=6.0)
    pp = np.full((5, 4), 0.25)
    pp[:, 0] = 0.31
    pp /= pp.sum(1, keepdims=True)
    res = shift.check(vp, vy, pp)
    assert res["fired"] and [t["name"] for t in res["tests"] if t["fired"]] == ["confidence"]
    assert any(n.startswith("too little data") for n in res["notes"])


def test_multilabel_exchangeable_does_not_fire_and_a_label_shift_does():
    rng = np.random.default_rng(6)
    names = [f"finding{j}" for j in range(5)]
    fired = 0
    for _ in range(40):
        vp, vy = multilabel_probs(rng, 700, 5)
        pp, _ = multilabel_probs(rng, 700, 5)
        res = shift.check(vp, vy, pp, thresholds=0.9, task=ML, class_names=names)
        fired += res["fired"]
        assert sum(t["name"].startswith("predicted_classes[") for t in res["tests"]) == 5
    assert fired <= 1
    vp, vy = multilabel_probs(rng, 1000, 5)
    pp, _ = multilabel_probs(rng, 1000, 5, rates=[0.3, 0.3, 0.75, 0.3, 0.3])
    res = shift.check(vp, vy, pp, thresholds=0.9, task=ML, class_names=names)
    fired_names = [t["name"] for t in res["tests"] if t["fired"]]
    assert "predicted_classes[finding2]" in fired_names
    assert not any(n.startswith("predicted_classes[") and n != "predicted_classes[finding2]" for n in fired_names)
    assert any("'finding2'" in r for r in res["reasons"])
    # per-label confidence is max(p, 1 - p): a confident negative is confident
    assert shift.item_confidence(np.array([[0.02, 0.97]]), ML)[0] == pytest.approx(0.975)
    assert res["val_accuracy"] == pytest.approx(((vp > 0.5) == (vy == 1)).mean())


def test_multilabel_lower_confidence_fires():
    rng = np.random.default_rng(7)
    vp, vy = multilabel_probs(rng, 1000, 4, signal=3.0)
    pp, _ = multilabel_probs(rng, 1000, 4, signal=1.5)
    res = shift.check(vp, vy, pp, thresholds=[0.9, 0.9, 0.95, 0.9], task=ML)
    fired = {t["name"] for t in res["tests"] if t["fired"]}
    assert {"confidence", "doc", "accept_share"} <= fired


def test_hundred_classes_merges_sparse_cells_and_does_not_fire_on_exchangeable_draws():
    rng = np.random.default_rng(8)
    prior = rng.dirichlet(np.full(100, 0.5))  # many rare classes
    fired = 0
    for _ in range(50):
        vp, vy = softmax_probs(rng, 1000, 100, signal=6.0, prior=prior)
        pp, _ = softmax_probs(rng, 300, 100, signal=6.0, prior=prior)
        res = shift.check(vp, vy, pp, thresholds=ltt_threshold(vp, vy))
        fired += res["fired"]
        chi = next(t for t in res["tests"] if t["name"] == "predicted_classes")
        assert chi["computed"] and chi["classes_merged"] > 0 and chi["cells"] < 100
        assert chi["df"] == chi["cells"] - 1
    assert fired <= 1
    # a pool whose predictions crowd into 10 classes
    shifted = np.zeros(100)
    shifted[np.argsort(prior)[-10:]] = 1
    pp, _ = softmax_probs(rng, 300, 100, signal=6.0, prior=shifted / shifted.sum())
    res = shift.check(vp, vy, pp)
    assert "predicted_classes" in [t["name"] for t in res["tests"] if t["fired"]]


def test_merge_rare_keeps_expected_counts_and_totals():
    table = np.array([[500, 300, 4, 3, 2, 0], [100, 60, 1, 0, 2, 0]])
    merged, groups = shift._merge_rare(table)
    assert merged.sum() == table.sum() and (merged.sum(0) > 0).all()
    expected = np.outer(merged.sum(1), merged.sum(0)) / merged.sum()
    assert expected.min() >= shift.MIN_EXPECTED
    assert sorted(c for g in groups for c in g) == [0, 1, 2, 3, 4]  # the never-predicted class is dropped
    # everything rare together still too little: no test
    assert shift._merge_rare(np.array([[3, 1], [1, 0]]))[0].shape[1] == 0


def test_holm_matches_hand_computation():
    assert shift.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert shift.holm([]) == []


def test_thresholds_forms_and_nothing_accepted():
    rng = np.random.default_rng(9)
    vp, vy = softmax_probs(rng, 500, 3)
    pp, _ = softmax_probs(rng, 500, 3)
    per_class = {"thresholds": [0.9, 0.95, float("inf")]}
    res = shift.check(vp, vy, pp, thresholds=per_class)
    share = next(t for t in res["tests"] if t["name"] == "accept_share")
    conf, pred = vp.max(1), vp.argmax(1)
    assert share["val_share"] == pytest.approx(np.mean(conf >= np.array([0.9, 0.95, np.inf])[pred]))
    res = shift.check(vp, vy, pp, thresholds=float("inf"))
    share = next(t for t in res["tests"] if t["name"] == "accept_share")
    assert not share["computed"] and "nothing is auto-accepted" in share["note"]
    assert all(t["name"] != "accept_share" for t in shift.check(vp, vy, pp)["tests"])
    assert res["settings"]["floors"] == shift.FLOORS and res["settings"]["correction"] == "holm"


@pytest.mark.parametrize("kwargs, match", [
    ({"pool_probs": np.full((4, 3), 1 / 3)}, "columns"),
    ({"val_labels": np.full(50, 7)}, "class indices"),
    ({"val_labels": np.zeros(49, int)}, "49 val_labels"),
    ({"task": "regression"}, "unknown task"),
    ({"floors": {"ks": 0.1}}, "unknown floor"),
    ({"thresholds": [0.9, 0.9]}, "thresholds"),
    ({"pool_probs": np.full((4, 4), 2.0)}, "probabilities"),
    ({"alpha": 0.0}, "alpha"),
    ({"class_names": ["a"]}, "class_names"),
])
def test_bad_input_is_one_line_workbench_error(kwargs, match):
    rng = np.random.default_rng(10)
    vp, vy = softmax_probs(rng, 50, 4)
    args = {"val_probs": vp, "val_labels": vy, "pool_probs": vp[:10], **kwargs}
    with pytest.raises(WorkbenchError, match=match) as e:
        shift.check(**args)
    assert "\n" not in str(e.value)


def test_module_is_pure_numpy_scipy():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(shift))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"keras", "jax", "matplotlib", "tensorflow", "torch"}

"""Task support in workbench.metrics: multi-label, ordinal regression, 2 to 100 classes, absent classes,
multi-label auto-accept thresholds; against scikit-learn (and the MedMNIST evaluator's formulas) on
seeded inputs. The inputs are synthetic scores for metric checks, not medical results."""

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from workbench import metrics as M
from workbench.errors import WorkbenchError

ML = "multi-label, binary-class"
ORD = "ordinal-regression"


def _multilabel(n, n_labels=5, seed=0, ties=True):
    """Seeded 0/1 labels with varied prevalence and informative independent sigmoid scores."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.05, 0.5, n_labels)
    y = (rng.uniform(size=(n, n_labels)) < prevalence).astype(np.int64)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, n_labels)) + 2.0 * y - 1.5)))
    if ties:
        p[: n // 4] = np.round(p[: n // 4], 1)  # ties, and some probabilities of exactly 0.5
    return y, p


def _single(n, k, seed=0, sharp=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += sharp
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


# --- the MedMNIST evaluator: getACC / getAUC ------------------------------------------------------------------
def _official(y, score, task):
    """getACC / getAUC of medmnist/evaluator.py (v2/v3), transcribed: multi-label threshold score > 0.5."""
    if task == ML:
        acc = np.mean([skm.accuracy_score(y[:, i], score[:, i] > 0.5) for i in range(y.shape[1])])
        auc = np.mean([skm.roc_auc_score(y[:, i], score[:, i]) for i in range(score.shape[1])])
    elif task == "binary-class":
        s = score[:, -1] if score.ndim == 2 else score
        acc, auc = skm.accuracy_score(y, s > 0.5), skm.roc_auc_score(y, s)
    else:
        acc = skm.accuracy_score(y, np.argmax(score, axis=-1))
        auc = np.mean([skm.roc_auc_score((y == i).astype(float), score[:, i]) for i in range(score.shape[1])])
    return acc, auc


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_acc_auc_is_the_medmnist_evaluator(seed):
    y, p = _multilabel(400, 6, seed)
    assert (p == 0.5).any()  # the threshold's strictness matters on these
    got = M.medmnist_acc_auc(y, p, ML)
    acc, auc = _official(y, p, ML)
    assert got["acc"] == pytest.approx(acc, abs=1e-12) and got["auc"] == pytest.approx(auc, abs=1e-12)
    assert got["n"] == 400 and got["auc_classes_skipped"] == []
    # ≥ 0.5 (MedMNIST v1) would give another ACC here
    v1 = np.mean([skm.accuracy_score(y[:, i], p[:, i] >= 0.5) for i in range(6)])
    assert v1 != pytest.approx(got["acc"], abs=1e-12)


def test_multilabel_label_with_one_class_is_skipped_and_listed():
    y, p = _multilabel(200, 4, 2)
    y[:, 1] = 0  # label 1 never present: the evaluator would raise
    y[:, 3] = 1  # label 3 always present
    got = M.medmnist_acc_auc(y, p, ML)
    assert got["auc_classes_skipped"] == [1, 3]
    assert got["auc"] == pytest.approx(np.mean([skm.roc_auc_score(y[:, i], p[:, i]) for i in (0, 2)]))
    assert got["acc"] == pytest.approx(np.mean([skm.accuracy_score(y[:, i], p[:, i] > 0.5) for i in range(4)]))


@pytest.mark.parametrize("task,k", [("binary-class", 2), ("multi-class", 7), (ORD, 5)])
def test_binary_multiclass_ordinal_are_the_medmnist_evaluator(task, k):
    y, p = _single(500, k, seed=k)
    got = M.medmnist_acc_auc(y.reshape(-1, 1), p, task)  # MedMNIST labels come as (N, 1)
    acc, auc = _official(y, p, task)
    assert got["acc"] == pytest.approx(acc, abs=1e-12) and got["auc"] == pytest.approx(auc, abs=1e-12)
    if task == "binary-class":  # the evaluator also takes the positive score alone
        alone = M.medmnist_acc_auc(y, p[:, 1], task)
        assert (alone["acc"], alone["auc"]) == (got["acc"], got["auc"])


def test_predicted_labels_multilabel():
    p = np.array([[0.2, 0.5, 0.51], [0.9, 0.49, 0.0]])
    pred = M.predicted_labels(p, ML)
    assert pred.dtype == np.int64 and pred.tolist() == [[0, 0, 1], [1, 0, 0]]


# --- multi-label headline numbers -------------------------------------------------------------------------------
def test_multilabel_headline_point_matches_sklearn():
    y, p = _multilabel(600, 5, 3)
    y[:, 4] = 0  # a label never present: its AUC, sensitivity are undefined (NaN), not 0
    pt = M.headline_point(y, p, ML)
    pred = (p > 0.5).astype(int)
    assert pt["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))  # subset accuracy
    with np.errstate(all="ignore"), pytest.warns(UserWarning):
        bal = [skm.balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(5)]
    assert pt["balanced_acc"] == pytest.approx(np.mean(bal))
    r = pt["per_class_rates"]
    assert set(r) == set(M.PER_LABEL_RATES) | {"support"}
    assert r["support"] == y.sum(0).tolist()
    for i in range(4):
        assert r["sensitivity"][i] == pytest.approx(skm.recall_score(y[:, i], pred[:, i]))
        assert r["specificity"][i] == pytest.approx(skm.recall_score(1 - y[:, i], 1 - pred[:, i]))
        assert r["ppv"][i] == pytest.approx(skm.precision_score(y[:, i], pred[:, i]))
        assert r["npv"][i] == pytest.approx(skm.precision_score(1 - y[:, i], 1 - pred[:, i]))
        assert r["f1"][i] == pytest.approx(skm.f1_score(y[:, i], pred[:, i]))
        assert r["accuracy"][i] == pytest.approx(skm.accuracy_score(y[:, i], pred[:, i]))
        assert r["auc"][i] == pytest.approx(skm.roc_auc_score(y[:, i], p[:, i]))
    assert math.isnan(r["sensitivity"][4]) and math.isnan(r["auc"][4])
    assert r["specificity"][4] == pytest.approx(1 - pred[:, 4].mean())
    # the plain-numpy vector gives the same numbers, element by element
    v = M.headline_vector(y, p, ML)
    ref = np.concatenate([[pt[h] for h in M.MULTILABEL_HEADLINE], *[r[name] for name in M.PER_LABEL_RATES]])
    assert len(v) == 4 + 7 * 5
    np.testing.assert_allclose(v, ref, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("task,k", [("binary-class", 2), ("multi-class", 6), (ORD, 5), (ML, 4)])
def test_bootstrap_weights_equal_resampled_copies(task, k):
    """The bootstrap's weighted fast path equals headline_vector on the resampled copy, resample by resample
    (ties included), and for ordinal-regression MAE and kappa equal scikit-learn on that copy."""
    if task == ML:
        y, p = _multilabel(300, k, 4)
    else:
        y, p = _single(300, k, 4)
        p[:100] = np.round(p[:100], 1)
    f = M._engine(y, p, task)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        got = f(np.bincount(idx, minlength=len(y)).astype(float))
        ref = M.headline_vector(y[idx], p[idx], task)
        if task == ORD:
            om = M.ordinal_metrics(y[idx], p[idx])
            ref = np.concatenate([ref, [om["mae"], om["qwk"]]])
        np.testing.assert_allclose(got, ref, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("task", ["multi-class", "binary-class", ML])
def test_intervals_are_those_of_bootstrap_ci_on_headline_vector(task):
    """headline_intervals draws the same resamples as bootstrap_ci (stratified by class; multi-label
    unstratified) and gives the same intervals as the plain resample-and-recompute path."""
    y, p = _multilabel(250, 3, 5) if task == ML else _single(250, 2 if task == "binary-class" else 4, 5)
    r = M.headline_intervals(y, p, task, n_resamples=60, seed=3)
    ref = M.bootstrap_ci(lambda a, b: M.headline_vector(a, b, task), y, p, n_resamples=60, seed=3)
    assert r["acc_ci95"] == pytest.approx([ref["low"][0], ref["high"][0]], abs=1e-12)
    assert r["auc_ci95"] == pytest.approx([ref["low"][1], ref["high"][1]], abs=1e-12)
    assert r["balanced_acc_ci95"] == pytest.approx([ref["low"][2], ref["high"][2]], abs=1e-12)
    assert r["bootstrap"]["method"] == ref["method"]


def test_resampling_is_stratified_by_class_and_unstratified_for_label_matrices():
    y, _ = _single(200, 4, 15)
    counts = M.bootstrap_ci(lambda a: np.bincount(a, minlength=4), y, n_resamples=30)
    assert counts["low"] == counts["high"] == np.bincount(y, minlength=4).tolist()  # every resample keeps them
    assert "stratified by class" in counts["method"]
    ym, _ = _multilabel(200, 3, 15)
    sums = M.bootstrap_ci(lambda a: a.sum(0), ym, n_resamples=30)
    assert all(lo < hi for lo, hi in zip(sums["low"], sums["high"])) and "unstratified" in sums["method"]


def test_multilabel_intervals_structure():
    y, p = _multilabel(800, 4, 6, ties=False)
    r = M.headline_intervals(y, p, ML, n_resamples=200, seed=0)
    assert r["task"] == ML and r["n"] == 800
    for key in M.MULTILABEL_HEADLINE:
        lo, hi = r[f"{key}_ci95"]
        assert lo <= r[key] <= hi and hi - lo < 0.2, key
    assert r["exact_match"] == pytest.approx(skm.accuracy_score(y, p > 0.5))
    assert list(r["per_class_rates"]) == list(M.PER_LABEL_RATES)
    for name, row in r["per_class_rates"].items():
        assert len(row["value"]) == 4 and len(row["ci95"]) == 4
        for v, (lo, hi) in zip(row["value"], row["ci95"]):
            assert lo <= v <= hi, name
    assert r["support"] == y.sum(0).tolist()
    assert "unstratified" in r["bootstrap"]["method"] and r["bootstrap"]["seed"] == 0
    again = M.headline_intervals(y, p, ML, n_resamples=200, seed=0)
    other = M.headline_intervals(y, p, ML, n_resamples=200, seed=1)
    assert again["auc_ci95"] == r["auc_ci95"] and other["auc_ci95"] != r["auc_ci95"]


def test_multilabel_rare_label_is_undefined_on_some_resamples_not_a_crash():
    y, p = _multilabel(300, 3, 7)
    y[:, 2] = 0
    y[5, 2] = 1  # one positive: absent from about a third of the resamples
    r = M.headline_intervals(y, p, ML, n_resamples=100, seed=0)
    lo, hi = r["per_class_rates"]["auc"]["ci95"][2]
    assert lo is not None and 0 <= lo <= hi <= 1
    assert r["per_class_rates"]["sensitivity"]["value"][2] in (0.0, 1.0)


def test_multilabel_paired_gain():
    y, p = _multilabel(500, 4, 8)
    same = M.paired_gain(y, p, p.copy(), ML, n_resamples=50)
    assert same["acc_gain"] == 0 and same["acc_gain_ci95"] == [0.0, 0.0]
    better = 0.5 * p + 0.5 * y  # every probability moved towards its label
    g = M.paired_gain(y, p, better, ML, n_resamples=100)
    assert g["acc"] == pytest.approx(_official(y, better, ML)[0])
    assert g["acc_gain"] > 0 and g["acc_gain_ci95"][0] > 0 and g["auc_gain_ci95"][0] > 0


def test_multilabel_tables_and_curves_match_sklearn():
    y, p = _multilabel(300, 3, 9)
    pred = M.predicted_labels(p, ML)
    table = M.per_class_table(y, pred, ["a", "b", "c"])
    _, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    np.testing.assert_allclose(table.loc[["a", "b", "c"], "recall"], r)
    np.testing.assert_allclose(table.loc[["a", "b", "c"], "f1-score"], f)
    assert table.loc[["a", "b", "c"], "support"].tolist() == s.tolist()
    cm = M.confusion(y, pred, 3)
    assert cm.shape == (3, 2, 2) and np.array_equal(cm, skm.multilabel_confusion_matrix(y, pred))
    np.testing.assert_allclose(M.confusion(y, pred, 3, normalize="true").sum(2), 1.0)
    c = M.curves_summary(y, p, ML)
    assert c == M.curves_summary(y, p)  # a label matrix is recognised without the task
    for i in range(3):
        assert c["roc_auc"][i] == pytest.approx(skm.roc_auc_score(y[:, i], p[:, i]))
        assert c["average_precision"][i] == pytest.approx(skm.average_precision_score(y[:, i], p[:, i]))
        assert c["prevalence"][i] == pytest.approx(y[:, i].mean())


# --- ordinal regression ---------------------------------------------------------------------------------------
def test_ordinal_metrics_match_sklearn():
    y, p = _single(400, 5, 10, sharp=1.0)
    got = M.ordinal_metrics(y, p)
    pred = p.argmax(1)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))
    assert got["n"] == 400 and 0 < got["qwk"] < 1


def test_ordinal_kappa_keeps_the_distance_of_an_absent_grade():
    # grade 2 is neither true nor predicted: without labels=range(K) scikit-learn would treat 1 and 3 as
    # neighbours, and the kappa would change
    y = np.array([0, 1, 3, 4, 1, 3, 0, 4, 1, 3])
    pred = np.array([1, 1, 3, 3, 3, 1, 0, 4, 0, 4])
    p = np.eye(5)[pred] * 0.6 + 0.08
    got = M.ordinal_metrics(y, p)
    assert got["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, labels=range(5), weights="quadratic"))
    assert got["qwk"] != pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))


def test_ordinal_intervals():
    y, p = _single(600, 5, 11, sharp=1.0)
    r = M.headline_intervals(y, p, ORD, n_resamples=200, seed=0)
    om = M.ordinal_metrics(y, p)
    assert r["mae"] == pytest.approx(om["mae"]) and r["qwk"] == pytest.approx(om["qwk"])
    for key in ("acc", "auc", "mae", "qwk"):
        lo, hi = r[f"{key}_ci95"]
        assert lo <= r[key] <= hi and hi > lo, key
    assert "stratified by class" in r["bootstrap"]["method"]
    # the multi-class part is the multi-class report
    mc = M.headline_intervals(y, p, "multi-class", n_resamples=200, seed=0)
    assert (r["acc"], r["auc"], r["acc_ci95"], r["auc_ci95"]) == (mc["acc"], mc["auc"], mc["acc_ci95"], mc["auc_ci95"])
    assert "mae" not in mc and r["per_class_rates"] == mc["per_class_rates"]


# --- many classes, absent classes ------------------------------------------------------------------------------
def test_one_hundred_classes_with_absent_ones():
    k = 100
    y, p = _single(3000, k, 12, sharp=3.0)
    y[np.isin(y, (7, 42, 99))] = 0  # three classes never occur
    r = M.headline_intervals(y, p, n_resamples=30, seed=0)
    assert r["acc"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    present = [c for c in range(k) if c not in (7, 42, 99)]
    assert r["auc_classes_skipped"] == [7, 42, 99]
    assert r["auc"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present]))
    sens = r["per_class_rates"]["sensitivity"]
    assert len(sens["value"]) == k and sens["value"][42] is None and sens["ci95"][42] == [None, None]
    assert r["support"][42] == 0 and sum(r["support"]) == 3000
    lo, hi = r["acc_ci95"]
    assert lo <= r["acc"] <= hi
    assert M.confusion(y, p.argmax(1), k).shape == (k, k)
    assert M.per_class_table(y, p.argmax(1), [f"c{i}" for i in range(k)]).shape == (k + 2, 4)
    assert M.curves_summary(y, p)["roc_auc"][99] is None


def test_class_missing_from_y_true_gives_none_not_a_crash():
    y, p = _single(400, 6, 13)
    y[y == 4] = 5
    r = M.headline_intervals(y, p, n_resamples=50, seed=0)
    rates = r["per_class_rates"]
    assert rates["sensitivity"]["value"][4] is None and rates["sensitivity"]["ci95"][4] == [None, None]
    assert rates["ppv"]["value"][4] == 0.0  # predicted, never right: defined, 0
    assert r["auc_classes_skipped"] == [4] and r["support"][4] == 0
    assert r["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    g = M.paired_gain(y, p, p, n_resamples=20)
    assert g["auc_gain"] == 0


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("y,p,task,match", [
    (np.array([0, 1, 2]), np.full((4, 3), 1 / 3), "multi-class", "shape"),
    (np.array([0, 1, 3]), np.full((3, 3), 1 / 3), "multi-class", "outside the class indices"),
    (np.zeros((3, 2)), np.full((3, 3), 0.4), ML, "shape"),
    (np.full((3, 2), 2), np.full((3, 2), 0.4), ML, "other than 0 and 1"),
    (np.array([0, 1]), np.full((2, 2), 0.5), "regression", "unknown"),
    (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "multi-class", "NaN"),
])
def test_bad_input_is_one_line_error(y, p, task, match):
    with pytest.raises(WorkbenchError, match=match) as e:
        M.headline_intervals(y, p, task, n_resamples=5)
    assert "\n" not in str(e.value)


# --- multi-label auto-accept thresholds ---------------------------------------------------------------------------
def test_multilabel_thresholds_use_threshold_for_precision_per_label():
    y, p = _multilabel(1500, 3, 14, ties=False)
    got = M.multilabel_thresholds(p, y, 0.95)
    assert got["method"] == "point estimate" and len(got["thresholds"]) == 3
    for i, row in enumerate(got["per_label"]):
        conf = np.maximum(p[:, i], 1 - p[:, i])
        ref = M.threshold_for_precision(conf, (p[:, i] > 0.5) == y[:, i], 0.95)
        assert row["label"] == i and row["n_val"] == 1500
        assert (row["threshold"], row["reached"], row["val_precision"], row["val_coverage"]) == \
            (ref["threshold"], ref["reached"], ref["val_precision"], ref["val_coverage"])
        assert got["thresholds"][i] == row["threshold"]
        acc = conf >= row["threshold"]
        assert ((p[acc, i] > 0.5) == y[acc, i]).mean() >= 0.95
    pc = M.multilabel_precision_coverage(y, p, got["thresholds"])
    assert got["val_precision"] == pc["precision"] >= 0.95 and got["val_coverage"] == pc["coverage"]
    sure = M.multilabel_thresholds(p, y, 0.95, guarantee=0.9)
    assert sure["method"] == "learn-then-test" and all("n_min" in r for r in sure["per_label"])
    assert all(a >= b for a, b in zip(sure["thresholds"], got["thresholds"]))  # the guarantee costs coverage


def test_multilabel_precision_coverage_by_hand():
    p = np.array([[0.95, 0.60], [0.02, 0.30], [0.85, 0.97], [0.40, 0.10]])
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
    # confidences: label 0: .95 .98 .85 .60; label 1: .60 .70 .97 .90; decisions right: [1,0],[1,1],[0,1],[1,1]
    got = M.multilabel_precision_coverage(y, p, [0.9, 0.8])
    # accepted: label 0: images 0, 1 (both right); label 1: images 2, 3 (both right)
    assert [r["n_accepted"] for r in got["per_label"]] == [2, 2]
    assert [r["precision"] for r in got["per_label"]] == [1.0, 1.0]
    assert got["precision"] == 1.0 and got["coverage"] == 0.5 and got["n"] == 8
    assert got["all_accepted"] == 0.0 and math.isnan(got["all_accepted_precision"])
    loose = M.multilabel_precision_coverage(y, p, [0.5, 0.5])
    assert loose["precision"] == pytest.approx(6 / 8) and loose["all_accepted"] == 1.0
    assert loose["all_accepted_precision"] == pytest.approx(2 / 4)  # images 1 and 3 right on both labels
    at = M.multilabel_precision_coverage(y, p, [0.95, 0.97])  # a confidence equal to the threshold is accepted
    assert [r["n_accepted"] for r in at["per_label"]] == [2, 1]
    never = M.multilabel_precision_coverage(y, p, [math.inf, 0.5])
    assert never["per_label"][0]["coverage"] == 0.0 and never["all_accepted"] == 0.0
    unlabelled = M.multilabel_precision_coverage(None, p, [0.9, 0.8])
    assert unlabelled["coverage"] == 0.5 and math.isnan(unlabelled["precision"])
    with pytest.raises(WorkbenchError, match="one threshold per label"):
        M.multilabel_precision_coverage(y, p, [0.9])


def test_no_keras_jax_or_matplotlib_on_import():
    code = ("import sys, numpy as np\n"
            "import workbench.metrics as M, workbench.calibration as C\n"
            "y = np.array([[0, 1], [1, 0], [1, 1], [0, 0]]); p = np.array([[.2, .7], [.6, .4], [.8, .9], [.1, .3]])\n"
            "M.headline_intervals(y, p, 'multi-label, binary-class', n_resamples=5)\n"
            "C.evaluate(p, y, p, y, task='multi-label, binary-class', n_resamples=5)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'jax', 'jaxlib', 'matplotlib'))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

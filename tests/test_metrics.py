"""Metrics against scikit-learn on seeded inputs, and operating points on hand-made ones."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from workbench import metrics


def _probs(rng, n, k):
    logits = rng.normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_acc_auc_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, 300)
    probs = _probs(rng, 300, 8)
    probs[np.arange(300), y] += rng.uniform(0, 0.5, 300)  # some signal, so AUC is not ~0.5
    probs /= probs.sum(axis=1, keepdims=True)
    got = metrics.medmnist_acc_auc(y.reshape(-1, 1), probs)  # MedMNIST labels come as (N, 1)
    assert got["acc"] == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-12)
    assert got["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert got["n"] == 300
    assert got["auc_classes_skipped"] == []
    assert 0.5 < got["auc"] < 1.0


def test_binary_uses_positive_column():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(rng.uniform(0, 1, 200) * 0.7 + y * 0.3, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    got = metrics.medmnist_acc_auc(y, probs, task="binary-class")
    assert got["auc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    assert got["acc"] == pytest.approx(accuracy_score(y, (p1 > 0.5).astype(int)), abs=1e-12)
    # the score of the positive class, not of class 0: swapping columns gives 1 - AUC
    swapped = metrics.medmnist_acc_auc(y, probs[:, ::-1], task="binary-class")
    assert swapped["auc"] == pytest.approx(1 - got["auc"], abs=1e-12)


def test_binary_with_one_class_has_nan_auc():
    got = metrics.medmnist_acc_auc(np.ones(4, int), np.full((4, 2), 0.5) + [[-0.1, 0.1]], task="binary-class")
    assert math.isnan(got["auc"]) and got["acc"] == 1.0


def test_class_absent_from_y_true_is_skipped():
    rng = np.random.default_rng(4)
    y = rng.choice([0, 1, 2, 4], 120)  # class 3 never occurs
    probs = _probs(rng, 120, 5)
    got = metrics.medmnist_acc_auc(y, probs)
    assert got["auc_classes_skipped"] == [3]
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in (0, 1, 2, 4)])
    assert got["auc"] == pytest.approx(expected, abs=1e-12)
    assert got["acc"] == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-12)


def test_all_one_class_gives_nan_auc():
    got = metrics.medmnist_acc_auc(np.zeros(5, int), _probs(np.random.default_rng(5), 5, 3))
    assert math.isnan(got["auc"])
    assert got["auc_classes_skipped"] == [0, 1, 2]


def test_per_class_table_equals_sklearn():
    rng = np.random.default_rng(6)
    names = ["a", "b", "c", "d"]
    y_true = rng.integers(0, 4, 150)
    y_pred = np.where(rng.uniform(size=150) < 0.6, y_true, rng.integers(0, 3, 150))
    y_pred[y_pred == 3] = 0  # class d is never predicted: its precision is undefined -> 0, as sklearn
    table = metrics.per_class_table(y_true, y_pred, names)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0)
    assert list(table.index) == names + ["macro avg", "weighted avg"]
    assert list(table.columns) == ["precision", "recall", "f1-score", "support"]
    np.testing.assert_allclose(table.loc[names, "precision"], p)
    np.testing.assert_allclose(table.loc[names, "recall"], r)
    np.testing.assert_allclose(table.loc[names, "f1-score"], f)
    assert table.loc[names, "support"].tolist() == s.tolist()
    assert table.loc["d", "precision"] == 0.0
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], average=avg,
                                                        zero_division=0)
        np.testing.assert_allclose(table.loc[f"{avg} avg", ["precision", "recall", "f1-score"]].astype(float),
                                   [pa, ra, fa])
    assert table.loc["macro avg", "support"] == 150


def test_confusion_equals_sklearn():
    y_true, y_pred = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    assert np.array_equal(metrics.confusion(y_true, y_pred, 4), confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]))
    norm = metrics.confusion(y_true, y_pred, 3, normalize="true")
    np.testing.assert_allclose(norm.sum(axis=1), 1.0)


CONF = np.array([0.99, 0.95, 0.9, 0.8, 0.6])
CORRECT = np.array([1, 1, 1, 0, 1])


@pytest.mark.parametrize("target, threshold, coverage, precision", [
    (1.0, 0.9, 0.6, 1.0),
    (0.9, 0.9, 0.6, 1.0),
    (0.8, 0.6, 1.0, 0.8),   # 4/5 correct reaches 0.8 exactly: everything is accepted
    (0.5, 0.6, 1.0, 0.8),
])
def test_threshold_for_precision_hand_made(target, threshold, coverage, precision):
    got = metrics.threshold_for_precision(CONF, CORRECT, target)
    assert got["reached"] is True
    assert got["threshold"] == threshold
    assert got["val_coverage"] == pytest.approx(coverage)
    assert got["val_precision"] == pytest.approx(precision)
    assert got["target_precision"] == target and got["n_val"] == 5


def test_threshold_order_of_inputs_does_not_matter():
    perm = np.array([3, 0, 4, 2, 1])
    assert metrics.threshold_for_precision(CONF[perm], CORRECT[perm], 1.0)["threshold"] == 0.9


def test_unreachable_target_accepts_nothing():
    got = metrics.threshold_for_precision(CONF, np.array([0, 1, 1, 1, 1]), 1.0)  # the most confident is wrong
    assert got["threshold"] == math.inf
    assert got["reached"] is False
    assert got["val_coverage"] == 0.0
    assert math.isnan(got["val_precision"])
    assert not np.any(CONF >= got["threshold"])


def test_ties_are_never_split():
    conf = np.array([0.9, 0.9, 0.8])
    # a split after the first 0.9 would give precision 1.0; the tie must be accepted together (0.5)
    for correct in ([1, 0, 1], [0, 1, 1]):
        got = metrics.threshold_for_precision(conf, np.array(correct), 1.0)
        assert got["threshold"] == math.inf and got["reached"] is False
    got = metrics.threshold_for_precision(conf, np.array([1, 0, 1]), 0.5)
    assert got["threshold"] == 0.8 and got["val_coverage"] == 1.0
    got = metrics.threshold_for_precision(np.array([0.7, 0.7, 0.7, 0.2]), np.array([1, 1, 0, 0]), 0.6)
    assert got["threshold"] == 0.7 and got["val_coverage"] == 0.75
    assert got["val_precision"] == pytest.approx(2 / 3)


def test_threshold_accepted_set_meets_target_on_random_data():
    rng = np.random.default_rng(7)
    conf = np.round(rng.uniform(0.3, 1.0, 500), 2)  # many ties
    correct = rng.uniform(size=500) < conf
    for target in (0.8, 0.9, 0.95):
        got = metrics.threshold_for_precision(conf, correct, target)
        accepted = conf >= got["threshold"]
        assert correct[accepted].mean() >= target
        assert got["val_coverage"] == pytest.approx(accepted.mean())
        # maximal: any lower distinct threshold misses the target
        for t in np.unique(conf[conf < got["threshold"]]):
            assert correct[conf >= t].mean() < target


def test_precision_coverage():
    got = metrics.precision_coverage([1, 1, 0, 1, 0], [1, 0, 1, 1, 0])
    assert got == {"precision": pytest.approx(2 / 3), "coverage": 0.6, "n_accepted": 3, "n": 5}
    none = metrics.precision_coverage([0, 0], [1, 1])
    assert math.isnan(none["precision"]) and none["coverage"] == 0.0 and none["n_accepted"] == 0


# --- Learn-then-Test thresholds (guarantee > 0) ------------------------------------------------------------
def test_guarantee_needs_enough_images_to_pass():
    # zero errors in n images certify precision 0.99 at level 0.1 only from n_min = 230 on
    conf = np.linspace(1.0, 0.5, 300)
    for n_correct, reached in ((229, False), (230, True)):
        correct = np.arange(300) < n_correct  # the n most confident are right, the rest wrong
        got = metrics.threshold_for_precision(conf, correct, 0.99, guarantee=0.9)
        assert got["n_min"] == 230 and got["method"] == "learn-then-test"
        assert got["reached"] is reached
        if reached:
            assert got["threshold"] == pytest.approx(conf[229]) and got["val_coverage"] == pytest.approx(230 / 300)
        else:
            assert got["threshold"] == math.inf and got["val_coverage"] == 0.0
    # the point estimate goes on to 231 (229 right, 2 wrong: 0.991) without asking how sure that is
    assert metrics.threshold_for_precision(conf, np.arange(300) < 229, 0.99)["val_coverage"] == pytest.approx(231 / 300)


def test_guarantee_stops_at_the_first_failed_test():
    # an error in the top 300 makes that cut fail, even though lower cuts would pass again
    conf = np.linspace(1.0, 0.0, 3000, endpoint=False)
    correct = np.ones(3000, bool)
    correct[[250, 251, 252, 253]] = False  # 4 errors in the first 254: p-value far above 0.1
    got = metrics.threshold_for_precision(conf, correct, 0.99, guarantee=0.9)
    assert got["reached"] and got["threshold"] >= conf[249]
    assert metrics.threshold_for_precision(conf, correct, 0.99)["val_coverage"] == 1.0


def test_guarantee_holds_on_new_data_where_the_point_estimate_does_not():
    """Scores whose correctness probability equals the confidence. Thresholds are chosen on 1,500
    'val' items and checked on 20,000 new ones. The guarantee-0.9 rule may miss the target in at most
    about 10 % of the draws. The point estimate misses it far more often."""
    rng = np.random.default_rng(3)
    miss = {0.0: 0, 0.9: 0}
    coverage = {0.0: [], 0.9: []}
    draws = 60

    def sample(n):
        conf = 1 - rng.beta(0.35, 6, n)  # most items confident, a long uncertain tail
        return conf, rng.uniform(size=n) < conf
    for _ in range(draws):
        cv, kv = sample(1500)
        cn, kn = sample(20000)
        for g in miss:
            t = metrics.threshold_for_precision(cv, kv, 0.99, guarantee=g)["threshold"]
            acc = cn >= t
            miss[g] += bool(acc.any() and kn[acc].mean() < 0.99)
            coverage[g].append(acc.mean())
    assert miss[0.9] / draws <= 0.15
    assert miss[0.0] / draws >= 0.25
    assert 0.3 < np.mean(coverage[0.9]) < np.mean(coverage[0.0])  # the price: a little less coverage


def test_guarantee_of_precision_one_is_never_certified():
    conf = np.linspace(1.0, 0.5, 1000)
    got = metrics.threshold_for_precision(conf, np.ones(1000, bool), 1.0, guarantee=0.9)
    assert got["reached"] is False and got["threshold"] == math.inf

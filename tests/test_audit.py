"""Label audit: cross-validated out-of-sample probabilities and confident learning (cleanlab)."""

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend)
from conftest import TINY
from workbench import audit, models
from workbench.errors import WorkbenchError


def test_confident_learning_finds_planted_label_errors():
    """Planted signal: probabilities that know the true class, labels with 8 % flipped."""
    rng = np.random.default_rng(0)
    n, k = 800, 4
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), truth] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.choice(n, size=64, replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, k, 64)) % k
    issues = audit.find_issues(given, probs)
    found = set(issues["position"])
    recall = len(found & set(flipped)) / len(flipped)
    precision = len(found & set(flipped)) / max(len(found), 1)
    assert recall >= 0.8 and precision >= 0.7, (recall, precision)
    hit = issues[issues["position"].isin(flipped)]
    # the suggested label is the true one for nearly every planted error found
    assert (hit["suggested_label"].to_numpy() == truth[hit["position"]]).mean() >= 0.9
    # worst first: ranked by the probability of the given label, ascending
    assert np.all(np.diff(issues["given_label_prob"].to_numpy()) >= -1e-9)
    table = audit.issues_table(issues, ["a", "b", "c", "d"], "train")
    assert list(table.columns) == ["rank", "index", "split", "id", "given_label", "given_class", "suggested_label",
                                   "suggested_class", "given_label_prob", "suggested_prob"]
    assert table["id"].iloc[0] == f"train:{table['index'].iloc[0]}"


def test_cross_validation_refuses_too_few_folds_or_images():
    """(The folds' training itself runs in the end-to-end pipeline: see test_pipeline.py.)"""
    with np.load(TINY) as z:
        x, y = z["train_images"], z["train_labels"].reshape(-1)

    def build():
        return models.build("cnn", (28, 28, 3), 8, width=4, dropout=0.0)

    with pytest.raises(WorkbenchError, match="at least 2 folds"):
        audit.cross_val_probs(x, y, build, folds=1)
    with pytest.raises(WorkbenchError, match="every class"):
        audit.cross_val_probs(x[:20], y[:20], build, folds=5)


def test_out_of_sample_probabilities_depend_on_the_seed_only():
    """The folds' initial weights are seeded: whatever the process drew before, the same seed gives the
    same probabilities (a label audit is reproducible, in a fresh kernel or after other stages)."""
    import keras
    with np.load(TINY) as z:
        x, y = z["train_images"][:96], z["train_labels"].reshape(-1)[:96]

    def build():
        return models.build("cnn", (28, 28, 3), 8, width=4, dropout=0.0)

    runs = []
    for before in (1, 2):
        keras.utils.set_random_seed(before)   # another state of the global generators
        keras.random.uniform((3,))            # and draws from them
        runs.append(audit.cross_val_probs(x, y, build, folds=2, epochs=1, seed=0, batch_size=32)[0])
    np.testing.assert_array_equal(runs[0], runs[1])

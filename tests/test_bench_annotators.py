"""bench/annotators.py: the simulated annotators make the errors they are meant to (rate, destinations)."""

import numpy as np
import pytest

from bench import annotators as B


def _model(n=4000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), truth] += rng.uniform(0, 3, n)
    return truth, probs / probs.sum(1, keepdims=True)


def test_confusion_structure_and_error_rates():
    truth, probs = _model()
    err, where = B.confusion_structure(probs, truth, 4)
    pred = probs.argmax(1)
    assert err == pytest.approx([float((pred[truth == c] != c).mean()) for c in range(4)])
    assert np.allclose(where.sum(1), 1) and np.allclose(np.diag(where), 0)
    prior = np.bincount(truth, minlength=4) / len(truth)
    rates = B.class_error_rates(np.array([0.02, 0.3, 0.01, 0.0]), prior, 0.25)
    assert prior @ rates == pytest.approx(0.25) and rates.max() <= 0.9 and rates[1] == max(rates)
    w = np.random.default_rng(1).uniform(0, 1, 500)
    p = B.water_fill(w, 0.4)
    assert p.mean() == pytest.approx(0.4, abs=1e-6) and p.max() <= 1


@pytest.mark.parametrize("noise", ["class", "item"])
def test_simulated_annotator_error_rate_and_destinations(noise):
    truth, probs = _model()
    err, where = B.confusion_structure(probs, truth, 4)
    rng = np.random.default_rng(0)
    labels = B.simulate(truth, probs, np.full(4, 0.15), where, noise, rng)
    wrong = labels != truth
    assert wrong.mean() == pytest.approx(0.15, abs=0.02)
    for c in range(4):                                         # the errors of class c go where the model's go
        dest = np.bincount(labels[wrong & (truth == c)], minlength=4) / max((wrong & (truth == c)).sum(), 1)
        assert np.abs(dest - where[c]).max() < 0.1
    doubt = 1 - probs[np.arange(len(truth)), truth]
    hard = doubt > np.median(doubt)
    if noise == "item":                                        # errors pile up where the model doubts
        assert wrong[hard].mean() > 2 * wrong[~hard].mean()
    else:
        assert wrong[hard].mean() == pytest.approx(wrong[~hard].mean(), abs=0.03)

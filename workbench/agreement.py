"""Several annotators on one pool: agreement, consensus and annotator quality (no widgets, no Keras).

Consensus and annotator quality come from cleanlab's multi-annotator API: CROWDLAB
(``cleanlab.multiannotator.get_label_quality_multiannotator``; Goh, Tkachenko & Mueller 2022), which
weighs each annotator and the model's out-of-sample probabilities by their estimated quality. Where a
label must not depend on the model (the certification sample), the consensus is cleanlab's majority
vote without the model (``get_majority_vote_label`` with no ``pred_probs``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np


@contextmanager
def _seeded_global_rng(seed: int):
    """cleanlab breaks the last majority-vote ties with NumPy's global generator (its warning suggests
    seeding it): seed it for the call and restore its state after, so results are reproducible and no
    other code's randomness changes."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def majority_vote(matrix: np.ndarray, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model-free consensus of an (items, annotators) label matrix (NaN: not labelled; every row has a
    label): cleanlab's majority vote, its ties broken by the empirical class frequencies, then by the
    annotators' agreement with the untied majority, then at random (seeded). Returns (labels, tied:
    True where the vote was a tie)."""
    from cleanlab.multiannotator import get_majority_vote_label
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or not len(m):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=bool)
    counts = np.stack([(m == c).sum(1) for c in range(num_classes)], 1)
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    if m.shape[1] == 1:
        return m[:, 0].astype(int), tied
    with _seeded_global_rng(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "breaking ties ... by random selection": reported as ``tied``
        labels = get_majority_vote_label(m, pred_probs=None, verbose=False)
    return np.asarray(labels, dtype=int), tied

"""bench/features.py helpers."""

import numpy as np
import pytest


def test_bench_compares_the_agreement_rule_at_equal_coverage():
    from bench.features import equal_coverage
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.50])
    agree = np.array([True, False, True, True, True])
    correct = np.array([True, False, True, True, False])
    r = equal_coverage(conf, agree, correct, conf >= 0.97)             # the plain rule: 3 items, 1 wrong
    assert r["reachable"] and r["n_accepted"] == 3
    assert r["plain_precision"] == pytest.approx(2 / 3) and r["errors_plain"] == 1
    assert r["agreement_precision"] == 1.0 and r["agreement_threshold"] == 0.96 and r["errors_agreement"] == 0
    short = equal_coverage(conf, np.array([True, False, False, False, False]), correct, conf >= 0.97)
    assert not short["reachable"] and short["agreement_max_coverage"] == pytest.approx(0.2)

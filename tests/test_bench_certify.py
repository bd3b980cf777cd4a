"""bench/certify.py: the design/evaluation split is pinned, floors are chosen on the design pools only, and the
baselines of the OOD benchmark do what they say (the benchmark itself runs in `make bench-certify`)."""

import numpy as np
import pytest

from bench import certify as bench
from workbench import shift


def test_design_and_evaluation_pools_are_pinned_and_disjoint():
    seeds = bench.design_eval_seeds()
    assert seeds["design"] == list(range(0, 100)) and seeds["evaluation"] == list(range(10_000, 10_100))
    assert not set(seeds["design"]) & set(seeds["evaluation"])
    # the same seed and size always draw the same pool; design and evaluation pools differ
    a = bench.pool_indices(5133, 500, 0)
    assert np.array_equal(a, bench.pool_indices(5133, 500, 0)) and len(np.unique(a)) == 500
    assert not np.array_equal(a, bench.pool_indices(5133, 500, 10_000))
    assert bench.sizes_for(5133) == [100, 250, 500, 1000, 2500, 5000]
    assert bench.sizes_for(234) == [100] and bench.sizes_for(60) == [60]


def test_floors_come_from_the_design_rows_alone():
    """choose_floors reads only what it is given: a test whose design effects are large gets a large floor."""
    rng = np.random.default_rng(0)

    def row(size, conf_d, doc_d):
        se = 0.5 / np.sqrt(size)
        tests = {"confidence": {"name": "confidence", "computed": True, "effect": conf_d, "n_val": 1000,
                                "n_pool": size},
                 "doc": {"name": "doc", "computed": True, "effect": doc_d, "se": se / 10},
                 "predicted_classes": {"name": "predicted_classes", "computed": False},
                 "accept_share": {"name": "accept_share", "computed": False},
                 "ood_share": {"name": "ood_share", "computed": False}}
        return {"dataset": "x", "size": size, "tests": tests}

    rows = [row(s, abs(rng.normal(0.08, 0.01)), abs(rng.normal(0.002, 0.001))) for s in (100, 1000) for _ in range(50)]
    got = bench.choose_floors(rows)["floors"]
    assert 0.02 <= got["confidence"] <= 0.1 and got["doc"] <= 0.01
    assert got["predicted_classes"] == 0.0                   # never computed: nothing to guard against
    rate = np.mean([shift.p_at_floor(r["tests"]["confidence"], got["confidence"]) <= shift.ALPHA for r in rows])
    assert rate <= bench.DESIGN_RATE


def test_pixel_baseline_and_colour_matching():
    rng = np.random.default_rng(1)
    red = rng.integers(150, 255, (60, 8, 8, 3)).astype(np.uint8)
    red[..., 1:] //= 3
    blue = red[..., ::-1].copy()
    base = bench.PixelBaseline(red[:40])
    assert bench.auroc(base.scores(red[40:]), base.scores(blue)) > 0.95        # colour alone separates them
    matched = bench.match_colour(blue, red[:40])
    assert matched.shape == blue.shape and matched.dtype == np.uint8
    assert np.abs(matched.mean(axis=(0, 1, 2)) - red.mean(axis=(0, 1, 2))).max() < 6   # channel means now agree
    assert bench.auroc(np.zeros(5), np.ones(5)) == 1.0


def test_prior_shift_resampling_follows_the_proportions():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])
    probs = np.eye(4)[labels]
    probs[labels == 3] = np.eye(4)[0]  # class 3 always wrong on "val": the hardest
    p = bench.prior_proportions("prior_hard", probs, labels, 4)
    assert p.sum() == pytest.approx(1) and p[3] == 0.25
    idx = bench.resample(labels, p, seed=0)
    assert len(np.unique(idx)) == len(idx)
    assert np.bincount(labels[idx], minlength=4) / len(idx) == pytest.approx(p, abs=0.01)

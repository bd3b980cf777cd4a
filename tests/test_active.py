"""Uncertainty strategies, MC-dropout without touching BatchNormalization, TTA, the active-learning loop."""

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend)
from conftest import TINY
from workbench import active, augment, models
from workbench.errors import WorkbenchError

P = np.array([[0.7, 0.2, 0.1],
              [0.4, 0.35, 0.25],
              [1 / 3, 1 / 3, 1 / 3],
              [0.98, 0.01, 0.01]])


def test_scores_against_hand_computed_values():
    np.testing.assert_allclose(active.least_confidence(P), [0.3, 0.6, 2 / 3, 0.02])
    np.testing.assert_allclose(active.margin(P), [0.5, 0.95, 1.0, 0.03])
    np.testing.assert_allclose(active.entropy(P)[2], np.log(3))
    np.testing.assert_allclose(active.entropy(P)[0], -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)))
    # the uniform row is the most uncertain for every score; the confident row the least
    for name in ("least_confidence", "margin", "entropy"):
        order = active.rank(active.score(name, P))
        assert order[0] == 2 and order[-1] == 3


def test_mutual_information_is_disagreement_between_passes():
    agree = np.stack([P, P, P])
    assert np.allclose(active.mutual_information(agree), 0)
    disagree = np.stack([np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[1, 2, 0, 0]]]) * 0.98 + 0.02 / 3
    mi = active.mutual_information(disagree)
    assert mi[:3].min() > 0.5 and mi[3] < 1e-9  # row 3: both passes say class 0


def test_rank_is_stable_and_random_is_seeded():
    assert active.rank(np.array([0.5, 0.9, 0.5, 0.1])).tolist() == [1, 0, 2, 3]
    a, b = active.score("random", P, seed=3), active.score("random", P, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, active.score("random", P, seed=4))
    with pytest.raises(WorkbenchError, match="unknown strategy"):
        active.score("bald", P)


@pytest.fixture(scope="module")
def tiny():
    with np.load(TINY) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def trained():
    """A tiny model whose BatchNormalization statistics are far from their initial 0/1 (as after
    training), so running BN in training mode would visibly change the output."""
    import keras
    keras.utils.set_random_seed(0)
    m = models.build("cnn", (28, 28, 3), 8, width=8, dropout=0.5)
    rng = np.random.default_rng(0)
    for lay in m.layers:
        if "bn" in lay.name:
            lay.moving_mean.assign(rng.normal(0, 0.5, lay.moving_mean.shape).astype("float32"))
            lay.moving_variance.assign(rng.uniform(0.2, 3.0, lay.moving_variance.shape).astype("float32"))
    return m


def test_mc_dropout_keeps_batchnorm_in_inference_mode(trained, tiny):
    x = tiny["val_images"][:40]
    det = trained.predict(x.astype("float32"), verbose=0)
    bn = [lay for lay in trained.layers if "bn" in lay.name]
    before = [np.array(v) for lay in bn for v in lay.non_trainable_weights]
    # dropout switched off: both the split (prefix once + head) and the whole-model path give the
    # deterministic prediction exactly, so every other layer ran in inference mode
    for split in (True, False):
        off = active.mc_dropout_passes(trained, x, n_passes=2, rate=0.0, split=split)
        np.testing.assert_allclose(off[0], det, atol=1e-5)
    on = active.mc_dropout_passes(trained, x, n_passes=4, seed=2**30 + 1)  # any seed the rng may draw
    assert on.shape == (4, 40, 8) and np.allclose(on.sum(-1), 1, atol=1e-4)
    assert np.abs(on[0] - on[1]).max() > 1e-3  # the passes really sample
    after = [np.array(v) for lay in bn for v in lay.non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # moving statistics untouched
    # the original model is unchanged (still deterministic, same output)
    np.testing.assert_allclose(trained.predict(x.astype("float32"), verbose=0), det, atol=1e-6)


def test_mc_dropout_needs_a_dropout_layer(tiny):
    import keras
    m = keras.Sequential([keras.Input((28, 28, 3)), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(8, activation="softmax")])
    with pytest.raises(WorkbenchError, match="no Dropout layer"):
        active.mc_dropout_passes(m, tiny["val_images"][:4], n_passes=2)


def test_tta_passes_and_uncertainty(trained, tiny):
    x = tiny["val_images"][:24]
    t = augment.build("microscopy", 0)
    passes = active.tta_passes(trained, x, t, n_passes=3)
    assert passes.shape == (3, 24, 8) and np.abs(passes[0] - passes[1]).max() > 1e-4
    with pytest.raises(WorkbenchError, match="preset 'none'"):
        active.tta_passes(trained, x, augment.build("none", 0), n_passes=2)
    res = active.uncertainty("tta", trained, x, transform=augment.build("microscopy", 0), n_passes=3, temperature=2.0)
    assert res["score"].shape == (24,) and np.allclose(res["probs"].sum(1), 1)
    np.testing.assert_allclose(res["score"], active.entropy(res["probs"]))


def test_simulated_active_learning_loop(tiny):
    x, y = tiny["train_images"], tiny["train_labels"].reshape(-1)
    cfg = active.ALConfig(strategy="margin", seed=0, fractions=(0.1, 0.3), first_epochs=1, round_epochs=1,
                          batch_size=64, width=4, augment="none")
    res = active.simulate(x, y, tiny["test_images"], tiny["test_labels"].reshape(-1), 8, cfg)
    labels_used = [p["labels"] for p in res["curve"]]
    assert labels_used == [24, 72]
    assert len(set(res["labelled"].tolist())) == 72  # never labels an item twice
    assert all(0 <= p["test_acc"] <= 1 for p in res["curve"])
    assert sum(res["curve"][1]["picked_class_counts"]) == 48
    assert active.fraction_to_reach(res["curve"], -1.0) == pytest.approx(0.1)
    assert active.fraction_to_reach(res["curve"], 1.01) is None

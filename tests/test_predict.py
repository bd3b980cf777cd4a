"""workbench.predict directly: batching and padding, streams, calibration, TTA, MC-dropout (a tiny untrained
CNN: these are properties of the code paths, not of a trained model)."""

import numpy as np
import pytest

from workbench import augment, models, predict
from workbench.errors import WorkbenchError


@pytest.fixture(scope="module")
def net():
    import workbench  # noqa: F401  (the JAX backend first)
    return models.build("cnn", (28, 28, 3), 5, width=4, dropout=0.5)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (37, 28, 28, 3)).astype(np.uint8)


def test_pad_batch_repeats_the_last_item():
    a = np.arange(6).reshape(3, 2)
    out = predict.pad_batch(a, 5)
    assert out.shape == (5, 2) and (out[3:] == a[-1]).all() and (out[:3] == a).all()
    assert predict.pad_batch(a, 2) is a


def test_predict_batches_pad_and_keep_the_order(net, images):
    p = predict.predict(net, images, batch_size=16, progress=False)
    assert p.shape == (37, 5) and p.dtype == np.float64 and np.allclose(p.sum(1), 1, atol=1e-5)
    # one image alone, and the images in another batch size: the same probabilities up to rounding
    one = predict.predict(net, images[20:21], batch_size=16, progress=False)
    assert np.allclose(one, p[20:21], atol=1e-5)
    assert np.allclose(predict.predict(net, images, batch_size=7, progress=False), p, atol=1e-5)
    assert predict.predict(net, images[:0], progress=False).shape == (0, 5)


def test_predict_stream_puts_rows_at_their_positions(net, images):
    p = predict.predict(net, images, batch_size=16, progress=False)
    order = np.random.default_rng(1).permutation(len(images))
    batches = [(order[i:i + 10], images[order[i:i + 10]]) for i in range(0, len(order), 10)]
    s = predict.predict_stream(net, iter(batches), len(images), batch_size=16)
    assert np.allclose(s, p, atol=1e-5)
    missing = predict.predict_stream(net, iter(batches[:1]), len(images), batch_size=16)
    assert np.isnan(missing).any(1).sum() == len(images) - 10    # rows never delivered stay NaN


def test_calibrated_applies_the_temperature_only_when_given():
    p = np.array([[0.7, 0.2, 0.1]])
    assert predict.calibrated(p, None, "multi-class") is p
    hot = predict.calibrated(p, 2.0, "multi-class")
    assert hot[0, 0] < 0.7 and np.allclose(hot.sum(), 1) and hot.argmax() == 0


def test_tta_is_seeded_and_needs_an_augmentation(net, images, tmp_path):
    t = augment.build("dihedral", 0, n_channels=3)
    augment.save(t, "dihedral", 0, tmp_path / "augment.yaml")
    a = predict.tta_predict(net, images, tmp_path / "augment.yaml", passes=3, seed=5, batch_size=16)
    b = predict.tta_predict(net, images, tmp_path / "augment.yaml", passes=3, seed=5, batch_size=16)
    c = predict.tta_predict(net, images, tmp_path / "augment.yaml", passes=3, seed=6, batch_size=16)
    assert np.allclose(a, b, atol=1e-6) and not np.allclose(a, c, atol=1e-6) and np.allclose(a.sum(1), 1, atol=1e-5)
    passes = predict.tta_passes(net, images, augment.build("dihedral", 1, 3), n_passes=2, batch_size=16)
    assert passes.shape == (2, 37, 5)
    with pytest.raises(WorkbenchError, match="tta_passes 0"):
        predict.tta_passes(net, images, augment.build("none", 0, 3), n_passes=2)


def test_mc_dropout_samples_only_the_dropout_and_is_seeded(net, images):
    det = predict.predict(net, images, batch_size=16, progress=False)
    zero = predict.mc_dropout_passes(net, images, n_passes=2, seed=0, batch_size=16, rate=0.0)
    assert np.allclose(zero, det[None], atol=1e-5)                 # rate 0: nothing else changed
    a = predict.mc_dropout_passes(net, images, n_passes=3, seed=0, batch_size=16)
    b = predict.mc_dropout_passes(net, images, n_passes=3, seed=0, batch_size=16)
    assert a.shape == (3, 37, 5) and np.allclose(a, b) and not np.allclose(a[0], a[1])
    split = predict.mc_dropout_passes(net, images, n_passes=3, seed=0, batch_size=16, split=False)
    assert np.allclose(split.mean(0), a.mean(0), atol=0.2)          # the split path samples the same model
    plain = models.build("cnn", (28, 28, 3), 5, width=4, dropout=0.0)
    with pytest.raises(WorkbenchError, match="no Dropout layer"):
        predict.mc_dropout_model(plain)

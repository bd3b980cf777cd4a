"""Grad-CAM and occlusion on JAX: they find a planted discriminative patch; every registry model works.

The planted-signal task is seeded synthetic data (not medical): grey noise with one 10×10 patch at a
random place whose colour (red, green or blue) is the class. A position-invariant conv net must look at
the patch, so an explanation that is right peaks inside it.
"""

import numpy as np
import pytest

import workbench  # noqa: F401,I001  (selects the JAX backend: import before keras)
import keras  # noqa: E402
from workbench import explain
from workbench.errors import WorkbenchError
from workbench.models import MODELS, build

PATCH = 10


def _planted(n, seed, side=28):
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 140, size=(n, side, side, 3)).astype(np.uint8)
    y = rng.integers(0, 3, n)
    pos = rng.integers(0, side - PATCH + 1, size=(n, 2))
    for i in range(n):
        colour = np.full(3, 40)
        colour[y[i]] = 250
        x[i, pos[i, 0]:pos[i, 0] + PATCH, pos[i, 1]:pos[i, 1] + PATCH] = colour
    return x, y, pos


def _peak_inside(maps, pos):
    inside = []
    for m, (r, c) in zip(maps, pos):
        py, px = np.unravel_index(np.argmax(m), m.shape)
        inside.append(r <= py < r + PATCH and c <= px < c + PATCH)
    return np.array(inside)


@pytest.fixture(scope="module")
def planted_cnn():
    x, y, _ = _planted(256, seed=0)
    keras.utils.set_random_seed(0)
    model = build("cnn", (28, 28, 3), 3, width=8, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=3, batch_size=16, verbose=0)
    xt, yt, pos = _planted(48, seed=100)
    pred = model.predict(xt.astype("float32"), verbose=0).argmax(1)
    return model, xt, yt, pos, pred


def test_gradcam_peaks_inside_the_planted_patch(planted_cnn):
    model, xt, yt, pos, pred = planted_cnn
    assert (pred == yt).mean() >= 0.9  # the net learned the task
    cams = explain.gradcam(model, xt, yt)
    assert cams.shape == (48, 28, 28) and cams.min() >= 0 and cams.max() <= 1
    ok = pred == yt
    inside = _peak_inside(cams[ok], pos[ok])
    assert inside.mean() >= 0.9, inside.mean()
    # and the map is concentrated there: mean inside the patch well above the mean over the image
    ratio = [c[r:r + PATCH, q:q + PATCH].mean() / max(c.mean(), 1e-9) for c, (r, q) in zip(cams[ok], pos[ok])]
    assert np.median(ratio) > 2


def test_gradcam_of_predicted_class_is_default(planted_cnn):
    model, xt, _, _, pred = planted_cnn
    np.testing.assert_allclose(explain.gradcam(model, xt[:8]), explain.gradcam(model, xt[:8], pred[:8]), atol=1e-6)
    with pytest.raises(WorkbenchError, match="out of range"):
        explain.gradcam(model, xt[:2], 3)


def test_occlusion_peaks_inside_the_planted_patch(planted_cnn):
    model, xt, yt, pos, pred = planted_cnn
    ok = np.flatnonzero(pred == yt)[:12]
    occ = explain.occlusion(model, xt[ok], yt[ok])
    assert occ.shape == (len(ok), 28, 28)
    # occlusion maps are blurred by the occluder's size (4 px): over training seeds 0-5 the share of maxima
    # inside the patch was 0.75-1.0 (Grad-CAM: 0.92-1.0), so the bar is lower here
    assert _peak_inside(occ, pos[ok]).mean() >= 0.75


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("side", [28, 64])
def test_gradcam_runs_for_every_registry_model(name, side):
    keras.utils.set_random_seed(1)
    model = build(name, (side, side, 3), 4, width=4)
    layer = explain.default_layer(model)
    h, w = model.get_layer(layer).output.shape[1:3]
    assert min(h, w) >= explain.MIN_CAM_SIDE
    x = np.random.default_rng(0).integers(0, 255, (3, side, side, 3)).astype(np.uint8)
    cams = explain.gradcam(model, x, [0, 1, 3])
    assert cams.shape == (3, side, side) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1
    assert layer in explain.feature_layers(model)


def test_bad_cam_layer_is_a_clear_error():
    model = build("resnet18", (28, 28, 3), 4, width=4)
    with pytest.raises(WorkbenchError, match="parameter 'cam_layer' = 'nope'.*choose one of"):
        explain.check_layer(model, "nope")
    # inside a residual block the rest of the graph also depends on the skip path: not a valid cut
    with pytest.raises(WorkbenchError, match="layer3_0_1_relu"):
        explain.check_layer(model, "layer3_0_1_relu")
    assert explain.check_layer(model, "layer3_0_out") == "layer3_0_out"
    assert "layer3_0_1_relu" not in explain.feature_layers(model)

"""Preprocessing: pure functions (windowing, resize, denoise, contrast, normalisation) and the spec."""

import json

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend first)
from workbench import preprocess as pre
from workbench.errors import WorkbenchError

from conftest import TINY


@pytest.fixture(scope="module")
def blood():
    with np.load(TINY) as z:
        return z["train_images"][:16]  # real BloodMNIST RGB images


def test_window_follows_the_dicom_linear_function():
    # lung window (L -600, W 1500): -1350 HU and below → 0, 150 HU and above → 255, the level → mid-grey
    lv, wd = pre.WINDOW_PRESETS["lung"]
    out = pre.window(np.array([-2000.0, -1350.0, lv, 150.0, 3000.0]), lv, wd)
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[1] == 0 and out[3] == 255 and out[4] == 255
    assert abs(int(out[2]) - 128) <= 1
    # monotone inside the window
    ramp = pre.window(np.linspace(-1350, 150, 50), lv, wd)
    assert np.all(np.diff(ramp.astype(int)) >= 0) and ramp[0] < 10 and ramp[-1] > 245
    with pytest.raises(WorkbenchError, match="width"):
        pre.window(np.zeros(3), 0, 0)


def test_window_presets_are_the_documented_values():
    assert pre.WINDOW_PRESETS == {"brain": (40.0, 80.0), "lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0),
                                  "abdomen": (50.0, 400.0), "bone": (400.0, 1800.0)}


def test_invert_and_minmax():
    img = np.array([[0, 100], [200, 255]], np.uint8)
    assert pre.invert(img).tolist() == [[255, 155], [55, 0]]
    assert pre.minmax_uint8(np.array([[-1000.0, 0.0], [500.0, 1000.0]])).tolist() == [[0, 128], [191, 255]]
    assert pre.minmax_uint8(np.full((2, 2), 7.0)).max() == 0


@pytest.mark.parametrize("policy,expect_black_border", [("pad", True), ("crop", False), ("stretch", False)])
def test_resize_policies(policy, expect_black_border):
    img = np.full((20, 40, 1), 200, np.uint8)  # wide, bright
    out = pre.resize(img, 28, policy)
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    assert (out[0, 14, 0] == 0) == expect_black_border  # letterbox rows at the top only for pad
    assert out[14, 14, 0] == 200


def test_resize_none_refuses_wrong_size():
    with pytest.raises(WorkbenchError, match="choose a resize policy"):
        pre.resize(np.zeros((30, 30, 3), np.uint8), 28, "none")
    same = np.zeros((28, 28, 3), np.uint8)
    assert pre.resize(same, 28, "none") is same


def test_denoisers_reduce_noise_on_a_flat_image():
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 8, (4, 28, 28, 1)), 0, 255).astype(np.uint8)  # σ 8 ≈ nlmeans h 10
    for method in ("median", "gaussian", "nlmeans"):
        out = pre.denoise(noisy, method)
        assert out.shape == noisy.shape and out.dtype == np.uint8
        assert out.std() < 0.7 * noisy.std(), method
    assert pre.denoise(noisy, "none") is noisy


def test_denoise_rgb_keeps_shape(blood):
    for method in ("median", "gaussian", "nlmeans"):
        assert pre.denoise(blood, method).shape == blood.shape


def test_contrast_stretches_a_low_contrast_image(blood):
    low = (100 + blood[:4] // 8).astype(np.uint8)  # squeezed into 100..131
    for method in ("clahe", "histeq"):
        out = pre.enhance_contrast(low, method)
        assert out.shape == low.shape and out.dtype == np.uint8
        assert np.ptp(out) > 2 * np.ptp(low), method
    gray = low[..., :1]
    assert np.ptp(pre.enhance_contrast(gray, "histeq")) > 200


def test_normalisations(blood):
    mm = pre.normalize(blood, "minmax")
    assert mm.dtype == np.uint8 and all(im.min() == 0 and im.max() == 255 for im in mm)
    z = pre.normalize(blood, "zscore")
    # 128 + 32·z: every image has mean ≈ 128 and std ≈ 32 (little clipping)
    assert np.allclose(z.reshape(len(z), -1).mean(1), 128, atol=2)
    assert np.allclose(z.reshape(len(z), -1).std(1), 32, atol=2)
    stats = pre.dataset_stats(blood)
    d = pre.normalize(blood, "dataset", stats).astype(float)
    assert np.allclose(d.mean(axis=(0, 1, 2)), 128, atol=2) and np.allclose(d.std(axis=(0, 1, 2)), 32, atol=2)
    with pytest.raises(WorkbenchError, match="mean/std"):
        pre.normalize(blood, "dataset", None)


def test_spec_records_train_stats_and_round_trips_through_json(blood):
    spec = pre.make_spec("median", "clahe", "dataset", train_images=blood)
    again = json.loads(json.dumps(spec))
    assert again["stats"]["mean"] == pytest.approx(
        pre.dataset_stats(pre.enhance_contrast(pre.denoise(blood, "median"), "clahe"))["mean"])
    out1, out2 = pre.apply_spec(spec, blood), pre.apply_spec(again, blood)
    np.testing.assert_array_equal(out1, out2)
    assert not np.array_equal(out1, blood)
    assert pre.apply_spec(pre.make_spec(), blood) is blood  # identity
    assert pre.describe(spec) == "denoise median, contrast clahe, normalize dataset"


def test_spec_rejects_unknown_methods():
    with pytest.raises(WorkbenchError, match="'denoise' = 'bilateral' is not one of"):
        pre.make_spec(denoise="bilateral")
    with pytest.raises(WorkbenchError, match="version"):
        pre.check_spec({"version": 99})
    with pytest.raises(WorkbenchError, match="uint8"):
        pre.denoise(np.zeros((2, 8, 8, 1), np.float32), "median")

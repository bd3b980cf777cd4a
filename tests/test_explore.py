"""Explore helpers (pure) and the explore notebook's static face under papermill."""

import numpy as np
import pytest

import workbench  # noqa: F401
from workbench import augment, explore
from workbench.data import load_dataset

from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def ds():
    return load_dataset(str(TINY))


def test_filter_and_page(ds):
    idx = explore.filter_indices(ds, "train", "platelet")
    assert len(idx) == 33 and (ds.labels["train"][idx] == ds.class_names.index("platelet")).all()
    assert len(explore.filter_indices(ds, "val", explore.ALL)) == 96
    assert explore.page(np.arange(70), 2, 32).tolist() == list(range(64, 70))
    assert explore.page(np.arange(70), 99, 32).tolist() == list(range(64, 70))  # clipped to the last page


def test_difference_hash_is_stable_under_small_changes(ds):
    x = ds.images["train"][:20]
    h = explore.difference_hash(x)
    h_bright = explore.difference_hash(np.clip(x.astype(int) + 6, 0, 255).astype(np.uint8))
    assert h.dtype == np.uint64 and len(np.unique(h)) == 20
    assert np.bitwise_count(h ^ h_bright).max() <= 4  # a brightness shift barely moves the hash
    assert np.bitwise_count(h[:10] ^ h[10:]).min() > 4  # different cells are far apart


def test_near_duplicates_finds_planted_leak(ds):
    assert explore.near_duplicates(ds).empty  # the fixture has none
    ds.images["test"] = ds.images["test"].copy()
    ds.images["test"][5] = ds.images["train"][17]  # plant an exact copy of a training image in test
    d = explore.near_duplicates(ds)
    hit = d[(d.split_a == "train") & (d.index_a == 17) & (d.split_b == "test") & (d.index_b == 5)]
    assert len(hit) == 1 and bool(hit.exact.iloc[0]) and int(hit.distance.iloc[0]) == 0
    assert "near-duplicate pairs" in explore.duplicates_html(d)


def test_prediction_filters():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1])
    t = explore.prediction_table(probs, labels, ["a", "b"])
    assert t["correct"].tolist() == [True, False, False, True]
    assert explore.filter_predictions(t, "wrong only")["index"].tolist() == [1, 2]
    assert explore.filter_predictions(t, "most confident errors")["index"].tolist() == [1, 2]  # 0.8 then 0.6
    with pytest.raises(ValueError):
        explore.filter_predictions(t, "bogus")


def test_custom_augmentation_follows_controls(ds):
    x = ds.images["train"][:8]
    none = augment.custom({}, seed=0)
    assert augment.is_identity(none) and np.array_equal(augment.apply(none, x), x)
    flip = augment.custom({"hflip": 1.0}, seed=0)
    np.testing.assert_array_equal(augment.apply(flip, x), x[:, :, ::-1])
    a = augment.apply(augment.custom({"rotate": 30, "brightness": 0.2}, seed=3), x)
    b = augment.apply(augment.custom({"rotate": 30, "brightness": 0.2}, seed=3), x)
    assert np.array_equal(a, b) and not np.array_equal(a, x)
    with pytest.raises(workbench.WorkbenchError, match="unknown augmentation control"):
        augment.custom({"twist": 1}, seed=0)


@pytest.mark.slow
def test_explore_notebook_static_report(tmp_path, pipeline_run):
    proc = run_cli("run", "explore", "-q", "-p", "dataset", str(TINY), "-p", "predictions_run", str(pipeline_run["dir"]),
                   env={"WORKBENCH_RUNS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / proc.stdout.strip().splitlines()[-1].split("/")[-1]
    html = (run_dir / "00_explore.html").read_text()
    # static faces: class balance, image grid, histograms, augmentation, inspector figures
    assert html.count("data:image/png;base64") >= 9
    assert "No near-duplicate images across splits" in html
    assert "the most confident errors" in html
    assert (run_dir / "params" / "explore.json").is_file()


def test_window_helpers_on_real_ct():
    from workbench import preprocess
    values, dcm = explore.dicom_values(explore.default_dicom_file())
    assert str(dcm.Modality) == "CT" and values.min() < -500 and values.max() > 500  # Hounsfield units
    lung = preprocess.window(values, *preprocess.WINDOW_PRESETS["lung"])
    bone = preprocess.window(values, *preprocess.WINDOW_PRESETS["bone"])
    assert lung.dtype == np.uint8 and not np.array_equal(lung, bone)
    a = explore.viz.to_png(explore.window_figure(values, 40, 80))
    b = explore.viz.to_png(explore.window_figure(values, 400, 1800))
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != b


def test_preprocessing_figure_changes_with_spec(ds):
    plain = explore.viz.to_png(explore.preprocessing_figure(ds))
    clahe = explore.viz.to_png(explore.preprocessing_figure(ds, "median", "clahe", "none"))
    assert plain != clahe


@pytest.mark.slow
def test_inspector_grad_cam_on_a_trained_run(pipeline_run, ds):
    from workbench.models import load
    model = load(pipeline_run["dir"] / "model.keras", compile=False)
    cam = explore._grad_cam(model, ds.images["test"][0], 3)
    assert cam.shape == (28, 28) and cam.min() >= 0 and cam.max() <= 1
    fig = explore.inspect_figure(ds.images["test"][0], np.full(8, 1 / 8), ds.class_names, 3, cam)
    assert len(fig.axes) == 3  # image, probabilities, Grad-CAM overlay

"""Semi-supervised training (workbench.semisup, workbench.unlabelled): bad pools fail in one line before anything
is trained (no run directory made), the label budget is a stratified seeded subset whose complement is the pool,
strong views keep the card's orientation rule, and FixMatch learns from an easy pool without ever reading its labels
(the same model with the pool's labels shuffled)."""

import json

import numpy as np
import pandas as pd
import pytest

import workbench  # noqa: F401  (JAX backend)
from conftest import FIXTURES, TINY, run_cli
from workbench import augment, params, train, unlabelled
from workbench.errors import WorkbenchError

MOSAIC = FIXTURES / "bloodmosaic_tiny.npz"
TINY_P = {"dataset": str(TINY), "width": 8, "batch_size": 16}


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    d = tmp_path_factory.mktemp("pools")
    with np.load(TINY) as z:
        x, y = z["train_images"][:64], z["train_labels"][:64]
    np.savez(d / "easy.npz", images=x, labels=y)                 # the labelled images themselves: an easy pool
    rng = np.random.default_rng(0)
    np.savez(d / "shuffled.npz", images=x, labels=y[rng.permutation(len(y))])
    np.savez(d / "noimages.npz", pictures=x)
    (d / "empty").mkdir()
    (d / "notes.txt").write_text("not a pool")
    return d


@pytest.mark.parametrize("extra, message", [
    ({"unlabelled": "{d}/missing"}, r"parameter 'unlabelled': pool '.*missing' not found"),
    ({"unlabelled": "{d}/notes.txt"}, r"is a file, not a folder or an \.npz"),
    ({"unlabelled": "{d}/noimages.npz"}, r"has no 'images' or '\*_images' array"),
    ({"unlabelled": "{d}/easy.npz:test"}, r"has no array 'test_images'"),
    ({"unlabelled": "val"}, r"the val split picks the checkpoint"),
    ({"unlabelled": "test"}, r"the test split is scored by the evaluate stage"),
    ({"unlabelled": "train"}, r"every train image is already labelled; set label_fraction"),
    ({"unlabelled": "{d}/easy.npz", "class_weights": True}, r"'class_weights' is not supported with 'unlabelled'"),
    ({"unlabelled": "{d}/easy.npz", "dataset": str(MOSAIC)}, r"supports single-label tasks .* is multi-label"),
])
def test_bad_unlabelled_fails_in_one_line_before_any_training(tmp_path, pools, extra, message):
    run_dir = tmp_path / "run"
    values = {**TINY_P, **{k: v.format(d=pools) if isinstance(v, str) else v for k, v in extra.items()},
              "run_dir": str(run_dir)}
    with pytest.raises(WorkbenchError, match=message) as e:
        train.open_stage(params.make("train", values))
    assert "\n" not in str(e.value)
    assert not run_dir.exists()           # nothing made, nothing trained


def test_the_command_line_refuses_a_bad_pool_before_making_a_run_directory(tmp_path, pools):
    runs = tmp_path / "runs"
    proc = run_cli("run", "train", "-p", "dataset", str(TINY), "-p", "unlabelled", str(pools / "missing"),
                   env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "parameter 'unlabelled'" in proc.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_label_budget_is_a_stratified_seeded_subset_and_the_rest_is_the_pool():
    from workbench import data
    ds = data.load_dataset(str(TINY))
    y = ds.labels["train"]
    keep = unlabelled.labelled_indices(y, 0.25, seed=0)
    assert len(keep) == 60 and len(np.unique(keep)) == 60
    counts, kept = np.bincount(y, minlength=8), np.bincount(y[keep], minlength=8)
    assert (kept >= 1).all() and np.abs(kept - counts * 0.25).max() <= 1.0        # class proportions kept
    assert np.array_equal(keep, unlabelled.labelled_indices(y, 0.25, seed=0))
    assert not np.array_equal(keep, unlabelled.labelled_indices(y, 0.25, seed=1))
    assert len(unlabelled.labelled_indices(y, 0.001, seed=0)) == 8                 # at least one per class
    sub, rest = unlabelled.label_subset(ds, 0.25, 0), unlabelled.held_out(ds, 0.25, 0)
    assert len(sub.labels["train"]) == 60 and len(rest.labels["train"]) == 180
    both = np.concatenate([sub.images["train"], rest.images["train"]]).reshape(240, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(ds.images["train"].reshape(240, -1), axis=0))
    assert sub.images["val"] is ds.images["val"] and sub.images["test"] is ds.images["test"]


def _names(d) -> set:
    out = set()
    if isinstance(d, dict):
        if "__class_fullname__" in d:
            out.add(d["__class_fullname__"].rsplit(".", 1)[-1])
        for v in d.values():
            out |= _names(v)
    elif isinstance(d, list):
        for v in d:
            out |= _names(v)
    return out


def test_strong_views_keep_the_orientation_rule_and_are_seeded():
    import albumentations as A
    turning = {"HorizontalFlip", "VerticalFlip", "RandomRotate90", "Transpose", "D4", "SquareSymmetry"}
    fixed = augment.strong("fixed", 0, n_channels=1, orientation_free=False)
    names = _names(A.to_dict(fixed))
    assert not names & turning and {"SomeOf", "CoarseDropout", "Solarize"} <= names
    free = augment.strong("dihedral", 0, n_channels=3, orientation_free=True)
    assert {"HorizontalFlip", "RandomRotate90"} <= _names(A.to_dict(free))
    with pytest.raises(WorkbenchError, match="orientation-fixed"):
        augment.strong("dihedral", 0, orientation_free=False)
    with np.load(TINY) as z:
        x = z["train_images"][:16]
    a = augment.apply(augment.strong("dihedral", 3, orientation_free=True), x)
    assert np.array_equal(a, augment.apply(augment.strong("dihedral", 3, orientation_free=True), x))
    assert not np.array_equal(a, augment.apply(augment.strong("dihedral", 4, orientation_free=True), x))
    assert (a != x).mean() > 0.5                                                  # strong: most pixels change


def _fixmatch(tmp_path, pool, name):
    p = params.make("train", {**TINY_P, "epochs": 2, "steps_per_epoch": 4, "unlabelled": str(pool),
                              "unlabelled_ratio": 2, "learning_rate": 0.01, "pseudo_threshold": 0.6, "tta": "no",
                              "compare_supervised": False, "run_dir": str(tmp_path / name)})
    out = train.run(p)
    return out, tmp_path / name


def test_fixmatch_learns_from_an_easy_pool_and_never_reads_its_labels(tmp_path, pools):
    from workbench import models
    out, run = _fixmatch(tmp_path, pools / "easy.npz", "a")
    hist = pd.read_csv(run / "history.csv")
    mon = pd.read_csv(run / "unlabelled_history.csv")
    assert {"mask_rate", "sup_loss", "unsup_loss", "val_loss", "val_acc"} <= set(hist.columns)
    assert "val_mask_rate" not in hist.columns
    assert hist["mask_rate"].iloc[-1] > 0 and hist["unsup_loss"].iloc[-1] > 0   # pseudo-labels were trained on
    assert mon["pool_mask_rate"].iloc[-1] > 0 and 0 <= mon["pseudo_label_acc"].iloc[-1] <= 1
    semi = out["semi_supervised"]
    assert semi["pool"]["n"] == 64 and semi["pool"]["labels_known"] and semi["unlabelled_ratio"] == 2
    assert json.loads((run / "provenance.json").read_text())["train"]["unlabelled"]["kind"] == "npz"
    # the pool's labels shuffled: the monitor reads other labels, training gets the very same model
    _, run_b = _fixmatch(tmp_path, pools / "shuffled.npz", "b")
    wa = models.load(run / "model.keras", compile=False).get_weights()
    wb = models.load(run_b / "model.keras", compile=False).get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    pd.testing.assert_frame_equal(hist, pd.read_csv(run_b / "history.csv"))
    mon_b = pd.read_csv(run_b / "unlabelled_history.csv")
    assert np.allclose(mon["pool_mask_rate"], mon_b["pool_mask_rate"])
    assert not np.allclose(mon["prediction_acc"], mon_b["prediction_acc"])       # other labels: other accuracy


def test_pipeline_trains_on_the_pool_without_labels_then_annotates_it_and_says_what_it_added(tmp_path, pretrained_run):
    """The loop closes: pipeline -p unlabelled POOL (FixMatch from a pretrained backbone, the supervised baseline
    beside it) → evaluate → annotate of that same pool, whose report says how many more images the semi-supervised
    model auto-accepts than the supervised one at the same certified precision (papermill-executed notebooks)."""
    from workbench import data
    ds = data.load_dataset(str(TINY))
    rest = unlabelled.held_out(ds, 0.5, seed=0)                          # the train images whose labels are held out
    pool = tmp_path / "pool.npz"
    np.savez(pool, images=rest.images["train"], labels=rest.labels["train"].reshape(-1, 1))
    runs = tmp_path / "runs"
    proc = run_cli("pipeline", "-q", "--name", "semi", "-p", "dataset", str(TINY), "-p", "epochs", "1", "-p", "width",
                   "8", "-p", "batch_size", "32", "-p", "label_fraction", "0.5", "-p", "unlabelled", str(pool),
                   "-p", "init_from", str(pretrained_run[0]), "-p", "on_shift", "accept", "-p", "audit_folds", "0",
                   "-p", "gallery_size", "4", "-p", "robustness", "0", "-p", "n_resamples", "100", "-p", "bootstrap",
                   "100", env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(runs.glob("*_semi"))
    s = json.loads((run_dir / "train_summary.json").read_text())
    assert s["labelled_images"] == 120 and s["semi_supervised"]["pool"]["n"] == 120
    assert (run_dir / "supervised" / "model.keras").is_file()
    prov = json.loads((run_dir / "provenance.json").read_text())["train"]
    assert prov["init_from"]["layers_new"] == ["probs"]
    pool_dir = next((run_dir / "annotate").iterdir())
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    assert summary["pool_source"]["kind"] == "npz" and summary["pool_size"] == 120
    cmp_ = json.loads((pool_dir / "semi_supervised_comparison.json").read_text())
    assert cmp_["certified_by"] == "val" and cmp_["semi_supervised"]["n_auto_accepted"] == summary["n_auto_accepted"]
    assert cmp_["more_auto_accepted"] == cmp_["semi_supervised"]["n_auto_accepted"] - cmp_["supervised"]["n_auto_accepted"]
    assert "achieved_precision" in cmp_["supervised"]                    # the pool's labels are known
    html = (pool_dir / "30_annotate.html").read_text()
    assert "What the unlabelled images added" in html and f"{cmp_['more_auto_accepted']:+d}" in html
    # the pool route: the supervised model certified on the same labelled sample, inside its candidate region only
    from workbench import pools, runload, runs, semisup
    trained = runload.load(run_dir)
    p_pool = pools.open_pool(str(pool), class_names=trained.class_names)
    p_pool.scan(trained.input)
    y = rest.labels["train"]
    queue = np.arange(0, 120, 2)
    region = np.zeros(120, bool)
    region[:90] = True
    cert = {"certified_by": "pool", "labels": {p_pool.ids[i]: int(y[i]) for i in queue}, "queue_positions": queue,
            "region": region}
    table = pd.DataFrame({"status": ["needs-review"] * 120, "predicted_label": np.zeros(120, int)})
    ap = params.make("annotate", {"run_dir": str(run_dir), "guarantee": 0.5, "target_precision": 0.5,
                                  "bootstrap": 100})
    out = semisup.compare_annotation(runs.Run(tmp_path / "cmp", "annotate"), trained, p_pool, ap, cert, table)
    assert out["certified_by"] == "pool" and "note_pool_route" in out
    written = json.loads((tmp_path / "cmp" / semisup.COMPARISON_FILE).read_text())
    assert written["supervised"]["n_auto_accepted"] <= int((region & ~np.isin(np.arange(120), queue)).sum())


def test_a_pool_without_readable_images_fails_when_read_before_training(pools):
    p = params.make("train", {**TINY_P, "unlabelled": str(pools / "empty")})
    ds, _ = train.load_data(p)
    spec = train.make_input_spec(p, ds)
    with pytest.raises(WorkbenchError, match=r"parameter 'unlabelled': pool empty holds no readable image") as e:
        train.load_unlabelled(p, train.prepare_dataset(ds, spec), spec)
    assert "\n" not in str(e.value)

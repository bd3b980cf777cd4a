"""Acquisition-shift robustness (issue 25): the data card's ranges reach the training augmentation and
augment.yaml; label-free test-time adaptation (workbench.adapt) never reads pool labels; robustness in the
evaluate report and the model card; the benchmark's pieces. Tiny real fixtures, 1 epoch, width 8."""

import re
import shutil
import types

import numpy as np
import pytest
import yaml

import workbench  # noqa: F401  (JAX backend)
from conftest import FIXTURES, TINY, read_json, run_cli
from workbench import adapt, augment, cards, corrupt, data, models, params, pools, robustness, runload, train
from workbench.errors import WorkbenchError

TINY_P = {"dataset": str(TINY), "epochs": 1, "width": 8, "batch_size": 64}


@pytest.fixture(scope="module")
def photometric_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rb") / "run"
    train.run(params.make("train", {**TINY_P, "run_dir": str(d), "photometric": "card"}))
    return d


# ---------------------------------------------------------------------- photometric augmentation from the card
def _ops(doc):
    return {t["__class_fullname__"].split(".")[-1]: t for t in doc["albumentations"]["transform"]["transforms"]}


def test_card_ranges_reach_augment_yaml(photometric_run):
    card = cards.read_card(FIXTURES / "bloodmnist_tiny.md")
    ch = card.acquisition["changes"]
    doc = yaml.safe_load((photometric_run / "augment.yaml").read_text())
    assert doc["preset"] == "dihedral"   # the geometric preset stays the orientation's
    assert doc["photometric"]["changes"] == ch and doc["photometric"]["source"] == "data card bloodmnist_tiny"
    assert doc["photometric"]["warning"] is None
    ops = _ops(doc)   # the ranges inside the serialised albumentations pipeline itself
    assert ops["ColorJitter"]["brightness"] == pytest.approx([1 - ch["brightness"], 1 + ch["brightness"]])
    assert ops["ColorJitter"]["contrast"] == pytest.approx([1 - ch["contrast"], 1 + ch["contrast"]])
    assert ops["ColorJitter"]["saturation"] == pytest.approx([1 - ch["saturation"], 1 + ch["saturation"]])
    assert ops["ColorJitter"]["hue"] == pytest.approx([-ch["hue"] / 360, ch["hue"] / 360])
    assert ops["StainJitter"]["od_range"] == pytest.approx([1 - ch["stain"], 1 + ch["stain"]])
    assert ops["GaussianBlur"]["sigma_limit"] == pytest.approx([0.1, ch["blur"]])
    assert ops["ImageCompression"]["quality_range"] == [ch["jpeg"], 100]
    assert ops["GaussNoise"]["std_range"] == pytest.approx([0.0, ch["noise"] / 255])
    assert read_json(photometric_run / "params" / "train.json")["photometric"] == "card"
    assert read_json(photometric_run / "provenance.json")["train"]["photometric"]["changes"] == ch
    # the saved pipeline rebuilds the same one: same seed, array-equal output
    t, _ = augment.load(photometric_run / "augment.yaml")
    ds = data.load_dataset(str(TINY))
    fresh, _ = train.augmentation(params.make("train", {**TINY_P, "photometric": "card", "augment": "dihedral"}), ds)
    x = ds.images["train"][:32]
    assert np.array_equal(augment.apply(t, x), augment.apply(fresh, x))


def test_recipes_leave_photometric_to_the_recipe_and_none_adds_nothing():
    ds = data.load_dataset(str(TINY))
    p = train.resolve(params.make("train", {"dataset": str(TINY)}), ds)
    assert p.photometric == train.RECIPES["demo"]["photometric"]
    t, photo = train.augmentation(params.make("train", {**TINY_P, "photometric": "none", "augment": "dihedral"}), ds)
    assert photo is None and [type(o).__name__ for o in t.transforms] == \
        [type(o).__name__ for o in augment.build("dihedral", 0, 3).transforms]


def test_photometric_share_leaves_the_rest_as_acquired(tmp_path):
    ds = data.load_dataset(str(TINY))
    P = params.make("train", {**TINY_P, "photometric": "card", "photometric_p": 0.5, "augment": "none"})
    t, photo = train.augmentation(P, ds)
    assert photo["p"] == 0.5 and [type(o).__name__ for o in t.transforms] == ["Sequential"]
    x = ds.images["train"]
    same = np.mean([np.array_equal(a, b) for a, b in zip(augment.apply(t, x), x)])
    assert 0.4 < same < 0.65                                  # about half untouched (seeded: deterministic)
    augment.save(t, "none", 0, tmp_path / "a.yaml", photometric=photo)
    doc = yaml.safe_load((tmp_path / "a.yaml").read_text())
    seq = doc["albumentations"]["transform"]["transforms"][0]
    assert doc["photometric"]["p"] == 0.5 and seq["p"] == 0.5
    assert {t["__class_fullname__"].split(".")[-1] for t in seq["transforms"]} >= {"ColorJitter", "StainJitter"}
    t2, _ = augment.load(tmp_path / "a.yaml")
    assert np.array_equal(augment.apply(t2, x[:32]), augment.apply(train.augmentation(P, ds)[0], x[:32]))


def test_card_without_acquisition_gets_the_conservative_default_loudly(tmp_path, capsys):
    text = re.sub(r"^acquisition: .*\n", "", (FIXTURES / "bloodmnist_tiny.md").read_text(), flags=re.M)
    (tmp_path / "blood.md").write_text(text)
    card = cards.read_card(tmp_path / "blood.md")
    photo = augment.photometric_of(card)
    assert photo["changes"] == corrupt.DEFAULT_CHANGES and "WARNING" in photo["warning"]
    assert "names no acquisition changes" in photo["warning"]
    ops = {type(o).__name__: o for o in augment.build("none", 0, 3, photometric=photo).transforms}
    assert ops["ColorJitter"].brightness == pytest.approx((0.9, 1.1)) and "StainJitter" not in ops
    ds = types.SimpleNamespace(card=card, input_shape=(28, 28, 3))
    train.make_augmentation(params.make("train", {**TINY_P, "photometric": "card", "augment": "none"}), ds)
    assert "WARNING" in capsys.readouterr().out


def test_photometric_ops_keep_shape_any_channels_and_size():
    for name in ("breastmnist", "chestmnist", "organamnist", "octmnist", "retinamnist", "dermamnist", "pathmnist"):
        card = cards.load_card(name)
        for side in (28, 64):
            t = augment.build("none", 1, card.n_channels, photometric=augment.photometric_of(card), side=side)
            x = np.random.default_rng(0).integers(0, 256, (6, side, side, card.n_channels), dtype=np.uint8)
            out = augment.apply(t, x)
            assert out.shape == x.shape and out.dtype == np.uint8, name
    with pytest.raises(WorkbenchError, match="unknown acquisition change"):
        augment.photometric_ops({"fog": 1}, 3)


# ---------------------------------------------------------------------- test-time adaptation
def test_color_standardisation_undoes_a_stain_or_lamp_change():
    with np.load(TINY, allow_pickle=False) as z:
        x = z["test_images"]
    ref = adapt.color_stats(x)
    for name in ("stain_darker", "stain_lighter", "darker"):
        shifted = corrupt.apply(x, name, 2)
        back = adapt.color_map(shifted, adapt.color_stats(shifted), ref)
        assert np.abs(back.astype(int) - x).mean() < 0.35 * np.abs(shifted.astype(int) - x).mean(), name
    layer = adapt.ColorStandardize(ref["mean"], ref["std"], [m + 0.1 for m in ref["mean"]], ref["std"])
    s2 = {**ref, "mean": [m + 0.1 for m in ref["mean"]]}
    assert np.abs(np.asarray(layer(x.astype("float32"))) - adapt.color_map(x, ref, s2)).max() <= 1.0
    gray = x[..., :1]
    g = adapt.color_stats(gray)
    assert g["space"] == "intensity" and len(g["mean"]) == 1


def test_bn_adaptation_sets_the_pool_statistics_and_restores():
    import keras
    m = models.build("cnn", (28, 28, 3), 8, width=8, dropout=0.2)
    with np.load(TINY, allow_pickle=False) as z:
        x = z["val_images"]
    saved = adapt.bn_state(m)
    rec = adapt.bn_adapt(m, x, prior=0)
    first = [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    f = np.asarray(keras.Model(m.inputs, first.input).predict(x.astype("float32"), verbose=0), np.float64)
    np.testing.assert_allclose(np.asarray(first.moving_mean), f.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(first.moving_variance), f.var((0, 1, 2)), rtol=1e-3, atol=1e-5)
    assert rec["layers"] == 6 and rec["weight"] == 1.0
    adapt.bn_restore(m, saved)
    assert np.array_equal(np.asarray(first.moving_mean), saved[0][0])
    small = adapt.bn_adapt(m, x[:16])            # few images: shrunk towards the training statistics
    assert small["weight"] == pytest.approx(16 / 32)
    adapt.bn_restore(m, saved)
    # relative to clean reference images: a pool measured like them leaves the trained statistics as they were
    ref = adapt.bn_reference(m, x)
    rel = adapt.bn_adapt(m, x, prior=0, reference=ref)
    assert rel["relative_to_training_images"]
    for (layer, _), (mean, var) in zip(adapt.bn_probes(m), saved):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, atol=1e-5)
        np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-4, atol=1e-6)
    adapt.bn_restore(m, saved)
    darker = corrupt.apply(x, "darker", 3)
    adapt.bn_adapt(m, darker, prior=0, reference=ref)
    assert not np.allclose(np.asarray(first.moving_mean), saved[0][0])   # a shifted pool moves them
    with pytest.raises(WorkbenchError, match="adapt"):
        adapt.check_method("tent")


def _npz_pool(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return pools.open_pool(str(path), class_names=None)


@pytest.mark.parametrize("method", ["color+bn"])   # both adaptations in one (bn alone: the annotate test)
def test_adaptation_never_reads_pool_labels(photometric_run, tmp_path, monkeypatch, method):
    """Shuffled labels → identical adapted predictions; and a pool whose labels cannot be read adapts alike."""
    from workbench.predict import predict_stream
    trained = runload.load(photometric_run)
    with np.load(TINY, allow_pickle=False) as z:
        x, y = corrupt.apply(z["test_images"], "darker", 3), z["test_labels"].reshape(-1)
    P = types.SimpleNamespace(adapt=method, seed=0, resize="", batch_size=64)
    out = []
    for i, labels in enumerate((y, np.random.default_rng(1).permutation(y))):
        pool = _npz_pool(tmp_path / f"p{i}.npz", x, labels).scan(trained.input)
        a = adapt.for_annotate(None, trained, pool, P)
        out.append(predict_stream(a.model, pool.batches(trained.input, 64), len(pool), 64))
    np.testing.assert_array_equal(out[0], out[1])
    plain = predict_stream(trained.model, pool.batches(trained.input, 64), len(pool), 64)
    assert not np.allclose(out[0], plain)        # the adaptation changed the predictions
    monkeypatch.setattr(pools.Pool, "labels", property(lambda self: pytest.fail("adaptation read the labels")))
    pool = _npz_pool(tmp_path / "p2.npz", x, y).scan(trained.input)
    a = adapt.for_annotate(None, trained, pool, P)
    np.testing.assert_array_equal(predict_stream(a.model, pool.batches(trained.input, 64), len(pool), 64), out[0])
    assert a.adaptation["method"] == method and a.adaptation["labels_read"] is False
    assert adapt.for_annotate(None, trained, pool, types.SimpleNamespace(adapt="none")) is trained


def test_annotate_with_adapt_records_it(pipeline_run, tmp_path):
    run = tmp_path / "run"                      # a copy: the shared run keeps its one annotated pool
    shutil.copytree(pipeline_run["dir"], run)
    proc = run_cli("run", "annotate", "-q", "--run", str(run), "-p", "adapt", "bn",
                   "-p", "audit_folds", "0", "-p", "gallery_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pool_dir = proc.stdout.strip().splitlines()[-1]
    rec = read_json(f"{pool_dir}/adaptation.json")
    assert rec["method"] == "bn" and rec["bn"]["layers"] >= 6 and rec["labels_read"] is False
    assert read_json(f"{pool_dir}/provenance.json")["annotate"]["adaptation"]["method"] == "bn"
    assert read_json(f"{pool_dir}/annotation_summary.json")["adaptation"]["method"] == "bn"
    assert read_json(f"{pool_dir}/params/annotate.json")["adapt"] == "bn"
    # val's thresholds belong to the model before adaptation: the adapted model is certified on the pool's sample
    cert = read_json(f"{pool_dir}/annotation_summary.json")["certification"]
    assert cert["route"] == "pool" and "adapted to this pool" in cert["reason"]


# ---------------------------------------------------------------------- evaluate report and model card
def test_robustness_in_the_evaluate_stage_and_model_card(pipeline_run):
    d = pipeline_run["dir"]
    r = read_json(d / "robustness.json")
    names = corrupt.suite_names(cards.read_card(FIXTURES / "bloodmnist_tiny.md"))
    assert list(r["acc"]) == names and all(len(v) == 3 for v in r["acc"].values())
    assert 0 <= r["mean_corrupted"] <= 1 and r["worst"]["corruption"] in names
    assert set(r["example"]["predictions"]) == {"clean", *names}
    card = (d / "model_card.md").read_text()
    assert "## Robustness" in card and f"**worst corruption:** {r['worst']['corruption']}" in card
    html = (d / "20_evaluate.html").read_text()
    assert "Robustness to acquisition changes" in html


def test_measure_is_deterministic_and_table_marks_trained_changes(photometric_run):
    trained = runload.load(photometric_run)
    ds = trained.dataset()
    P = types.SimpleNamespace(robustness=40, seed=0, batch_size=64)
    a, b = robustness.measure(None, trained, ds, P), robustness.measure(None, trained, ds, P)
    assert a["acc"] == b["acc"] and a["n"] == 40
    assert "gaussian_blur" in a["covered_by_training"] and "bubbles" not in a["covered_by_training"]
    t = robustness.table(a)
    assert t.loc["gaussian_blur", "in training augmentation"] == "yes" and t.loc["bubbles", "in training augmentation"] == "no"
    fig = robustness.figure(trained, ds, a)
    assert len(fig.axes) >= 1 + len(a["acc"])
    skipped = robustness.measure(None, trained, ds, types.SimpleNamespace(robustness=0, seed=0))
    assert "skipped" in skipped and "not measured" in str(robustness.table(skipped))


# ---------------------------------------------------------------------- the benchmark's pieces
def test_bench_evaluation_chooses_on_val_and_scores_test_once(photometric_run):
    from bench import robustness as bench
    res = bench.evaluate_run(photometric_run, n_eval=40, methods=("none", "bn"))
    assert set(res["val"]["summary"]) == {"none", "bn"}
    assert set(res["test"]["summary"]) == {"none", res["chosen_adaptation"]}
    assert len(res["suite"]) == 36 and res["val"]["n_eval"] == 40
    s = res["val"]["summary"]["none"]
    assert s["worst"]["acc"] <= s["mean_corrupted"] <= 1
    row = {"dataset": "x", "recipe": "demo", "photometric": "card", "seed": 0, **res}
    md = bench.render_md({"rows": [row], "settings": {"n_eval": 40}})
    assert "| demo | card |" in md and "Val (choices are made here)" in md


def test_bench_choice_respects_clean_tolerance():
    from bench import robustness as bench
    val = {"summary": {"none": {"clean_subset": 0.95, "mean_corrupted": 0.70},
                       "bn": {"clean_subset": 0.93, "mean_corrupted": 0.90},
                       "color": {"clean_subset": 0.948, "mean_corrupted": 0.80}}}
    assert bench.choose(val, ("none", "bn", "color")) == "color"   # bn costs 2 points of clean val accuracy

"""Train stage levers: recipes (explicit values win), transfer learning (init_from, freeze_backbone) and
data parallelism over several JAX devices (equal within float tolerance to one device)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend)
from conftest import ROOT, TINY, read_json
from workbench import models, params, train
from workbench.errors import WorkbenchError

TINY_P = {"dataset": str(TINY), "epochs": 1, "width": 8, "batch_size": 64}


FIXTURES = TINY.parent
BREAST = FIXTURES / "breastmnist_tiny.npz"


@pytest.fixture(scope="module")
def blood():
    from workbench import data
    return data.load_dataset(str(TINY))


@pytest.fixture(scope="module")
def breast():
    from workbench import data
    return data.load_dataset(str(BREAST))


def test_recipe_fills_only_what_was_left_empty(blood):
    big = dataclasses.replace(blood, labels={**blood.labels, "train": np.zeros(11959, int)})  # BloodMNIST's size
    p = train.resolve(params.make("train", {}), big)
    assert (p.recipe, p.model, p.width, p.epochs, p.augment, p.ema, p.tta) == ("demo", "cnn", 16, 15, "dihedral",
                                                                                 "no", "yes")
    full = train.resolve(params.make("train", {"recipe": "full", "width": 24, "tta": "no", "ema": "yes"}), big)
    assert (full.width, full.tta, full.ema) == (24, "no", "yes")  # explicit values win, also against "no"
    assert full.patience == full.epochs == train.RECIPES["full"]["epochs"]  # full: no early stopping
    assert train.RECIPES["full"]["ema"] != "yes"
    longer = train.resolve(params.make("train", {"recipe": "full", "epochs": 50}), big)
    assert longer.patience == 50  # follows the epochs asked for
    assert train.resolve(params.make("train", {"recipe": "full", "patience": 4}), big).patience == 4  # explicit wins
    # TTA over flips/quarter turns only where the augmentation and the data say orientation does not matter
    assert train.resolve(params.make("train", {"augment": "light"}), big).tta == "no"
    assert train.resolve(params.make("train", {"augment": "dihedral"}), big).tta == "yes"  # orientation-free
    assert train.resolve(p, big) == p  # resolving twice changes nothing (params/train.json reloads as it was)


def test_small_training_sets_get_about_the_same_number_of_steps(blood):
    """240 train images are 2 batches of 128: the demo recipe's 1,400 optimizer steps are 15 epochs of 94 steps
    (47 passes each); validation, patience and checkpoints keep the recipe's epochs. An epoch count the user
    chose keeps one pass per epoch. On BloodMNIST (94 batches) an epoch stays one pass."""
    p = train.resolve(params.make("train", {}), blood)
    assert (p.epochs, p.steps_per_epoch, p.patience) == (15, 94, 5)
    full = train.resolve(params.make("train", {"recipe": "full"}), blood)
    assert (full.epochs, full.steps_per_epoch, full.patience) == (36, 94, 36)
    assert train.resolve(params.make("train", {"epochs": 3}), blood).steps_per_epoch == 2
    big = dataclasses.replace(blood, labels={**blood.labels, "train": np.zeros(11959, int)})
    assert train.resolve(params.make("train", {}), big).steps_per_epoch == 94  # one pass: as before
    # the stream: every image once per pass, fixed-size batches, seeded
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    b = train.AugmentedBatches(x, np.arange(10), 4, __import__("workbench").augment.build("none", 0, 1), 0, steps=5)
    seen = np.concatenate([b[i][1] for i in range(len(b))])
    assert len(b) == 5 and len(seen) == 20 and sorted(seen[:10]) == list(range(10))


def test_orientation_of_the_data_picks_augmentation_and_tta(blood, breast):
    assert train.orientation(blood)["free"] and not train.orientation(breast)["free"]
    p = train.resolve(params.make("train", {}), breast)
    assert (p.augment, p.tta) == ("fixed", "no")  # ultrasound: no flips, no 8-way TTA
    forced = train.resolve(params.make("train", {"augment": "dihedral"}), breast)
    assert forced.augment == "dihedral" and forced.tta == "no"  # allowed, but TTA still follows the data
    text = train.orientation_statement(forced, train.orientation(breast))
    assert "WARNING" in text and "flips and quarter turns" in text
    assert "WARNING" not in train.orientation_statement(p, train.orientation(breast))
    # no data card: treated as orientation-fixed, and the statement says so
    nocard = dataclasses.replace(blood, card=None)
    o = train.orientation(nocard)
    assert not o["free"] and o["note"]
    assert train.resolve(params.make("train", {}), nocard).augment == "fixed"


def test_recipe_sentinels_do_not_weaken_validation(blood):
    with pytest.raises(WorkbenchError, match="out of range"):
        params.make("train", {"epochs": 0})
    with pytest.raises(WorkbenchError, match="freeze_backbone"):
        train.resolve(params.make("train", {"freeze_backbone": True}), blood)
    with pytest.raises(WorkbenchError, match="conv_impl"):
        params.make("train", {"conv_impl": "turbo"})


@pytest.mark.slow
def test_pipeline_records_recipe_and_training_path(pipeline_run):
    d = pipeline_run["dir"]
    p = read_json(d / "params/train.json")
    assert p["recipe"] == "demo" and p["width"] == 8 and p["epochs"] == 1  # explicit values won
    assert p["model"] == "cnn" and p["augment"] == "dihedral" and p["tta"] == "yes"  # the recipe's
    tr = read_json(d / "provenance.json")["train"]
    assert tr["training_path"]["conv_impl"] == "fast" and tr["training_path"]["backend_settings_applied"]
    assert "individual_convolution" not in tr["training_path"]["xla_flags"]
    assert tr["training_path"]["allocator_env"]["MALLOC_ARENA_MAX"] == "1"  # the kernel got the env
    assert tr["recipe"]["name"] == "demo"
    # with TTA the evaluated model is the wrapper; the bare network is kept beside it
    assert (d / "backbone.keras").is_file()
    assert models.load(d / "model.keras").get_layer("tta").backbone.name == "cnn"


@pytest.mark.slow
def test_init_from_a_run_with_frozen_backbone(pipeline_run, tmp_path):
    src = pipeline_run["dir"]
    out = train.run(params.make("train", {**TINY_P, "run_dir": str(tmp_path / "ft"), "init_from": str(src),
                                          "freeze_backbone": True, "tta": "no", "learning_rate": 0.01}))
    assert out["trainable_params"] == 8 * 4 * 8 + 8  # the classifier only (GAP of 4w channels → 8 classes)
    before = models.load(src / "backbone.keras")
    after = models.load(tmp_path / "ft" / "model.keras")
    for layer in after.layers:
        if layer.weights and layer.name != "probs":
            for a, b in zip(layer.get_weights(), before.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)  # frozen: copied and unchanged
    assert not np.allclose(after.get_layer("probs").get_weights()[0], before.get_layer("probs").get_weights()[0])
    info = read_json(tmp_path / "ft" / "provenance.json")["train"]["init_from"]
    assert info["frozen_backbone"] and info["layers_copied"] == 13 and info["layers_new"] == []


def test_init_from_errors_are_clear(tmp_path):
    model = models.build("cnn", (28, 28, 3), 8, width=8)
    with pytest.raises(WorkbenchError, match="no such .keras file or run directory"):
        train.init_from(model, str(tmp_path / "nope"))
    other = models.build("resnet18", (28, 28, 3), 8, width=8)  # classifier 64 → 8, not 32 → 8
    other.save(tmp_path / "r.keras")
    with pytest.raises(WorkbenchError, match="shares no layer"):
        train.init_from(model, str(tmp_path / "r.keras"))


def test_init_from_skips_a_classifier_of_another_size(tmp_path):
    src = models.build("cnn", (28, 28, 3), 5, width=8)
    src.save(tmp_path / "five.keras")
    model = models.build("cnn", (28, 28, 3), 8, width=8)
    info = train.init_from(model, str(tmp_path / "five.keras"))
    assert info["layers_new"] == ["probs"] and info["layers_copied"] == 12
    np.testing.assert_array_equal(model.get_layer("s3b_conv").get_weights()[0],
                                  src.get_layer("s3b_conv").get_weights()[0])


_DP_CHILD = r"""
import json, sys
import numpy as np
from workbench import models, params, train
import jax
p = params.make("train", {"dataset": sys.argv[1], "epochs": 1, "width": 4, "batch_size": 32, "augment": "none",
                          "tta": "no", "dropout": 0.0, "max_per_split": 96, "run_dir": sys.argv[2]})
out = train.run(p)
w = np.concatenate([v.ravel() for v in models.load(sys.argv[2] + "/model.keras").get_weights()])
np.save(sys.argv[2] + "/w.npy", w)
print(json.dumps({"devices": jax.device_count(), "val_loss": out["best_val_loss"]}))
"""


@pytest.mark.slow
def test_data_parallel_over_two_cpu_devices_matches_one(tmp_path):
    res = {}
    for n in (1, 2):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        proc = subprocess.run([sys.executable, "-c", _DP_CHILD, str(TINY), str(tmp_path / f"d{n}")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res[1]["devices"] == 1 and res[2]["devices"] == 2
    prov = json.loads((tmp_path / "d2" / "provenance.json").read_text())["train"]
    assert prov["distribution"]["type"] == "DataParallel" and len(prov["distribution"]["devices"]) == 2
    assert "distribution" not in json.loads((tmp_path / "d1" / "provenance.json").read_text())["train"]
    w1, w2 = np.load(tmp_path / "d1" / "w.npy"), np.load(tmp_path / "d2" / "w.npy")
    np.testing.assert_allclose(w2, w1, rtol=1e-3, atol=1e-3)
    assert res[2]["val_loss"] == pytest.approx(res[1]["val_loss"], rel=1e-3)

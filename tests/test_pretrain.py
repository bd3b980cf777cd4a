"""Self-supervised pretraining (workbench.pretrain, stage 05_pretrain): NT-Xent against a plain numpy reference,
a tiny SimCLR run writes a backbone that the train stage loads by name and shape, its report scores it on val
beside the random initialisation, and bad pools fail in one line before a run directory is made."""

import json

import numpy as np
import pytest

import workbench  # noqa: F401  (JAX backend)
from conftest import TINY, run_cli
from workbench import models, params, pretrain, train
from workbench.errors import WorkbenchError

TINY_PRE = {"dataset": str(TINY), "recipe": "tiny", "width": 8}


def _nt_xent_reference(z, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    sim = z @ z.T / tau
    losses, hits = [], []
    for i in range(n2):
        j = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i]
        losses.append(np.log(np.exp(sim[i, others]).sum()) - sim[i, j])
        hits.append(others[int(np.argmax(sim[i, others]))] == j)
    return float(np.mean(losses)), float(np.mean(hits))


def test_nt_xent_matches_the_papers_loss():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 5)).astype("float32")
    loss, acc = pretrain.nt_xent(z, 0.5)
    ref_loss, ref_acc = _nt_xent_reference(z.astype("float64"), 0.5)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-4) and float(acc) == pytest.approx(ref_acc)
    pairs = np.concatenate([z[:6], z[:6] + 1e-3])                       # two views nearly alike: partners found
    loss_p, acc_p = pretrain.nt_xent(pairs, 0.5)
    assert float(acc_p) == 1.0 and float(loss_p) < ref_loss


def test_a_tiny_pretraining_writes_a_backbone_train_loads_by_name_and_shape(pretrained_run, tmp_path):
    run_dir, out = pretrained_run
    assert (run_dir / "encoder.keras").is_file() and (run_dir / "input.json").is_file()
    assert out["method"].startswith("SimCLR") and out["steps"] == 3 and out["train_seconds"] > 0
    for which in ("pretrained", "random_init"):                          # scored on val, beside random weights
        for probe in ("knn", "linear_probe"):
            assert 0.0 <= out["probe"][which][probe]["acc"] <= 1.0
    assert out["probe"]["n_val"] == 96
    encoder = models.load(run_dir / "encoder.keras", compile=False)
    assert encoder.layers[-1].name == "gap"
    p = train.resolve(params.make("train", {"dataset": str(TINY), "width": 8, "init_from": str(run_dir)}),
                      train.load_data(params.make("train", {"dataset": str(TINY)}))[0])
    ds, _ = train.load_data(p)
    model = train.build_model(p, ds)
    weighted = [layer.name for layer in model.layers if layer.weights]
    for layer in model.layers:
        if layer.weights and layer.name != "probs":
            for a, b in zip(layer.get_weights(), encoder.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    report = train.init_from(models.build("cnn", ds.input_shape, ds.num_classes, width=8), str(run_dir))
    assert report["layers_copied"] == len(weighted) - 1 and report["layers_new"] == ["probs"]
    with pytest.raises(WorkbenchError, match="shares no layer") as e:      # another width: nothing fits
        train.init_from(models.build("cnn", ds.input_shape, ds.num_classes, width=16), str(run_dir))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("images, message", [
    ("val", r"the val split scores the pretrained representation"),
    ("train,test", r"'test': the test split"),
    ("{d}/missing", r"parameter 'images': pool '.*missing' not found"),
    ("", r"parameter 'images' is empty"),
])
def test_bad_images_fail_in_one_line_before_a_run_directory(tmp_path, images, message):
    run_dir = tmp_path / "run"
    with pytest.raises(WorkbenchError, match=message) as e:
        pretrain.open_stage(params.make("pretrain", {**TINY_PRE, "images": images.format(d=tmp_path),
                                                     "run_dir": str(run_dir)}))
    assert "\n" not in str(e.value) and not run_dir.exists()


def test_the_stage_is_on_the_command_line():
    proc = run_cli("params", "pretrain")
    assert proc.returncode == 0 and "images (str, default 'train')" in proc.stdout
    assert "temperature" in proc.stdout
    bad = run_cli("run", "pretrain", "-p", "recipe", "huge")
    assert bad.returncode == 2 and "not one of real, tiny" in bad.stderr


def test_the_recipe_makes_about_as_many_steps_on_a_small_image_set():
    p, steps = pretrain.resolve(params.make("pretrain", {}), n_images=546)     # BreastMNIST's train split
    assert (p.epochs, p.batch_size) == (30, 256) and steps * p.epochs >= 1400
    p, steps = pretrain.resolve(params.make("pretrain", {}), n_images=11959)   # BloodMNIST's: 46 batches a pass
    assert steps == 47 and steps * p.epochs >= 1400
    p, steps = pretrain.resolve(params.make("pretrain", {"epochs": 2}), n_images=11959)
    assert steps == 46                                                          # asked-for epochs: one pass each
    assert json.dumps(params.to_dict(p))                                        # plain values


def test_the_reports_figures_and_tables(pretrained_run):
    import pandas as pd
    from matplotlib.figure import Figure

    from workbench import data
    run_dir, out = pretrained_run
    table = pretrain.probe_table(out["probe"])
    assert list(table.index) == ["pretrained backbone", "random init backbone"]
    assert table.loc["pretrained backbone", "kNN ACC (val)"] == out["probe"]["pretrained"]["knn"]["acc"]
    hist = pd.read_csv(run_dir / "history.csv")
    assert {"loss", "contrastive_acc"} <= set(hist.columns) and isinstance(pretrain.curves(hist), Figure)
    ds = data.load_dataset(str(TINY))
    p = params.make("pretrain", TINY_PRE)
    assert isinstance(pretrain.preview_views(p, ds, ds.images["train"][:16]), Figure)
    from workbench import cli
    assert "pretrain (SimCLR" in cli._summary(run_dir) and "random init" in cli._summary(run_dir)

"""bench/transfer.py: the class-split files (real, loaded by workbench.data) and the bookkeeping of the
arms (source run per seed, init_from / freeze_backbone per arm, gains over scratch). The stages it
calls (train with init_from/freeze_backbone, evaluate) are tested in the train and notebook tests."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import accuracy, transfer

FIXTURE = Path(__file__).parent / "fixtures" / "bloodmnist_tiny.npz"


def test_class_split_files_load_as_datasets(tmp_path):
    from workbench import data
    with np.load(FIXTURE, allow_pickle=False) as z:
        orig = {k: z[k] for k in z.files}
    source = transfer.write_source(FIXTURE, tmp_path)
    target = transfer.write_target(FIXTURE, tmp_path, 5, seed=0)
    src, tgt = data.load_dataset(str(source)), data.load_dataset(str(target))
    assert src.num_classes == len(transfer.SOURCE_CLASSES) and tgt.num_classes == len(transfer.TARGET_CLASSES)
    y = orig["train_labels"].ravel()
    # every source image kept, renumbered in the order of SOURCE_CLASSES
    assert np.bincount(src.labels["train"]).tolist() == [int((y == c).sum()) for c in transfer.SOURCE_CLASSES]
    # the target's train split: 5 per class; val/test: all of the target classes
    assert np.bincount(tgt.labels["train"]).tolist() == [5, 5, 5]
    yt = orig["test_labels"].ravel()
    assert np.bincount(tgt.labels["test"]).tolist() == [int((yt == c).sum()) for c in transfer.TARGET_CLASSES]
    # the images are the originals: each target test image is one of the original test images of its class
    first = tgt.images["test"][0]
    matches = [i for i in np.flatnonzero(yt == transfer.TARGET_CLASSES[tgt.labels["test"][0]])
               if np.array_equal(orig["test_images"][i], first)]
    assert matches
    # another seed draws other training images; the same seed the same ones
    again = np.load(transfer.write_target(FIXTURE, tmp_path / "b", 5, seed=0))["train_images"]
    other = np.load(transfer.write_target(FIXTURE, tmp_path / "c", 5, seed=1))["train_images"]
    assert np.array_equal(again, tgt.images["train"].reshape(again.shape)) and not np.array_equal(again, other)
    with pytest.raises(SystemExit, match="class 0 has only 17"):
        transfer.write_target(FIXTURE, tmp_path, 18, seed=0)


def test_arms_use_the_seed_source_run_and_gains_are_over_scratch(tmp_path, monkeypatch):
    calls = []
    acc = {"scratch": 0.80, "fine-tune": 0.86, "fine-tune, lower lr": 0.84, "frozen backbone": 0.78}

    def fake(recipe, seed, dataset, overrides, env, log, name=""):
        calls.append({"seed": seed, "dataset": Path(dataset).name, "overrides": dict(overrides), "name": name,
                      "runs": env["WORKBENCH_RUNS_DIR"]})
        if name.startswith("tl-source"):
            return {"seed": seed, "test_acc": 0.95, "run_dir": str(tmp_path / f"src{seed}")}
        arm = next(a for a, (short, _) in transfer.ARMS.items() if name.startswith(f"tl-{short}-"))
        return {"seed": seed, "test_acc": acc[arm] + 0.01 * seed, "run_dir": str(tmp_path / name)}

    monkeypatch.setattr(accuracy, "one_seed", fake)
    out = tmp_path / "res" / "transfer.json"
    assert transfer.main(["--data", str(FIXTURE), "--seeds", "0,1", "--per-class", "4,all", "--set", "dropout=0.1",
                          "--target-samples", "240", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    assert len(calls) == 2 * (1 + 2 * 4)
    src0 = [c for c in calls if c["seed"] == 0]
    assert src0[0]["name"] == "tl-source-s0" and src0[0]["dataset"] == "source.npz"
    assert src0[0]["overrides"] == {"dropout": "0.1"} and src0[0]["runs"] == str(tmp_path / "runs")
    # 4 per class = 12 training images: 240 samples need 20 epochs (more than the recipe's 15), no early stop
    ft = [c for c in src0 if c["name"] == "tl-finetune-4-s0"][0]
    assert ft["overrides"] == {"epochs": "20", "patience": "20", "init_from": str(tmp_path / "src0"), "dropout": "0.1"}
    low = [c for c in src0 if c["name"] == "tl-finetune-lowlr-4-s0"][0]
    assert low["overrides"] == {**ft["overrides"], "learning_rate": "0.0003"}
    assert ft["dataset"] == "target-4pc-s0.npz"
    # all 77 target training images of the fixture: the recipe's 15 epochs already exceed 240 samples
    frozen = [c for c in calls if c["name"] == "tl-frozen-all-s1"][0]
    assert frozen["overrides"] == {"epochs": "15", "patience": "15", "init_from": str(tmp_path / "src1"),
                                   "freeze_backbone": "true", "dropout": "0.1"}
    assert [c for c in src0 if c["name"] == "tl-scratch-4-s0"][0]["overrides"] == {
        "epochs": "20", "patience": "20", "dropout": "0.1"}
    # a --set value wins over the schedule
    calls.clear()
    transfer.main(["--data", str(FIXTURE), "--seeds", "0", "--per-class", "4", "--set", "epochs=1",
                   "--out", str(tmp_path / "o2.json"), "--runs", str(tmp_path / "runs")])
    assert {c["overrides"]["epochs"] for c in calls} == {"1"}

    doc = json.loads(out.read_text())
    assert doc["target_samples"] == 240 and doc["finetune_lr"] == "0.0003"
    s = doc["summary"]
    assert list(s) == ["4", "all"]
    assert s["4"]["fine-tune"]["test_acc_mean"] == pytest.approx(0.865)
    assert s["4"]["fine-tune"]["gain_over_scratch"] == pytest.approx(0.06)
    assert s["all"]["frozen backbone"]["gain_over_scratch"] == pytest.approx(-0.02)
    assert s["all"]["scratch"]["n_seeds"] == 2 and doc["source_test_acc_mean"] == pytest.approx(0.95)
    md = out.with_suffix(".md").read_text()
    assert "| 4 | fine-tune | 0.8650 ± 0.0071 | +0.0600 | 2 |" in md


def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "transfer.json"
    assert transfer.main(["--data", str(tmp_path / "missing.npz"), "--out", str(out), "--runs", str(tmp_path)]) == 2
    assert "error: --data: dataset file" in capsys.readouterr().err and not out.exists()
    assert transfer.main(["--data", str(FIXTURE), "--per-class", "0", "--out", str(out), "--runs", str(tmp_path)]) == 2
    assert "--per-class: at least 1" in capsys.readouterr().err and not out.exists()


def test_per_class_beyond_a_class_fails_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer.accuracy, "one_seed", lambda *a, **k: pytest.fail("trained before the check"))
    out = tmp_path / "transfer.json"
    with pytest.raises(SystemExit, match="--per-class 100000: class"):
        transfer.main(["--data", str(FIXTURE), "--per-class", "100000", "--out", str(out), "--runs", str(tmp_path)])
    assert not out.exists()

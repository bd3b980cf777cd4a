"""bench/accuracy.py bookkeeping (the training itself is the stages' job, tested elsewhere): per-label
entries, mean ± sd over seeds, the target check and ``--add`` keeping earlier seeds of the same label."""

import json

import pytest

from bench import accuracy


def _row(seed, acc, auc=0.9985, secs=500.0):
    return {"seed": seed, "test_acc": acc, "test_auc": auc, "val_acc": acc, "train_seconds": secs,
            "wall_seconds": secs + 60, "epochs_run": 24, "best_epoch": 24}


@pytest.fixture
def fake_seeds(monkeypatch):
    results = {}
    monkeypatch.setattr(accuracy, "one_seed", lambda recipe, seed, dataset, overrides, env, log: results[seed])
    return results


def test_entries_are_per_label_and_add_keeps_earlier_seeds(tmp_path, fake_seeds):
    out = tmp_path / "accuracy.json"
    fake_seeds.update({0: _row(0, 0.970), 1: _row(1, 0.974), 2: _row(2, 0.966)})
    assert accuracy.main(["--recipe", "full", "--seeds", "0", "--set", "epochs=36", "--out", str(out)]) == 0
    assert accuracy.main(["--recipe", "full", "--seeds", "1,2", "--set", "epochs=36", "--add", "--out", str(out)]) == 0
    e = json.loads(out.read_text())["bloodmnist"]["full[epochs=36]"]
    assert [r["seed"] for r in e["runs"]] == [0, 1, 2] and e["n_seeds"] == 3
    assert e["test_acc_mean"] == pytest.approx(0.970) and e["test_acc_sd"] == pytest.approx(0.004)
    assert e["meets_target"] is True and e["overrides"] == {"epochs": "36"}
    # without --add a label's entry is replaced; a seed run again replaces its own row
    fake_seeds[2] = _row(2, 0.950)
    accuracy.main(["--recipe", "full", "--seeds", "2", "--set", "epochs=36", "--add", "--out", str(out)])
    e = json.loads(out.read_text())["bloodmnist"]["full[epochs=36]"]
    assert [r["test_acc"] for r in e["runs"]] == [0.970, 0.974, 0.950] and e["meets_target"] is False
    accuracy.main(["--recipe", "full", "--seeds", "1", "--set", "epochs=36", "--out", str(out)])
    assert json.loads(out.read_text())["bloodmnist"]["full[epochs=36]"]["n_seeds"] == 1


def test_target_needs_time_too(tmp_path, fake_seeds):
    out = tmp_path / "accuracy.json"
    fake_seeds.update({0: _row(0, 0.975, secs=16 * 60)})
    accuracy.main(["--recipe", "full", "--seeds", "0", "--out", str(out)])
    assert json.loads(out.read_text())["bloodmnist"]["full"]["meets_target"] is False  # over 15 min

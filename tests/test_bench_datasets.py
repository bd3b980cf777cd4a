"""bench/datasets.py (make bench-datasets): the results layout (full recipe at the top level of each dataset,
other recipes nested), mean ± sd over seeds, the comparison with the cards' ResNet-18 (28), ``--add``, the
quick mode's guard, and (slow) the quick mode end to end through the real stages on the tiny fixtures."""

import json
from pathlib import Path

import pytest

from bench import datasets

FULL_KEYS = ("test_acc_mean", "test_acc_sd", "test_auc_mean", "n_seeds", "train_seconds_mean")


def _row(seed, acc, auc=0.9, secs=100.0, ordinal=False, augment="fixed", tta="no"):
    row = {"seed": seed, "test_acc": acc, "test_auc": auc, "val_acc": acc + 0.01, "train_seconds": secs,
           "wall_seconds": secs + 30, "epochs_run": 40, "best_epoch": 30, "epochs": 40, "patience": 40,
           "augment": augment, "tta": tta, "loadavg_1min": [1.0, 1.5], "run_dir": f"runs/x-s{seed}"}
    if ordinal:
        row.update(test_mae=0.5 + seed / 10, test_qwk=0.6)
    return row


CARDS = {"breastmnist": ("breastmnist", "binary-class"), "retinamnist": ("retinamnist", "ordinal-regression")}


@pytest.fixture
def fake(monkeypatch):
    """one_seed replaced by a table {(dataset, recipe, seed): row}; a missing key fails like the CLI does."""
    table, calls = {}, []

    def one_seed(recipe, seed, spec, overrides, env, log):
        calls.append((spec, recipe, seed, dict(overrides), env["WORKBENCH_RUNS_DIR"]))
        if (spec, recipe, seed) not in table:
            raise SystemExit("error: workbench run train failed: ['boom']")
        card, task = CARDS[spec]
        return dict(table[(spec, recipe, seed)]), {"card": card, "task": task}

    monkeypatch.setattr(datasets, "one_seed", one_seed)
    return table, calls


def test_layout_means_and_reference(tmp_path, fake):
    table, calls = fake
    table.update({("breastmnist", "full", 0): _row(0, 0.86), ("breastmnist", "full", 1): _row(1, 0.88, secs=120),
                  ("breastmnist", "demo", 0): _row(0, 0.80), ("breastmnist", "demo", 1): _row(1, 0.82),
                  ("retinamnist", "full", 0): _row(0, 0.50, 0.70, ordinal=True, augment="dihedral", tta="yes"),
                  ("retinamnist", "full", 1): _row(1, 0.56, 0.74, ordinal=True, augment="dihedral", tta="yes")})
    out = tmp_path / "datasets.json"
    assert datasets.main(["--datasets", "breastmnist,retinamnist", "--recipes", "full,demo", "--seeds", "0,1",
                          "--out", str(out)]) == 1      # retinamnist demo failed: exit 1, the rest written
    # untuned: no parameter but recipe, seed and dataset reaches the stages; runs under runs/bench-datasets
    assert all(c[3] == {} and c[4].endswith("runs/bench-datasets") for c in calls)
    doc = json.loads(out.read_text())
    b = doc["breastmnist"]
    assert {k: b[k] for k in FULL_KEYS} == pytest.approx(
        {"test_acc_mean": 0.87, "test_acc_sd": 0.014142, "test_auc_mean": 0.9, "n_seeds": 2,
         "train_seconds_mean": 110.0}, abs=1e-5)
    assert b["card"] == "breastmnist" and b["task"] == "binary-class" and b["augment"] == "fixed"
    assert [r["seed"] for r in b["seeds"]] == [0, 1] and "test_mae_mean" not in b
    assert b["demo"]["test_acc_mean"] == pytest.approx(0.81) and b["demo"]["n_seeds"] == 2
    assert "test_acc_mean" not in b["demo"]["seeds"][0] and "demo" not in b["demo"]
    # the card's MedMNIST v2 ResNet-18 (28): 0.863 ACC, 0.901 AUC
    assert b["resnet18_28"] == {"acc": 0.863, "auc": 0.901, "source": "data card", "acc_at_or_above": True,
                                "auc_at_or_above": False}
    assert b["demo"]["resnet18_28"]["acc_at_or_above"] is False
    r = doc["retinamnist"]
    assert "demo" not in r and r["n_seeds"] == 2 and r["tta"] == "yes"
    assert r["test_mae_mean"] == pytest.approx(0.55) and r["test_qwk_mean"] == pytest.approx(0.6)
    assert r["resnet18_28"]["source"] == "project page, unverified" and r["resnet18_28"]["acc_at_or_above"] is True
    md = out.with_suffix(".md").read_text()
    assert "| breastmnist | full | 2 | 0.8700 ± 0.0141 | 0.863 | at or above |" in md
    assert "| breastmnist | demo | 2 | 0.8100 ± 0.0141 | 0.863 | below |" in md
    assert "| ResNet-18 (28) | | 0.863 | 0.901 | data card |" in md
    assert "| ResNet-18 (28) | | not on the card | not on the card | — | — | |" in md   # retina's card has none
    assert "project page, unverified" in md and "| ours: full | 2 | 0.5300 ± 0.0424 | 0.7200 ± 0.0283 | 0.550" in md


def test_add_keeps_other_entries_and_seeds(tmp_path, fake):
    table, _ = fake
    table.update({("breastmnist", "full", s): _row(s, 0.85 + s / 100) for s in range(3)})
    table.update({("breastmnist", "demo", 0): _row(0, 0.80), ("retinamnist", "full", 0): _row(0, 0.5, ordinal=True)})
    out = tmp_path / "datasets.json"
    assert datasets.main(["--datasets", "breastmnist,retinamnist", "--recipes", "full", "--seeds", "0",
                          "--out", str(out)]) == 0
    assert datasets.main(["--datasets", "breastmnist", "--recipes", "full", "--seeds", "1,2", "--add",
                          "--out", str(out)]) == 0
    assert datasets.main(["--datasets", "breastmnist", "--recipes", "demo", "--seeds", "0", "--add",
                          "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    b = doc["breastmnist"]
    assert [r["seed"] for r in b["seeds"]] == [0, 1, 2] and b["n_seeds"] == 3
    assert b["test_acc_mean"] == pytest.approx(0.86) and b["demo"]["n_seeds"] == 1
    assert doc["retinamnist"]["n_seeds"] == 1
    # a seed run again replaces its own row
    table[("breastmnist", "full", 1)] = _row(1, 0.70)
    datasets.main(["--datasets", "breastmnist", "--recipes", "full", "--seeds", "1", "--add", "--out", str(out)])
    b = json.loads(out.read_text())["breastmnist"]
    assert [r["test_acc"] for r in b["seeds"]] == [0.85, 0.70, 0.87] and b["demo"]["n_seeds"] == 1
    # without --add the file holds this invocation's results only
    datasets.main(["--datasets", "breastmnist", "--recipes", "demo", "--seeds", "0", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert list(doc) == ["breastmnist"] and "test_acc_mean" not in doc["breastmnist"]


def test_quick_never_writes_to_bench_results(tmp_path, fake, capsys):
    target = datasets.RESULTS_DIR / "datasets_quick_must_not_exist.json"
    assert datasets.main(["--quick", "--out", str(target)]) == 2
    assert not target.exists() and not fake[1]
    assert "--quick never writes to bench/results" in capsys.readouterr().err
    assert datasets.main(["--recipes", "best", "--out", str(tmp_path / "x.json")]) == 2
    assert datasets.main(["--seeds", "a", "--out", str(tmp_path / "x.json")]) == 2


def test_embedded_datasets_are_the_cards_files_present(tmp_path, monkeypatch):
    (tmp_path / "retinamnist.npz").write_bytes(b"")
    (tmp_path / "breastmnist.npz").write_bytes(b"")
    (tmp_path / "unrelated.npz").write_bytes(b"")
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    assert datasets.embedded_datasets() == ["breastmnist", "retinamnist"]   # smallest training set first


@pytest.mark.slow
def test_quick_mode_through_the_stages(tmp_path):
    """The real thing on a tiny fixture: one run (RetinaMNIST's tiny subset, the full recipe: an ordinal task and
    a fundus card), trained and evaluated through the CLI. ``--add`` and the layout of several datasets and
    recipes are tested above on the same code with the stages replaced."""
    out = tmp_path / "datasets.json"
    assert datasets.main(["--quick", "--datasets", "tests/fixtures/retinamnist_tiny.npz", "--recipes", "full",
                          "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"retinamnist_tiny"}
    r = doc["retinamnist_tiny"]
    assert set(FULL_KEYS) <= set(r) and r["n_seeds"] == 1 and r["quick"] is True
    assert r["card"] == "retinamnist_tiny" and r["task"] == "ordinal-regression"
    row = r["seeds"][0]
    assert 0 <= row["test_acc"] <= 1 and 0 <= row["test_auc"] <= 1 and row["epochs_run"] == 1
    # effective values from the run's params/train.json: a fundus photograph has no fixed orientation
    assert (row["augment"], row["tta"]) == ("dihedral", "yes")
    assert len(row["loadavg_1min"]) == 2 and (Path(row["run_dir"]) / "metrics.json").is_file()
    assert Path(row["run_dir"]).is_relative_to(tmp_path)            # quick runs stay out of runs/
    m = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["test"]
    assert row["test_mae"] == m["mae"] and row["test_qwk"] == m["qwk"]
    assert r["test_mae_mean"] == pytest.approx(m["mae"], abs=1e-5)
    md = out.with_suffix(".md").read_text()
    assert "Quick mode" in md and "## RetinaMNIST (tiny test subset) — `retinamnist_tiny`, ordinal-regression task" in md
    assert f"| ours: full | 1 | {r['test_acc_mean']:.4f} ± 0.0000 |" in md


def test_an_interrupted_benchmark_keeps_the_finished_seeds(tmp_path, monkeypatch, fake):
    table, _ = fake
    table[("breastmnist", "full", 0)] = _row(0, 0.86)
    fake_one_seed = datasets.one_seed

    def stop_at_seed_1(recipe, seed, spec, overrides, env, log):
        if seed == 1:
            raise KeyboardInterrupt
        return fake_one_seed(recipe, seed, spec, overrides, env, log)

    monkeypatch.setattr(datasets, "one_seed", stop_at_seed_1)
    out = tmp_path / "datasets.json"
    with pytest.raises(KeyboardInterrupt):
        datasets.main(["--datasets", "breastmnist", "--recipes", "full", "--seeds", "0,1,2", "--out", str(out)])
    b = json.loads(out.read_text())["breastmnist"]
    assert b["n_seeds"] == 1 and b["test_acc_mean"] == 0.86


def test_report_only_fills_fields_from_the_run_directory(tmp_path, fake):
    table, _ = fake
    run = tmp_path / "runs" / "r0"
    (run / "params").mkdir(parents=True)
    (run / "params" / "train.json").write_text(json.dumps(
        {"epochs": 36, "steps_per_epoch": 94, "patience": 36, "augment": "dihedral", "tta": "yes", "width": 32}))
    (run / "metrics.json").write_text(json.dumps({"test": {"acc": 0.5, "auc": 0.7, "mae": 0.8, "qwk": 0.4}}))
    (run / "provenance.json").write_text(json.dumps({"train": {"git": {"sha": "abc", "dirty": False}}}))
    old = {k: v for k, v in _row(0, 0.5, 0.7, augment="dihedral", tta="yes").items() if k != "epochs"}
    table[("retinamnist", "full", 0)] = {**old, "run_dir": str(run)}
    out = tmp_path / "datasets.json"
    datasets.main(["--datasets", "retinamnist", "--recipes", "full", "--seeds", "0", "--out", str(out)])
    assert "steps_per_epoch" not in json.loads(out.read_text())["retinamnist"]   # the fake row had none
    assert datasets.main(["--report-only", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["retinamnist"]
    assert r["steps_per_epoch"] == 94 and r["epochs"] == 36 and r["test_acc_mean"] == 0.5
    assert r["seeds"][0]["test_mae"] == 0.8 and r["seeds"][0]["git"] == {"sha": "abc", "dirty": False}
    assert "| full | 0 | 0.5000 | 0.7000 | 0.800 | 0.400 | 0.5100 | 40 / 36 | 94 | dihedral | yes |" in \
        out.with_suffix(".md").read_text()

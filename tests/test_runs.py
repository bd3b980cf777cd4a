"""Run directories: unique, write-once; clear errors for missing upstream artifacts; provenance."""

import json
import platform
import re
from datetime import datetime, timezone

import numpy as np
import pytest

import workbench  # noqa: F401  (first: selects the JAX backend before jax/keras/albumentations below)
from workbench import WorkbenchError, runs

import albumentations  # noqa: E402,I001
import jax  # noqa: E402
import keras  # noqa: E402


class _FrozenClock(datetime):
    """datetime whose now() is one fixed instant: every call happens 'in the same second'."""

    @classmethod
    def now(cls, tz=None):
        return datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_new_run_dirs_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "datetime", _FrozenClock)
    a = runs.new_run_dir("bloodmnist_cnn", runs_dir=tmp_path / "runs")
    b = runs.new_run_dir("bloodmnist_cnn", runs_dir=tmp_path / "runs")
    c = runs.new_run_dir("bloodmnist_cnn", runs_dir=tmp_path / "runs")
    assert [p.name for p in (a, b, c)] == ["20240506-070809_bloodmnist_cnn", "20240506-070809_bloodmnist_cnn-2",
                                           "20240506-070809_bloodmnist_cnn-3"]
    assert all(p.is_dir() and p.parent == tmp_path / "runs" for p in (a, b, c))
    assert list(a.iterdir()) == []


def test_new_run_dir_real_clock_and_slug(tmp_path):
    a = runs.new_run_dir("my data/set cnn", runs_dir=tmp_path)
    b = runs.new_run_dir("my data/set cnn", runs_dir=tmp_path)
    assert a != b and a.is_dir() and b.is_dir()
    assert re.fullmatch(r"\d{8}-\d{6}_my-data-set-cnn(-\d+)?", a.name)
    assert runs.new_run_dir("///", runs_dir=tmp_path).name.endswith("_run")


def test_run_file_is_write_once(tmp_path):
    run = runs.Run(path=tmp_path, stage="train")
    p = run.file("annotations/labels.csv")
    assert p == tmp_path / "annotations" / "labels.csv"
    assert p.parent.is_dir() and not p.exists()
    p.write_text("x")
    with pytest.raises(WorkbenchError) as ei:
        run.file("annotations/labels.csv")
    msg = str(ei.value)
    assert str(p) in msg and "write-once" in msg
    assert p.read_text() == "x"


def test_write_json_refuses_overwrite(tmp_path):
    run = runs.Run(path=tmp_path, stage="evaluate")
    run.write_json("metrics.json", {"acc": np.float32(0.5), "n": np.int64(3), "cm": np.eye(2, dtype=int)})
    assert run.read_json("metrics.json") == {"acc": 0.5, "n": 3, "cm": [[1, 0], [0, 1]]}
    with pytest.raises(WorkbenchError, match="write-once"):
        run.write_json("metrics.json", {})
    assert run.read_json("metrics.json")["n"] == 3


def test_require_names_missing_file_and_stage(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "train.json").write_text("{}")
    with pytest.raises(WorkbenchError) as ei:
        runs.require(tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(tmp_path) in msg and "has no model.keras" in msg
    assert "params/train.json" not in msg  # present: not reported
    assert "run the train stage" in msg and "workbench run train" in msg

    with pytest.raises(WorkbenchError) as ei:
        runs.require(tmp_path, names=("metrics.json", "predictions.npz"), stage="evaluate")
    msg = str(ei.value)
    assert "metrics.json, predictions.npz" in msg and "run the evaluate stage" in msg

    (tmp_path / "model.keras").write_bytes(b"")
    runs.require(tmp_path)  # all present: no error
    assert (tmp_path / "model.keras").exists()


def test_require_missing_run_dir(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist.*workbench run train"):
        runs.require(tmp_path / "nope")


def test_latest_run_picks_newest_with_artifact(tmp_path):
    for name in ("20240101-000000_a", "20240102-000000_b", "20240103-000000_c"):
        (tmp_path / name).mkdir()
    (tmp_path / "20240101-000000_a" / "model.keras").write_bytes(b"")
    (tmp_path / "20240102-000000_b" / "model.keras").write_bytes(b"")
    assert runs.latest_run(tmp_path) == tmp_path / "20240102-000000_b"
    with pytest.raises(WorkbenchError, match="run the train stage first"):
        runs.latest_run(tmp_path / "empty")


@pytest.fixture
def no_git_locks(monkeypatch):
    # provenance runs read-only git commands; this keeps 'git status' from taking the index lock
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")


def test_record_provenance(tmp_path, no_git_locks):
    run = runs.Run(path=tmp_path, stage="train")
    runs.record_provenance(run, seed=3, data_md5="abc")
    doc = json.loads((tmp_path / "provenance.json").read_text())
    assert list(doc) == ["train"]
    entry = doc["train"]
    assert entry["seed"] == 3 and entry["data_md5"] == "abc"
    assert entry["python"] == platform.python_version()
    assert entry["keras_backend"] == "jax"
    assert entry["packages"]["keras"] == keras.__version__
    assert entry["packages"]["jax"] == jax.__version__
    assert entry["packages"]["albumentations"] == albumentations.__version__
    assert entry["packages"]["workbench"] == workbench.__version__
    assert set(entry["git"]) == {"sha", "dirty"}
    assert entry["git"]["sha"] is None or re.fullmatch(r"[0-9a-f]{40}", entry["git"]["sha"])
    assert entry["git"]["dirty"] in (None, True, False)
    assert entry["devices"] and all(isinstance(d, str) for d in entry["devices"])
    datetime.fromisoformat(entry["time_utc"])  # parseable timestamp
    assert not (tmp_path / "provenance.json.tmp").exists()


def test_provenance_refuses_second_entry_for_a_stage(tmp_path, no_git_locks):
    runs.record_provenance(runs.Run(path=tmp_path, stage="train"), seed=0)
    before = (tmp_path / "provenance.json").read_text()
    with pytest.raises(WorkbenchError) as ei:
        runs.record_provenance(runs.Run(path=tmp_path, stage="train"), seed=1)
    assert "already records stage train" in str(ei.value) and "write-once" in str(ei.value)
    assert (tmp_path / "provenance.json").read_text() == before

    runs.record_provenance(runs.Run(path=tmp_path, stage="evaluate"), seed=1)
    doc = json.loads((tmp_path / "provenance.json").read_text())
    assert list(doc) == ["train", "evaluate"]
    assert doc["train"] == json.loads(before)["train"]  # the train entry was not rewritten


def test_add_provenance_never_overwrites_a_field(tmp_path, no_git_locks):
    run = runs.Run(path=tmp_path, stage="train")
    runs.record_provenance(run, seed=0)
    runs.add_provenance(run, data_md5="abc")
    assert json.loads((tmp_path / "provenance.json").read_text())["train"]["data_md5"] == "abc"
    with pytest.raises(WorkbenchError, match="data_md5"):
        runs.add_provenance(run, data_md5="def")
    with pytest.raises(WorkbenchError, match="seed"):
        runs.add_provenance(run, seed=5)
    assert json.loads((tmp_path / "provenance.json").read_text())["train"]["data_md5"] == "abc"

"""CLI errors: one clear line (exit 2), no traceback, nothing already saved is lost."""

import pytest

from conftest import TINY, TINY_TRAIN, run_cli


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err
    # the Jupyter kernel may log its own start-up warnings; ours is exactly one line, and the last
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    err = errors[0]
    for f in fragments:
        assert f in err, (f, err)


def test_unknown_parameter_lists_valid_ones(tmp_path):
    proc = run_cli("run", "train", "-p", "epoch", "3", env={"WORKBENCH_RUNS_DIR": str(tmp_path)})
    _one_line_error(proc, "unknown parameter(s) epoch", "valid:", "epochs", "learning_rate")
    assert not any(tmp_path.iterdir())  # no run directory was created


def test_unknown_pipeline_parameter(tmp_path):
    proc = run_cli("pipeline", "-p", "target_precison", "0.9", env={"WORKBENCH_RUNS_DIR": str(tmp_path)})
    _one_line_error(proc, "unknown parameter 'target_precison'", "target_precision")


@pytest.mark.parametrize("name,value,fragment", [
    ("epochs", "three", "parameter 'epochs' must be int"),
    ("epochs", "0", "out of range"),
    ("model", "vgg99", "is not one of cnn, resnet18"),
    ("augment", "heavy", "none, light, microscopy"),
])
def test_bad_parameter_values(tmp_path, name, value, fragment):
    proc = run_cli("run", "train", "-p", name, value, env={"WORKBENCH_RUNS_DIR": str(tmp_path)})
    _one_line_error(proc, fragment)


def test_evaluate_without_run_dir():
    _one_line_error(run_cli("run", "evaluate"), "needs --run DIR")


def test_missing_upstream_run(tmp_path):
    _one_line_error(run_cli("run", "annotate", "--run", str(tmp_path / "nope")), "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(run_cli("run", "evaluate", "--run", str(tmp_path / "empty")),
                    "has no model.keras", "run the train stage")


def test_config_file_errors(tmp_path):
    _one_line_error(run_cli("run", "train", "-f", str(tmp_path / "none.yaml")), "config file", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    _one_line_error(run_cli("run", "train", "-f", str(bad)), "not valid YAML")


@pytest.mark.slow
def test_error_inside_notebook_is_reported_in_one_line(tmp_path):
    """A bad dataset path is only found when the notebook runs: the user still gets our one-line message."""
    missing = tmp_path / "missing.npz"
    proc = run_cli("run", "train", "-q", "-p", "dataset", str(missing), "-p", "epochs", "1",
                   env={"WORKBENCH_RUNS_DIR": str(tmp_path / "runs")})
    _one_line_error(proc, "stage train failed", f"dataset file {missing} not found")
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "10_train.ipynb").is_file() and (run_dir / "10_train.html").is_file()


def test_cards_command_lists_all_cards():
    proc = run_cli("cards")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.strip().splitlines()]
    assert len(names) == 12 and "bloodmnist" in names and "organsmnist" in names


def test_params_command_shows_help():
    proc = run_cli("params", "annotate")
    assert proc.returncode == 0
    assert "target_precision (float, default 0.99)" in proc.stdout


def test_summary_lines_survive_null_metrics_and_an_empty_accept(tmp_path):
    """A single-class test split has no AUC (null in metrics.json): the summary says n/a instead of a traceback
    after a successful stage; a pool where nothing was auto-accepted says so instead of 'precision nan'."""
    import json

    from workbench import cli
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"dataset": "x", "test": {"acc": 0.9, "auc": None, "n": 10}}))
    pool = run / "annotate" / "test"
    (pool / "params").mkdir(parents=True)
    (pool / "params" / "annotate.json").write_text("{}")
    (pool / "annotation_summary.json").write_text(json.dumps({
        "n_auto_accepted": 0, "pool_size": 20, "threshold": {"threshold": None, "target_precision": 0.99},
        "achieved": {"precision": None, "coverage": 0.0, "n_accepted": 0},
        "certification": {"certified_by": "none", "message": "Label these 12 images"}}))
    text = cli._summary(run)
    assert "test ACC 0.9000  test AUC n/a" in text and "nothing auto-accepted" in text and "nan" not in text
    assert "CERTIFY: Label these 12 images" in text

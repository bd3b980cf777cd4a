import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "bloodmnist_tiny.npz"
WORKBENCH = [sys.executable, "-m", "workbench"]

# tiny but real: the fixture's real BloodMNIST images, a narrow CNN, one epoch
TINY_TRAIN = ["-p", "dataset", str(TINY), "-p", "epochs", "1", "-p", "width", "8", "-p", "batch_size", "64"]


def run_cli(*args, cwd=ROOT, env=None, timeout=600):
    e = {**os.environ, **(env or {})}
    return subprocess.run([*WORKBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One real pipeline (papermill-executed notebooks) on the tiny fixture, shared by the e2e tests."""
    runs = tmp_path_factory.mktemp("runs")
    proc = run_cli("pipeline", "--name", "e2e", "-q", *TINY_TRAIN, "-p", "gallery_size", "8",
                   env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return {"dir": run_dir, "stdout": proc.stdout, "stderr": proc.stderr}


def read_json(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """One tiny self-supervised pretraining (workbench.pretrain, run without Jupyter) on the tiny fixture's train
    split, shared by the pretraining and semi-supervised tests."""
    import workbench  # noqa: F401  (JAX backend)
    from workbench import params, pretrain
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    out = pretrain.run(params.make("pretrain", {"dataset": str(TINY), "recipe": "tiny", "width": 8,
                                                "run_dir": str(run_dir)}))
    return run_dir, out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A narrow CNN trained 3 epochs on the real BloodMNIST fixture (the demo recipe otherwise), shared by the
    tests that only read a trained run (embeddings, neighbours, maps, explain, ...): copy it before writing."""
    import workbench  # noqa: F401
    from workbench import params, train
    run = tmp_path_factory.mktemp("tiny") / "run"
    train.run(params.make("train", {"run_dir": str(run), "dataset": str(TINY), "epochs": 3, "width": 8,
                                    "batch_size": 64}))
    return run


@pytest.fixture(scope="session")
def trained(tiny_run):
    from workbench import runload
    return runload.load(tiny_run)

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "bloodmnist_tiny.npz"
WORKBENCH = [sys.executable, "-m", "workbench"]

# tiny but real: the fixture's real BloodMNIST images, a narrow CNN, one epoch
TINY_TRAIN = ["-p", "dataset", str(TINY), "-p", "epochs", "1", "-p", "width", "8", "-p", "batch_size", "64"]

# One JAX persistent compilation cache per test session: the process that starts the session sets it, and its
# xdist workers and every kernel, CLI and Dask worker they start inherit the environment.
# The tests build the same tiny networks again and again, and XLA's compile of each is most of a tiny run's
# time: a tiny pipeline takes ~30 s instead of ~50 s. Tracing still happens every time; only XLA's compiled
# executable is reused, keyed by JAX on the program, the compile options, the backend and the jax version, so
# the numbers are those of a fresh compile (the fresh-kernel equivalence test compares bytes across it). It
# starts empty in every session and is removed at its end, so no run's time depends on an earlier one.
# A user's own environment wins (setdefault).
_JAX_CACHE = Path(tempfile.gettempdir()) / f"workbench-test-jax-cache-{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _durations_tool():
    """tools/test_durations.py (not a package): the durations file's reader, for the order and its tests."""
    spec = importlib.util.spec_from_file_location("test_durations_tool", ROOT / "tools" / "test_durations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_collection_modifyitems(session, config, items):
    """Run the files slowest first, by their totals in the committed tests/durations.md (``make
    test-durations`` rewrites it): with ``--dist loadfile --no-loadscope-reorder`` (the Makefile's) the xdist
    workers take whole files in this order and finish together; without xdist only the order changes. Tests
    keep their order within a file. The order is the same on every worker (xdist checks it)."""
    durations = ROOT / "tests" / "durations.md"
    if not durations.is_file():
        return
    tool = _durations_tool()
    files = list(dict.fromkeys(item.nodeid.split("::")[0] for item in items))
    rank = {f: i for i, f in enumerate(tool.slowest_first(files, tool.file_seconds(durations.read_text())))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def pytest_sessionfinish(session, exitstatus):
    if not hasattr(session.config, "workerinput"):      # the controller (or a run without xdist), after all workers
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)   # only the directory this session made, never a user's


def run_cli(*args, cwd=ROOT, env=None, timeout=600):
    e = {**os.environ, **(env or {})}
    return subprocess.run([*WORKBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One real pipeline (papermill-executed notebooks) on the tiny fixture, shared by the e2e tests.

    Built once per test session: under pytest-xdist the first worker that needs it builds it under a file lock
    (the others wait for it), and every worker then gets its own copy, as each had its own run before, since
    tests write into it (reviews, pools). ``built_dir`` is where the pipeline made it: the path its own files
    record (e.g. a pool's provenance ``trained_run``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return _build_pipeline_run(tmp_path_factory.mktemp("runs"))
    shared = tmp_path_factory.getbasetemp().parent / "shared-pipeline-run"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)               # released when the file closes, or if the worker dies
        done = shared / "fixture.json"
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)   # a build that failed on another worker starts over
            out = _build_pipeline_run(shared / "runs")
            done.write_text(json.dumps({k: str(v) for k, v in out.items() if k != "built_dir"}))
        built = json.loads(done.read_text())
    own = tmp_path_factory.mktemp("runs")
    shutil.copytree(shared / "runs", own, dirs_exist_ok=True)
    mine = {k: v.replace(str(shared / "runs"), str(own)) for k, v in built.items()}
    return {"dir": Path(mine["dir"]), "stdout": mine["stdout"], "stderr": mine["stderr"],
            "built_dir": Path(built["dir"])}


def _build_pipeline_run(runs: Path) -> dict:
    runs.mkdir(parents=True, exist_ok=True)
    proc = run_cli("pipeline", "--name", "e2e", "-q", *TINY_TRAIN, "-p", "gallery_size", "8",
                   env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return {"dir": run_dir, "stdout": proc.stdout, "stderr": proc.stderr, "built_dir": run_dir}


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

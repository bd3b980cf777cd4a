"""workbench.execute.StageKernel: the stages of a run share one notebook kernel, each on a clean slate."""

import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from workbench.execute import StageKernel, ensure_kernel

PROBE = """\
import json, os, sys
import workbench.runtime as _rt
_hidden = {'In', 'Out', 'exit', 'quit', 'get_ipython', 'open'}
print(json.dumps({"pid": os.getpid(), "names": sorted(k for k in globals() if not k.startswith('_') and k not in _hidden),
                  "keras_imported": 'keras' in sys.modules, "earlier": _rt.KERNEL["earlier_stages"],
                  "omp": os.environ.get("OMP_NUM_THREADS")}))
leftover = 1
"""


def _run(kernel, tmp_path, stage):
    import papermill
    nb = new_notebook(cells=[new_code_cell(PROBE), new_code_cell("leftover + 1")])
    nb.metadata["kernelspec"] = {"name": ensure_kernel(headless=True), "display_name": "workbench", "language": "python"}
    src, out = tmp_path / f"{stage}-in.ipynb", tmp_path / f"{stage}.ipynb"
    nbformat.write(nb, src)
    try:
        papermill.execute_notebook(str(src), str(out), km=kernel.for_stage(stage, ensure_kernel(headless=True)),
                                   kernel_name=ensure_kernel(headless=True), progress_bar=False)
    finally:
        kernel.after_stage()
    done = nbformat.read(out, as_version=4)
    cells = [c for c in done.cells if c.cell_type == "code"]
    probe = json.loads(cells[0].outputs[0]["text"])
    return probe, [c.execution_count for c in cells]


def test_stages_share_the_kernel_on_a_clean_slate_and_a_changed_environment_gets_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with StageKernel() as kernel:
        one, counts_one = _run(kernel, tmp_path, "one")
        two, counts_two = _run(kernel, tmp_path, "two")
        first_pid = kernel.pid
        monkeypatch.setenv("OMP_NUM_THREADS", "1")   # e.g. another CPU budget: a kernel must start with it
        three, _ = _run(kernel, tmp_path, "three")
        assert kernel.pid == three["pid"]
    assert kernel.km is None
    # one kernel for the first two stages; workbench, Keras and JAX were imported before the first cell ran
    assert one["pid"] == two["pid"] == first_pid and one["keras_imported"] and two["keras_imported"]
    # each stage sees none of the previous stage's names and counts its cells from 1
    assert "leftover" not in two["names"] and two["names"] == one["names"] == ["json", "os", "sys"]
    assert counts_one == counts_two == [1, 2]
    assert (one["earlier"], two["earlier"]) == ([], ["one"])
    # the changed environment: a fresh kernel that has it, with no earlier stages
    assert three["pid"] != two["pid"] and three["omp"] == "1" and three["earlier"] == [] and two["omp"] == "2"
    for pid in (two["pid"], three["pid"]):  # shut down (and reaped) when the run is over
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_failing_preload_is_one_line(tmp_path, monkeypatch):
    from workbench.errors import WorkbenchError
    monkeypatch.setattr(StageKernel, "PRELOAD", "import workbench_no_such_module\n")
    with StageKernel() as kernel, pytest.raises(WorkbenchError, match="could not import workbench in the notebook "
                                                                       "kernel: ModuleNotFoundError"):
        kernel.for_stage("train", ensure_kernel(headless=True))


def test_only_the_set_up_variables_decide_whether_the_kernel_serves_the_next_stage():
    k = StageKernel()
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "2", "LD_LIBRARY_PATH": "/a"}
    k.started_with = (base, "/w", "workbench-headless")
    # what this process's imports change (OpenCV extends LD_LIBRARY_PATH, Keras adds TF_*): the kernel's do too
    assert not k._differs(({**base, "LD_LIBRARY_PATH": "/a:/b", "TF_CPP_MIN_LOG_LEVEL": "1"}, "/w", "workbench-headless"))
    assert k._differs(({**base, "OMP_NUM_THREADS": "1"}, "/w", "workbench-headless"))          # changed
    assert k._differs(({**base, "XLA_FLAGS": "--x"}, "/w", "workbench-headless"))              # added
    assert k._differs(({"PATH": "/bin", "LD_LIBRARY_PATH": "/a"}, "/w", "workbench-headless"))  # removed
    assert k._differs((base, "/elsewhere", "workbench-headless"))
    assert k._differs((base, "/w", "workbench"))


def test_run_stage_passes_its_environment_to_the_kernel_and_leaves_this_process_alone(tmp_path, monkeypatch):
    """The kernel gets the headless flag, the JAX backend and the fast path's allocator/XLA settings; this
    process's environment is as it was (a reused Dask worker or a JupyterLab kernel must not inherit them)."""
    import papermill

    from workbench import execute, runtime
    for k in ("WORKBENCH_HEADLESS", "XLA_FLAGS", *runtime.ALLOCATOR_ENV):
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    seen = {}

    def for_stage(self, stage, kernel_name, env=None):
        seen["env"] = env
        return "km"

    def execute_notebook(src, out, **kw):
        seen["km"] = kw["km"]

    monkeypatch.setattr(execute.StageKernel, "for_stage", for_stage)
    monkeypatch.setattr(execute.StageKernel, "close", lambda self: seen.setdefault("closed", True))
    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.setattr(execute, "export_html", lambda nb: nb.with_suffix(".html"))
    (tmp_path / "run").mkdir()
    execute.run_stage("train", tmp_path / "run", {"epochs": 1}, progress=False)
    assert dict(os.environ) == before
    env = seen["env"]
    assert env["WORKBENCH_HEADLESS"] == "1" and env["KERAS_BACKEND"] == "jax" and "ynn" in env["XLA_FLAGS"]
    assert all(k in env for k in runtime.ALLOCATOR_ENV) and seen["km"] == "km" and seen["closed"]

"""Execute stage notebooks with papermill into a run directory and export HTML reports (nbconvert).

Parameter names are strict: every override is checked against the notebook's parameters cell
(``papermill.inspect_notebook``) and the stage's dataclass; an unknown name is an error listing the
valid ones (papermill itself only warns).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from ..core import params as _params
from ..core.errors import WorkbenchError
from ..core.paths import STAGES, notebook_path

KERNEL_NAME = "workbench"
# papermill runs the stages on a twin of the kernel that does not copy the process's own stdout/stderr
# (file descriptors 1 and 2) into the notebook: progress bars (workbench.progress writes them to
# sys.__stderr__) reach the terminal that runs the stage, never the shared HTML report
HEADLESS_KERNEL_NAME = "workbench-headless"
PIPELINE = ("train", "evaluate", "annotate")
# the environment variables that set a kernel up: its backend, threads, devices and Python (workbench.runtime's
# kernel_env, a sweep's CPU budget, the user's own). A shared kernel serves a later stage only if these are as
# they were when it started; other variables change as this process imports libraries (OpenCV extends
# LD_LIBRARY_PATH, Keras and JAX add TF_* and TPU_* settings) and the kernel's own imports do the same.
SETUP_ENV_PREFIXES = ("XLA_", "JAX_", "KERAS_", "WORKBENCH_", "MALLOC_", "OMP_", "OPENBLAS_", "MKL_", "NUMEXPR_",
                      "VECLIB_", "CUDA_", "NVIDIA_", "PYTHON")


def _install_kernel(name: str, display: str, extra_argv: tuple[str, ...] = ()) -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve() and all(a in spec.argv for a in extra_argv):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install
    path = Path(install(kernel_name=name, display_name=display, prefix=sys.prefix))
    if extra_argv:
        doc = json.loads((path / "kernel.json").read_text())
        doc["argv"] = [*doc["argv"], *extra_argv]
        (path / "kernel.json").write_text(json.dumps(doc, indent=1))
    return name


def ensure_kernel(headless: bool = False) -> str:
    """Register this interpreter as the 'workbench' Jupyter kernel (inside sys.prefix) if needed, and its
    headless twin for papermill (``headless=True`` returns that one's name)."""
    _install_kernel(KERNEL_NAME, "Python 3 (workbench)")
    _install_kernel(HEADLESS_KERNEL_NAME, "Python 3 (workbench, headless)", ("--IPKernelApp.capture_fd_output=False",))
    return HEADLESS_KERNEL_NAME if headless else KERNEL_NAME


def notebook_parameters(stage: str) -> dict:
    import papermill
    return papermill.inspect_notebook(str(notebook_path(stage)))


def check_overrides(stage: str, overrides: dict) -> dict:
    """Validate overrides against the notebook's parameters and the stage's rules; return typed values."""
    declared = notebook_parameters(stage)
    unknown = [k for k in overrides if k not in declared]
    if unknown:
        raise WorkbenchError(
            f"unknown parameter(s) {', '.join(unknown)} for stage {stage}; valid: {', '.join(declared)}"
        )
    if "run_dir" in overrides:
        raise WorkbenchError("parameter 'run_dir' is set with --run DIR, not -p")
    return {k: _params.coerce(stage, k, v) for k, v in overrides.items()}


def split_pipeline_overrides(overrides: dict) -> dict[str, dict]:
    """Send each override to every stage that declares it; a name no stage declares is an error."""
    per_stage = {s: {} for s in PIPELINE}
    declared = {s: notebook_parameters(s) for s in PIPELINE}
    for k, v in overrides.items():
        targets = [s for s in PIPELINE if k in declared[s]]
        if not targets or k == "run_dir":
            valid = sorted({n for d in declared.values() for n in d} - {"run_dir"})
            raise WorkbenchError(f"unknown parameter {k!r} for the pipeline; valid: {', '.join(valid)}")
        for s in targets:
            per_stage[s][k] = v
    return {s: check_overrides(s, o) for s, o in per_stage.items()}


def export_html(ipynb: Path) -> Path:
    """Self-contained HTML report with code hidden (figures are inline PNGs)."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _error_line(nb_path: Path, exc) -> str:
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    if ename == "WorkbenchError":
        return evalue
    return f"{ename}: {evalue} (see {nb_path})"


class StageKernel:
    """One notebook kernel for the stages of one run (train → evaluate → annotate): a pipeline pays one kernel
    start and one import of workbench, Keras and JAX (seconds each, more on a loaded machine) instead of one
    per stage, the bulk of what a short run costs beyond its work (``make bench-sweep``).

    Each stage still starts from a clean slate: before it, a silent execute (no execution count, no output in
    the notebook) clears Keras's global state and resets IPython's user namespace and execution count, so the
    stage's notebook sees only its own parameters, its cells numbered from 1. What stays is what was imported
    (that is the saving) and JAX's compilation cache. Every stage seeds its own randomness
    (``keras.utils.set_random_seed``, ``default_rng(seed)``), so its results are those of a fresh kernel: a test
    compares them. A kernel is reused only if the stage would have started its own with the same environment
    and working directory (the train stage's XLA/allocator settings, a sweep's CPU budget); otherwise a fresh
    one starts. Each stage's provenance names the earlier stages its kernel ran (``kernel.earlier_stages``).

    Use as a context manager (the kernel is shut down at the end, also on error or Ctrl-C); pass it to
    ``run_stage(..., kernel=...)``."""

    PRELOAD = "import workbench\nfrom workbench import train, evaluate, annotate, embeddings, neighbours, maps, widgets\n"

    def __init__(self):
        self.km = None
        self.started_with = None
        self.stages: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def pid(self) -> int | None:
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        return getattr(proc, "pid", None)

    def _run_silent(self, code: str, what: str) -> None:
        from jupyter_core.utils import run_sync

        async def go():
            kc = self.km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=120)
                return await kc.execute_interactive(code, silent=True, store_history=False, timeout=600,
                                                    output_hook=lambda msg: None)
            finally:
                kc.stop_channels()
        reply = run_sync(go)()
        content = reply.get("content", {})
        if content.get("status") != "ok":
            raise WorkbenchError(f"could not {what} in the notebook kernel: "
                                 f"{content.get('ename', 'error')}: {content.get('evalue', '')}")

    def _differs(self, wanted) -> bool:
        """Would a kernel started now be set up otherwise than this one? Its working directory, its kernel, or
        a variable of its set-up (SETUP_ENV_PREFIXES) added, removed or changed since it started."""
        def setup(env):
            return {k: v for k, v in env.items() if k.startswith(SETUP_ENV_PREFIXES)}
        return wanted[1:] != self.started_with[1:] or setup(wanted[0]) != setup(self.started_with[0])

    def for_stage(self, stage: str, kernel_name: str, env: dict | None = None):
        """The kernel manager to run ``stage`` on, its namespace reset (started now if needed, with ``env``:
        default this process's environment)."""
        from jupyter_core.utils import run_sync
        wanted = (dict(os.environ if env is None else env), os.getcwd(), kernel_name)
        if self.km is not None and (self._differs(wanted) or not run_sync(self.km.is_alive)()):
            self.close()
        if self.km is None:
            km = _tracking_kernel_manager()(kernel_name=kernel_name)
            run_sync(km.start_kernel)(env=wanted[0], cwd=wanted[1])
            self.km, self.started_with, self.stages = km, wanted, []
        reset = ("import keras as _keras, workbench.runtime as _runtime\n"
                 "_keras.backend.clear_session(free_memory=False)\n"
                 f"_runtime.KERNEL['earlier_stages'] = {list(self.stages)!r}\n"
                 "get_ipython().reset(new_session=True)\n")
        if not self.stages:
            # the imports, then gc.freeze(): what they created lives as long as the kernel, so the collections
            # after each stage (and Python's own during it) need not walk it again (a full one took 0.4 s)
            self._run_silent(self.PRELOAD + "import gc as _gc\n_gc.collect()\n_gc.freeze()\n" + reset,
                             "import workbench")
        else:  # the previous stage's objects go now, not whenever Python's collector next runs
            self._run_silent(reset + "__import__('gc').collect()\n", f"reset the kernel for stage {stage}")
        self.stages.append(stage)
        return self.km

    def after_stage(self) -> None:
        """Close the connections papermill opened to the kernel (it does not, for a kernel it does not own)."""
        if self.km is not None:
            self.km.close_clients()

    def close(self) -> None:
        if self.km is None:
            return
        from jupyter_core.utils import run_sync
        # Every stage has finished and written its files; what is left is the interpreter's own teardown (about
        # a second of CPU with Keras and JAX loaded, nothing that lands on disk). So, as nbclient's
        # shutdown_kernel="immediate": the kernel's output streams are flushed (into the run's log), then its
        # process group is killed.
        try:
            self._run_silent("import sys as _sys\nfor _s in (_sys.stdout, _sys.stderr, _sys.__stdout__, _sys.__stderr__):\n"
                             "    _s.flush()\n", "flush the kernel's output")
        except Exception:  # noqa: BLE001 - a dead or hung kernel has nothing to flush
            pass
        km, self.km = self.km, None
        km.close_clients()
        try:
            run_sync(km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001 - already dead: nothing to shut down; its resources are freed below
            run_sync(km.cleanup_resources)()


@functools.lru_cache(maxsize=None)
def _tracking_kernel_manager():  # built on first use: importing this module stays light
    from jupyter_client.manager import AsyncKernelManager

    class TrackingKernelManager(AsyncKernelManager):
        """Remembers the clients handed out so they can be closed (each holds sockets and a zmq context)."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.clients = []

        def client(self, **kw):
            kc = super().client(**kw)
            self.clients.append(kc)
            return kc

        def close_clients(self) -> None:
            for kc in self.clients:
                if kc.channels_running:
                    kc.stop_channels()
            self.clients = []
    return TrackingKernelManager


def _trained_conv_impl(run_dir: Path) -> str:
    """The ``conv_impl`` the run was trained with (its params/train.json; the default when unreadable: the
    stage itself then says what is missing)."""
    default = _params.fields("train")["conv_impl"].default
    try:
        return json.loads((Path(run_dir) / "params" / "train.json").read_text()).get("conv_impl", default)
    except (OSError, ValueError, AttributeError):
        return default


def run_stage(stage: str, run_dir: Path, overrides: dict | None = None, progress: bool = True,
              kernel: StageKernel | None = None) -> Path:
    """Execute one stage notebook into ``run_dir`` (annotate: into a new pool directory inside it);
    returns the HTML report's path. ``kernel``: a ``StageKernel`` shared with the run's other stages (default:
    a kernel of its own, started and shut down by papermill)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    if stage not in STAGES:
        raise WorkbenchError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    values = check_overrides(stage, overrides or {})
    run_dir = Path(run_dir).resolve()
    out_dir = run_dir
    if stage == "annotate":
        if "out_dir" in values:
            raise WorkbenchError("parameter 'out_dir' is chosen by the command line (RUN/annotate/<pool>/), not -p")
        from ..stages import annotate
        out_dir = annotate.prepare_output(_params.make("annotate", {**values, "run_dir": str(run_dir)}))
        values["out_dir"] = str(out_dir)
    out = out_dir / f"{STAGES[stage]}.ipynb"
    if out.exists() or (out_dir / "params" / f"{stage}.json").exists():
        raise WorkbenchError(f"stage {stage} already ran in {out_dir}: run directories are write-once; start a new run")
    # The kernel's environment: headless, JAX, and the fast CPU path's process settings (they must be there when
    # the kernel starts; the later stages run the model on the backend settings it was trained with). Passed to
    # the kernel only: this process's own environment is left as it was (a Dask worker or a JupyterLab kernel that
    # runs a stage must not keep them).
    from ..core.runtime import kernel_env
    env = {**os.environ, "WORKBENCH_HEADLESS": "1", "KERAS_BACKEND": "jax"}
    if stage in ("train", "pretrain"):
        env.update(kernel_env(values.get("conv_impl", "fast")))
    elif stage in ("evaluate", "annotate"):
        env.update(kernel_env(_trained_conv_impl(run_dir)))
    kernel_name = ensure_kernel(headless=True)
    own = kernel is None       # a kernel of its own: started here with that environment, shut down at the end
    kernel = kernel if kernel is not None else StageKernel()
    try:
        km = kernel.for_stage(stage, kernel_name, env=env)
        papermill.execute_notebook(
            str(notebook_path(stage)), str(out), parameters={**values, "run_dir": str(run_dir)},
            kernel_name=kernel_name, progress_bar=progress, cwd=os.getcwd(),
            # the notebook's own printed lines (e.g. one line per training epoch) reach the terminal too
            stdout_file=sys.stdout if progress else None, km=km,
        )
    except PapermillExecutionError as e:
        export_html(out)
        raise WorkbenchError(f"stage {stage} failed: {_error_line(out, e)}") from None
    finally:
        kernel.after_stage()
        if own:
            kernel.close()
    html = export_html(out)
    if stage == "annotate":  # DICOM pools: the executed notebook and its report are searched too
        from ..stages.annotate import phi_check
        phi_check(out_dir, values)
    return html


def stage_dir(run_dir: Path, html: Path) -> Path:
    """Where a stage's results are: the directory of its report."""
    return Path(html).parent


def read_results(run_dir: Path) -> dict:
    """metrics.json, train_summary.json of a trained run and annotation_summary.json of its latest annotated
    pool (or of the pool directory given)."""
    run_dir = Path(run_dir)
    out = {}
    for name in ("metrics.json", "annotation_summary.json", "train_summary.json"):
        p = run_dir / name
        if p.exists():
            out[name] = json.loads(p.read_text())
    if "annotation_summary.json" not in out:
        from ..core.runs import pool_dirs
        done = [d for d in pool_dirs(run_dir) if (d / "annotation_summary.json").is_file()]
        if done:
            out["annotation_summary.json"] = json.loads((done[-1] / "annotation_summary.json").read_text())
            out["annotation_dir"] = str(done[-1])
    return out

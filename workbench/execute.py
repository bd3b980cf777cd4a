"""Execute stage notebooks with papermill into a run directory and export HTML reports (nbconvert).

Parameter names are strict: every override is checked against the notebook's parameters cell
(``papermill.inspect_notebook``) and the stage's dataclass; an unknown name is an error listing the
valid ones (papermill itself only warns).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import params as _params
from .errors import WorkbenchError
from .paths import STAGES, notebook_path

KERNEL_NAME = "workbench"
# papermill runs the stages on a twin of the kernel that does not copy the process's own stdout/stderr
# (file descriptors 1 and 2) into the notebook: progress bars (workbench.progress writes them to
# sys.__stderr__) reach the terminal that runs the stage, never the shared HTML report
HEADLESS_KERNEL_NAME = "workbench-headless"
PIPELINE = ("train", "evaluate", "annotate")


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


def run_stage(stage: str, run_dir: Path, overrides: dict | None = None, progress: bool = True) -> Path:
    """Execute one stage notebook into ``run_dir`` (annotate: into a new pool directory inside it);
    returns the HTML report's path."""
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
        from . import annotate
        out_dir = annotate.prepare_output(_params.make("annotate", {**values, "run_dir": str(run_dir)}))
        values["out_dir"] = str(out_dir)
    out = out_dir / f"{STAGES[stage]}.ipynb"
    if out.exists() or (out_dir / "params" / f"{stage}.json").exists():
        raise WorkbenchError(f"stage {stage} already ran in {out_dir}: run directories are write-once; start a new run")
    os.environ["WORKBENCH_HEADLESS"] = "1"
    os.environ["KERAS_BACKEND"] = "jax"
    if stage == "train":  # the fast CPU path's process settings must be there when the kernel starts
        from .runtime import kernel_env
        os.environ.update(kernel_env(values.get("conv_impl", "fast")))
    try:
        papermill.execute_notebook(
            str(notebook_path(stage)), str(out), parameters={**values, "run_dir": str(run_dir)},
            kernel_name=ensure_kernel(headless=True), progress_bar=progress, cwd=os.getcwd(),
            # the notebook's own printed lines (e.g. one line per training epoch) reach the terminal too
            stdout_file=sys.stdout if progress else None,
        )
    except PapermillExecutionError as e:
        export_html(out)
        raise WorkbenchError(f"stage {stage} failed: {_error_line(out, e)}") from None
    html = export_html(out)
    if stage == "annotate":  # DICOM pools: the executed notebook and its report are searched too
        from .annotate import phi_check
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
        from .runs import pool_dirs
        done = [d for d in pool_dirs(run_dir) if (d / "annotation_summary.json").is_file()]
        if done:
            out["annotation_summary.json"] = json.loads((done[-1] / "annotation_summary.json").read_text())
            out["annotation_dir"] = str(done[-1])
    return out

"""Each stage's cell sequence, defined once.

A stage module declares ``NOTEBOOK = Stage(...)``: a header and a list of cells. From that one list

* ``build`` generates the stage notebook (``notebooks/<NN>_<stage>.ipynb``: the header, the papermill
  ``parameters`` cell derived from ``workbench.params``, then the cells; ``workbench.notebooks`` writes them,
  ``tools/make_notebooks.py`` calls it, and a test checks the files on disk are what it generates);
* ``run_cells`` executes the same code cells in order without Jupyter (each stage's ``run(params)``).

Cells are ``md`` (markdown), ``code`` (does the stage's work; ``run_cells`` executes it) or ``show``
(only displays a table or figure in the report; never writes an artifact, so ``run_cells`` skips it).
No imports of Keras here: building notebooks needs only nbformat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import params as _params


@dataclass(frozen=True)
class Cell:
    kind: str      # "md" | "code" | "show"
    source: str


def md(text: str) -> Cell:
    return Cell("md", text)


def code(src: str) -> Cell:
    return Cell("code", src)


def show(src: str) -> Cell:
    return Cell("show", src)


@dataclass(frozen=True)
class Stage:
    stage: str
    title: str
    inputs: str
    outputs: str
    cells: tuple[Cell, ...]
    intro: str = ""
    result: tuple[str, ...] = field(default=())   # namespace names run_cells returns


def parameters_cell(stage: str) -> str:
    lines = ["# Parameters (papermill: -p NAME VALUE). One per line: name: type = default  # help"]
    for name, f in _params.fields(stage).items():
        lines.append(f"{name}: {f.type} = {f.default!r}  # {f.metadata['help']}")
    return "\n".join(lines)


def build(nb: Stage):
    """The notebook (nbformat node) for a stage: header, parameters cell, the stage's cells."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    header = (f"# {nb.title}\n\n**Stage:** {nb.stage}.  \n**Inputs:** {nb.inputs}.  \n**Outputs** "
              f"(in the run directory): {nb.outputs}.\n\nRun headless with "
              f"`workbench run {nb.stage} -p NAME VALUE …` (see `workbench params {nb.stage}`).")
    if nb.intro:
        header += f"\n\n{nb.intro}"
    cells = [new_markdown_cell(header)]
    pc = new_code_cell(parameters_cell(nb.stage))
    pc.metadata["tags"] = ["parameters"]
    cells.append(pc)
    for c in nb.cells:
        cells.append(new_markdown_cell(c.source) if c.kind == "md" else new_code_cell(c.source))
    for i, cell in enumerate(cells):  # stable ids: regenerating gives the same file (clean diffs and merges)
        cell["id"] = f"{nb.stage}-{i:02d}"
    out = new_notebook(cells=cells)
    out.metadata["kernelspec"] = {"name": "workbench", "display_name": "Python 3 (workbench)", "language": "python"}
    out.metadata["language_info"] = {"name": "python"}
    return out


def run_cells(nb: Stage, params, timings: list | None = None, include_show: bool = False) -> dict:
    """Execute the stage's code cells in order in one namespace that starts as the parameters cell would
    leave it (the validated parameter values); return the names in ``nb.result``. ``timings``, when given,
    receives one (cell source, seconds) pair per code cell (make bench times the stages' steps with it).
    ``include_show`` also evaluates the display cells (their figures and tables are built, not shown): what
    the report would show, without a Jupyter kernel."""
    import time
    namespace: dict = {"__name__": f"workbench_stage_{nb.stage}"}
    namespace.update(_params.to_dict(params))
    for c in nb.cells:
        if c.kind == "code" or (include_show and c.kind == "show"):
            t0 = time.perf_counter()
            exec(compile(c.source, f"<{nb.stage} cell>", "exec"), namespace)  # noqa: S102 - our own cell list
            if timings is not None:
                timings.append((c.source, time.perf_counter() - t0))
    return {k: namespace[k] for k in nb.result if k in namespace}

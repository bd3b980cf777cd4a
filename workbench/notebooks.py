"""The stage notebooks in notebooks/, generated from each stage's one cell list (``NOTEBOOK`` in
workbench.explore, .train, .evaluate, .annotate; workbench.cells builds them). This module sits above
the stages: nothing in the package imports it.
"""

from __future__ import annotations

from .cells import Stage, build
from .paths import NOTEBOOKS_DIR, STAGES


def stage_notebooks() -> dict[str, Stage]:
    from . import annotate, evaluate, explore, train
    return {"explore": explore.NOTEBOOK, "train": train.NOTEBOOK, "evaluate": evaluate.NOTEBOOK,
            "annotate": annotate.NOTEBOOK}


def render(stage: str) -> str:
    """The notebook file's text for a stage, exactly as written to notebooks/."""
    import nbformat
    return nbformat.writes(build(stage_notebooks()[stage])) + "\n"


def write_notebooks(only=None) -> list:
    written = []
    for stage, stem in STAGES.items():
        if only and stage not in only:
            continue
        path = NOTEBOOKS_DIR / f"{stem}.ipynb"
        path.write_text(render(stage), encoding="utf-8")
        written.append(path)
    return written

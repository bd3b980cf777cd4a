"""The stage notebooks in notebooks/, generated from each stage's one cell list (``NOTEBOOK`` in
workbench.explore, .train, .evaluate, .annotate; workbench.cells builds them). This module sits above
the stages: nothing in the package imports it.
"""

from __future__ import annotations

from ..core.cells import Stage, build
from ..core.paths import NOTEBOOKS_DIR, STAGES


def stage_notebooks() -> dict[str, Stage]:
    from ..stages import annotate, evaluate, explore, pretrain, train
    return {"explore": explore.NOTEBOOK, "pretrain": pretrain.NOTEBOOK, "train": train.NOTEBOOK,
            "evaluate": evaluate.NOTEBOOK, "annotate": annotate.NOTEBOOK}


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


LAB_DIR = "lab"   # the working copies `make lab` opens (git-ignored)


def lab_copies(dest=None) -> list:
    """Working copies of the stage notebooks for JupyterLab (``make lab``), so that saving an executed notebook
    never changes the tracked ones in notebooks/. A copy that already exists is kept (it may hold the user's
    work); when its source changed since, a fresh one is written beside it as ``<name>.new.ipynb`` and the
    function says so. Returns the paths to open."""
    import shutil
    from pathlib import Path

    from ..core.paths import ROOT
    dest = Path(dest) if dest is not None else ROOT / LAB_DIR
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for stem in STAGES.values():
        src, copy = NOTEBOOKS_DIR / f"{stem}.ipynb", dest / f"{stem}.ipynb"
        if not copy.exists():
            shutil.copyfile(src, copy)
        elif src.stat().st_mtime > copy.stat().st_mtime and src.read_bytes() != copy.read_bytes():
            newer = dest / f"{stem}.new.ipynb"
            shutil.copyfile(src, newer)
            print(f"note: {src.name} changed since your copy {copy} was made; the new version is {newer}")
        out.append(copy)
    return out


if __name__ == "__main__":    # python -m workbench.run.notebooks lab DIR: print the copies to open, one per line
    import sys
    if sys.argv[1:2] == ["lab"]:
        for p in lab_copies(sys.argv[2] if len(sys.argv) > 2 else None):
            print(p)

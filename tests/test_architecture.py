"""Layers you can see: light modules load no Keras, JAX or matplotlib; no import cycles; no module uses
another's private names; the notebooks on disk are exactly what their one cell list generates."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "workbench"
MODULES = {p.stem: p for p in PKG.glob("*.py")}
# the data/config layer and the pure-numpy modules: importable anywhere without a deep-learning runtime
LIGHT = ("data", "cards", "metrics", "calibration", "review", "params", "progress", "inputs", "tasks", "runtime",
         "cells", "runs", "shift", "pools", "imagefolder", "preprocess", "dicom", "deid", "paths", "errors", "unlabelled")


def test_light_modules_load_neither_keras_jax_nor_matplotlib():
    code = ("import sys\n" + "".join(f"import workbench.{m}\n" for m in LIGHT)
            + "heavy = sorted(m for m in ('keras', 'jax', 'matplotlib') if m in sys.modules)\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"a light module pulls in {out.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    """workbench modules a module imports, at module level or inside functions."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return {d for d in deps if d in MODULES and d != path.stem}


def test_no_import_cycles():
    graph = {m: _imports(p) for m, p in MODULES.items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_uses_another_modules_private_names():
    offences = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for a in node.names:
                    if node.module and a.name.startswith("_") and not a.name.startswith("__"):
                        offences.append(f"{m}: from .{node.module} import {a.name}")
                    if node.module is None:
                        aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{m}: {node.value.id}.{node.attr}")
    assert not offences, offences


@pytest.mark.parametrize("stage", ["explore", "pretrain", "train", "evaluate", "annotate"])
def test_notebooks_on_disk_are_generated_from_the_cell_lists(stage):
    from workbench.notebooks import render
    from workbench.paths import notebook_path
    assert notebook_path(stage).read_text(encoding="utf-8") == render(stage), \
        f"notebooks/{notebook_path(stage).name} differs from its cell list: run tools/make_notebooks.py"


def test_notebooks_are_committed_without_outputs():
    import nbformat
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(str(path), as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_make_lab_opens_working_copies_and_leaves_the_tracked_notebooks_alone(tmp_path, capsys):
    import os

    from workbench.notebooks import lab_copies
    from workbench.paths import NOTEBOOKS_DIR
    tracked = {p.name: p.read_bytes() for p in NOTEBOOKS_DIR.glob("*.ipynb")}
    copies = lab_copies(tmp_path / "lab")
    assert sorted(p.name for p in copies) == sorted(tracked) and all(p.parent == tmp_path / "lab" for p in copies)
    assert all(p.read_bytes() == tracked[p.name] for p in copies)
    copies[0].write_text("my executed notebook")          # the user saves their work in the copy
    os.utime(copies[0], (1, 1))                            # ... and the tracked notebook is newer than it
    again = lab_copies(tmp_path / "lab")
    assert again[0].read_text() == "my executed notebook"  # kept
    newer = tmp_path / "lab" / copies[0].name.replace(".ipynb", ".new.ipynb")
    assert newer.read_bytes() == tracked[copies[0].name] and "changed since your copy" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in NOTEBOOKS_DIR.glob("*.ipynb")} == tracked
    make = (NOTEBOOKS_DIR.parent / "Makefile").read_text()
    lab = make[make.index("\nlab:"):make.index("\ntest-browser:")]
    assert "workbench.notebooks lab lab" in lab and "cd lab &&" in lab and "cd notebooks" not in lab

"""Layers you can see: the package is grouped into layer subpackages (core, data, stats, model, stages, ui,
run) and a module imports only from its own layer and the ones before it; light modules load no Keras, JAX or
matplotlib; no import cycles; no module uses another's private names; the flat names users import stay valid;
the wheel carries every subpackage; the notebooks on disk are exactly what their one cell list generates."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "workbench"
LAYERS = ("core", "data", "stats", "model", "stages", "ui", "run")
TOP = {"__init__", "__main__", "features"}          # the package, ``python -m workbench``, a deprecated shim


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_dotted(p): p for p in sorted(PKG.rglob("*.py"))}
# the data/config layer and the pure-numpy modules: importable anywhere without a deep-learning runtime
LIGHT = ("data.loaders", "data.cards", "stats.metrics", "stats.calibration", "data.review", "core.params",
         "core.progress", "data.inputs", "core.tasks", "core.runtime", "core.cells", "core.runs", "stats.shift",
         "data.pools", "data.imagefolder", "data.preprocess", "data.dicom", "data.deid", "core.paths",
         "core.errors", "data.unlabelled", "core.walk")


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The workbench modules (dotted) an ``import from`` statement reaches, relative or absolute."""
    if node.level:
        pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = pkg[:len(pkg) - (node.level - 1)]
    else:
        base = []
    head = ".".join(base + ([node.module] if node.module else []))
    if not head.startswith("workbench"):
        return []
    found = []
    for a in node.names:
        if head == "workbench" and a.name == "__version__":
            continue                                # the version, from the package top
        if f"{head}.{a.name}" in MODULES:
            found.append(f"{head}.{a.name}")
        elif head in MODULES:
            found.append(head)
        else:
            found.append(f"?{head}.{a.name}")       # neither a module nor a name in one: a stale import
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m, path in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                deps |= set(_resolve(m, path, node))
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("workbench.")}
        graph[m] = deps - {m}
    return graph


def test_every_module_lives_in_a_layer():
    loose = [m for m, p in MODULES.items() if _layer(m) is None and p.stem not in TOP]
    assert not loose, f"modules outside the layers: {loose}"
    assert {_layer(m) for m in MODULES} - {None} == set(LAYERS)
    assert all((PKG / layer / "__init__.py").is_file() for layer in LAYERS)


def test_a_module_imports_only_its_own_layer_and_the_ones_below():
    graph = _graph()
    stale = sorted(d for deps in graph.values() for d in deps if d.startswith("?") or d not in MODULES)
    assert not stale, f"imports of names that are no module's: {stale}"
    checked, offences = 0, []
    for m, deps in graph.items():
        if _layer(m) is None:
            continue
        for d in deps:
            if _layer(d) is None:
                offences.append(f"{m} imports {d}: the package top (flat names) is not for the package's own use")
                continue
            checked += 1
            if LAYERS.index(_layer(d)) > LAYERS.index(_layer(m)):
                offences.append(f"{m} ({_layer(m)}) imports {d} ({_layer(d)})")
    assert not offences, offences
    assert checked > 150, f"only {checked} imports were checked: the test no longer sees the package"


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The check itself: a stats module importing a stage is reported."""
    fake = ast.parse("from ..stages import annotate\n").body[0]
    deps = _resolve("workbench.stats.metrics", PKG / "stats" / "metrics.py", fake)
    assert deps == ["workbench.stages.annotate"]
    assert LAYERS.index(_layer(deps[0])) > LAYERS.index(_layer("workbench.stats.metrics"))


def test_light_modules_load_neither_keras_jax_nor_matplotlib():
    code = ("import sys\n" + "".join(f"import workbench.{m}\n" for m in LIGHT)
            + "heavy = sorted(m for m in ('keras', 'jax', 'matplotlib') if m in sys.modules)\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"a light module pulls in {out.stdout.strip()}"


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state and not m.endswith("__init__"):
            visit(m, [m])
    cycles = [c for c in cycles if not any(_layer(x) is None for x in c)]   # a package and its own modules
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_uses_another_modules_private_names():
    offences = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                for a in node.names:
                    if node.module and a.name.startswith("_") and not a.name.startswith("__"):
                        offences.append(f"{m}: from {'.' * node.level}{node.module} import {a.name}")
                    if node.module is None or f"{node.module}" in LAYERS:
                        aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{m}: {node.value.id}.{node.attr}")
    assert not offences, offences


def test_the_flat_names_users_import_are_the_layered_modules_themselves():
    code = ("import importlib, workbench\n"
            "bad = [f for f, real in workbench.MOVED.items()\n"
            "       if importlib.import_module('workbench.' + f) is not importlib.import_module('workbench.' + real)]\n"
            "from workbench import annotate, data, widgets\n"
            "import workbench.stages.annotate as real\n"
            "assert annotate is real and data.load_dataset is importlib.import_module('workbench.data.loaders').load_dataset\n"
            "assert annotate.__spec__.name == 'workbench.stages.annotate' == annotate.__name__\n"
            "print(bad, sorted(workbench.MOVED) == sorted(set(workbench.MOVED)))")
    out = subprocess.run([sys.executable, "-W", "error::ImportWarning", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] True"
    import workbench
    layered = {m.split(".", 1)[1] for m in MODULES if _layer(m) and not m.endswith(_layer(m))}
    assert sorted(layered) == sorted(set(workbench.MOVED.values()) | {"data.loaders"})


def test_a_non_editable_wheel_carries_every_subpackage(tmp_path):
    """pip builds the wheel from a copy of the sources (nothing written into the checkout), installs it into
    a folder, and a fresh interpreter outside the checkout imports the layered modules from there."""
    import shutil
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(PKG, src / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("workbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in PKG.rglob("*.py")}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)[:5]}"
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    code = ("import workbench, workbench.stats.metrics, workbench.data.pools\nfrom workbench import metrics\n"
            "assert metrics is workbench.stats.metrics\nprint(workbench.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(target / "workbench" / "__init__.py")


@pytest.mark.parametrize("stage", ["explore", "pretrain", "train", "evaluate", "annotate"])
def test_notebooks_on_disk_are_generated_from_the_cell_lists(stage):
    from workbench.run.notebooks import render
    from workbench.core.paths import notebook_path
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
    assert "workbench.run.notebooks lab lab" in lab and "cd lab &&" in lab and "cd notebooks" not in lab


def test_the_old_features_module_warns_and_gives_the_new_objects():
    """workbench.features was split by concern: importing it still works, says so, and hands out the very
    objects of embeddings, neighbours, maps, widgets and annotate."""
    code = ("import warnings\nwarnings.simplefilter('error', FutureWarning)\n"
            "try:\n    import workbench.features\nexcept FutureWarning as w:\n    print('warned:', w)\n"
            "warnings.simplefilter('ignore', FutureWarning)\n"
            "import importlib, sys\nsys.modules.pop('workbench.features', None)\n"
            "F = importlib.import_module('workbench.features')\n"
            "from workbench import annotate, embeddings, maps, neighbours, widgets\n"
            "print(F.split_features is embeddings.split_features, F.OODScorer is neighbours.OODScorer,\n"
            "      F.map_figure is maps.map_figure, F.EmbeddingMap is widgets.EmbeddingMap,\n"
            "      F.annotate_pool is annotate.features_of)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("warned: workbench.features is split into workbench.embeddings")
    assert lines[-1] == "True True True True True"

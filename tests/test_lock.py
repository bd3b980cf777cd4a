"""requirements.lock: every dependency pinned with hashes, installed exactly (see the Makefile's comment)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)$")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 hashes)}; any line that is not a pin, a hash or a comment raises."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.rstrip("\\").strip()
        if line.startswith("--hash="):
            m = HASH.match(line)
            if m is None or current is None:
                raise ValueError(f"line {n}: not a sha256 hash of a pinned requirement: {raw!r}")
            pins[current][1].append(m.group(1))
            continue
        m = PIN.match(line)
        if m is None:
            raise ValueError(f"line {n}: not an exact 'name==version' pin: {raw!r}")
        current = canonicalize_name(m.group(1))
        if current in pins:
            raise ValueError(f"line {n}: {current} pinned twice")
        pins[current] = (m.group(2), [])
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


@pytest.fixture(scope="module")
def pins():
    assert LOCK.is_file(), f"{LOCK.name} is missing: run `make lock`"
    return parse_lock(LOCK.read_text())


def test_parse_lock_rejects_unpinned_and_unhashed_lines():
    ok = "a-b==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via x\n"
    assert parse_lock(ok) == {"a-b": ("1.0", ["0" * 64])}
    for bad in ("numpy>=1.26\n", "-e .\n", "numpy==2.0 \\\n    --hash=md5:abc\n", "--hash=sha256:" + "0" * 64 + "\n"):
        with pytest.raises(ValueError):
            parse_lock(bad)


def test_every_lock_entry_is_exact_and_hashed(pins):
    assert len(pins) > 50, "the lock holds the whole dependency tree, not only the direct requirements"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"pins without a --hash=sha256: line: {unhashed}; run `make lock`"


def test_every_declared_requirement_is_pinned_within_its_range(pins):
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not in {LOCK.name}: run `make lock`"
        version, hashes = pins[name]
        assert hashes, f"{name}=={version} has no hash"
        assert req.specifier.contains(version, prereleases=True), \
            f"{LOCK.name} pins {name}=={version}, outside pyproject's {req}: run `make lock`"
    # the installer and the build backend (pip install --no-build-isolation -e .) are pinned too
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for req in map(Requirement, build + ["pip"]):
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name][0]), f"{req} is not pinned in {LOCK.name}"


def test_bench_extra_stays_out_of_the_lock(pins):
    bench = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    for req in map(Requirement, bench):
        assert canonicalize_name(req.name) not in pins, f"{req.name} is locked: the bench extra is kept out on purpose"


def test_stamp_depends_on_the_lock_and_install_requires_hashes(tmp_path):
    """A changed lock (only) reinstalls, with --require-hashes, and workbench itself goes in with --no-deps."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for f in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / ".venv").mkdir()
    old = time.time() - 3600
    for f in ("pyproject.toml", "requirements.lock"):
        os.utime(tmp_path / f, (old, old))
    (tmp_path / ".venv" / ".installed").touch()

    def dry(*args):
        proc = subprocess.run(["make", "-n", *args, "install"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "pip install" not in dry(), "an up-to-date stamp reinstalled"
    out = dry("-W", "requirements.lock")
    hashed = [l for l in out.splitlines() if "pip install" in l and "-r requirements.lock" in l]
    assert hashed and "--require-hashes" in hashed[0], out
    editable = [l for l in out.splitlines() if "pip install" in l and "-e ." in l]
    assert editable and "--no-deps" in editable[0], out


def installed(python: Path) -> dict[str, dict]:
    code = ("import json, importlib.metadata as m\n"
            "print(json.dumps({d.metadata['Name']: {'version': d.version, 'requires': d.requires or []}"
            " for d in m.distributions()}))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {canonicalize_name(k): v for k, v in json.loads(proc.stdout).items()}


@pytest.fixture(scope="module")
def venv():
    if not VENV_PYTHON.exists():
        pytest.skip(".venv does not exist (make install creates it)")
    return installed(VENV_PYTHON)


def test_installed_versions_equal_the_pins(pins, venv):
    wrong = {name: (venv.get(name, {}).get("version"), version) for name, (version, _) in pins.items()
             if venv.get(name, {}).get("version") != version}
    assert not wrong, f"installed vs locked {wrong}: run `make install`"


def test_lock_is_closed_under_the_installed_requirements(pins, venv):
    """Each locked package's own requirements (for this platform) are locked too: nothing comes in unpinned."""
    todo = [(canonicalize_name(r.name), e) for r in declared() for e in ("", *r.extras)]
    seen, missing = set(), set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name not in pins:
            missing.add(name)
            continue
        for req in map(Requirement, venv.get(name, {}).get("requires", [])):
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ("", *req.extras)]
    assert not missing, f"needed but not in {LOCK.name}: {sorted(missing)}; run `make lock`"

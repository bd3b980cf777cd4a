"""Run directories (write-once), provenance, and reading upstream artifacts.

``runs/<UTC timestamp>_<name>/`` holds each stage's executed notebook and HTML report,
``params/<stage>.json``, ``provenance.json`` (one entry per stage) and the artifacts. A stage
refuses to run twice in one directory and no artifact is ever overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import runtime
from .errors import WorkbenchError
from .paths import ROOT, runs_root

TRAIN_ARTIFACTS = ("model.keras", "params/train.json")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_run_dir(name: str = "run", runs_dir: Path | None = None) -> Path:
    runs_dir = Path(runs_dir) if runs_dir else runs_root()
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = runs_dir / f"{stamp}_{_slug(name)}"
    for i in range(1, 1000):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise WorkbenchError(f"cannot create a new run directory under {runs_dir}")


def latest_run(runs_dir: Path | None = None, needs: str = "model.keras") -> Path:
    runs_dir = Path(runs_dir) if runs_dir else runs_root()
    candidates = sorted(p for p in runs_dir.glob("*/") if (p / needs).is_file()) if runs_dir.is_dir() else []
    if not candidates:
        raise WorkbenchError(f"no run with {needs} under {runs_dir}: run the train stage first (workbench run train)")
    return candidates[-1]


def require(run_dir: Path, names=TRAIN_ARTIFACTS, stage: str = "train") -> None:
    """Fail with one clear line when the upstream stage's artifacts are missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WorkbenchError(f"run directory {run_dir} does not exist: pass the directory printed by 'workbench run train'")
    missing = [n for n in names if not (run_dir / n).exists()]
    if missing:
        raise WorkbenchError(
            f"run directory {run_dir} has no {', '.join(missing)}: run the {stage} stage into it first "
            f"(workbench run {stage})"
        )


@dataclass
class Run:
    path: Path
    stage: str

    def file(self, name: str) -> Path:
        """Path for a new artifact; refuses to overwrite one that exists (write-once)."""
        p = self.path / name
        if p.exists():
            raise WorkbenchError(f"{p} already exists: run directories are write-once; start a new run")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj) -> Path:
        p = self.file(name)
        p.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
        return p

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def strict_json(obj):
    """NaN/inf (an empty reliability bin, an undefined AUC) → None, numpy scalars → Python: what json.dumps
    writes of it stays strict JSON (``allow_nan=False``)."""
    import numpy as np
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


POOLS_DIR = "annotate"   # RUN/annotate/<pool>/: one write-once directory per annotated pool


def pool_dirs(run_dir) -> list[Path]:
    """The annotated pools of a trained run, oldest first."""
    root = Path(run_dir) / POOLS_DIR
    found = [p for p in root.glob("*/") if (p / "params" / "annotate.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: (p / "params" / "annotate.json").stat().st_mtime)


def trained_run_dir(path) -> Path:
    """The trained run a directory belongs to: the run itself, or the run an annotated pool's directory
    (``RUN/annotate/<pool>/``) sits in."""
    path = Path(path)
    if (path / "params" / "train.json").is_file():
        return path
    if path.parent.name == POOLS_DIR and (path.parent.parent / "params" / "train.json").is_file():
        return path.parent.parent
    raise WorkbenchError(f"{path} is neither a trained run directory nor an annotated pool's directory inside one")


def open_stage(stage: str, params, upstream: tuple[str, ...] = (), path: Path | None = None) -> Run:
    """Resolve the run directory for a stage (``path`` when given: e.g. an annotated pool's own directory),
    refuse a second run of it, record params + provenance."""
    from .params import to_dict
    if path is not None:
        path = Path(path)
    elif params.run_dir:
        path = Path(params.run_dir).expanduser().resolve()
        if stage == "train":
            path.mkdir(parents=True, exist_ok=True)
    elif stage == "train":
        path = new_run_dir(getattr(params, "dataset", "run").split("/")[-1].removesuffix(".npz")
                           + "_" + getattr(params, "model", ""))
    else:
        path = latest_run()
        print(f"run_dir not given: using the latest run {path}")
    if upstream:
        require(trained_run_dir(path) if path.is_dir() else path, upstream, "train")
    run = Run(path=path, stage=stage)
    if (path / "params" / f"{stage}.json").exists():
        raise WorkbenchError(f"stage {stage} already ran in {path}: run directories are write-once; start a new run")
    run.write_json(f"params/{stage}.json", to_dict(params))
    record_provenance(run, seed=params.seed)
    print(f"run directory: {path}")
    return run


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def provenance(seed: int, extra: dict | None = None) -> dict:
    import jax
    import keras
    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    info = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in ("workbench", "keras", "jax", "jaxlib", "numpy", "albumentations",
                                               "scikit-learn", "papermill", "nbconvert", "pydicom")},
        "keras_backend": keras.backend.backend(),
        "devices": [str(d) for d in jax.devices()],
        "git": {"sha": sha, "dirty": bool(dirty) if dirty is not None else None},
        "argv": sys.argv if not any("ipykernel" in a for a in sys.argv) else None,
        "env": {k: os.environ[k] for k in ("KERAS_BACKEND", "XLA_FLAGS", "WORKBENCH_HEADLESS") if k in os.environ},
        # the process; earlier_stages: those of the run it executed before this one (workbench.execute.StageKernel)
        "kernel": {"pid": os.getpid(), "earlier_stages": list(runtime.KERNEL["earlier_stages"])},
    }
    info.update(extra or {})
    return info


def record_provenance(run: Run, seed: int, **extra) -> None:
    """Add this stage's entry to provenance.json (existing entries are never rewritten)."""
    p = run.path / "provenance.json"
    doc = json.loads(p.read_text()) if p.exists() else {}
    if run.stage in doc:
        raise WorkbenchError(f"{p} already records stage {run.stage}: run directories are write-once")
    doc[run.stage] = provenance(seed, extra)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, p)


def add_provenance(run: Run, **fields) -> None:
    """Add fields (e.g. the data md5 once known) to this stage's provenance entry."""
    p = run.path / "provenance.json"
    doc = json.loads(p.read_text())
    entry = doc.setdefault(run.stage, {})
    clash = [k for k in fields if k in entry]
    if clash:
        raise WorkbenchError(f"{p}: provenance fields {clash} of stage {run.stage} are already set")
    entry.update(fields)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, p)


# ---------------------------------------------------------------------- what belongs to a trained run
# Results that depend only on the trained run (its model, data and training parameters), not on a pool: every
# annotated pool needs them, so they are computed once per run and kept in RUN/cache/<name>-<key>, keyed by
# everything they depend on. Write-once: an entry appears whole (a finished temporary file or folder renamed
# into place) or not at all, and is never replaced; a changed model, data or parameter gets another key.
RUN_CACHE_DIR = "cache"


def run_cache_path(run_dir, name: str, key_doc: dict) -> Path:
    """``RUN/cache/<name>-<16 hex digits of the key>`` (a file or a folder: the caller adds the suffix)."""
    import hashlib
    digest = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(run_dir) / RUN_CACHE_DIR / f"{name}-{digest}"


def cached_arrays(path: Path, compute) -> tuple[dict, bool]:
    """The arrays in ``path`` (an .npz written by an earlier call), or ``compute()``'s dict of arrays, written
    there once. Returns (arrays, whether they came from the cache)."""
    import numpy as np
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, True
        except (OSError, ValueError):
            pass                                   # unreadable: recomputed, the file is left for inspection
    arrays = compute()
    write_npz_once(path, arrays)
    return arrays, False


def write_npz_once(path: Path, arrays: dict) -> Path:
    """Write-once .npz: the file appears whole (a hard link of a finished temporary file) or not at all; an
    existing file is never replaced (a concurrent writer's identical result stays)."""
    import numpy as np
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached_folder(path: Path, fill) -> tuple[Path, bool]:
    """A folder of files written once by ``fill(tmp_folder)``; returns (the folder, whether it existed)."""
    path = Path(path)
    if path.is_dir():
        return path, True
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    try:
        os.rename(tmp, path)
    except OSError:                                # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return path, False

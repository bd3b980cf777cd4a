"""Stage cache: a content key per stage, a completion marker per finished stage, reuse instead of recompute.

**Key.** ``stage_keys(per_stage, stages)`` gives every stage of a pipeline a key: a SHA-256 over

- the stage's resolved parameters: every parameter with its default filled in, without ``run_dir``
  (the train recipe's values follow from these, the data and the code: see ``resolved_params``);
- the content fingerprint of every file or folder the parameters name: the resolved dataset (a card name
  maps to its file; ``workbench.data.file_md5`` of a file, an md5 over every file's md5 for a folder and the
  card beside it), and any other path-like value (``init_from``, ``extra_labels``, ``ensemble`` members, ...);
- the code: the workbench version, the versions of the packages that change numbers (keras, jax, numpy,
  ...), and a digest of the *content* of ``workbench/**/*.py``, ``notebooks/*.ipynb`` and
  ``data_cards/*.md``. That digest is what the git sha and the diff of a dirty tree stand for, without
  their false misses: a commit that only touches the README or the tests keeps every key, an edit not yet
  committed (or a file not yet added) changes them. The sha and the dirty flag are recorded in each
  marker for provenance;
- the key of the stage before it in the same pipeline (evaluate's includes train's, annotate's includes
  evaluate's, or train's when evaluate is not part of the pipeline).

**Completion marker.** ``RUN/complete/<stage>.json`` is written atomically (temporary file, then
``os.replace``) only after the stage's executed notebook *and* its HTML report exist, and only when the
code is still the code the key was computed with (an edit while the stage ran leaves it unmarked). It
records the key and every file the stage wrote (path and size). A stage without a marker never counts as
finished: a run killed half-way, or one that failed, is never reused; a marker whose files are gone or
changed size is ignored.

**Reuse.** Run directories are write-once, so a finished stage is reused by copying the files its marker
lists (and its ``provenance.json`` entry, marked ``reused_from``) into the new run directory, which then
gets its own marker. ``find_finished`` only reuses stages of one source run in sequence (the longest
prefix of the pipeline finished there with the same keys), so a reused evaluate always belongs to the
very model that is reused with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..core.errors import WorkbenchError
from ..core.paths import ROOT, runs_root
from ..core.runs import git

MARKER_DIR = "complete"
# files a sweep writes into a run directory beside the stages (never part of a stage's outputs)
UNTRACKED = ("sweep_attempt.json", "sweep.log")
KEY_VERSION = 1
CODE_GLOBS = ("workbench/**/*.py", "notebooks/*.ipynb", "data_cards/*.md")
KEY_PACKAGES = ("keras", "jax", "jaxlib", "numpy", "albumentations", "scikit-learn", "scipy", "cleanlab",
                "opencv-python-headless", "pillow", "pydicom", "papermill")
PATH_PARAMS_SKIPPED = ("run_dir",)

_md5_memo: dict[tuple, str] = {}
_code_memo: dict[str, dict] = {}


# --- fingerprints ---------------------------------------------------------------------------------------

def _file_md5(path: Path) -> str:
    from ..data.loaders import file_md5
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _md5_memo:
        _md5_memo[memo_key] = file_md5(path)
    return _md5_memo[memo_key]


def fingerprint(path: Path) -> str:
    """md5 of a file (with the card ``<file>.md`` beside it, when there is one); for a folder, md5 over
    (relative path, md5) of every file in it (recursive, hidden names skipped) and of the data card
    ``<folder>.md`` beside it when there is one."""
    path = Path(path)
    if path.is_file():
        card = path.with_suffix(".md")  # a card beside a data file describes it (workbench.data)
        if path.suffix != ".md" and card.is_file():
            return hashlib.md5(f"{_file_md5(path)}\tcard\t{_file_md5(card)}".encode()).hexdigest()
        return _file_md5(path)
    if not path.is_dir():
        raise WorkbenchError(f"{path} does not exist: cannot fingerprint it for the stage cache")
    h = hashlib.md5()
    from ..core import walk
    for f in walk.files(path):
        h.update(f"{f.relative_to(path).as_posix()}\t{_file_md5(f)}\n".encode())
    card = path.parent / f"{path.name}.md"
    if card.is_file():
        h.update(f"card\t{_file_md5(card)}\n".encode())
    return h.hexdigest()


def _path_like(value) -> list[Path]:
    """Existing files or folders named by a parameter value (comma-separated lists too)."""
    if not isinstance(value, str):
        return []
    out = []
    for item in value.split(","):
        item = item.strip()
        if item and (item.startswith(("/", "~", ".")) or "/" in item):
            p = Path(item).expanduser()
            if p.exists():
                out.append(p.resolve())
    return out


def input_fingerprints(stage: str, values: dict) -> dict[str, str]:
    """Fingerprints of the inputs a stage's resolved parameters name, by parameter name."""
    out = {}
    if stage in ("train", "explore") and "dataset" in values:
        from ..data.loaders import resolve
        path, _ = resolve(values["dataset"], values.get("size", 28))
        if not path.exists():
            raise WorkbenchError(f"dataset {path} not found: check the path (parameter 'dataset')")
        out["dataset"] = fingerprint(path)
    for name, value in values.items():
        if name in out or name in PATH_PARAMS_SKIPPED:
            continue
        paths = _path_like(value)
        if paths:
            out[name] = ",".join(fingerprint(p) for p in paths)
    return out


def code_identity(fresh: bool = False) -> dict:
    """What the code key is made of: versions and a digest of the code's content (memoised per process;
    ``fresh`` reads the files again)."""
    if "id" in _code_memo and not fresh:
        return _code_memo["id"]
    from .. import __version__
    h = hashlib.sha256()
    for pattern in CODE_GLOBS:
        for f in sorted(ROOT.glob(pattern)):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(f"{f.relative_to(ROOT).as_posix()}\n".encode())
                h.update(f.read_bytes())
    packages = {}
    for p in KEY_PACKAGES:
        try:
            packages[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            packages[p] = None
    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    ident = {"version": __version__, "packages": packages, "digest": h.hexdigest(),
             "git": {"sha": sha, "dirty": bool(dirty) if dirty is not None else None}}
    _code_memo["id"] = ident
    return ident


def resolved_params(stage: str, values: dict) -> dict:
    """Every parameter of the stage, defaults filled in, without run_dir.

    The train recipe's values are *not* filled in: ``workbench.train.resolve`` reads them from the loaded
    dataset (orientation, training-set size), and they are a function of these parameters, the data and
    the code, all of which are in the key. So the key stays exact; the price is that ``-p epochs 15``
    and a recipe's own 15 are two keys (a miss, never a wrong hit)."""
    from ..core.params import make, to_dict
    out = to_dict(make(stage, values))
    out.pop("run_dir", None)
    return out


def _digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def stage_keys(per_stage: dict[str, dict], stages) -> dict[str, str]:
    """The cache key of every stage in ``stages`` (in pipeline order) from its checked overrides."""
    code = code_identity()
    code_part = {"version": code["version"], "packages": code["packages"], "digest": code["digest"]}
    keys, upstream = {}, None
    for s in stages:
        params = resolved_params(s, per_stage.get(s, {}))
        doc = {"v": KEY_VERSION, "stage": s, "params": params, "inputs": input_fingerprints(s, params),
               "code": code_part, "upstream": upstream}
        keys[s] = upstream = _digest(doc)
    return keys


# --- completion markers ----------------------------------------------------------------------------------

def marker_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / MARKER_DIR / f"{stage}.json"


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file in the run directory except the markers."""
    run_dir = Path(run_dir)
    out = {}
    from ..core import walk
    for f in walk.files(run_dir, hidden=True):
        rel = f.relative_to(run_dir)
        if rel.parts[0] == MARKER_DIR or (len(rel.parts) == 1 and rel.name in UNTRACKED):
            continue
        st = f.stat()
        out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _atomic_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_marker(run_dir: Path, stage: str, key: str, before: dict, report: Path, seconds: float | None = None,
                 reused_from: str | None = None, files: dict | None = None, code: dict | None = None) -> Path:
    """Mark ``stage`` finished in ``run_dir`` (after its notebook and HTML report exist); write-once."""
    run_dir = Path(run_dir)
    path = marker_path(run_dir, stage)
    if path.exists():
        raise WorkbenchError(f"{path} already exists: stage {stage} was already marked finished in {run_dir}")
    report = Path(report)
    if not (report.is_file() and report.with_suffix(".ipynb").is_file()):
        raise WorkbenchError(f"stage {stage} in {run_dir} has no executed notebook and HTML report "
                             f"({report.with_suffix('.ipynb').name}, {report.name}): not marked finished")
    if files is None:
        files = {rel: size for rel, (size, mtime) in snapshot(run_dir).items() if before.get(rel) != (size, mtime)}
    code = code or code_identity()
    _atomic_json(path, {
        "stage": stage, "key": key, "report": report.resolve().relative_to(run_dir.resolve()).as_posix(),
        "files": dict(sorted(files.items())), "seconds": None if seconds is None else round(seconds, 2),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": {"version": code["version"], "git": code["git"], "digest": code["digest"]},
        "reused_from": reused_from,
    })
    return path


def read_marker(run_dir: Path, stage: str, key: str | None = None) -> dict | None:
    """The stage's marker when the stage is finished (and has ``key``, when given), its files intact."""
    run_dir = Path(run_dir)
    try:
        m = json.loads(marker_path(run_dir, stage).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("stage") != stage or not isinstance(m.get("files"), dict):
        return None
    if key is not None and m.get("key") != key:
        return None
    for rel, size in m["files"].items():
        f = run_dir / rel
        if rel != "provenance.json" and (not f.is_file() or f.stat().st_size != size):
            return None
    return m


def finished_stages(run_dir: Path, keys: dict[str, str], stages) -> int:
    """How many of ``stages`` (from the first) are finished in ``run_dir`` with these keys."""
    n = 0
    for s in stages:
        if read_marker(run_dir, s, keys[s]) is None:
            break
        n += 1
    return n


def _marker_dirs(root: Path):
    """Run directories under ``root`` (and one level deeper: sweeps) that hold a marker."""
    root = Path(root)
    if not root.is_dir():
        return
    for pattern in (f"*/{MARKER_DIR}", f"*/*/{MARKER_DIR}"):
        for d in root.glob(pattern):
            if d.is_dir():
                yield d.parent


def find_finished(keys: dict[str, str], stages, root: Path | None = None, prefer: Path | None = None,
                  exclude: Path | None = None) -> tuple[Path | None, int]:
    """The run directory holding the longest finished prefix of ``stages`` with ``keys`` (ties: runs under
    ``prefer`` first, then the most recently finished), and the length of that prefix (0: none)."""
    stages = list(stages)
    if not stages:
        return None, 0
    best, best_rank = None, None
    prefer = Path(prefer).resolve() if prefer else None
    exclude = Path(exclude).resolve() if exclude else None
    for d in _marker_dirs(root or runs_root()):
        d = d.resolve()
        if exclude is not None and d == exclude:
            continue
        first = read_marker(d, stages[0], keys[stages[0]])
        if first is None:
            continue
        n = finished_stages(d, keys, stages)
        rank = (n, prefer is not None and d.is_relative_to(prefer), first.get("finished_utc") or "")
        if best_rank is None or rank > best_rank:
            best, best_rank = d, rank
    return (best, best_rank[0]) if best is not None else (None, 0)


def reuse(source: Path, target: Path, stages, keys: dict[str, str]) -> None:
    """Copy the finished ``stages`` of ``source`` into the (new) run directory ``target`` and mark them."""
    source, target = Path(source).resolve(), Path(target).resolve()
    prov_src = _read_json(source / "provenance.json") or {}
    prov_dst = _read_json(target / "provenance.json") or {}
    for s in stages:
        m = read_marker(source, s, keys[s])
        if m is None:
            raise WorkbenchError(f"stage {s} of {source} is not finished with key {keys[s]}: cannot reuse it")
        for rel in m["files"]:
            if rel == "provenance.json":
                continue
            dst = target / rel
            if dst.exists():
                raise WorkbenchError(f"{dst} already exists: run directories are write-once; reuse needs a new run")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, dst)
        if s in prov_src:
            prov_dst[s] = {**prov_src[s], "reused_from": str(source)}
        if "provenance.json" in m["files"] or s in prov_src:
            _atomic_json(target / "provenance.json", prov_dst)
        write_marker(target, s, keys[s], before={}, report=target / m["report"], seconds=m.get("seconds"),
                     reused_from=m.get("reused_from") or str(source), files=m["files"], code=m.get("code"))


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# --- a pipeline through the cache ------------------------------------------------------------------------

def run_stage_marked(stage: str, run_dir: Path, values: dict, key: str, progress: bool = False,
                     code_digest: str | None = None, log=print, kernel=None) -> Path:
    """``workbench.execute.run_stage`` followed by the stage's completion marker, unless the code changed
    while the stage ran (then the key, computed before, does not describe what ran: no marker, so the stage
    is never reused; the run itself is complete)."""
    from .execute import run_stage
    before = snapshot(run_dir)
    t0 = time.perf_counter()
    report = run_stage(stage, run_dir, values, progress=progress, kernel=kernel)
    now = code_identity(fresh=True)
    if code_digest is not None and now["digest"] != code_digest:
        log(f"note: the code (workbench/, notebooks/, data_cards/) changed while stage {stage} ran: "
            "it is not marked reusable")
        return report
    write_marker(run_dir, stage, key, before, report, seconds=time.perf_counter() - t0, code=now)
    return report


def run_pipeline(run_dir: Path, per_stage: dict[str, dict], stages, progress: bool = True, log=print,
                 use_cache: bool = True, root: Path | None = None, prefer: Path | None = None,
                 keys: dict[str, str] | None = None, on_stage=None, code_digest: str | None = None) -> dict:
    """Run ``stages`` into the new ``run_dir``: the longest prefix already finished elsewhere with the same
    keys is reused (copied), the rest is executed and marked. Returns keys, reused/computed stages and
    per-stage seconds. ``on_stage(stage)`` is called before each stage that is executed."""
    run_dir = Path(run_dir)
    stages = list(stages)
    keys = keys or stage_keys(per_stage, stages)
    code_digest = code_digest or code_identity()["digest"]  # the code the keys were computed with
    source, n = (find_finished(keys, stages, root=root, prefer=prefer, exclude=run_dir) if use_cache
                 else (None, 0))
    info = {"keys": keys, "reused": stages[:n], "reused_from": str(source) if source else None,
            "computed": [], "unmarked": [], "seconds": {}}
    if n:
        t0 = time.perf_counter()
        reuse(source, run_dir, stages[:n], keys)
        info["seconds"]["reuse"] = round(time.perf_counter() - t0, 2)
        log(f"== {', '.join(stages[:n])}: reused from {source} (finished with the same parameters, data and code)")
    from .execute import StageKernel
    with StageKernel() as kernel:  # one kernel (one start, one import of Keras/JAX) for the stages computed here
        for s in stages[n:]:
            log(f"== {s}")
            if on_stage:
                on_stage(s)
            t0 = time.perf_counter()
            run_stage_marked(s, run_dir, per_stage.get(s, {}), keys[s], progress=progress, code_digest=code_digest,
                             log=log, kernel=kernel)
            info["seconds"][s] = round(time.perf_counter() - t0, 2)
            info["computed"].append(s)
            if not marker_path(run_dir, s).exists():
                info["unmarked"].append(s)
    return info

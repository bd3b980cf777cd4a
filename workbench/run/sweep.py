"""Sweeps: many parameterised pipelines on Dask, on one machine or a cluster, cached and resumable.

``workbench sweep -p learning_rate 0.001,0.003 -p seed 0,1,2`` runs every combination of the comma lists
(a YAML file may add an explicit list of settings), each as a pipeline (``workbench.cache.run_pipeline``)
in its own run directory under ``runs/<name>/``. Every setting is checked (names, types, ranges, the
dataset) before anything starts.

Scheduling is Dask: an embedded ``distributed.LocalCluster`` of process workers with one thread each,
sized to the machine, unless ``--scheduler ADDRESS`` names an existing cluster (its workers must share the
runs/ filesystem). Each run gets a CPU budget so concurrent runs do not oversubscribe the cores: the
worker's share of the CPUs (disjoint slices for workers sharing a machine) goes into the environment of
the notebook kernels it starts (XLA_FLAGS, OMP/OPENBLAS/MKL_NUM_THREADS) and into the CPU affinity of the
worker, which its kernels inherit. On current jaxlib the affinity mask is what sizes XLA:CPU's thread pool
(jax-ml/jax#743, #1539); see ``budget_env`` for the XLA flags.

Stages already finished with the same key (parameters, data, code, upstream; see workbench.cache) are
reused, so a sweep stopped by Ctrl-C or a lost worker resumes where it stopped when the same command is
run again. A failed run is retried (``retries``) in a new run directory and listed with its error; it
never stops the others. The sweep writes ``sweep.json`` (the spec), ``sweep_state.json`` (each setting's
status, attempts and errors), ``index.html``, ``sweep_results.csv`` (mean, sd and 95 % t-interval per
setting across seeds) and ``sweep_runs.csv`` (every run).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import itertools
import json
import math
import os
import queue
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import WorkbenchError

RESERVED = ("name", "stages", "retries", "settings")
EVENT_TOPIC = "workbench-sweep"
RUN_MEMORY = 3 << 30  # bytes of RAM one concurrent run may take (a kernel with JAX, data and model)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_XLA_THREAD_FLAGS = re.compile(r"(--)?(xla_cpu_multi_thread_eigen|intra_op_parallelism_threads)=\S*")
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"

# the aggregate table's metrics: keys of workbench.report.RUN_METRICS (one vocabulary with the run index)
SWEEP_METRICS = ("test_acc", "test_auc", "test_ece", "auto_accept_precision", "auto_accept_coverage", "train_seconds")


def _metrics():
    """(key, header, getter over report.run_results) of every metric the sweep aggregates."""
    from ..stages import report
    return tuple((k, report.METRIC[k].header, (lambda r, k=k: report.metric_value(r, k))) for k in SWEEP_METRICS)


# --- the spec ---------------------------------------------------------------------------------------------

@dataclass
class Setting:
    index: int
    overrides: dict
    label: str
    slug: str
    per_stage: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)


@dataclass
class Sweep:
    name: str
    stages: tuple
    settings: list
    swept: list
    fixed: dict
    retries: int = 1
    notes: list = field(default_factory=list)

    def spec(self) -> dict:
        return {"name": self.name, "stages": list(self.stages), "swept": self.swept, "fixed": self.fixed,
                "retries": self.retries,
                "settings": [{"index": s.index, "label": s.label, "overrides": s.overrides, "keys": s.keys}
                             for s in self.settings]}


def split_values(name: str, text: str) -> list:
    """``-p NAME V1,V2``: the comma-separated values (an empty item is an error)."""
    items = [v.strip() for v in str(text).split(",")]
    if any(not v for v in items):
        raise WorkbenchError(f"parameter {name!r}: empty value in {text!r}; give values like -p {name} V1,V2")
    return items


def _load_file(path: Path) -> dict:
    from ..core.params import read_yaml_mapping
    path = Path(path)
    doc = read_yaml_mapping(path, "sweep file", "parameter: value or [values], settings: [...]")
    settings = doc.get("settings", [])
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise WorkbenchError(f"sweep file {path}: 'settings' must be a list of mappings parameter: value")
    for s in settings:
        bad = [k for k, v in s.items() if isinstance(v, (list, dict))]
        if bad:
            raise WorkbenchError(f"sweep file {path}: a setting gives one value per parameter ({bad[0]} has several)")
    return doc


def _absolute_paths(values: dict) -> dict:
    """Paths given relative to the caller become absolute: workers run elsewhere (as cli._overrides)."""
    from ..data.cards import card_names
    from ..data.loaders import default_cards_dir
    out = dict(values)
    cards = None
    for k, v in values.items():
        if not isinstance(v, str) or not v.strip():
            continue
        if k == "dataset":
            if cards is None:
                cards = card_names(default_cards_dir())
            if Path(v).exists() and (v.endswith(".npz") or "/" in v or v not in cards):
                out[k] = str(Path(v).resolve())
        elif ("/" in v or v.startswith(".")) and "," not in v and Path(v).exists():
            out[k] = str(Path(v).resolve())
    return out


def _fmt(v) -> str:
    if v is None:
        return "(default)"
    if isinstance(v, str) and "/" in v:
        return Path(v).name
    return str(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")[:80] or "run"


def parse_stages(text) -> tuple:
    from .execute import PIPELINE
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    unknown = [s for s in items if s not in PIPELINE]
    if unknown or not items:
        raise WorkbenchError(f"unknown stage(s) {', '.join(unknown) or '(none)'} (option --stages); "
                             f"choose from {', '.join(PIPELINE)}, e.g. --stages train,evaluate")
    if "train" not in items:
        raise WorkbenchError("--stages must include train: evaluate and annotate need the run's trained model")
    return tuple(s for s in PIPELINE if s in items)


def build(params=(), config: str | None = None, name: str | None = None, stages: str | None = None,
          retries: int | None = None) -> Sweep:
    """The sweep from ``-p NAME V1,V2`` pairs and/or a YAML file (the command line wins per parameter)."""
    doc = _load_file(Path(config)) if config else {}
    axes: dict[str, list] = {}
    fixed: dict = {}
    for k, v in doc.items():
        if k in RESERVED:
            continue
        if isinstance(v, dict):
            raise WorkbenchError(f"sweep file {config}: parameter {k!r} must be a value or a list of values")
        if isinstance(v, list):
            if not v:
                raise WorkbenchError(f"sweep file {config}: parameter {k!r} has an empty list of values")
            axes[k] = v
        else:
            fixed[k] = v
    for k, text in params or ():
        axes.pop(k, None)
        fixed.pop(k, None)
        values = split_values(k, text)
        if len(values) > 1:
            axes[k] = values
        else:
            fixed[k] = values[0]
    explicit = doc.get("settings") or [{}]
    clash = sorted({k for s in explicit for k in s} & set(axes))
    if clash:
        raise WorkbenchError(f"parameter {clash[0]!r} is both swept (a list of values) and set in 'settings'; "
                             "give it in one place")
    combos = [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())] or [{}]
    raw = [_absolute_paths({**fixed, **e, **c}) for e in explicit for c in combos]
    varying = [k for k in dict.fromkeys(k for r in raw for k in r)
               if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in raw}) > 1]
    swept = [k for k in axes if k in varying] + [k for k in varying if k not in axes]
    stage_list = parse_stages(stages or doc.get("stages") or "train,evaluate,annotate")
    r = retries if retries is not None else doc.get("retries", 1)
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise WorkbenchError(f"retries must be an integer ≥ 0, got {r!r}")
    settings = []
    for i, o in enumerate(raw):
        shown = [k for k in swept if k in o]  # a parameter only some settings set is left out where unset
        label = ", ".join(f"{k}={_fmt(o[k])}" for k in shown) or "single run"
        slug = _slug("_".join(f"{k}-{_fmt(o[k])}" for k in shown) or "run")
        settings.append(Setting(index=i, overrides=o, label=label, slug=slug))
    if name is None:
        name = doc.get("name")
    if name is None:
        digest = hashlib.sha256(json.dumps([stage_list, raw], sort_keys=True, default=str).encode()).hexdigest()
        name = f"sweep-{digest[:8]}"
    name = str(name)
    if not name or "/" in name or name.startswith(".") or _slug(name) != name:
        raise WorkbenchError(f"sweep name {name!r} must be a plain folder name (letters, digits, . _ = -)")
    fixed_shown = {k: v for k, v in (raw[0] if raw else {}).items() if k not in swept}
    return Sweep(name=name, stages=stage_list, settings=settings, swept=swept, fixed=fixed_shown, retries=r)


def check(sweep: Sweep) -> Sweep:
    """Validate every setting (names, types, ranges, recipe, dataset) and compute its stage keys; the first
    bad value is a one-line error naming the setting, before anything starts. Duplicates are dropped."""
    from .cache import stage_keys
    from .execute import split_pipeline_overrides
    n = len(sweep.settings)
    seen: dict[str, Setting] = {}
    kept = []
    for s in sweep.settings:
        try:
            per_stage = split_pipeline_overrides(s.overrides)
            idle = [f"{k} ({st})" for st, vals in per_stage.items() if st not in sweep.stages for k in vals
                    if not any(k in per_stage.get(other, {}) for other in sweep.stages)]
            if idle:
                raise WorkbenchError(f"parameter(s) {', '.join(idle)} belong to a stage this sweep does not run "
                                     f"(--stages {','.join(sweep.stages)})")
            keys = stage_keys(per_stage, sweep.stages)
        except WorkbenchError as e:
            where = f"setting {s.index + 1} of {n} ({s.label})" if n > 1 else "sweep"
            raise WorkbenchError(f"{where}: {e}") from None
        s.per_stage = {st: per_stage.get(st, {}) for st in sweep.stages}
        s.keys = keys
        last = keys[sweep.stages[-1]]
        if last in seen:
            sweep.notes.append(f"setting {s.label} is the same run as {seen[last].label}: run once")
            continue
        seen[last] = s
        kept.append(s)
    for i, s in enumerate(kept):
        s.index = i
    sweep.settings = kept
    return sweep


# --- CPU budgets -------------------------------------------------------------------------------------------

def _affinity() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def worker_cpus(dask_worker=None) -> dict:
    """Run on every worker (``client.run``): its host, the CPUs it may use and its thread count."""
    nthreads = getattr(getattr(dask_worker, "state", None), "nthreads", None) or getattr(dask_worker, "nthreads", 1)
    return {"host": socket.gethostname(), "cpus": _affinity(), "nthreads": int(nthreads or 1), "pid": os.getpid()}


def cpu_plan(workers: dict[str, dict]) -> dict[str, dict]:
    """Disjoint CPU slices for workers that share a machine (same host and same CPU set); a worker with
    several threads gets a budget per task but no pinning (its tasks share one process)."""
    groups: dict[tuple, list[str]] = {}
    for addr, w in sorted(workers.items()):
        groups.setdefault((w["host"], tuple(w["cpus"])), []).append(addr)
    plan = {}
    for (host, cpus), addrs in groups.items():
        total = sum(workers[a]["nthreads"] for a in addrs)
        per_thread = max(1, len(cpus) // max(1, total))
        offset = 0
        for a in addrs:
            t = workers[a]["nthreads"]
            mine = [cpus[(offset + i) % len(cpus)] for i in range(per_thread)] if t == 1 else None
            plan[a] = {"cpus": mine, "threads": per_thread, "host": host, "cpuset": list(cpus)}
            offset += per_thread * t
    return plan


def budget_for(address, info: dict, plan: dict, alive=None) -> dict:
    """This worker's CPU budget: its entry in the plan; a worker that joined later (a restarted one) takes
    the slice of a worker of the plan on the same machine that is gone (``alive``: current addresses),
    else an even share of its CPUs with the plan's workers there, unpinned."""
    if address in plan:
        return plan[address]
    same = {a: p for a, p in plan.items() if p.get("host") == info["host"] and p.get("cpuset") == info["cpus"]}
    if alive is not None:
        gone = [p for a, p in sorted(same.items()) if a not in alive and p["cpus"]]
        if gone and info["nthreads"] == 1:
            return {**gone[0]}
    share = max(1, len(info["cpus"]) // ((len(same) + 1) * info["nthreads"]))
    return {"cpus": None, "threads": share, "host": info["host"], "cpuset": info["cpus"]}


def budget_env(threads: int, environ=None) -> dict[str, str]:
    """Environment limiting a notebook kernel to ``threads`` CPU threads (OpenMP, BLAS; XLA:CPU).

    XLA:CPU sizes its thread pool from the process's CPU affinity (jax-ml/jax#743, #1539), which the
    sweep sets; ``intra_op_parallelism_threads=N`` is a TensorFlow session option, not an XLA flag: in
    XLA_FLAGS it is ignored, and at the start of the value XLA takes the whole value for the name of a
    flags file and aborts. So only the real flag is set, for one thread: Eigen's own multi-threading off.
    Any thread flag already there is replaced; the other flags (the fast CPU path's) are kept."""
    environ = os.environ if environ is None else environ
    threads = max(1, int(threads))
    flags = _XLA_THREAD_FLAGS.sub("", environ.get("XLA_FLAGS", "")).split()
    if threads == 1:
        flags.append(SINGLE_THREAD_XLA)
    env = {k: str(threads) for k in THREAD_ENV}
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _set_process_affinity(cpus) -> None:
    """Pin every thread of this process (new threads and child processes inherit it)."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (OSError, ProcessLookupError):
            pass


class _Budget:
    """Apply a CPU budget to this process for the duration of one run, then restore."""

    def __init__(self, cpus, threads):
        self.cpus, self.threads = cpus, threads

    def __enter__(self):
        self.saved_env = {k: os.environ.get(k) for k in (*THREAD_ENV, "XLA_FLAGS")}
        os.environ.update(budget_env(self.threads))
        self.saved_cpus = None
        if self.cpus and hasattr(os, "sched_setaffinity"):
            self.saved_cpus = _affinity()
            _set_process_affinity(self.cpus)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.saved_cpus:
            _set_process_affinity(self.saved_cpus)
        return False


class _OutputTo:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also those of the notebook kernels
    it starts: their warnings and progress bars) to a log file for the duration of one run."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        return self

    def __exit__(self, *exc):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in (*self.saved, self.fd):
            os.close(fd)
        return False


# --- one setting, on a worker -------------------------------------------------------------------------------

def _event(kind: str, **msg) -> None:
    try:
        from distributed import get_worker
        get_worker().log_event(EVENT_TOPIC, {"kind": kind, **msg})
    except (ImportError, ValueError):
        pass


def run_setting(job: dict, plan: dict) -> dict:
    """Run one setting's pipeline in a new run directory of the sweep (a Dask task; also callable directly)."""
    from .cache import run_pipeline
    from ..core.runs import new_run_dir
    try:
        from distributed import get_worker
        worker = get_worker()
        address = worker.address
    except (ImportError, ValueError):
        worker, address = None, None
    alive = None
    if address and address not in plan:  # a worker that joined after the plan was made (a restarted one)
        try:
            from distributed import get_client
            alive = set(get_client().scheduler_info().get("workers", {}))
        except (ImportError, ValueError, OSError):
            alive = None
    mine = budget_for(address, worker_cpus(worker), plan, alive)
    sweep_dir = Path(job["sweep_dir"])
    run_dir = new_run_dir(job["slug"], runs_dir=sweep_dir)
    started = time.time()
    attempt = {"setting": job["index"], "label": job["label"], "overrides": job["overrides"], "keys": job["keys"],
               "worker": address, "host": socket.gethostname(), "pid": os.getpid(), "cpus": mine["cpus"],
               "threads": mine["threads"], "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (run_dir / "sweep_attempt.json").write_text(json.dumps(attempt, indent=2, default=str) + "\n")
    _event("start", index=job["index"], token=job["token"], run_dir=str(run_dir), worker=address, time=started)
    with _Budget(mine["cpus"], mine["threads"]), _OutputTo(run_dir / "sweep.log"):
        info = run_pipeline(run_dir, job["per_stage"], job["stages"], progress=False, log=lambda m: None,
                            root=Path(job["root"]), prefer=sweep_dir, keys=job["keys"], code_digest=job["code"],
                            on_stage=lambda s: _event("stage", index=job["index"], token=job["token"], stage=s))
    return {"run_dir": str(run_dir), "worker": address, "cpus": mine["cpus"], "threads": mine["threads"],
            "started": started, "ended": time.time(), **info}


# --- the driver ---------------------------------------------------------------------------------------------

def default_workers(n_runs: int, cpus: int | None = None, memory: int | None = None) -> int:
    """One worker per core, no more than runs to do or than memory allows (RUN_MEMORY each)."""
    cpus = cpus or len(_affinity())
    if memory is None:
        try:
            import psutil
            memory = psutil.virtual_memory().total
        except ImportError:
            memory = RUN_MEMORY * cpus
    return max(1, min(n_runs, cpus, memory // RUN_MEMORY))


def _dashboard_address() -> str | None:
    import importlib.util
    if importlib.util.find_spec("bokeh") is None:
        return None
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8787))
            return "127.0.0.1:8787"
        except OSError:
            return "127.0.0.1:0"


class _Progress:
    def __init__(self, total: int, out):
        self.total, self.out, self.t0 = total, out, time.perf_counter()
        self.done = self.failed = self.cached = 0
        self.running: set = set()

    def line(self, what: str = "") -> None:
        waiting = self.total - self.done - self.failed - self.cached - len(self.running)
        self.out(f"[{time.perf_counter() - self.t0:6.0f}s] {self.done} done · {len(self.running)} running · "
                 f"{self.failed} failed · {self.cached} cached · {waiting} waiting"
                 + (f"  — {what}" if what else ""))


def _state_path(sweep_dir: Path) -> Path:
    return sweep_dir / "sweep_state.json"


def _write_json(path: Path, doc) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _short_error(exc) -> str:
    from distributed import KilledWorker
    if isinstance(exc, KilledWorker):
        return "the worker running it was lost (killed or out of memory)"
    if isinstance(exc, WorkbenchError):
        return str(exc).splitlines()[0] if str(exc) else "WorkbenchError"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _headline(run_dir: str) -> str:
    from ..stages.report import fmt, metric_value, run_results
    r = run_results(Path(run_dir))
    acc = metric_value(r, "test_acc")
    if acc is not None:
        return f"test ACC {fmt(acc)}, AUC {fmt(metric_value(r, 'test_auc'))}"
    val = (r.get("train") or {}).get("best_val_acc")
    return f"trained: best val ACC {fmt(val)}" if val is not None else "no metrics"


def run_sweep(sweep: Sweep, workers: int | None = None, scheduler: str | None = None, out=print,
              runs_dir: Path | None = None) -> dict:
    """Run a checked sweep; returns its state (also written to runs/<name>/sweep_state.json) and writes the
    report. Settings finished before (in this sweep or anywhere under the runs folder) are not rerun."""
    from .cache import find_finished, reuse
    from ..core.paths import runs_root
    from ..core.runs import new_run_dir
    root = Path(runs_dir).resolve() if runs_dir else runs_root()
    sweep_dir = root / sweep.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_json(sweep_dir / "sweep.json", {**sweep.spec(), "time_utc": datetime.now(timezone.utc).isoformat(
        timespec="seconds")})
    out(f"sweep directory: {sweep_dir}")
    for n in sweep.notes:
        out(f"note: {n}")
    states = [{"index": s.index, "label": s.label, "overrides": s.overrides, "keys": s.keys, "status": "waiting",
               "run_dir": None, "attempts": [], "reused_stages": [], "cached_from": None} for s in sweep.settings]
    progress = _Progress(len(states), out)
    t_start = time.perf_counter()

    def save():
        _write_json(_state_path(sweep_dir), {"name": sweep.name, "stages": list(sweep.stages), "settings": states})

    # settings already finished: in this sweep (a resumed sweep) or elsewhere (copied in, no compute)
    todo = []
    for s, st in zip(sweep.settings, states):
        source, n = find_finished(s.keys, sweep.stages, root=root, prefer=sweep_dir)
        if n == len(sweep.stages):
            if source.parent == sweep_dir.resolve():
                st.update(status="cached", run_dir=str(source), cached_from=str(source))
            else:
                target = new_run_dir(s.slug, runs_dir=sweep_dir)
                reuse(source, target, sweep.stages, s.keys)
                st.update(status="cached", run_dir=str(target), cached_from=str(source))
            st["reused_stages"] = list(sweep.stages)
            progress.cached += 1
        else:
            todo.append(s)
    save()
    progress.line(f"{len(states)} setting(s), {progress.cached} finished before")
    info = {"workers": 0, "scheduler": None, "dashboard": None}
    if todo:
        _run_on_dask(sweep, todo, states, progress, root, sweep_dir, workers, scheduler, out, save, info)
    wall = time.perf_counter() - t_start
    save()
    report = write_report(sweep_dir)
    out(f"{progress.done} done, {progress.cached} cached, {progress.failed} failed in {wall:.0f} s; "
        f"report: {report}")
    for st in states:
        if st["status"] == "failed":
            out(f"failed: {st['label']}: {st['attempts'][-1]['error'] if st['attempts'] else 'not run'}")
    return {"dir": sweep_dir, "states": states, "wall_s": wall, "report": report, **info,
            "done": progress.done, "cached": progress.cached, "failed": progress.failed}


def _run_on_dask(sweep, todo, states, progress, root, sweep_dir, workers, scheduler, out, save, info) -> None:
    try:
        import distributed
    except ImportError:
        raise WorkbenchError("sweeps run on Dask: install it into the environment (pip install 'dask[distributed]', "
                             "or make install)") from None
    from distributed import Client, LocalCluster
    import logging
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as e:
            raise WorkbenchError(f"cannot reach the Dask scheduler {scheduler} ({e}): start it with "
                                 "'dask scheduler' or check the address (option --scheduler)") from None
    else:
        n = workers if workers is not None else default_workers(len(todo))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=_dashboard_address(), silence_logs=logging.CRITICAL,
                               scheduler_kwargs={"allowed_failures": sweep.retries})
        client = Client(cluster)
    events: queue.Queue = queue.Queue()
    try:
        client.subscribe_topic(EVENT_TOPIC, events.put)
        info["scheduler"] = client.scheduler.address
        info["dashboard"] = client.dashboard_link if client.scheduler_info().get("services", {}).get("dashboard") \
            else None
        out(f"dask scheduler {info['scheduler']}" + (" (embedded)" if cluster else "")
            + (f"; dashboard {info['dashboard']}" if info["dashboard"]
               else "; dashboard off (pip install 'bokeh>=3.1' for it)"))
        if cluster is None and not client.scheduler_info().get("workers"):
            out("the scheduler has no workers yet: waiting for them (dask worker ADDRESS --nthreads 1)")
            client.wait_for_workers(1)
        wk = client.run(worker_cpus)
        plan = cpu_plan(wk)
        info["workers"] = len(wk)
        info["cpu_plan"] = plan
        shared = [a for a, w in wk.items() if w["nthreads"] > 1]
        if shared:
            out(f"note: {len(shared)} worker(s) run several tasks in one process: CPU budgets are set but not pinned "
                "(start workers with --nthreads 1)")
        budgets = sorted({p["threads"] for p in plan.values()})
        out(f"{len(wk)} worker(s); CPU threads per run: {', '.join(map(str, budgets))}")
        by_index = {s.index: s for s in todo}
        from .cache import code_identity
        code_digest = code_identity()["digest"]  # what check() computed the keys with (memoised)
        pending: dict = {}
        tokens: dict[str, int] = {}

        def submit(s):
            token = uuid.uuid4().hex[:8]
            job = {"index": s.index, "label": s.label, "slug": s.slug, "overrides": s.overrides,
                   "per_stage": s.per_stage, "stages": list(sweep.stages), "keys": s.keys,
                   "sweep_dir": str(sweep_dir), "root": str(root), "token": token, "code": code_digest}
            f = client.submit(run_setting, job, plan, key=f"workbench-{sweep.name}-{s.index}-{token}", pure=False)
            pending[f] = s.index
            tokens[token] = s.index
            states[s.index]["submitted"] = time.time()

        for s in todo:
            submit(s)
        finished_tokens: set = set()
        while pending:
            try:
                done, _ = distributed.wait(list(pending), timeout=1.0, return_when="FIRST_COMPLETED")
            except (TimeoutError, distributed.TimeoutError):
                done = set()
            while not events.empty():
                _, msg = events.get()
                idx = tokens.get(msg.get("token"))
                if idx is None:
                    continue
                st = states[idx]
                if msg.get("token") in finished_tokens:
                    continue
                if msg["kind"] == "start":
                    last = st["attempts"][-1] if st["attempts"] else None
                    if st["status"] == "running" and last and last["error"] is None and "ended" not in last:
                        # the same task started again: Dask rescheduled it after losing its worker
                        last["error"] = "the worker running it was lost (killed or out of memory); rescheduled"
                    st["attempts"].append({"run_dir": msg["run_dir"], "worker": msg["worker"], "error": None,
                                           "started": msg["time"]})
                    st.update(status="running", run_dir=msg["run_dir"])
                    progress.running.add(idx)
                    progress.line(f"{st['label']}: started on {msg['worker']}")
                    save()
                elif msg["kind"] == "stage":
                    st["stage"] = msg["stage"]
            for f in done:
                idx = pending.pop(f)
                finished_tokens.add(f.key.rsplit("-", 1)[-1])
                st = states[idx]
                progress.running.discard(idx)
                if f.status == "finished":
                    r = f.result()
                    if st["attempts"] and st["attempts"][-1]["run_dir"] == r["run_dir"]:
                        st["attempts"][-1]["ended"] = r["ended"]
                    else:
                        st["attempts"].append({"run_dir": r["run_dir"], "worker": r["worker"], "error": None,
                                               "started": r["started"], "ended": r["ended"]})
                    st.update(status="done", run_dir=r["run_dir"], reused_stages=r["reused"],
                              computed_stages=r["computed"], seconds=r["seconds"], worker=r["worker"],
                              wall_s=round(r["ended"] - r["started"], 2),
                              queue_s=round(r["started"] - st.get("submitted", r["started"]), 2))
                    if r["reused"] and not r["computed"]:
                        st["status"] = "cached"
                        progress.cached += 1
                    else:
                        progress.done += 1
                    progress.line(f"{st['label']}: finished in {r['ended'] - r['started']:.0f} s ({_headline(r['run_dir'])})")
                    if r.get("unmarked"):
                        st["unmarked_stages"] = r["unmarked"]
                        out(f"note: {st['label']}: the code changed while it ran: stage(s) {', '.join(r['unmarked'])} "
                            "finished but are not marked reusable")
                else:
                    exc = f.exception() if f.status == "error" else WorkbenchError("cancelled by the scheduler")
                    err = _short_error(exc)
                    if st["attempts"] and st["attempts"][-1]["error"] is None and st["status"] == "running":
                        st["attempts"][-1]["error"] = err
                    else:
                        st["attempts"].append({"run_dir": None, "worker": None, "error": err})
                    if len(st["attempts"]) <= sweep.retries:
                        st["status"] = "retrying"
                        progress.line(f"{st['label']}: failed ({err}); retrying")
                        submit(by_index[idx])
                    else:
                        st["status"] = "failed"
                        progress.failed += 1
                        progress.line(f"{st['label']}: failed ({err})")
                save()
    except KeyboardInterrupt:
        for st in states:
            if st["status"] in ("running", "waiting", "retrying"):
                st["status"] = "interrupted"
        save()
        raise
    finally:
        try:
            client.close()
        finally:
            if cluster is not None:
                cluster.close()


# --- the report ---------------------------------------------------------------------------------------------

def _t_interval(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci95": [None, None]}
    from scipy import stats
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def collect(sweep_dir: Path) -> tuple[dict, list[dict]]:
    """The sweep's state and one row per setting with its parameters and metrics (read from its run)."""
    from ..stages.report import run_results
    state = json.loads(_state_path(sweep_dir).read_text())
    rows = []
    for st in state["settings"]:
        results = run_results(Path(st["run_dir"])) if st["status"] in ("done", "cached") and st["run_dir"] else {}
        rows.append({"label": st["label"], "overrides": st["overrides"], "status": st["status"],
                     "run_dir": st["run_dir"], "attempts": st["attempts"],
                     "metrics": {k: get(results) for k, _, get in _metrics()}, "wall_s": st.get("wall_s")})
    return state, rows


def aggregate(rows: list[dict], swept: list[str]) -> list[dict]:
    """One row per setting across seeds: mean, sd and 95 % t-interval of every metric over finished runs."""
    group_by = [k for k in swept if k != "seed"]
    groups: dict[str, dict] = {}
    for r in rows:
        if r["status"] not in ("done", "cached"):
            continue
        gk = json.dumps([r["overrides"].get(k) for k in group_by], default=str)
        g = groups.setdefault(gk, {"params": {k: r["overrides"].get(k) for k in group_by}, "runs": []})
        g["runs"].append(r)
    out = []
    for g in groups.values():
        row = {"params": g["params"], "n_runs": len(g["runs"]),
               "seeds": sorted({str(r["overrides"].get("seed", 0)) for r in g["runs"]})}
        for k, _, _ in _metrics():
            vals = [r["metrics"][k] for r in g["runs"] if r["metrics"][k] is not None]
            row[k] = _t_interval(vals)
        out.append(row)
    return out


def _num(v, d=4) -> str:
    return "–" if v is None else f"{v:.{d}f}"


def report_digits(key: str) -> int:
    from ..stages.report import METRIC
    return METRIC[key].digits


def _plot_png(rows: list[dict], swept: list[str]) -> str | None:
    """Each metric against each swept parameter (runs as dots, the mean at each value as a line)."""
    params = [k for k in swept if k != "seed"] or [k for k in swept]
    metrics = [(k, h) for k, h, _ in _metrics() if any(r["metrics"][k] is not None for r in rows
                                                     if r["status"] in ("done", "cached"))]
    if not params or not metrics:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fin = [r for r in rows if r["status"] in ("done", "cached")]
    fig, axes = plt.subplots(len(metrics), len(params), figsize=(3.6 * len(params), 2.4 * len(metrics)),
                             squeeze=False)
    for j, p in enumerate(params):
        vals = list(dict.fromkeys(r["overrides"].get(p) for r in fin))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) or all(
            _is_number(v) for v in vals)
        if numeric:
            xs_of = {v: float(v) for v in vals}
            order = sorted(vals, key=lambda v: float(v))
        else:
            order = sorted(vals, key=str)
            xs_of = {v: float(i) for i, v in enumerate(order)}
        logx = numeric and all(float(v) > 0 for v in vals) and len(vals) > 1 and \
            max(float(v) for v in vals) / min(float(v) for v in vals) >= 10
        for i, (m, header) in enumerate(metrics):
            ax = axes[i][j]
            pts = [(xs_of[r["overrides"].get(p)], r["metrics"][m]) for r in fin if r["metrics"][m] is not None]
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=14, alpha=0.6, color="tab:blue")
                means = []
                for v in order:
                    ys = [y for x, y in pts if x == xs_of[v]]
                    if ys:
                        means.append((xs_of[v], sum(ys) / len(ys)))
                if p != "seed":  # a line across seeds would suggest a trend where there is none
                    ax.plot([x for x, _ in means], [y for _, y in means], color="tab:orange", marker="o", ms=3)
            if logx:
                ax.set_xscale("log")
            if numeric and len(order) <= 8:
                ax.set_xticks([xs_of[v] for v in order], [_fmt(v) for v in order], fontsize=7)
            if not numeric:
                ax.set_xticks([xs_of[v] for v in order], [_fmt(v) for v in order], rotation=30, fontsize=7)
            ax.tick_params(labelsize=7)
            if i == len(metrics) - 1:
                ax.set_xlabel(p, fontsize=8)
            if j == 0:
                ax.set_ylabel(header, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _is_number(v) -> bool:
    try:
        return math.isfinite(float(v)) and not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def write_report(sweep_dir: Path) -> Path:
    """``index.html`` (self-contained, sortable), ``sweep_results.csv`` (the aggregate table) and
    ``sweep_runs.csv`` (every run) of a sweep, from its state and its run directories."""
    from ..stages.report import collect_runs, index_html
    sweep_dir = Path(sweep_dir)
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    state, rows = collect(sweep_dir)
    swept = spec.get("swept", [])
    agg = aggregate(rows, swept)
    group_by = [k for k in swept if k != "seed"]

    # sweep_results.csv: the aggregate table
    with open(sweep_dir / "sweep_results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*group_by, "n_runs", "seeds",
                    *(f"{k}_{s}" for k, _, _ in _metrics() for s in ("mean", "sd", "ci95_low", "ci95_high"))])
        for a in agg:
            w.writerow([*(a["params"][k] for k in group_by), a["n_runs"], " ".join(a["seeds"]),
                        *(x for k, _, _ in _metrics() for x in (a[k]["mean"], a[k]["sd"], *a[k]["ci95"]))])
    with open(sweep_dir / "sweep_runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", *swept, "status", "attempts", *(k for k, _, _ in _metrics()), "wall_s", "run_dir", "error"])
        for r in rows:
            err = next((a["error"] for a in reversed(r["attempts"]) if a.get("error")), "")
            w.writerow([r["label"], *(r["overrides"].get(k) for k in swept), r["status"], len(r["attempts"]),
                        *(r["metrics"][k] for k, _, _ in _metrics()), r["wall_s"],
                        os.path.relpath(r["run_dir"], sweep_dir) if r["run_dir"] else "", err if r["status"] == "failed" else ""])

    # index.html: the sweep's sections, then workbench.report's table of every run
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("done", "cached", "failed", "interrupted")}
    parts = [f"<h2>Sweep {html.escape(spec['name'])}</h2>",
             f"<p class=\"note\">{len(rows)} setting(s); stages {', '.join(spec['stages'])}; swept: "
             f"{html.escape(', '.join(swept) or 'nothing')}; fixed: "
             f"{html.escape(', '.join(f'{k}={_fmt(v)}' for k, v in spec.get('fixed', {}).items()) or 'nothing')}. "
             f"This invocation: {counts['done']} run, {counts['cached']} already finished (reused, not recomputed), "
             f"{counts['failed']} failed"
             + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "") + ".</p>"]
    head = [*group_by, "runs", *(h for _, h, _ in _metrics())]
    parts.append("<h3>Per setting across seeds</h3><p class=\"note\">mean ± sd, 95 % t-interval below "
                 "(n − 1 degrees of freedom; none with a single run). Also in sweep_results.csv.</p>")
    parts.append('<table id="agg"><thead><tr>' + "".join(
        f'<th onclick="sortTable(\'agg\',{i})">{html.escape(h)}</th>' for i, h in enumerate(head)) + "</tr></thead><tbody>")
    for a in agg:
        cells = [f'<td data-v="{html.escape(str(a["params"][k]))}">{html.escape(_fmt(a["params"][k]))}</td>'
                 for k in group_by]
        cells.append(f'<td class="num" data-v="{a["n_runs"]}">{a["n_runs"]}</td>')
        for k, _, _ in _metrics():
            s = a[k]
            if s["mean"] is None:
                cells.append('<td class="num" data-v="">–</td>')
                continue
            d = report_digits(k)
            ci = s["ci95"]
            cells.append(f'<td class="num" data-v="{s["mean"]}">{_num(s["mean"], d)}'
                         + (f' ± {_num(s["sd"], d)}<br><span class="ci">[{_num(ci[0], d)}, {_num(ci[1], d)}]</span>'
                            if s["sd"] is not None else "") + "</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    png = _plot_png(rows, swept)
    if png:
        parts.append("<h3>Metrics against the swept parameters</h3><p class=\"note\">dots: runs; line: mean at each "
                     f"value</p><img alt=\"metrics against parameters\" src=\"data:image/png;base64,{png}\">")
    failed = [r for r in rows if r["status"] in ("failed", "interrupted")]
    if failed:
        parts.append("<h3>Failed or interrupted</h3><ul>")
        for r in failed:
            att = "; ".join(f"attempt {i + 1}: {html.escape(a.get('error') or 'no error recorded')}"
                            + (f" ({html.escape(os.path.relpath(a['run_dir'], sweep_dir))})" if a.get("run_dir") else "")
                            for i, a in enumerate(r["attempts"])) or "not started"
            parts.append(f"<li><b>{html.escape(r['label'])}</b> ({r['status']}): {att}</li>")
        parts.append("</ul>")
    parts.append("<h3>Every run</h3>")
    listed = {str(Path(a["run_dir"]).resolve()) for r in rows for a in r["attempts"] if a.get("run_dir")}
    listed |= {str(Path(r["run_dir"]).resolve()) for r in rows if r["run_dir"]}
    runs = [r for r in collect_runs(sweep_dir) if str(Path(r["path"]).resolve()) in listed]
    page = index_html(runs, sweep_dir, sort="name", base=sweep_dir) if runs else \
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body><p>no run directories</p></body></html>"
    from ..stages.report import sort_script
    page = page.replace("</head>", f"<script>{sort_script('agg', 'sortTable')}</script></head>", 1)
    anchor = '<table id="runs">' if '<table id="runs">' in page else "</body>"
    page = page.replace(anchor, "\n".join(parts) + "\n" + anchor, 1)
    out = sweep_dir / "index.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def main_sweep(args, out=print) -> int:
    """``workbench sweep``: check, run, report; the sweep directory is the last line printed."""
    if args.workers is not None and args.workers < 1:
        raise WorkbenchError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.scheduler:
        raise WorkbenchError("--workers sizes the embedded cluster; with --scheduler start the workers yourself "
                             "(dask worker ADDRESS --nthreads 1)")
    sweep = check(build(args.param, args.config, args.name, args.stages, args.retries))
    try:
        result = run_sweep(sweep, workers=args.workers, scheduler=args.scheduler, out=out)
    except KeyboardInterrupt:
        from ..core.paths import runs_root
        sweep_dir = runs_root() / sweep.name
        try:
            write_report(sweep_dir)
        except (OSError, ValueError, KeyError):
            pass
        print("error: interrupted; finished stages are kept: rerun the same command to resume", file=sys.stderr)
        out(str(sweep_dir))
        return 130
    out(str(result["dir"]))
    return 1 if result["failed"] else 0

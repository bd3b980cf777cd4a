"""`make bench-sweep`: what the sweep machinery costs and gains, through the product's own command
(``workbench sweep``, papermill-executed stages on Dask).

The same small sweep (by default 4 demo-recipe pipelines on BreastMNIST, seeds 0-3) runs, side by side in
one invocation:

1. ``sequential``: ``--workers 1`` (one worker with every core: one run at a time);
2. ``default``: the default worker count (one worker per core, each run pinned to its share);
3. ``cached``: the ``default`` command again, in the same runs folder: every stage is reused.

Each arm has its own empty runs folder (no arm reuses another's work). Per arm: wall time of the command,
runs per hour, and per run the overhead = the scheduler's latency (from the moment the run could start,
its worker free, to its start) + everything
around the notebooks' work: run directory and budget set-up, the run's kernel (one for its three stages: its
start, its imports of workbench, Keras and JAX, a reset before each later stage, its shutdown), papermill's
bookkeeping and the HTML export. The work is the time the stage
notebooks' other cells took (papermill records every cell's duration). Goals: overhead ≤ 10 s per run,
cached repeat ≤ 30 s, default workers no slower than sequential.

    python -m bench.sweep                                  # 4 runs, full pipeline
    python -m bench.sweep --seeds 0,1 --extra '-p epochs 5' --out /tmp/sweep.json

Results: bench/results/sweep.json (+ .md); run directories under runs/bench-sweep/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "sweep.json"
# the demo recipe at its own 15 epochs (on a training set as small as BreastMNIST's the recipe would
# otherwise stretch to ~280 epochs for its minimum step count) and no label audit: short runs, where the
# machinery's overhead weighs most
DEFAULT_PARAMS = "-p dataset breastmnist -p recipe demo -p epochs 15 -p audit_folds 0"
GOALS = {"overhead_s_per_run": 10.0, "cached_repeat_s": 30.0}


IMPORTS = {"train": "from workbench import train", "evaluate": "from workbench import evaluate",
           "annotate": "from workbench import annotate, widgets"}


def import_probe(repeats: int = 2) -> dict[str, float]:
    """Seconds a fresh interpreter takes to import what each stage notebook's first cell imports (the best of
    ``repeats``), measured now, under the same load as the arm that follows. The first cell also opens the
    stage (loads the data or the model): only this much of it counts as overhead."""
    out = {}
    for stage, stmt in IMPORTS.items():
        code = f"import time; t = time.perf_counter(); import workbench; {stmt}; print(time.perf_counter() - t)"
        times = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "KERAS_BACKEND": "jax"})
            if proc.returncode == 0:
                times.append(float(proc.stdout.strip().splitlines()[-1]))
        out[stage] = round(min(times), 2) if times else 0.0
    return out


def export_probe(run_dir: Path) -> float:
    """Seconds to export the run's executed stage notebooks to HTML again (copies in a temporary folder,
    through workbench.execute.export_html), measured after the arm: the export's share of the time a stage
    spends outside its cells."""
    import tempfile
    from workbench.execute import export_html
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for marker in sorted((run_dir / "complete").glob("*.json")):
            nb = run_dir / Path(json.loads(marker.read_text())["report"]).with_suffix(".ipynb")
            copy = Path(tmp) / nb.name
            shutil.copy(nb, copy)
            t0 = time.perf_counter()
            export_html(copy)
            total += time.perf_counter() - t0
    return round(total, 2)


def _cells(nb_path: Path) -> dict:
    """Seconds of the imports cell and of the other cells of an executed notebook (papermill metadata)."""
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    durations = [float((c.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0) for c in code]
    # the first code cell after the injected parameters imports workbench (and with it Keras and JAX)
    tags = [c.get("metadata", {}).get("tags", []) for c in code]
    body = [d for d, t in zip(durations, tags) if "parameters" not in t and "injected-parameters" not in t]
    return {"imports_s": body[0] if body else 0.0, "work_s": sum(body[1:]), "cells_s": sum(durations)}


def scheduling_latency(settings: list[dict]) -> dict[int, float]:
    """Per setting: seconds from the moment it could start (submitted, and its worker free: the previous
    run on that worker ended) to the moment it started. Waiting for a free worker is not overhead."""
    by_worker: dict = {}
    for st in settings:
        for a in st["attempts"]:
            if a.get("started") and a.get("worker"):
                by_worker.setdefault(a["worker"], []).append((a["started"], a.get("ended"), st))
    out = {}
    for runs in by_worker.values():
        runs.sort(key=lambda r: r[0])
        free = None
        for started, ended, st in runs:
            ready = max(st.get("submitted") or started, free or 0.0)
            out[st["index"]] = round(max(0.0, started - ready), 2)
            free = ended or started
    return out


def run_breakdown(run_dir: Path, st: dict, imports: dict[str, float]) -> dict:
    """Where one run's time went (seconds): scheduling latency, per-stage overhead (outside the cells: the kernel's
    start and imports or its reset, papermill, HTML export; imports left in the first cell) and work (every cell's
    time but those imports)."""
    stages = {}
    for marker in sorted((run_dir / "complete").glob("*.json")):
        m = json.loads(marker.read_text())
        c = _cells(run_dir / Path(m["report"]).with_suffix(".ipynb"))
        imp = min(imports.get(m["stage"], 0.0), c["imports_s"])  # the first cell also opens the stage
        stages[m["stage"]] = {"wall_s": m["seconds"], "cells_s": round(c["cells_s"], 2), "imports_s": round(imp, 2),
                              "first_cell_s": round(c["imports_s"], 2),
                              "kernel_and_export_s": round(m["seconds"] - c["cells_s"], 2),
                              "work_s": round(c["cells_s"] - imp, 2)}
    wall = st.get("wall_s") or 0.0
    work = sum(s["work_s"] for s in stages.values())
    queue = st.get("latency_s") or 0.0
    return {"run_dir": run_dir.name, "wall_s": wall, "queue_s": queue, "work_s": round(work, 2),
            "overhead_s": round(queue + wall - work, 2),
            "kernel_and_export_s": round(sum(s["kernel_and_export_s"] for s in stages.values()), 2),
            "imports_s": round(sum(s["imports_s"] for s in stages.values()), 2),
            "other_s": round(wall - sum(s["wall_s"] for s in stages.values()), 2),  # run dir, budget, reuse
            "stages": stages}


def run_arm(label: str, args: list[str], runs_dir: Path, log, probe: bool = True) -> dict:
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(runs_dir)}
    cmd = [sys.executable, "-m", "workbench", "sweep", *args]
    log(f"{label}: {' '.join(shlex.quote(a) for a in cmd[3:])}")
    imports = import_probe() if probe else {}
    load0 = os.getloadavg()
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=6 * 3600)
    wall = time.time() - t0
    load1 = os.getloadavg()
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"error: arm {label} failed (exit {proc.returncode}): " + " | ".join(tail))
    sweep_dir = Path(proc.stdout.strip().splitlines()[-1])
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    settings = state["settings"]
    latency = scheduling_latency(settings)
    runs = [run_breakdown(Path(s["run_dir"]), {**s, "latency_s": latency.get(s["index"])}, imports)
            for s in settings if s["status"] == "done"]
    starts = [a["started"] for s in settings for a in s["attempts"] if a.get("started")]
    out = {"label": label, "command": ["workbench", "sweep", *args], "wall_s": round(wall, 1),
           "runs": len(settings), "computed": len(runs), "cached": sum(s["status"] == "cached" for s in settings),
           "failed": sum(s["status"] == "failed" for s in settings),
           "runs_per_hour": round(len(settings) / wall * 3600, 1),
           "startup_s": round(min(starts) - t0, 1) if starts else None,
           "loadavg_1min": [round(load0[0], 2), round(load1[0], 2)], "import_probe_s": imports,
           "workers": next((line.split()[0] for line in proc.stdout.splitlines() if "worker(s);" in line), None),
           "per_run": runs}
    if runs:
        out["html_export_s_per_run"] = export_probe(sweep_dir / runs[0]["run_dir"])
        for k in ("overhead_s", "queue_s", "kernel_and_export_s", "imports_s", "other_s", "work_s", "wall_s"):
            out[f"{k}_mean"] = round(statistics.fmean(r[k] for r in runs), 2)
    log(f"{label}: {wall:.0f} s wall, {out['runs_per_hour']} runs/h, {out['computed']} computed, "
        f"{out['cached']} cached" + (f", overhead {out['overhead_s_mean']:.1f} s/run" if runs else ""))
    return out


def markdown(doc: dict) -> str:
    arms = doc["arms"]
    lines = [f"# Sweep machinery: {doc['runs']} runs ({doc['params']})", "",
             f"Measured {doc['time_utc']} on {doc['cpus']} CPU core(s), {doc['machine_note']}", "",
             "| arm | workers | wall s | runs/h | start-up s | computed | cached | overhead s/run | of which "
             "scheduling | kernel start and imports, resets, papermill, export (of which export) | imports in cells | "
             "sweep's own | work s/run | load (1 min) before → after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for a in arms.values():
        def g(k, d=1):
            v = a.get(k)
            return "–" if v is None else f"{v:.{d}f}"
        lines.append(f"| {a['label']} | {a['workers'] or '–'} | {a['wall_s']:.0f} | {a['runs_per_hour']:.1f} | "
                     f"{g('startup_s')} | {a['computed']} | {a['cached']} | {g('overhead_s_mean')} | {g('queue_s_mean')} | "
                     f"{g('kernel_and_export_s_mean')} ({g('html_export_s_per_run')}) | {g('imports_s_mean')} | {g('other_s_mean')} | {g('work_s_mean')} | "
                     f"{a['loadavg_1min'][0]} → {a['loadavg_1min'][1]} |")
    v = doc["verdict"]
    lines += ["", "Goals:", "",
              f"- overhead ≤ {GOALS['overhead_s_per_run']:.0f} s per run (default arm): "
              f"{v['overhead_s_per_run']:.1f} s: **{'met' if v['overhead_met'] else 'NOT met'}**",
              f"- cached repeat ≤ {GOALS['cached_repeat_s']:.0f} s: {v['cached_repeat_s']:.1f} s: "
              f"**{'met' if v['cached_met'] else 'NOT met'}**",
              f"- default workers no slower than sequential: {v['default_wall_s']:.0f} s vs "
              f"{v['sequential_wall_s']:.0f} s ({v['speedup']:.2f}×): **{'met' if v['default_met'] else 'NOT met'}**",
              "", "Per run (means over the computed runs): overhead = the scheduler's latency (worker free → run "
              "started) + the run's wall time − its work. The three stages of a run share one notebook kernel "
              "(workbench.execute.StageKernel). The overhead is made of: the stages' time outside their cells (the "
              "kernel's start and its import of workbench, Keras and JAX before the first stage, the reset before "
              "each later one, papermill and the HTML export; the export alone timed again afterwards on one run's "
              "notebooks), what imports remain in each stage's first cell (what a fresh interpreter takes to import "
              "them, measured before the arm under the same load, at most the cell's time; the rest of that cell "
              "opens the stage and counts as work) and the sweep's own (run directory, CPU budget, markers, the "
              "kernel's shutdown). Work = the cells' durations as papermill recorded them, less those imports. "
              "Start-up = command start → first run started (imports, checks of every setting, cache look-up, "
              "cluster start); it is paid once per sweep."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3", help="the sweep's seeds (its runs)")
    ap.add_argument("--extra", default=DEFAULT_PARAMS, help="the sweep's other options (-p NAME VALUE ...)")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. machine contention)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--keep", action="store_true", help="keep the arms' run directories")
    args = ap.parse_args(argv)
    base = shlex.split(args.extra) + ["-p", "seed", args.seeds]
    n = len(args.seeds.split(","))
    work = ROOT / "runs" / "bench-sweep"
    if work.exists():
        shutil.rmtree(work)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    arms = {}
    arms["sequential"] = run_arm("sequential", ["--name", "bench", "--workers", "1", *base], work / "sequential", log)
    arms["default"] = run_arm("default", ["--name", "bench", *base], work / "default", log)
    arms["cached"] = run_arm("cached", ["--name", "bench", *base], work / "default", log, probe=False)
    d, s, c = arms["default"], arms["sequential"], arms["cached"]
    verdict = {"overhead_s_per_run": d["overhead_s_mean"], "overhead_met": d["overhead_s_mean"] <= GOALS["overhead_s_per_run"],
               "cached_repeat_s": c["wall_s"], "cached_met": c["wall_s"] <= GOALS["cached_repeat_s"] and c["cached"] == n,
               "default_wall_s": d["wall_s"], "sequential_wall_s": s["wall_s"], "speedup": round(s["wall_s"] / d["wall_s"], 3),
               "default_met": d["wall_s"] <= s["wall_s"]}
    doc = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": len(os.sched_getaffinity(0)),
           "runs": n, "params": " ".join(base), "goals": GOALS, "verdict": verdict, "arms": arms,
           "machine_note": args.note or "shared with other work (see the load averages)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.annotate_cost` (make bench-annotate-cost): what a new pool costs with an existing run.

A trained and evaluated demo run annotates two folders of 1,000 real BloodMNIST test images each (PNG files,
disjoint), through the command line exactly as a user does (`workbench run annotate --run RUN -p pool DIR`, the
defaults otherwise: label audit on, map drawn). The first pool pays what belongs to the run once (the label
audit of the train split, val's predictions, the map's projection: RUN/cache/); the second is the "new pool"
the goal is about. For each, the wall time of the command and its items: the executed notebook's cell times
(papermill records them) grouped by what they do, and the rest of the wall time (start of Python and of the
notebook kernel, the HTML export, the PHI check). Goal (issue 28): the second pool in at most 30 s on an idle
2-core machine. The machine's load average is recorded beside the times: on a busy machine they are not
the goal's measurement.

    python -m bench.annotate_cost                      # trains and evaluates a demo run first (minutes)
    python -m bench.annotate_cost --run runs/<demo>    # an existing trained run (evaluated or not)

Results: bench/results/annotate_cost.json and annotate_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = Path(tempfile.gettempdir()) / "workbench-bench-annotate-cost"
N_POOL = 1000
GOAL_S = 30.0
# what each notebook cell does, by the first workbench call in its source (in this order; the rest: "report")
CATEGORIES = (("open_stage", "model load (open the run and the pool)"), ("scan_pool", "scan the pool"),
              ("val_predictions", "val predictions"), ("predict_pool", "pool predictions"),
              ("features_of", "features (embeddings, kNN, OOD)"), ("audit_labels", "label audit"),
              ("annotate_map", "embedding map"), ("rank_for_review", "ranking"),
              ("choose_thresholds", "thresholds, shift check, certification, decisions"),
              ("check_shift", "thresholds, shift check, certification, decisions"),
              ("certify(", "thresholds, shift check, certification, decisions"),
              ("decide(", "thresholds, shift check, certification, decisions"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def category(source: str) -> str:
    for key, name in CATEGORIES:
        if key in source:
            return name
    return "report figures, galleries, review summary"


def cli(*args) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: workbench {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, proc


def write_pool(folder: Path, images: np.ndarray) -> None:
    from PIL import Image
    if folder.is_dir():
        return
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, im in enumerate(images):
        d = tmp / f"batch{i // 250}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"img{i:05d}.png")
    tmp.rename(folder)


def itemise(pool_dir: Path, wall: float) -> dict:
    import nbformat
    nb = nbformat.read(pool_dir / "30_annotate.ipynb", as_version=4)
    items: dict[str, float] = {}
    for c in nb.cells:
        d = (c.get("metadata", {}).get("papermill") or {}).get("duration")
        if c.cell_type != "code" or d is None:
            continue
        name = category(c.source)
        items[name] = items.get(name, 0.0) + float(d)
    cells = sum(items.values())
    items["Python and kernel start, HTML export, PHI check (the rest of the wall time)"] = max(0.0, wall - cells)
    return {"wall_s": round(wall, 2), "cells_s": round(cells, 2), "items": {k: round(v, 2) for k, v in items.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="", help="a trained run (default: train and evaluate a demo run in /tmp)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    env_note = {"WORKBENCH_RUNS_DIR": str(WORK / "runs")}
    os.environ.update(env_note)
    if args.run:
        src = Path(args.run).resolve()
    else:
        src = WORK / "runs" / "demo"
        if not (src / "model.keras").is_file():
            log("training the demo recipe on BloodMNIST")
            cli("run", "train", "--name", "demo", "-q")
            made = sorted((WORK / "runs").glob("*demo*"))[-1]
            made.rename(src)
    run = WORK / f"run-{int(time.time())}"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("annotate", "cache", "features"))
    if not (run / "calibration.json").is_file():
        log("evaluating the run (its temperature calibrates the pool's probabilities)")
        cli("run", "evaluate", "--run", str(run), "-q", "-p", "robustness", "0")
    with np.load(ROOT / "data" / "bloodmnist.npz", allow_pickle=False) as z:
        test = z["test_images"]
    pools = {"first": WORK / "pool-first", "new": WORK / "pool-new"}
    write_pool(pools["first"], test[:N_POOL])
    write_pool(pools["new"], test[N_POOL:2 * N_POOL])
    doc = {"n_pool": N_POOL, "run": str(src), "goal_s": GOAL_S, "machine": platform.machine(),
           "python": platform.python_version(), "cpus": os.cpu_count(), "pools": {}}
    for name, folder in pools.items():
        load = os.getloadavg()
        wall, proc = cli("run", "annotate", "--run", str(run), "-q", "-p", "pool", str(folder))
        pool_dir = Path(proc.stdout.strip().splitlines()[-1])
        doc["pools"][name] = {**itemise(pool_dir, wall), "loadavg_before": [round(x, 2) for x in load]}
        log(f"{name} pool: {wall:.1f} s")
    (Path(args.out) / "annotate_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (Path(args.out) / "annotate_cost.md").write_text(md)
    print(md)
    return 0


def markdown(doc: dict) -> str:
    first, new = doc["pools"]["first"], doc["pools"]["new"]
    names = list(dict.fromkeys([*first["items"], *new["items"]]))
    lines = [f"# What a new pool costs (`python -m bench.annotate_cost`)", "",
             f"{doc['n_pool']} BloodMNIST test images as PNG files, annotated with the defaults by an evaluated demo "
             f"run ({doc['cpus']} CPUs, {doc['machine']}, Python {doc['python']}). The first pool fills the run's cache "
             "(label audit, val predictions, map projection); the second is a new pool with the cache warm.", "",
             "| item | first pool (s) | new pool (s) |", "| --- | --- | --- |"]
    for n in names:
        lines.append(f"| {n} | {first['items'].get(n, 0.0):.1f} | {new['items'].get(n, 0.0):.1f} |")
    lines += [f"| **wall time of the command** | **{first['wall_s']:.1f}** | **{new['wall_s']:.1f}** |", "",
              f"Load average (1, 5, 15 min) before each: first {first['loadavg_before']}, new {new['loadavg_before']}. "
              f"Goal for the new pool: ≤ {doc['goal_s']:.0f} s on an idle machine: "
              + ("met" if new["wall_s"] <= doc["goal_s"] else "not met") + " in this measurement."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

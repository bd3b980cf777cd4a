"""`make bench-accuracy`: test ACC/AUC of a training recipe over seeds (mean ± sd, wall time), through the
product's own stages (``workbench run train`` then ``workbench run evaluate``, papermill-executed).

    python -m bench.accuracy                                  # recipe full, seeds 0 1 2, BloodMNIST
    python -m bench.accuracy --recipe demo --seeds 0
    python -m bench.accuracy --recipe full --seeds 0,1,2 --set ema=no --set tta=no   # a lever switched off

Results are merged into bench/results/accuracy.json under ``<dataset>.<label>`` where the label is the
recipe plus any ``--set`` overrides (e.g. ``bloodmnist.full.test_acc_mean``,
``bloodmnist.full[ema=no].test_acc_mean``); each entry keeps its per-seed runs, the machine's load and
the run directories (under runs/bench-accuracy/, git-ignored). Numbers are measured, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "accuracy.json"
# the targets: full within 15 min of training on 2 CPU cores, demo within 5 min
TARGETS = {"full": {"test_acc": 0.970, "test_auc": 0.998, "train_minutes": 15},
           "demo": {"test_acc": 0.95, "train_minutes": 5}}


def _cli(*args, env) -> str:
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: workbench {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().splitlines()[-1]


def one_seed(recipe: str, seed: int, dataset: str, overrides: dict, env: dict, log, name: str = "") -> dict:
    p = ["-p", "recipe", recipe, "-p", "seed", str(seed), "-p", "dataset", dataset]
    for k, v in overrides.items():
        p += ["-p", k, v]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    run_dir = Path(_cli("run", "train", "-q", "--name", name or f"acc-{recipe}-s{seed}", *p, env=env))
    _cli("run", "evaluate", "-q", "--run", str(run_dir), env=env)
    wall = time.perf_counter() - t0
    m = json.loads((run_dir / "metrics.json").read_text())
    s = json.loads((run_dir / "train_summary.json").read_text())
    row = {"seed": seed, "test_acc": m["test"]["acc"], "test_auc": m["test"]["auc"], "val_acc": m["val"]["acc"],
           "train_seconds": s["train_seconds"], "wall_seconds": round(wall, 1), "epochs_run": s["epochs_run"],
           "best_epoch": s["best_epoch"], "train_images_per_second": s["train_images_per_second"],
           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "run_dir": str(run_dir.relative_to(ROOT))
           if run_dir.is_relative_to(ROOT) else str(run_dir)}
    log(f"seed {seed}: test ACC {row['test_acc']:.4f} AUC {row['test_auc']:.4f}, training {row['train_seconds']:.0f} s "
        f"({row['epochs_run']} epochs), wall {row['wall_seconds']:.0f} s")
    return row


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict], recipe: str) -> dict:
    out = {"n_seeds": len(rows)}
    for key in ("test_acc", "test_auc", "train_seconds", "wall_seconds"):
        mean, sd = _stats([r[key] for r in rows])
        out[f"{key}_mean"], out[f"{key}_sd"] = round(mean, 5), round(sd, 5)
    target = TARGETS.get(recipe)
    if target:
        out["target"] = target
        out["meets_target"] = bool(out["test_acc_mean"] >= target["test_acc"]
                                   and out.get("test_auc_mean", 1) >= target.get("test_auc", 0)
                                   and out["train_seconds_mean"] <= 60 * target["train_minutes"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="full", choices=("demo", "full"))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--dataset", default="bloodmnist", help="data card name or .npz path")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a train parameter (repeatable), e.g. --set ema=no")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. machine contention)")
    ap.add_argument("--add", action="store_true",
                    help="keep the seeds already stored under the same label and add these (a seed run again replaces its row)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        overrides = dict(kv.split("=", 1) for kv in args.set)
    except ValueError:
        print("error: --seeds takes integers like 0,1,2 and --set takes NAME=VALUE", file=sys.stderr)
        return 2
    label = args.recipe + (f"[{','.join(f'{k}={v}' for k, v in overrides.items())}]" if overrides else "")
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(ROOT / "runs" / "bench-accuracy")}
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {label}: {msg}", flush=True)

    rows = [one_seed(args.recipe, s, args.dataset, overrides, env, log) for s in seeds]
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    name = Path(args.dataset).stem if args.dataset.endswith(".npz") else args.dataset
    if args.add:
        earlier = doc.get(name, {}).get(label, {}).get("runs", [])
        rows = sorted([r for r in earlier if r["seed"] not in seeds] + rows, key=lambda r: r["seed"])
    entry = {**summarise(rows, args.recipe), "recipe": args.recipe, "overrides": overrides, "runs": rows,
             "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
             "note": args.note}
    doc.setdefault(name, {})[label] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n| dataset | recipe | seeds | test ACC | test AUC | training s | wall s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
          f"| {name} | {label} | {len(rows)} | {entry['test_acc_mean']:.4f} ± {entry['test_acc_sd']:.4f} | "
          f"{entry['test_auc_mean']:.4f} ± {entry['test_auc_sd']:.4f} | {entry['train_seconds_mean']:.0f} | "
          f"{entry['wall_seconds_mean']:.0f} |")
    if "meets_target" in entry:
        print(f"target {entry['target']}: {'met' if entry['meets_target'] else 'NOT met'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-transfer`: what transfer learning (``init_from``, ``freeze_backbone``) adds, through the
product's own stages (``workbench run train`` / ``run evaluate``, papermill-executed).

Only BloodMNIST is on this machine (the other MedMNIST files cannot be downloaded here), so the source
and target "datasets" are two disjoint label sets of it, written as MedMNIST-format .npz files:

- source: eosinophil, erythroblast, lymphocyte, neutrophil, platelet (5 classes, all their images);
- target: basophil, immature granulocytes, monocyte (3 classes, the ones most often confused with
  each other), with ``--per-class`` labelled training images per class (a seeded sample; ``all`` =
  every one) and the full val/test splits of those classes.

Per seed: the source is trained once (``recipe`` demo), then the target four ways: from scratch,
fine-tuned from the source run (``init_from``) at the recipe's learning rate and at a tenth of it
(``--finetune-lr``), and with the source backbone frozen (``init_from`` + ``freeze_backbone``: only the
new classifier trains). The class counts differ, so the classifier always starts new. Every target
training sees at least ``--target-samples`` images (more epochs for few labels: the recipe's 15
epochs of 60 images are 15 optimizer steps) and runs all its epochs (no early stopping; the best
epoch by val loss is kept, as always). This is transfer to new classes of the same imaging domain,
not across MedMNIST datasets.

    python -m bench.transfer                         # seeds 0 1 2, 20 labels per class and all
    python -m bench.transfer --seeds 0 --per-class 20

Results: bench/results/transfer.json (+ .md); run directories under runs/bench-transfer/ (git-ignored).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import accuracy
from workbench.train import RECIPES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "transfer.json"
SPLITS = ("train", "val", "test")
SOURCE_CLASSES = (1, 2, 4, 6, 7)
TARGET_CLASSES = (0, 3, 5)
# arm: (short name for run directories, train parameters)
ARMS = {"scratch": ("scratch", {}),
        "fine-tune": ("finetune", {"init_from": "{source}"}),
        "fine-tune, lower lr": ("finetune-lowlr", {"init_from": "{source}", "learning_rate": "{finetune_lr}"}),
        "frozen backbone": ("frozen", {"init_from": "{source}", "freeze_backbone": "true"})}


def target_schedule(n_train: int, recipe_epochs: int, min_samples: int) -> dict:
    """Epochs (and patience = epochs: no early stopping) so that a target training sees at least
    ``min_samples`` images and never fewer epochs than the recipe's."""
    epochs = max(recipe_epochs, math.ceil(min_samples / max(n_train, 1)))
    return {"epochs": str(epochs), "patience": str(epochs)}


def class_subset(arrays: dict, classes: tuple[int, ...], train_per_class: int | None, seed: int) -> dict:
    """The images of ``classes`` with labels renumbered 0..k-1 (in the order given); the train split
    cut to ``train_per_class`` seeded random images per class when given."""
    classes = tuple(int(c) for c in classes)
    new = np.full(256, 255, dtype=np.uint8)  # old label → new (MedMNIST labels are uint8)
    new[list(classes)] = np.arange(len(classes), dtype=np.uint8)
    out = {}
    for s in SPLITS:
        y = arrays[f"{s}_labels"].reshape(-1)
        if s == "train" and train_per_class:
            rng = np.random.default_rng(seed)
            keep = []
            for c in classes:
                idx = np.flatnonzero(y == c)
                if len(idx) < train_per_class:
                    raise SystemExit(f"error: --per-class {train_per_class}: class {c} has only {len(idx)} "
                                     "training images")
                keep.append(rng.choice(idx, train_per_class, replace=False))
            keep = np.sort(np.concatenate(keep))
        else:
            keep = np.flatnonzero(np.isin(y, classes))
        out[f"{s}_images"] = arrays[f"{s}_images"][keep]
        out[f"{s}_labels"] = new[y[keep]].reshape(-1, 1)
    return out


@functools.lru_cache(maxsize=1)
def _arrays(src: Path) -> dict:
    """The dataset's arrays, read once per run (workbench's own checked reader: clear errors, no pickle)."""
    from workbench.data import _read_npz
    return _read_npz(Path(src))


def write_source(src: Path, out_dir: Path) -> Path:
    """The source classes as their own .npz."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "source.npz"
    np.savez_compressed(path, **class_subset(_arrays(src), SOURCE_CLASSES, None, 0))
    return path


def write_target(src: Path, out_dir: Path, per_class: int | None, seed: int) -> Path:
    """The target classes with ``per_class`` labelled training images each (seeded), as an .npz."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (f"target-{per_class}pc-s{seed}.npz" if per_class else "target-all.npz")
    np.savez_compressed(path, **class_subset(_arrays(src), TARGET_CLASSES, per_class, seed))
    return path


def summarise(rows: list[dict]) -> dict:
    """Mean ± sd of test ACC per (labels per class, arm), and each arm's gain over scratch."""
    out: dict = {}
    for key in sorted({r["per_class"] for r in rows}, key=lambda k: (k == "all", k if k != "all" else 0)):
        by_arm = {}
        for arm in ARMS:
            vals = [r["test_acc"] for r in rows if r["per_class"] == key and r["arm"] == arm]
            if vals:
                mean, sd = accuracy._stats(vals)
                by_arm[arm] = {"test_acc_mean": round(mean, 5), "test_acc_sd": round(sd, 5), "n_seeds": len(vals)}
        if "scratch" in by_arm:
            for arm, e in by_arm.items():
                e["gain_over_scratch"] = round(e["test_acc_mean"] - by_arm["scratch"]["test_acc_mean"], 5)
        out[str(key)] = by_arm
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Transfer learning ({doc['time_utc']}, {doc['cores']} cores)", "",
             doc["setup"], "",
             "| target labels per class | arm | test ACC (mean ± sd) | gain over scratch | seeds |",
             "| --- | --- | ---: | ---: | ---: |"]
    for key, arms in doc["summary"].items():
        for arm, e in arms.items():
            lines.append(f"| {key} | {arm} | {e['test_acc_mean']:.4f} ± {e['test_acc_sd']:.4f} | "
                         f"{e.get('gain_over_scratch', 0):+.4f} | {e['n_seeds']} |")
    lines += ["", f"Source model ({len(doc['source_classes'])} classes) test ACC: {doc['source_test_acc_mean']:.4f} (mean over seeds)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--per-class", default="20,all",
                    help="labelled target training images per class, comma-separated; 'all' = every one")
    ap.add_argument("--recipe", default="demo", choices=("demo", "full"))
    ap.add_argument("--data", default=str(ROOT / "data" / "bloodmnist.npz"), help="the BloodMNIST .npz")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a train parameter for every training (repeatable), e.g. --set epochs=1")
    ap.add_argument("--target-samples", type=int, default=6000,
                    help="every target training sees at least this many images (default 6000)")
    ap.add_argument("--finetune-lr", default="0.0003", help="learning rate of the 'fine-tune, lower lr' arm (default 0.0003)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-transfer"),
                    help="where the split files and run directories go")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        sizes = [None if k.strip() == "all" else int(k) for k in args.per_class.split(",") if k.strip()]
        overrides = dict(kv.split("=", 1) for kv in args.set)
        if any(k is not None and k < 1 for k in sizes) or not sizes or not seeds:
            raise ValueError
    except ValueError:
        print("error: --seeds and --per-class take integers like 0,1,2 (--per-class: at least 1, or 'all'); "
              "--set takes NAME=VALUE", file=sys.stderr)
        return 2
    out, runs_dir = Path(args.out), Path(args.runs)
    from workbench.errors import WorkbenchError
    try:
        source = write_source(Path(args.data), runs_dir / "data")
    except WorkbenchError as e:
        print(f"error: --data: {e}", file=sys.stderr)
        return 2
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(runs_dir)}
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    # every target file before any training: a --per-class larger than a class fails in seconds, not
    # after the first source model
    targets = {(seed, size): write_target(Path(args.data), runs_dir / "data", size, seed)
               for seed in seeds for size in sizes}
    rows, source_rows = [], []
    for seed in seeds:
        log(f"seed {seed}: source ({len(SOURCE_CLASSES)} classes)")
        src = accuracy.one_seed(args.recipe, seed, str(source), overrides, env, log, name=f"tl-source-s{seed}")
        source_rows.append(src)
        for size in sizes:
            target = targets[seed, size]
            with np.load(target, allow_pickle=False) as z:
                n_train = len(z["train_labels"])
            schedule = target_schedule(n_train, RECIPES[args.recipe]["epochs"], args.target_samples)
            for arm, (short, extra) in ARMS.items():
                log(f"seed {seed}: target {size or 'all'} per class, {arm}")
                fill = {"source": ROOT / src["run_dir"], "finetune_lr": args.finetune_lr}
                arm_overrides = {**schedule, **{k: v.format(**fill) for k, v in extra.items()}, **overrides}
                r = accuracy.one_seed(args.recipe, seed, str(target), arm_overrides, env, log,
                                      name=f"tl-{short}-{size or 'all'}-s{seed}")
                rows.append({**r, "arm": arm, "per_class": size or "all", "source_run": src["run_dir"]})
    doc = {
        "benchmark": "transfer", "recipe": args.recipe, "overrides": overrides,
        "source_classes": list(SOURCE_CLASSES), "target_classes": list(TARGET_CLASSES),
        "target_samples": args.target_samples, "finetune_lr": args.finetune_lr,
        "setup": (f"BloodMNIST split by class: source {list(SOURCE_CLASSES)} (all images), target "
                  f"{list(TARGET_CLASSES)} (labelled train images per class as given, full val/test); recipe "
                  f"{args.recipe}{' ' + str(overrides) if overrides else ''}; every target training sees at "
                  f"least {args.target_samples:,} images, no early stopping; lower fine-tune learning rate "
                  f"{args.finetune_lr}; test ACC on the target's test split."),
        "summary": summarise(rows),
        "source_test_acc_mean": round(accuracy._stats([r["test_acc"] for r in source_rows])[0], 5),
        "runs": rows, "source_runs": source_rows,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    out.with_suffix(".md").write_text(md)
    print("\n" + md + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

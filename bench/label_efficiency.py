"""`make bench-label-efficiency`: how much the unlabelled images add when labels are few. For each embedded
dataset, label fraction, method and seed, one train run and one evaluate run through the product's own stages
(``workbench run train`` / ``evaluate``, papermill-executed), one JSON row each:

* ``supervised``: the demo recipe on the labelled subset alone (``-p label_fraction F``);
* ``semi``: the same plus FixMatch with the rest of the train split as unlabelled images
  (``-p unlabelled train``; workbench.semisup);
* ``pretrain``: self-supervised pretraining (``workbench run pretrain -p images train``: every train image, no
  label) then the supervised recipe from its backbone (``-p init_from PRETRAIN_RUN``);
* ``pretrain+semi``: both.

The labelled subset is stratified and seeded by the run's seed (workbench.semisup.label_subset: floor(F * N)
images, at least one per class); the seed also seeds the weights, the augmentation and, for the pretrained
methods, the pretraining run (one per dataset and seed, shared by every fraction). At 100 % no image is left
unlabelled: the semi-supervised methods do not apply there (written as such, not run). Val chooses everything
the recipes choose (checkpoint, early stopping); test is evaluated once per run, after training.

    python -m bench.label_efficiency --datasets bloodmnist --fractions 0.01,0.1 --methods supervised,semi --seeds 0
    python -m bench.label_efficiency --report-only          # rewrite label_efficiency.md from the json

Resumable: a row already in bench/results/label_efficiency.json (same dataset, fraction, method, seed and recipe)
is skipped; the file is rewritten after every row, so an interrupted run keeps what finished. The markdown lists
the cells of the full grid (3 datasets x 4 fractions x 4 methods x 3 seeds) that have not been run. Run
directories go under runs/bench-label-efficiency/ (git-ignored). Numbers are measured, never copied.
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
RESULTS = ROOT / "bench" / "results" / "label_efficiency.json"
RUNS = ROOT / "runs" / "bench-label-efficiency"
DATASETS = ("bloodmnist", "breastmnist", "retinamnist")
FRACTIONS = (0.01, 0.05, 0.1, 1.0)
METHODS = ("supervised", "semi", "pretrain", "pretrain+semi")
SEEDS = (0, 1, 2)
SEMI = ("semi", "pretrain+semi")
# The issue's goals (BloodMNIST, demo recipe): 1 % of the labels → test ACC ≥ 0.93; 10 % → within one point of
# the same recipe with all labels (0.962 measured with the demo recipe: bench/results/accuracy.json and issue 26).
GOALS = {"bloodmnist": {0.01: {"test_acc": 0.93}, 0.1: {"within_of_all_labels": 0.01}}}
# Published anchors: MedMNIST v2's ResNet-18 (28) with all labels, read from the data cards (workbench.cards; a card
# without it has none), and FixMatch's own reference point. Only what the sources state.
FIXMATCH_ANCHOR = {"what": "FixMatch (RandAugment), CIFAR-10, 250 labels (25 per class), the method's own reference",
                   "source": "Sohn et al., NeurIPS 2020, abstract and Table 2 (94.93 % accuracy)", "resolution": "32 px",
                   "backbone": "Wide ResNet-28-2 (1.5 M parameters), about 1 M steps", "test_acc": 0.9493}


def anchors(datasets=DATASETS) -> list[dict]:
    from workbench import cards, data
    out = []
    for ds in datasets:
        try:
            card = cards.load_card(ds, data.default_cards_dir())
        except Exception:  # noqa: BLE001 - a dataset without a card has no anchor
            continue
        b = (card.published_baselines or {}).get("ResNet-18 (28)")
        out.append({"what": f"{ds}: ResNet-18 (28), all train labels, supervised",
                    "source": "MedMNIST v2, Yang et al., Scientific Data 10, 41 (2023), Table 3, via the data card"
                              if b else "none on the data card (see its Summary)",
                    "resolution": "28 px", "backbone": "ResNet-18 (11 M parameters)",
                    "test_acc": b.get("acc") if b else None})
    return out + [FIXMATCH_ANCHOR]


def rows_key(r: dict) -> tuple:
    return (r["dataset"], float(r["fraction"]), r["method"], int(r["seed"]), r.get("recipe", "demo"))


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _cli(*args, env) -> Path:
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"workbench {' '.join(args[:2])} failed: {tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


def git_state() -> dict:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "workbench", "notebooks"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {"sha": sha, "dirty": dirty}


def pretrain_run(dataset: str, seed: int, recipe: str, env: dict, extra: list[str]) -> Path:
    """The pretraining run of a dataset and seed (every train image, no label): made once, reused."""
    name = f"le-pretrain-{dataset}-{recipe}-s{seed}"
    runs = Path(env["WORKBENCH_RUNS_DIR"])
    done = sorted(p for p in runs.glob(f"*_{name}") if (p / "encoder.keras").is_file()) if runs.is_dir() else []
    if done:
        return done[-1]
    log(f"pretraining {dataset} seed {seed} ({recipe})")
    return _cli("run", "pretrain", "-q", "--name", name, "-p", "dataset", dataset, "-p", "images", "train",
                "-p", "seed", str(seed), "-p", "recipe", recipe, *extra, env=env)


def train_and_evaluate(dataset: str, fraction: float, method: str, seed: int, recipe: str, env: dict,
                       quick: bool = False) -> dict:
    """One cell of the grid through the CLI: (pretrain,) train, evaluate; the row."""
    extra = ["-p", "max_per_split", "40", "-p", "epochs", "1", "-p", "width", "8", "-p", "batch_size", "16"] if quick else []
    p = ["-p", "dataset", dataset, "-p", "seed", str(seed), "-p", "recipe", recipe, "-p", "label_fraction", str(fraction)]
    if method in SEMI:
        p += ["-p", "unlabelled", "train", "-p", "compare_supervised", "false"]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    pre = None
    if method.startswith("pretrain"):
        pextra = ["-p", "max_per_split", "40", "-p", "epochs", "1", "-p", "width", "8", "-p", "batch_size", "16"] if quick else []
        pre = pretrain_run(dataset, seed, "tiny" if quick else "real", env, pextra)
        p += ["-p", "init_from", str(pre)]
    name = f"le-{dataset}-{fraction:g}-{method.replace('+', '-')}-s{seed}"
    run_dir = _cli("run", "train", "-q", "--name", name, *p, *extra, env=env)
    _cli("run", "evaluate", "-q", "--run", str(run_dir), "-p", "robustness", "0", env=env)
    wall = time.perf_counter() - t0
    m = json.loads((run_dir / "metrics.json").read_text())
    s = json.loads((run_dir / "train_summary.json").read_text())
    semi = s.get("semi_supervised") or {}
    row = {"dataset": dataset, "fraction": float(fraction), "method": method, "seed": int(seed), "recipe": recipe,
           "labelled_images": s.get("labelled_images"), "unlabelled_images": (semi.get("pool") or {}).get("n"),
           "test_acc": m["test"]["acc"], "test_auc": m["test"]["auc"], "val_acc": m["val"]["acc"],
           "train_seconds": s["train_seconds"], "wall_seconds": round(wall, 1), "epochs_run": s["epochs_run"],
           "best_epoch": s["best_epoch"], "mask_rate_last_epoch": semi.get("mask_rate_last_epoch"),
           "pool_mask_rate_last_epoch": semi.get("pool_mask_rate_last_epoch"),
           "pseudo_label_acc_last_epoch": semi.get("pseudo_label_acc_last_epoch"),
           "pretrain_run": str(pre) if pre else None,
           "pretrain_seconds": (json.loads((pre / "pretrain_summary.json").read_text()).get("train_seconds")
                                if pre and (pre / "pretrain_summary.json").is_file() else None),
           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "git": git_state(),
           "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
           "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for k in ("mae", "qwk"):
        if k in m["test"]:
            row[f"test_{k}"] = m["test"][k]
    return row


# ------------------------------------------------------------------------------------------- the table
def _ms(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values, d: int = 4) -> str:
    m, s = _ms(values)
    if m is None:
        return "–"
    return f"{m:.{d}f} ± {s:.{d}f}" if len([v for v in values if v is not None]) > 1 else f"{m:.{d}f}"


def applicable(method: str, fraction: float) -> bool:
    return not (method in SEMI and fraction >= 1.0)


def aggregate(rows: list[dict]) -> dict:
    """(dataset, fraction, method) → means, sds and seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], float(r["fraction"]), r["method"]), []).append(r)
    out = {}

    def order(item):
        (d, f, m), _ = item
        return (DATASETS.index(d) if d in DATASETS else 99, d, f, METHODS.index(m) if m in METHODS else 99, m)
    for key, rs in sorted(groups.items(), key=order):
        rs = sorted(rs, key=lambda r: r["seed"])
        e = {"seeds": [r["seed"] for r in rs], "n": len(rs)}
        for k in ("test_acc", "test_auc", "val_acc", "train_seconds", "wall_seconds", "pool_mask_rate_last_epoch",
                  "pseudo_label_acc_last_epoch", "pretrain_seconds"):
            e[f"{k}_mean"], e[f"{k}_sd"] = _ms([r.get(k) for r in rs])
        out[key] = e
    return out


def goals(doc: dict) -> list[str]:
    agg = aggregate(doc.get("rows", []))
    lines = []
    for ds, by_fraction in GOALS.items():
        best_all = agg.get((ds, 1.0, "supervised"))
        for f, goal in by_fraction.items():
            for method in METHODS:
                e = agg.get((ds, f, method))
                if not e:
                    continue
                if "test_acc" in goal:
                    ok = e["test_acc_mean"] >= goal["test_acc"]
                    lines.append(f"- {ds} {f:.0%} labels, {method}: test ACC {e['test_acc_mean']:.4f} (n = {e['n']}) "
                                 f"against the goal ≥ {goal['test_acc']}: **{'met' if ok else 'not met'}**")
                else:
                    ref = best_all["test_acc_mean"] if best_all else ISSUE_ALL_LABELS.get(ds)
                    src = ("this table's supervised 100 % row" if best_all else
                           "the issue's measurement of the demo recipe with all labels")
                    ok = e["test_acc_mean"] >= ref - goal["within_of_all_labels"]
                    lines.append(f"- {ds} {f:.0%} labels, {method}: test ACC {e['test_acc_mean']:.4f} (n = {e['n']}) "
                                 f"against all labels {ref:.4f} ({src}) minus one point: **{'met' if ok else 'not met'}**")
    return lines


ISSUE_ALL_LABELS = {"bloodmnist": 0.962}   # issue 26: the demo recipe with all BloodMNIST labels


def not_run(doc: dict, datasets=DATASETS, fractions=FRACTIONS, methods=METHODS, seeds=SEEDS) -> list[str]:
    have = {(r["dataset"], float(r["fraction"]), r["method"], int(r["seed"])) for r in doc.get("rows", [])}
    out = []
    for ds in datasets:
        for f in fractions:
            for m in methods:
                if not applicable(m, f):
                    continue
                missing = [s for s in seeds if (ds, float(f), m, s) not in have]
                if missing:
                    out.append(f"{ds} {f:g} {m}: seed{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(map(str, missing))}")
    return out


def render_md(doc: dict) -> str:
    rows = doc.get("rows", [])
    agg = aggregate(rows)
    out = ["# Label efficiency: supervised, semi-supervised (FixMatch), self-supervised pretraining",
           "",
           "Written by `make bench-label-efficiency` (bench/label_efficiency.py) from `label_efficiency.json`. "
           "Demo recipe; labelled subset: stratified, floor(F × N) train images (at least one per class), seeded by "
           "the run's seed; the rest of the train split is the unlabelled pool; test evaluated once per run. "
           "Mean ± sd over the seeds run (n). Times on this machine: 2 CPU cores shared with other jobs (the load "
           "average at the start and end of each run is in the json).",
           ""]
    for ds in sorted({k[0] for k in agg}, key=lambda d: DATASETS.index(d) if d in DATASETS else 99):
        out += [f"## {ds}", "",
                "| labels | method | n | test ACC | test AUC | val ACC | pool mask rate | pseudo-label ACC | train s | wall s |",
                "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for (d, f, m), e in agg.items():
            if d != ds:
                continue
            rs = [r for r in rows if r["dataset"] == d and float(r["fraction"]) == f and r["method"] == m]
            lab = rs[0].get("labelled_images")
            out.append(f"| {f:.0%} ({lab}) | {m} | {e['n']} | {_pm([r['test_acc'] for r in rs])} | "
                       f"{_pm([r['test_auc'] for r in rs])} | {_pm([r['val_acc'] for r in rs])} | "
                       f"{_pm([r.get('pool_mask_rate_last_epoch') for r in rs], 3)} | "
                       f"{_pm([r.get('pseudo_label_acc_last_epoch') for r in rs], 3)} | "
                       f"{_pm([r['train_seconds'] for r in rs], 0)} | {_pm([r['wall_seconds'] for r in rs], 0)} |")
        worse = []
        for (d, f, m), e in agg.items():
            base = agg.get((d, f, "supervised"))
            if d == ds and m != "supervised" and base and e["test_acc_mean"] < base["test_acc_mean"]:
                worse.append(f"{m} at {f:.0%} ({e['test_acc_mean']:.4f} < {base['test_acc_mean']:.4f})")
        if worse:
            out += ["", "**Worse than supervised on test ACC:** " + "; ".join(worse) + "."]
        out.append("")
    g = goals(doc)
    if g:
        out += ["## Goals (issue 26)", "", *g, ""]
    out += ["## Published anchors", "",
            "| what | source | resolution | backbone | test ACC |", "| --- | --- | --- | --- | --- |"]
    for a in anchors():
        acc = f"{a['test_acc']:.4f}" if a["test_acc"] is not None else "–"
        out.append(f"| {a['what']} | {a['source']} | {a['resolution']} | {a['backbone']} | {acc} |")
    out += ["", "Our networks are the demo recipe's compact CNN (width 16, about 0.1 M parameters) at 28 px, not "
                "ResNet-18 or Wide ResNet-28-2; FixMatch's own numbers are on CIFAR-10 with about 2^20 steps, ours "
                "with the recipe's 1,400. No published semi- or self-supervised result on these three MedMNIST files "
                "at these label fractions was found in the sources searched, so none is compared against. The closest "
                "systematic study, Huang, Jiang, Aeron and Hughes (arXiv 2307.08919, 2023: 13 semi- and "
                "self-supervised methods against labelled-set-only baselines on 4 medical datasets, tuned on "
                "realistic-sized val sets), reports in its abstract that MixMatch gave the most reliable gains; its "
                "datasets and numbers are not these.", ""]
    if doc.get("superseded"):
        out += ["## Superseded rows", "",
                "Measured with an earlier version of the method and kept for the record (not in the tables above):", ""]
        for e in doc["superseded"]:
            r = e["row"]
            out.append(f"- {r['dataset']} {r['fraction']:.0%} {r['method']} seed {r['seed']} (git {r['git']['sha']}): "
                       f"test ACC {r['test_acc']:.4f}, AUC {r['test_auc']:.4f}, {r['epochs_run']} epochs (best "
                       f"{r['best_epoch']}), {r['train_seconds']:.0f} s. {e['reason']}")
        out.append("")
    missing = not_run(doc)
    out += ["## Not run", ""]
    if missing:
        out += ["Cells of the full grid (3 datasets × 4 fractions × 4 methods × 3 seeds; the semi-supervised methods "
                "do not apply at 100 %, where nothing is left unlabelled) with no row yet:", ""]
        out += [f"- {m}" for m in missing]
    else:
        out.append("Every cell of the grid has been run.")
    return "\n".join(out) + "\n"


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--recipe", default="demo", choices=("demo", "full"))
    ap.add_argument("--quick", action="store_true", help="tiny subsets, 1 epoch (a test of the benchmark)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    if args.report_only:
        write(doc, out)
        print(render_md(doc))
        return 0
    try:
        datasets = [d for d in args.datasets.split(",") if d]
        fractions = [float(f) for f in args.fractions.split(",") if f]
        methods = [m for m in args.methods.split(",") if m]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        print("error: --fractions takes numbers like 0.01,0.1 and --seeds integers like 0,1,2", file=sys.stderr)
        return 2
    bad = [m for m in methods if m not in METHODS]
    if bad or any(not 0 < f <= 1 for f in fractions):
        print(f"error: methods are {', '.join(METHODS)} and fractions lie in (0, 1]", file=sys.stderr)
        return 2
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(RUNS if not args.quick else out.parent / "runs")}
    done = {rows_key(r) for r in doc["rows"]}
    # the most informative cells first: the smallest fractions, every method, then the next seed
    for seed in seeds:
        for ds in datasets:
            for f in fractions:
                for m in methods:
                    key = (ds, float(f), m, seed, args.recipe)
                    if key in done:
                        log(f"{ds} {f:g} {m} seed {seed}: done before, skipped")
                        continue
                    if not applicable(m, f):
                        continue
                    log(f"{ds} {f:g} {m} seed {seed}: running")
                    try:
                        row = train_and_evaluate(ds, f, m, seed, args.recipe, env, quick=args.quick)
                    except RuntimeError as e:
                        log(f"{ds} {f:g} {m} seed {seed}: FAILED: {e}")
                        continue
                    doc["rows"].append(row)
                    done.add(key)
                    write(doc, out)
                    log(f"{ds} {f:g} {m} seed {seed}: test ACC {row['test_acc']:.4f}, AUC {row['test_auc']:.4f}, "
                        f"train {row['train_seconds']:.0f} s, wall {row['wall_seconds']:.0f} s")
    write(doc, out)
    print(render_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

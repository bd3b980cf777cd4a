"""`make bench-datasets`: the ``full`` and ``demo`` recipes, untuned, on every embedded MedMNIST file, over
seeds, through the product's own stages (``workbench run train`` then ``workbench run evaluate``, the
functions of bench/accuracy.py), beside the published baselines of each data card.

Untuned means exactly what the defaults give: the child processes get no parameter but ``recipe``,
``seed`` and ``dataset``; the recipe fills in the rest from the data (augmentation preset and test-time
augmentation from the card's orientation, more epochs for small training sets: ``workbench.train.resolve``).
Nothing is chosen on test: the test split is evaluated once per run, after training.

    python -m bench.datasets                                   # every embedded file, full + demo, seeds 0,1,2
    python -m bench.datasets --datasets breastmnist --recipes full --seeds 1 --add   # rerun one part, keep the rest
    python -m bench.datasets --quick                           # minutes: tiny fixtures, 1 epoch, temp results
    python -m bench.datasets --report-only                     # rewrite datasets.md from datasets.json

Embedded files: every data card whose 28 px file is in data/ (or $WORKBENCH_DATA_DIR), named by card
(bloodmnist, breastmnist, retinamnist here). ``--datasets`` also takes paths to MedMNIST-format .npz files
(named by their stem). Run directories go under runs/bench-datasets/ (git-ignored).

Layout of bench/results/datasets.json, one entry per dataset name::

    {"bloodmnist": {
        "dataset": "bloodmnist", "card": "bloodmnist", "task": "multi-class",     # what was run
        # the full recipe, at the top level of the dataset:
        "test_acc_mean", "test_acc_sd", "test_auc_mean", "test_auc_sd", "n_seeds",
        "train_seconds_mean", "train_seconds_sd", "wall_seconds_mean", "val_acc_mean",
        "test_mae_mean", "test_mae_sd", "test_qwk_mean", "test_qwk_sd",          # ordinal tasks only
        "augment", "tta", "epochs", "steps_per_epoch",   # effective values, params/train.json (a list if seeds differ)
        "resnet18_28": {...},           # comparison with MedMNIST v2 ResNet-18 (28), see below
        "recipe": "full", "overrides": {}, "quick": false, "time_utc", "cores", "note",
        "seeds": [{"seed", "test_acc", "test_auc", "val_acc", "train_seconds", "wall_seconds",
                   "epochs_run", "best_epoch", "epochs", "steps_per_epoch", "patience", "augment", "tta",
                   "test_mae", "test_qwk",                       # ordinal tasks only
                   "train_images_per_second", "loadavg_1min": [before, after], "git": {"sha", "dirty"},
                   "run_dir"}, ...],
        # every other recipe under its name, with the same keys:
        "demo": {"test_acc_mean", ..., "seeds": [...]}}}

``resnet18_28`` is ``{"acc": .., "auc": .., "source": "data card" | "project page, unverified",
"acc_at_or_above": bool, "auc_at_or_above": bool}`` (our mean compared with the published number), or
``{"source": "not on the card"}``. The "project page, unverified" numbers (``UNVERIFIED``) are shown only
where the card has no ResNet-18 (28) entry; they are not on the card because they could not be checked.

Without ``--add`` the file is rewritten with this invocation's results only (written after every seed,
so an interrupted run keeps what finished); with ``--add`` they are merged into it: other
datasets and recipes are kept, and a seed run again replaces its own row. ``--quick`` (the test) trains
on a tiny subset (``-p max_per_split 20 -p epochs 1``) and writes to a temporary path, never to
bench/results/. Numbers are measured, never copied; bench/results/datasets.md is rendered from the json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import accuracy
from workbench import cards as _cards
from workbench import data as _data
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
RESULTS = RESULTS_DIR / "datasets.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "workbench-bench-datasets-quick" / "datasets.json"
QUICK_DATASETS = ("tests/fixtures/breastmnist_tiny.npz", "tests/fixtures/retinamnist_tiny.npz")
QUICK_OVERRIDES = {"max_per_split": "20", "epochs": "1"}
RECIPE_NAMES = ("full", "demo")
ROW_PARAMS = ("epochs", "steps_per_epoch", "patience", "augment", "tta")   # effective values, params/train.json
TOP_RECIPE = "full"            # its entry lies at the top level of the dataset's entry
META = ("dataset", "card", "task")
REFERENCE = "ResNet-18 (28)"   # the MedMNIST v2 baseline the goal is stated against
# Numbers from the MedMNIST authors' project page (v2.html) for cards that do not carry them, because no
# second source could confirm them (see the card's Summary). Shown as such, never as card values.
UNVERIFIED = {"retinamnist": {REFERENCE: {"acc": 0.524, "auc": 0.717}}}


def embedded_datasets() -> list[str]:
    """Card names whose 28 px file is present in the data directory (the embedded MedMNIST files), the
    smallest training set first (the quick results come in first)."""
    data_dir = _data.default_data_dir()
    found = [c for c in _cards.all_cards(_data.default_cards_dir())
             if 28 in c.files and (data_dir / c.files[28]["file"]).is_file()]
    return [c.name for c in sorted(found, key=lambda c: (c.splits.get("train", 0), c.name))]


def dataset_name(spec: str) -> str:
    return Path(spec).stem if spec.endswith(".npz") else spec


def card_of(entry: dict) -> _cards.Card | None:
    """The data card a dataset was run with: a card in data_cards/, else the card beside the .npz."""
    name, spec = entry.get("card"), entry.get("dataset", "")
    cards_dir = _data.default_cards_dir()
    if name and name in _cards.card_names(cards_dir):
        return _cards.load_card(name, cards_dir)
    sibling = (ROOT / spec).with_suffix(".md") if spec.endswith(".npz") else None
    return _cards.read_card(sibling) if sibling is not None and sibling.is_file() else None


def one_seed(recipe: str, seed: int, spec: str, overrides: dict, env: dict, log) -> tuple[dict, dict]:
    """bench.accuracy.one_seed (train + evaluate through the CLI, machine load), plus what this benchmark
    needs from the run: the effective augmentation and TTA, ordinal MAE/QWK, the card and task."""
    name = f"ds-{dataset_name(spec)}-{recipe}-s{seed}"
    row = from_run(accuracy.one_seed(recipe, seed, spec, overrides, env, log, name=name))
    prov = json.loads((_run_dir(row) / "provenance.json").read_text())["train"]
    return row, {"card": prov["data"].get("card"), "task": prov["data"].get("task")}


def _run_dir(row: dict) -> Path:
    return Path(row["run_dir"]) if Path(row["run_dir"]).is_absolute() else ROOT / row["run_dir"]


def from_run(row: dict) -> dict:
    """The row with what its run directory says: the effective recipe values (``ROW_PARAMS``, those the
    parameters hold), ordinal MAE/QWK and the git commit. Also fills rows measured before a field was added."""
    run_dir = _run_dir(row)
    params = json.loads((run_dir / "params" / "train.json").read_text())
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    prov = json.loads((run_dir / "provenance.json").read_text())["train"]
    row = {**row, **{k: params[k] for k in ROW_PARAMS if k in params}}
    for k in ("mae", "qwk"):
        if k in test:
            row[f"test_{k}"] = test[k]
    row["git"] = prov.get("git")
    return row


def _same_or_list(rows: list[dict], key: str):
    values = [r.get(key) for r in rows]
    return values[0] if all(v == values[0] for v in values) else values


def reference(card: _cards.Card | None, summary: dict) -> dict:
    """Our means against MedMNIST v2 ResNet-18 (28): from the card, else the unverified project page."""
    pub, source = (card.published_baselines.get(REFERENCE) if card else None), "data card"
    if pub is None and card is not None and REFERENCE in UNVERIFIED.get(card.name, {}):
        pub, source = UNVERIFIED[card.name][REFERENCE], "project page, unverified"
    if pub is None:
        return {"source": "not on the card"}
    out = {"acc": pub["acc"], "auc": pub["auc"], "source": source}
    for k in ("acc", "auc"):
        if summary.get(f"test_{k}_mean") is not None:
            out[f"{k}_at_or_above"] = bool(summary[f"test_{k}_mean"] >= pub[k])
    return out


def summarise(rows: list[dict]) -> dict:
    """Mean ± sd over seeds (bench.accuracy's statistics) and the effective recipe values."""
    out = {"n_seeds": len(rows)}
    keys = ["test_acc", "test_auc", "train_seconds", "wall_seconds", "val_acc"]
    keys += [k for k in ("test_mae", "test_qwk") if all(k in r for r in rows)]
    for key in keys:
        mean, sd = accuracy._stats([r[key] for r in rows])
        out[f"{key}_mean"], out[f"{key}_sd"] = round(mean, 5), round(sd, 5)
    for key in ("augment", "tta", "epochs", "steps_per_epoch"):
        if any(key in r for r in rows):
            out[key] = _same_or_list(rows, key)
    return out


def recipe_entry(ds_entry: dict, recipe: str) -> dict:
    """One recipe's entry of a dataset's entry (the top-level keys for the full recipe)."""
    if recipe != TOP_RECIPE:
        return dict(ds_entry.get(recipe, {}))
    return {k: v for k, v in ds_entry.items() if k not in META and k not in RECIPE_NAMES}


def put_recipe(ds_entry: dict, recipe: str, entry: dict) -> dict:
    if recipe != TOP_RECIPE:
        return {**ds_entry, recipe: entry}
    return {**{k: v for k, v in ds_entry.items() if k in META or k in RECIPE_NAMES}, **entry}


def merge(doc: dict, name: str, meta: dict, recipe: str, rows: list[dict], extra: dict, add: bool) -> dict:
    """``doc`` with this recipe's rows for dataset ``name``; with ``add`` the earlier rows of other seeds stay."""
    ds_entry = {**doc.get(name, {}), **meta}
    if add:
        seeds = {r["seed"] for r in rows}
        rows = sorted([r for r in recipe_entry(ds_entry, recipe).get("seeds", []) if r["seed"] not in seeds] + rows,
                      key=lambda r: r["seed"])
    summary = summarise(rows)
    entry = {**summary, "resnet18_28": reference(card_of(ds_entry), summary), "recipe": recipe, **extra,
             "seeds": rows}
    return {**doc, name: put_recipe(ds_entry, recipe, entry)}


# ---- the report ---------------------------------------------------------------------------------------

def _pm(entry: dict, key: str, digits: int = 4) -> str:
    mean = entry.get(f"{key}_mean")
    return "—" if mean is None else f"{mean:.{digits}f} ± {entry[f'{key}_sd']:.{digits}f}"


def _verdict(ref: dict, key: str) -> str:
    if f"{key}_at_or_above" not in ref:
        return "not on the card"
    word = "at or above" if ref[f"{key}_at_or_above"] else "below"
    return word + (" (vs project page, unverified)" if ref["source"] != "data card" else "")


def render_md(doc: dict) -> str:
    lines = ["# Every embedded dataset: full and demo recipes, untuned", "",
             "`make bench-datasets` (bench/datasets.py). Each recipe exactly as the defaults give it: the runs got no "
             "parameter but recipe, seed and dataset (augmentation and test-time augmentation from the data card's "
             "orientation, more epochs for small training sets); nothing was chosen on test. Mean ± sd over seeds of "
             "the test-split ACC and AUC by the MedMNIST protocol, each seed through `workbench run train` and "
             "`workbench run evaluate`. Published baselines are those of each data card "
             "(`workbench.cards.load_card(name).published_baselines`); training seconds were measured on a shared "
             "machine (its load average is in datasets.json per run).", ""]
    quick = any(recipe_entry(e, r).get("quick") for e in doc.values() for r in RECIPE_NAMES)
    if quick:
        lines += ["> **Quick mode**: tiny fixtures, 1 epoch (`--quick`); these numbers test the benchmark, "
                  "they measure nothing.", ""]
    lines += [f"## Goal: at or above MedMNIST v2 {REFERENCE} on every dataset", "",
              f"| dataset | recipe | seeds | test ACC | {REFERENCE} ACC | ACC | test AUC | {REFERENCE} AUC | AUC |",
              "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for name, e in doc.items():
        for recipe in RECIPE_NAMES:
            r = recipe_entry(e, recipe)
            if not r.get("n_seeds"):
                continue
            ref = r.get("resnet18_28", {})
            src = "" if ref.get("source") == "data card" else " (project page, unverified)"
            pub = {k: (f"{ref[k]:.3f}{src}" if k in ref else "not on the card") for k in ("acc", "auc")}
            lines.append(f"| {name} | {recipe} | {r['n_seeds']} | {_pm(r, 'test_acc')} | {pub['acc']} | "
                         f"{_verdict(ref, 'acc')} | {_pm(r, 'test_auc')} | {pub['auc']} | {_verdict(ref, 'auc')} |")
    for name, e in doc.items():
        card = card_of(e)
        ordinal = e.get("task") == "ordinal-regression"
        title = card.pretty_name if card else name
        lines += ["", f"## {title} — `{name}`, {e.get('task')} task", ""]
        head = "| | seeds | test ACC | test AUC |" + (" test MAE | test QWK |" if ordinal else "") + " source |"
        lines += [head, "| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if ordinal else "") + " --- |"]
        for recipe in RECIPE_NAMES:
            r = recipe_entry(e, recipe)
            if r.get("n_seeds"):
                lines.append(f"| ours: {recipe} | {r['n_seeds']} | {_pm(r, 'test_acc')} | {_pm(r, 'test_auc')} |"
                             + (f" {_pm(r, 'test_mae', 3)} | {_pm(r, 'test_qwk', 3)} |" if ordinal else "")
                             + " measured |")
        published = dict(card.published_baselines) if card else {}
        dash = " — | — |" if ordinal else ""
        for method, v in published.items():
            lines.append(f"| {method} | | {v['acc']:.3f} | {v['auc']:.3f} |{dash} data card |")
        if REFERENCE not in published:
            lines.append(f"| {REFERENCE} | | not on the card | not on the card |{dash} |")
            extra = UNVERIFIED.get(card.name if card else "", {}).get(REFERENCE)
            if extra:
                lines.append(f"| {REFERENCE} | | {extra['acc']:.3f} | {extra['auc']:.3f} |{dash} project page, "
                             "unverified (not on the card) |")
        lines += ["", "| recipe | seed | test ACC | test AUC |" + (" MAE | QWK |" if ordinal else "")
                  + " val ACC | epochs run / set | steps per epoch | augment | TTA | training s | load avg 1 min |",
                  "| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if ordinal else "")
                  + " ---: | ---: | ---: | --- | --- | ---: | --- |"]
        for recipe in RECIPE_NAMES:
            for s in recipe_entry(e, recipe).get("seeds", []):
                lines.append(f"| {recipe} | {s['seed']} | {s['test_acc']:.4f} | {s['test_auc']:.4f} |"
                             + (f" {s.get('test_mae', float('nan')):.3f} | {s.get('test_qwk', float('nan')):.3f} |"
                                if ordinal else "")
                             + f" {s['val_acc']:.4f} | {s['epochs_run']} / {s.get('epochs', '—')} | {s.get('steps_per_epoch', '—')} |"
                             f" {s['augment']} | {s['tta']} |"
                             f" {s['train_seconds']:.0f} | {s['loadavg_1min'][0]:.1f} → {s['loadavg_1min'][1]:.1f} |")
    return "\n".join(lines) + "\n"


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="make bench-datasets: the full and demo recipes, untuned, on every "
                                 "embedded MedMNIST file, over seeds (layout of the results: module docstring)")
    ap.add_argument("--datasets", default="", help="comma-separated card names or .npz paths (default: every "
                    "embedded file; with --quick: the tiny BreastMNIST and RetinaMNIST fixtures)")
    ap.add_argument("--recipes", default=",".join(RECIPE_NAMES), help="comma-separated recipes (default full,demo)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default 0,1,2; with --quick: 0)")
    ap.add_argument("--add", action="store_true", help="merge into the existing results: keep other datasets, "
                    "recipes and seeds (a seed run again replaces its row)")
    ap.add_argument("--quick", action="store_true", help="test mode: tiny subset (-p max_per_split 20 -p epochs 1), "
                    f"results to a temporary path (default {QUICK_RESULTS})")
    ap.add_argument("--out", default="", help=f"results file (default {RESULTS.relative_to(ROOT)}); the .md goes beside it")
    ap.add_argument("--note", default="", help="free text stored with each entry (e.g. machine contention)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the .md from the existing .json (after "
                    "filling per-seed fields missing from a row from its run directory, where it still exists)")
    args = ap.parse_args(argv)
    out = Path(args.out or (QUICK_RESULTS if args.quick else RESULTS)).resolve()
    if args.quick and out.is_relative_to(RESULTS_DIR.resolve()):
        print(f"error: --quick never writes to {RESULTS_DIR.relative_to(ROOT)}/: give --out a temporary path",
              file=sys.stderr)
        return 2
    if args.report_only:
        if not out.is_file():
            print(f"error: {out} does not exist: run the benchmark first", file=sys.stderr)
            return 2
        doc = json.loads(out.read_text())
        for name, e in doc.items():
            for recipe in RECIPE_NAMES:
                r = recipe_entry(e, recipe)
                rows = r.get("seeds", [])
                if rows and any(k not in row for row in rows for k in ROW_PARAMS) \
                        and all((_run_dir(row) / "metrics.json").is_file() for row in rows):
                    rows = [from_run(row) for row in rows]
                    e = put_recipe(e, recipe, {**r, **{k: v for k, v in summarise(rows).items()
                                                       if k in ROW_PARAMS}, "seeds": rows})
            doc[name] = e
        write(doc, out)
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return 0
    try:
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    except ValueError:
        print("error: --seeds takes integers like 0,1,2", file=sys.stderr)
        return 2
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPE_NAMES]
    if unknown or not recipes or not seeds:
        print(f"error: --recipes takes {', '.join(RECIPE_NAMES)} (got {args.recipes!r}) and --seeds at least one seed",
              file=sys.stderr)
        return 2
    specs = [d.strip() for d in args.datasets.split(",") if d.strip()] or (
        list(QUICK_DATASETS) if args.quick else embedded_datasets())
    overrides = dict(QUICK_OVERRIDES) if args.quick else {}
    runs_dir = out.parent / "runs" if args.quick else ROOT / "runs" / "bench-datasets"
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(runs_dir)}
    doc = json.loads(out.read_text()) if args.add and out.is_file() else {}
    t_start = time.perf_counter()
    failed = []
    for spec in specs:
        name = dataset_name(spec)
        for recipe in recipes:
            def log(msg, _label=f"{name} {recipe}"):
                print(f"[{time.perf_counter() - t_start:6.0f}s] {_label}: {msg}", flush=True)

            rows, before = [], doc
            for seed in seeds:
                try:
                    row, meta = one_seed(recipe, seed, spec, overrides, env, log)
                except (SystemExit, WorkbenchError, OSError, KeyError) as e:  # the CLI's one-line error
                    log(f"seed {seed} FAILED: {e}")
                    failed.append(f"{name} {recipe} seed {seed}")
                    continue
                rows.append(row)
                # written after every seed: a benchmark of hours that is interrupted keeps what finished
                extra = {"overrides": overrides, "quick": args.quick, "cores": os.cpu_count(), "note": args.note,
                         "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                doc = merge(before, name, {"dataset": spec, **meta}, recipe, rows, extra, add=args.add)
                write(doc, out)
    print(render_md(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if failed:
        print(f"error: failed: {'; '.join(failed)}; retry them with --add", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-robustness`: accuracy under the data card's acquisition corruptions (workbench.corrupt), for
each recipe with and without the photometric augmentation of acquisition changes (``-p photometric card``)
and with each label-free test-time adaptation (workbench.adapt), over seeds.

For every (dataset, recipe, photometric, seed) a run is trained through the product (``workbench run
train``, untuned: only recipe, seed, dataset and photometric are passed) and then, in this process:

- clean accuracy on the whole val and test splits (MedMNIST ACC: the arg-max class);
- a fixed, seeded, class-stratified subset of ``--n-eval`` images per split (all of a smaller split) is
  corrupted by every (corruption, severity) of the card's suite (``corrupt.suite(card)``, at native
  resolution; corruption seed 0 for val, 1 for test), and predicted as it is and after each adaptation
  (``adapt.METHODS``: none, bn, color, color+bn), each adaptation estimated on that corrupted subset alone
  (one acquisition condition per pool, no labels);
- the choice is made on val: the adaptation with the highest mean corrupted val accuracy whose clean val
  accuracy is within 0.5 points of no adaptation. Test is then predicted once, for no adaptation and the
  chosen one; test numbers are never used to choose anything. Once every seed of a (dataset, recipe,
  variant) is in, the same rule is also applied to the val means over seeds (``choose_over_seeds``: three
  times the val images, so the 0.5-point clean tolerance is less noisy) and test is predicted once more for
  that choice where it differs; both are reported.

Batch-norm adaptation moves each layer by the pool's difference from clean training images (``bn_version``
2, ``adapt.bn_reference``); rows first measured with the absolute version (1) are re-evaluated on the next
invocation that covers them (``upgrade_row``: val under bn and color+bn, the choice, test for the new choice;
the old summaries stay in the row under ``superseded_bn_absolute``).

Summaries per row: clean accuracy (whole split), mean corrupted accuracy (over every corruption and
severity), the worst corruption (lowest mean over its 3 severities) and the worst single condition, and the
means over the corruptions the card's ``acquisition.changes`` cover (the augmentation trained on that kind
of change) and those it does not (bubbles, defocus, downsampling...: generalisation).

    python -m bench.robustness                               # the 3 embedded files, demo + full, none + card, seeds 0-2
    python -m bench.robustness --datasets breastmnist,retinamnist --recipes demo
    python -m bench.robustness --report-only                 # rewrite robustness.md from robustness.json
    python -m bench.robustness --quick --out /tmp/r.json     # minutes: tiny fixture, 1 epoch (tests)

Resumable: rows are appended to bench/results/robustness.json as each finishes, and a (dataset, recipe,
photometric, seed) already there is skipped; a trained run directory under runs/bench-robustness/ with the
same name is reused. Numbers are measured, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import runtime  # noqa: E402

runtime.configure_backend("fast")   # before JAX starts: the product's CPU path

from workbench import adapt, corrupt  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "robustness.json"
RUNS = ROOT / "runs" / "bench-robustness"
QUICK_DATASET = "tests/fixtures/bloodmnist_tiny.npz"
QUICK_OVERRIDES = {"epochs": "1", "width": "8", "batch_size": "64"}
DATASETS, RECIPES, SEEDS = ("bloodmnist", "breastmnist", "retinamnist"), ("demo", "full"), (0, 1, 2)
# training variants: photometric none (today's recipes), card (every image gets the card's acquisition changes,
# each change with its own probability), card-p0.5 (half the images get them: -p photometric_p 0.5)
VARIANTS = ("none", "card", "card-p0.5")
DEFAULT_VARIANTS = ("none", "card")


def variant_params(variant: str) -> dict:
    """The train parameters of a variant label: none, card, card-p<share>."""
    if variant == "none":
        return {"photometric": "none"}
    if variant == "card":
        return {"photometric": "card", "photometric_p": "1.0"}
    if variant.startswith("card-p"):
        return {"photometric": "card", "photometric_p": variant[len("card-p"):]}
    raise SystemExit(f"error: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
CORRUPTION_SEED = {"val": 0, "test": 1}
CLEAN_TOLERANCE = 0.005     # an adaptation may cost at most 0.5 points of clean val accuracy to be chosen
GOALS = {"bloodmnist": {"mean_corrupted": 0.90, "worst": 0.80}}
KEY = ("dataset", "recipe", "photometric", "seed")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dataset_name(spec: str) -> str:
    return Path(spec).stem if spec.endswith(".npz") else spec


def subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded class-stratified subset of at most ``n`` positions (sorted; all of a smaller split)."""
    y = np.asarray(labels).reshape(len(labels), -1)[:, 0] if np.asarray(labels).ndim > 1 else np.asarray(labels)
    if len(y) <= n:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split
    idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(idx)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == np.asarray(labels).reshape(-1)).mean())


# ---------------------------------------------------------------------- one trained run under the suite
class Evaluator:
    """One trained run's model, evaluated under corruptions with each adaptation."""

    def __init__(self, run_dir: Path, batch_size: int = 500):
        from workbench import models, runload
        self.trained = runload.load(run_dir)
        self.ds = self.trained.dataset()
        self.model = self.trained.model
        self.bn_model = models.load(self.trained.path / "model.keras")   # adapted in place, restored after
        self.bn_saved = adapt.bn_state(self.bn_model)
        self.batch = batch_size
        train = self.ds.images["train"]
        ref = train[adapt.sample_positions(len(train), adapt.REFERENCE_IMAGES, 0)]
        self.reference = adapt.color_stats(ref)
        self.bn_reference = adapt.bn_reference(self.bn_model, ref, self.batch)

    def predict(self, images: np.ndarray, method: str) -> np.ndarray:
        from workbench.predict import predict
        if method == "none":
            return predict(self.model, images, self.batch, progress=False)
        x = images
        if "color" in method:
            x = adapt.color_map(images, adapt.color_stats(images), self.reference)
        if "bn" not in method:
            return predict(self.model, x, self.batch, progress=False)
        adapt.bn_adapt(self.bn_model, x, self.batch, reference=self.bn_reference)
        try:
            return predict(self.bn_model, x, self.batch, progress=False)
        finally:
            adapt.bn_restore(self.bn_model, self.bn_saved)

    def split(self, split: str, conditions, methods, n_eval: int) -> dict:
        x_all, y_all = self.ds.images[split], self.ds.labels[split]
        from workbench.predict import predict
        out = {"clean_acc": accuracy(predict(self.model, x_all, self.batch, progress=False), y_all),
               "n": int(len(y_all))}
        idx = subset(y_all, n_eval, 0)
        x, y = x_all[idx], y_all[idx]
        out["n_eval"] = int(len(idx))
        acc = {m: {} for m in methods}
        for name, sev in conditions:
            xc = x if name == "clean" else corrupt.apply(x, name, sev, CORRUPTION_SEED[split])
            for m in methods:
                acc[m][f"{name}/{sev}"] = accuracy(self.predict(xc, m), y)
        out["acc"] = acc
        return out


def summarise(acc: dict, covered: set[str]) -> dict:
    """Mean corrupted accuracy, worst corruption (mean over severities) and worst condition of one
    method's {"name/severity": acc}."""
    corr = {k: v for k, v in acc.items() if not k.startswith("clean/")}
    by_name: dict[str, list] = {}
    for k, v in corr.items():
        by_name.setdefault(k.split("/")[0], []).append(v)
    means = {n: float(np.mean(v)) for n, v in by_name.items()}
    worst = min(means, key=means.get)
    worst_cond = min(corr, key=corr.get)
    cov = [v for k, v in corr.items() if corrupt.KIND[k.split("/")[0]] in covered]
    unc = [v for k, v in corr.items() if corrupt.KIND[k.split("/")[0]] not in covered]
    return {"clean_subset": acc.get("clean/0"), "mean_corrupted": float(np.mean(list(corr.values()))),
            "worst": {"corruption": worst, "acc": means[worst]},
            "worst_condition": {"condition": worst_cond, "acc": corr[worst_cond]},
            "per_corruption": means,
            "covered_mean": float(np.mean(cov)) if cov else None,
            "uncovered_mean": float(np.mean(unc)) if unc else None}


def choose(val: dict, methods) -> str:
    """The val-chosen adaptation: best mean corrupted val accuracy among those within CLEAN_TOLERANCE of
    no adaptation's clean val accuracy (ties: the simpler, earlier in adapt.METHODS)."""
    base = val["summary"]["none"]["clean_subset"]
    ok = [m for m in methods if val["summary"][m]["clean_subset"] >= base - CLEAN_TOLERANCE]
    return max(ok, key=lambda m: (round(val["summary"][m]["mean_corrupted"], 6), -list(methods).index(m)))


def evaluate_run(run_dir: Path, n_eval: int, methods=adapt.METHODS) -> dict:
    ev = Evaluator(run_dir)
    card = ev.ds.card
    suite = corrupt.suite(card) if card is not None else corrupt.suite("stained microscopy")
    fam = corrupt.family(card)[0] if card is not None else "stained microscopy"
    changes = set((card.acquisition or {}).get("changes", {})) if card is not None else set()
    conditions = [("clean", 0), *suite]
    t0 = time.perf_counter()
    val = ev.split("val", conditions, methods, n_eval)
    val["summary"] = {m: summarise(val["acc"][m], changes) for m in methods}
    chosen = choose(val, methods)
    test_methods = ["none"] + ([chosen] if chosen != "none" else [])
    test = ev.split("test", conditions, test_methods, n_eval)
    test["summary"] = {m: summarise(test["acc"][m], changes) for m in test_methods}
    return {"family": fam, "suite": [f"{n}/{s}" for n, s in suite], "covered_kinds": sorted(changes),
            "chosen_adaptation": chosen, "val": val, "test": test, "eval_seconds": round(time.perf_counter() - t0, 1),
            "bn_version": BN_VERSION}


BN_VERSION = 2   # 2: batch-norm adaptation relative to clean training images (adapt.bn_reference); 1: absolute
BN_METHODS = ("bn", "color+bn")


def upgrade_row(row: dict, out: Path, doc: dict) -> None:
    """A row measured with the absolute batch-norm adaptation (bn_version 1): recompute what depends on it
    (val under bn and color+bn, the val choice, test under the new choice), keeping the old summaries under
    ``superseded_bn_absolute``."""
    run_dir = Path(row["run_dir"]) if Path(row["run_dir"]).is_absolute() else ROOT / row["run_dir"]
    log(f"{tuple(row[k] for k in KEY)}: re-evaluating the batch-norm adaptations (relative to training images)")
    ev = Evaluator(run_dir)
    conditions = [("clean", 0), *[(c.split("/")[0], int(c.split("/")[1])) for c in row["suite"]]]
    covered = set(row["covered_kinds"])
    row["superseded_bn_absolute"] = {
        "chosen_adaptation": row["chosen_adaptation"],
        "val": {m: row["val"]["summary"][m] for m in BN_METHODS if m in row["val"]["summary"]},
        "test": {m: row["test"]["summary"][m] for m in BN_METHODS if m in row["test"]["summary"]}}
    val = ev.split("val", conditions, list(BN_METHODS), row["val"]["n_eval"])
    for m in BN_METHODS:
        row["val"]["acc"][m] = val["acc"][m]
        row["val"]["summary"][m] = summarise(val["acc"][m], covered)
    for m in BN_METHODS:
        row["test"]["acc"].pop(m, None)
        row["test"]["summary"].pop(m, None)
    row["chosen_adaptation"] = choose(row["val"], adapt.METHODS)
    row.pop("group_adaptation", None)
    m = row["chosen_adaptation"]
    if m not in row["test"]["summary"]:
        extra = ev.split("test", conditions, [m], row["test"]["n_eval"])
        row["test"]["acc"][m] = extra["acc"][m]
        row["test"]["summary"][m] = summarise(extra["acc"][m], covered)
    row["bn_version"] = BN_VERSION
    write(doc, out)


def choose_over_seeds(rows: list[dict], methods=adapt.METHODS) -> str:
    """The adaptation chosen on val over all seeds of a (dataset, recipe, variant): ``choose`` on the means over
    seeds (3 × the val images of one seed: a 0.5-point clean tolerance on one seed's 500 images is 2.5 images)."""
    methods = [m for m in methods if all(m in r["val"]["summary"] for r in rows)]
    mean = {m: {k: float(np.mean([r["val"]["summary"][m][k] for r in rows])) for k in ("clean_subset", "mean_corrupted")}
            for m in methods}
    return choose({"summary": mean}, methods)


def complete_group_choices(doc: dict, out: Path, n_seeds: int = len(SEEDS)) -> None:
    """For every group with ``n_seeds`` seeds: the over-seeds val choice, and its test accuracy (computed once,
    where the per-seed choice did not already compute it)."""
    for key, rows in groups(doc).items():
        if len(rows) < n_seeds or any(r.get("bn_version", 1) != BN_VERSION for r in rows):
            continue
        m = choose_over_seeds(rows)
        for r in rows:
            r["group_adaptation"] = m
            if m in r["test"]["summary"]:
                continue
            run_dir = Path(r["run_dir"]) if Path(r["run_dir"]).is_absolute() else ROOT / r["run_dir"]
            log(f"{key} seed {r['seed']}: test under the over-seeds choice {m}")
            ev = Evaluator(run_dir)
            conditions = [("clean", 0), *[(c.split("/")[0], int(c.split("/")[1])) for c in r["suite"]]]
            extra = ev.split("test", conditions, [m], r["test"]["n_eval"])
            r["test"]["acc"][m] = extra["acc"][m]
            r["test"]["summary"][m] = summarise(extra["acc"][m], set(r["covered_kinds"]))
            write(doc, out)


# ---------------------------------------------------------------------- training
def find_run(name: str) -> Path | None:
    if not RUNS.is_dir():
        return None
    for d in sorted(RUNS.glob(f"*_{name}")):
        if (d / "train_summary.json").is_file() and (d / "model.keras").is_file():
            return d
    return None


def train(dataset: str, recipe: str, photometric: str, seed: int, overrides: dict, runs: Path, reuse: bool) -> Path:
    from bench.accuracy import _cli
    name = f"rb-{dataset_name(dataset)}-{recipe}-{photometric}-s{seed}"
    if reuse:
        found = find_run(name)
        if found is not None:
            log(f"reusing {found}")
            return found
    p = ["-p", "recipe", recipe, "-p", "seed", str(seed), "-p", "dataset", dataset]
    for k, v in variant_params(photometric).items():
        p += ["-p", k, v]
    for k, v in overrides.items():
        p += ["-p", k, v]
    env = {**os.environ, "WORKBENCH_RUNS_DIR": str(runs)}
    return Path(_cli("run", "train", "-q", "--name", name, *p, env=env))


def one_row(dataset, recipe, photometric, seed, args, runs, reuse) -> dict:
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    run_dir = train(dataset, recipe, photometric, seed, QUICK_OVERRIDES if args.quick else {}, runs, reuse)
    ts = json.loads((run_dir / "train_summary.json").read_text())
    tp = json.loads((run_dir / "params" / "train.json").read_text())
    log(f"trained {run_dir.name} ({ts['train_seconds']:.0f} s); evaluating under the corruption suite")
    res = evaluate_run(run_dir, args.n_eval)
    row = {"dataset": dataset_name(dataset), "recipe": recipe, "photometric": photometric, "seed": seed,
           "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
           "train_seconds": ts["train_seconds"], "epochs_run": ts["epochs_run"], "augment": tp["augment"],
           "tta": tp["tta"], **res, "wall_seconds": round(time.perf_counter() - t0, 1),
           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
           "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    v, t = row["val"], row["test"]
    log(f"{row['dataset']} {recipe} photometric={photometric} seed {seed}: val clean {v['clean_acc']:.4f} "
        f"corrupted {v['summary']['none']['mean_corrupted']:.4f}; chosen adaptation {row['chosen_adaptation']}; "
        f"test clean {t['clean_acc']:.4f} corrupted {t['summary']['none']['mean_corrupted']:.4f} → "
        f"{t['summary'][row['chosen_adaptation']]['mean_corrupted']:.4f}")
    return row


# ---------------------------------------------------------------------- aggregation and report
def _ms(values) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values, d: int = 4) -> str:
    m, s = _ms(values)
    return "—" if m != m else f"{m:.{d}f} ± {s:.{d}f}"


def groups(doc: dict) -> dict:
    out: dict = {}
    for r in doc.get("rows", []):
        out.setdefault((r["dataset"], r["recipe"], r["photometric"]), []).append(r)
    return out


def aggregate(rows: list[dict]) -> dict:
    """Mean ± sd over seeds: test with no adaptation and with the val-chosen one; val for every method."""
    def test_of(r, which):
        m = "none" if which == "none" else r["chosen_adaptation"]
        return r["test"]["summary"][m]
    out = {"n_seeds": len(rows), "seeds": sorted(r["seed"] for r in rows),
           "chosen": sorted({r["chosen_adaptation"] for r in rows}),
           "test_clean": _ms([r["test"]["clean_acc"] for r in rows]),
           "val_clean": _ms([r["val"]["clean_acc"] for r in rows])}
    group = {r.get("group_adaptation") for r in rows}
    out["group"] = group.pop() if len(group) == 1 and None not in group else None
    for which in ("none", "chosen", "group"):
        if which == "group" and out["group"] is None:
            continue
        s = [r["test"]["summary"][out["group"]] if which == "group" else test_of(r, which) for r in rows]
        out[f"test_{which}"] = {"clean_subset": _ms([x["clean_subset"] for x in s]),
                                "mean_corrupted": _ms([x["mean_corrupted"] for x in s]),
                                "worst": _ms([x["worst"]["acc"] for x in s]),
                                "worst_names": sorted({x["worst"]["corruption"] for x in s}),
                                "covered": _ms([x["covered_mean"] for x in s]),
                                "uncovered": _ms([x["uncovered_mean"] for x in s])}
    methods = [m for m in adapt.METHODS if all(m in r["val"]["summary"] for r in rows)]
    out["val"] = {m: {"clean_subset": _ms([r["val"]["summary"][m]["clean_subset"] for r in rows]),
                      "mean_corrupted": _ms([r["val"]["summary"][m]["mean_corrupted"] for r in rows]),
                      "worst": _ms([r["val"]["summary"][m]["worst"]["acc"] for r in rows])} for m in methods}
    return out


def _skip(a: dict, which: str) -> bool:
    """Rows of the tables: no adaptation; the per-seed val choice (unless it is none everywhere); the
    over-seeds val choice (once every seed is in, unless it is none or the same as every per-seed choice)."""
    if which == "chosen":
        return a["chosen"] == ["none"]
    if which == "group":
        return a.get("group") in (None, "none") or a["chosen"] == [a["group"]]
    return False


def _label(a: dict, which: str) -> str:
    if which == "none":
        return "none"
    if which == "chosen":
        return "/".join(a["chosen"]) + " (per seed)"
    return f"{a['group']} (over seeds)"


def _f(pair, d=4):
    m, s = pair
    return "—" if m != m else f"{m:.{d}f} ± {s:.{d}f}"


def render_md(doc: dict) -> str:
    st = doc.get("settings", {})
    L = ["# Robustness to acquisition changes (`make bench-robustness`, bench/robustness.py)", "",
         "Each run trained through `workbench run train` with only recipe, seed, dataset and `photometric` set "
         "(`none`: today's recipe, geometric augmentation only; `card`: plus the data card's acquisition changes "
         "within its ranges; `card-p0.5`: those changes on half the training images, `-p photometric_p 0.5`). Accuracy (arg-max class) under the card's corruption suite (workbench.corrupt: "
         "every corruption × severities 1-3, at native resolution, seeded), on a fixed class-stratified subset "
         f"of at most {st.get('n_eval', '?')} images per split; clean accuracy on the whole split. Test-time "
         "adaptation (workbench.adapt) is estimated on each corrupted subset alone, without labels. The "
         "adaptation is chosen on corrupted val (best mean corrupted val accuracy, clean val within 0.5 points "
         "of none), per seed and, once every seed is in, on the means over seeds; test is predicted once for none and "
         "each chosen one. *Worst*: the corruption with the lowest "
         "accuracy averaged over its 3 severities. Mean ± sd over seeds.", ""]
    if doc.get("quick"):
        L += ["> **Quick mode** (tiny fixture, 1 epoch): these numbers test the benchmark, they measure nothing.", ""]
    gs = groups(doc)
    agg = {k: aggregate(v) for k, v in gs.items()}
    datasets = sorted({k[0] for k in gs}, key=lambda d: (d != "bloodmnist", d))
    for ds in datasets:
        keys = [k for k in gs if k[0] == ds]
        keys.sort(key=lambda k: (RECIPES.index(k[1]) if k[1] in RECIPES else 9, VARIANTS.index(k[2]) if k[2] in VARIANTS else 9))
        fam = gs[keys[0]][0].get("family", "")
        n_cond = len(gs[keys[0]][0].get("suite", []))
        L += [f"## {ds} ({fam}: {n_cond} corrupted conditions)", "",
              "| recipe | photometric | adaptation (val-chosen) | seeds | test clean (whole split, no adaptation) | "
              "test clean (subset, this adaptation) | test mean corrupted | test worst corruption | covered by the card "
              "| not covered |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for k in keys:
            a = agg[k]
            for which in ("none", "chosen", "group"):
                if _skip(a, which):
                    continue
                t = a[f"test_{which}"]
                label = _label(a, which)
                L.append(f"| {k[1]} | {k[2]} | {label} | {a['n_seeds']} | {_f(a['test_clean'])} | "
                         f"{_f(t['clean_subset'])} | {_f(t['mean_corrupted'])} | {_f(t['worst'])} ({', '.join(t['worst_names'])}) | "
                         f"{_f(t['covered'])} | {_f(t['uncovered'])} |")
        goal = GOALS.get(ds)
        if goal:
            L += ["", f"Goals: mean corrupted accuracy ≥ {goal['mean_corrupted']}, worst corruption ≥ {goal['worst']}, "
                  "clean test accuracy at most 0.5 points below today's recipe (photometric none, no adaptation)."]
            for k in keys:
                base = agg.get((k[0], k[1], "none"))
                a = agg[k]
                for which in ("none", "chosen", "group"):
                    if _skip(a, which) or (k[2] == "none" and which == "none"):
                        continue
                    t = a[f"test_{which}"]
                    mc, wo = t["mean_corrupted"][0], t["worst"][0]
                    # clean: the whole split without adaptation; with adaptation, the subset as it predicts it,
                    # against today's recipe on the same subset
                    if which == "none":
                        now, today = a["test_clean"][0], (base["test_clean"][0] if base else float("nan"))
                    else:
                        now, today = t["clean_subset"][0], (base["test_none"]["clean_subset"][0] if base else float("nan"))
                    d = now - today
                    L.append(f"- {k[1]}, photometric {k[2]}, adaptation {_label(a, which)}: "
                             f"mean corrupted {mc:.4f} ({'met' if mc >= goal['mean_corrupted'] else 'NOT met'}), worst "
                             f"{wo:.4f} ({'met' if wo >= goal['worst'] else 'NOT met'}), clean {now:.4f} vs {today:.4f} "
                             f"today{'' if which == 'none' else ' (same subset)'}: {100 * d:+.2f} points "
                             f"({'met' if d >= -0.005 else 'NOT met'}).")
        L += ["", "Val (choices are made here): clean accuracy of the subset / mean corrupted / worst, per adaptation:", "",
              "| recipe | photometric | " + " | ".join(adapt.METHODS) + " |", "| --- | --- |" + " --- |" * len(adapt.METHODS)]
        for k in keys:
            v = agg[k]["val"]
            cells = [f"{v[m]['clean_subset'][0]:.4f} / {v[m]['mean_corrupted'][0]:.4f} / {v[m]['worst'][0]:.4f}"
                     if m in v else "—" for m in adapt.METHODS]
            L.append(f"| {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
        # per corruption (test, no adaptation and chosen), mean over seeds
        names = list(dict.fromkeys(c.split("/")[0] for c in gs[keys[0]][0]["suite"]))
        L += ["", "Test accuracy per corruption (mean over its 3 severities and over seeds; * = a kind of change the "
              "card's ranges cover in training):", "",
              "| corruption | " + " | ".join(f"{k[1]}/{k[2]}" + ("" if w == "none" else f" + {_label(agg[k], w)}")
                                           for k in keys for w in ("none", "chosen", "group") if not _skip(agg[k], w))
              + " |"]
        ncol = sum(1 for k in keys for w in ("none", "chosen", "group") if not _skip(agg[k], w))
        L.append("| --- |" + " ---: |" * ncol)
        covered = set(gs[keys[0]][0].get("covered_kinds", []))
        for n in names:
            cells = []
            for k in keys:
                for w in ("none", "chosen", "group"):
                    if _skip(agg[k], w):
                        continue
                    pick = {"none": lambda r: "none", "chosen": lambda r: r["chosen_adaptation"],
                            "group": lambda r: agg[k]["group"]}[w]
                    vals = [r["test"]["summary"][pick(r)]["per_corruption"][n] for r in gs[k]]
                    cells.append(f"{np.mean(vals):.3f}")
            star = "*" if corrupt.KIND[n] in covered else ""
            L.append(f"| {n}{star} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["Per-seed rows (train seconds, chosen adaptation, load average) are in robustness.json. "
          f"Machine: {doc.get('machine', '?')}.", ""]
    return "\n".join(L)


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    from workbench.runs import strict_json
    out.write_text(json.dumps(strict_json(doc), indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(render_md(doc))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="training variants: none (today's recipe), "
                    "card (-p photometric card), card-p0.5 (and -p photometric_p 0.5)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--n-eval", type=int, default=500, help="images per split under the corruptions (subset)")
    ap.add_argument("--quick", action="store_true", help="tiny fixture, 1 epoch, width 8 (a test of the benchmark)")
    ap.add_argument("--out", default="")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out or RESULTS).resolve()
    if args.quick and out.is_relative_to((ROOT / "bench" / "results").resolve()):
        print("error: --quick never writes to bench/results/: give --out a temporary path", file=sys.stderr)
        return 2
    doc = json.loads(out.read_text()) if out.is_file() else {}
    if args.report_only:
        if not doc:
            print(f"error: {out} does not exist: run the benchmark first", file=sys.stderr)
            return 2
        write(doc, out)
        print(render_md(doc))
        return 0
    datasets = [QUICK_DATASET] if args.quick else [d.strip() for d in args.datasets.split(",") if d.strip()]
    recipes = ["demo"] if args.quick else [r.strip() for r in args.recipes.split(",") if r.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    if any(v not in VARIANTS and not v.startswith("card-p") for v in variants) or any(r not in RECIPES for r in recipes):
        print(f"error: --variants takes {', '.join(VARIANTS)} and --recipes {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    runs = out.parent / "runs" if args.quick else RUNS
    doc.setdefault("rows", [])
    doc.update({"settings": {"n_eval": args.n_eval, "corruption_seed": CORRUPTION_SEED, "clean_tolerance": CLEAN_TOLERANCE,
                             "adaptations": list(adapt.METHODS), "max_adapt_images": adapt.MAX_IMAGES,
                             "bn_prior": adapt.PRIOR},
                "quick": args.quick, "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                                                f"{platform.python_version()}"})
    failed = []
    for row in doc["rows"]:      # rows measured with an earlier batch-norm adaptation, in this invocation's scope
        if row.get("bn_version", 1) != BN_VERSION and row["dataset"] in {dataset_name(d) for d in datasets} \
                and row["recipe"] in recipes and row["photometric"] in variants and row["seed"] in seeds:
            upgrade_row(row, out, doc)
    for d in datasets:
        for r in recipes:
            for seed in seeds:
                for v in variants:
                    key = (dataset_name(d), r, v, seed)
                    if any(tuple(row[k] for k in KEY) == key for row in doc["rows"]):
                        log(f"{key}: already measured, skipped")
                        continue
                    try:
                        row = one_row(d, r, v, seed, args, runs, reuse=not args.quick)
                    except (SystemExit, WorkbenchError, OSError, KeyError) as e:
                        log(f"{key} FAILED: {e}")
                        failed.append(str(key))
                        continue
                    doc["rows"].append(row)
                    write(doc, out)      # after every row: an interrupted benchmark keeps what finished
    if not args.quick:
        complete_group_choices(doc, out)
    write(doc, out)
    print(render_md(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if failed:
        print(f"error: failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

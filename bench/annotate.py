"""Annotation benchmark on BloodMNIST (simulated oracle): `make bench-annotate` (add ARGS=--quick).

1. Full-label reference: the compact CNN trained on every train label → test ACC.
2. Auto-labelling: a seeded 10 % of train labelled, the rest a pool with labels hidden; per-class
   thresholds chosen on val (temperature-calibrated) for precision 0.99; precision and coverage
   achieved on the pool with bootstrap intervals. Then one round of self-training: the accepted
   pool labels are added as extra training labels (what ``10_train -p extra_labels`` does), the
   model is fine-tuned, thresholds chosen again on val and applied to the rest of the pool; the
   union is reported too.
3. Active learning: from a seeded k % labelled start, each round labels the top-B pool items by a
   strategy (oracle = the hidden true labels), warm-start retrains and records test ACC vs labels
   used; every strategy against random at equal budgets, over several seeds. For each strategy: the
   fraction of labels at which test ACC first reaches 95 % of the full-label ACC (measured budgets
   only, no interpolation).

Writes bench/results/annotate.json, annotate.md (the table, also printed) and annotate.png (curves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import workbench  # noqa: E402,F401  (JAX backend first)
from workbench import active, augment, calibration, data, metrics, models  # noqa: E402
from workbench.annotate import achieved, per_class_thresholds  # noqa: E402

FULL = {
    "fractions": (0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.20),
    "seeds": (0, 1, 2), "reference_epochs": 10, "auto_epochs": 30,
    "first_epochs": 60, "round_epochs": 3, "min_samples": 5000, "candidates": 2000,
    "n_passes": 8, "tta_passes": 4, "max_train": 0, "max_test": 0, "bootstrap": 1000,
}
QUICK = {
    "fractions": (0.04, 0.07, 0.10), "seeds": (0,), "reference_epochs": 15, "auto_epochs": 6,
    "first_epochs": 40, "round_epochs": 2, "min_samples": 2500, "candidates": 400,
    "n_passes": 4, "tta_passes": 2, "max_train": 2400, "max_test": 800, "bootstrap": 200,
}
STRATEGIES = ("random", *active.STRATEGIES)
AUTO_FRACTION = 0.10
HEADLINE_STRATEGY = "margin"  # fixed before measuring: the annotate stage's default strategy


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset(x, y, n, seed):
    if not n or n >= len(y):
        return x, y
    idx = data.stratified_indices(y, n, seed)
    return x[idx], y[idx]


def reference(ds, train, test, cfg, s):
    import keras
    keras.utils.set_random_seed(0)
    m = models.build("cnn", train[0].shape[1:], ds.num_classes, width=cfg.width, dropout=cfg.dropout)
    active.train_model(m, *train, s["reference_epochs"], cfg, 0, augment.build(cfg.augment, 0))
    return active.accuracy(m, *test)


def accept_on_pool(model, val, x_pool, y_pool, target=0.99, n_resamples=1000):
    """Temperature fitted on val, per-class thresholds on val for ``target``, applied to the pool."""
    pv = active._predict(model, val[0].astype("float32"), 512)
    t = calibration.fit_temperature(pv, val[1])["temperature"]
    pv = calibration.apply_temperature(pv, t)
    pp = calibration.apply_temperature(active._predict(model, x_pool.astype("float32"), 512), t)
    choice = per_class_thresholds(pv, val[1], target, "per-class", 20)
    ok = pp.max(1) >= np.asarray(choice["thresholds"])[pp.argmax(1)]
    res = achieved(y_pool, pp.argmax(1), ok, n_resamples, 0)
    return {k: res[k] for k in ("precision", "coverage", "precision_ci95", "coverage_ci95", "n_accepted", "n")} | {
        "temperature": t, "pool_acc": float((pp.argmax(1) == y_pool).mean())}


def auto_label_random_seed(ds, train, val, cfg, s, fraction=0.10):
    """A seeded random 10 % labelled, the other 90 % the pool: train, then auto-accept."""
    import keras
    x, y = train
    rng = np.random.default_rng(0)
    lab = np.sort(rng.choice(len(y), size=int(round(fraction * len(y))), replace=False))
    pool = np.setdiff1d(np.arange(len(y)), lab)
    keras.utils.set_random_seed(0)
    m = models.build("cnn", x.shape[1:], ds.num_classes, width=cfg.width, dropout=cfg.dropout)
    active.train_model(m, x[lab], y[lab], s["auto_epochs"], cfg, 0, augment.build(cfg.augment, 0))
    res = accept_on_pool(m, val, x[pool], y[pool], n_resamples=s["bootstrap"])
    log(f"auto-label, random 10 % labelled: precision {res['precision']:.4f} coverage {res['coverage']:.4f}")
    return {"labelled": "seeded random 10 % of train", "n_labelled": int(len(lab)), **res}


def run_active(ds, train, val, test, cfg, s):
    import keras
    x, y = train
    runs = {st: [] for st in STRATEGIES}
    for seed in s["seeds"]:
        rng = np.random.default_rng(1000 + seed)
        initial = rng.choice(len(y), size=int(round(s["fractions"][0] * len(y))), replace=False)
        keras.utils.set_random_seed(seed)
        base = models.build("cnn", x.shape[1:], ds.num_classes, width=cfg.width, dropout=cfg.dropout)
        c0 = replace(cfg, seed=seed)
        active.train_model(base, x[initial], y[initial], c0.first_epochs, c0, seed, augment.build(cfg.augment, seed))
        weights = base.get_weights()
        for st in STRATEGIES:
            m = models.build("cnn", x.shape[1:], ds.num_classes, width=cfg.width, dropout=cfg.dropout)
            m.set_weights(weights)  # every strategy starts from the same round-0 model

            def at_auto_budget(point, model, labelled):
                # auto-label the rest of the pool once 10 % of it is labelled
                if abs(point["fraction"] - AUTO_FRACTION) > 0.005:
                    return None
                rest = np.setdiff1d(np.arange(len(y)), labelled)
                return {"auto_label": accept_on_pool(model, val, x[rest], y[rest], n_resamples=s["bootstrap"])}

            t0 = time.perf_counter()
            res = active.simulate(x, y, *test, ds.num_classes, replace(c0, strategy=st), initial=initial,
                                  initial_model=m, on_round=at_auto_budget)
            res.pop("labelled")
            res["wall_seconds"] = round(time.perf_counter() - t0, 1)
            runs[st].append(res)
            last = res["curve"][-1]
            accs = " ".join(f"{p['test_acc']:.3f}" for p in res["curve"])
            log(f"seed {seed} {st:16s} ACC {accs} ({last['labels']} labels, {res['wall_seconds']} s)")
    return runs


def summarise_active(runs, full_acc, fractions):
    target = 0.95 * full_acc
    out = {}
    rand = np.array([[p["test_acc"] for p in r["curve"]] for r in runs["random"]])
    for st, rs in runs.items():
        accs = np.array([[p["test_acc"] for p in r["curve"]] for r in rs])
        mean = accs.mean(0)
        curve = [{"fraction": f, "test_acc": float(a)} for f, a in zip(fractions, mean)]
        per_seed = [active.fraction_to_reach([{"fraction": f, "test_acc": a} for f, a in zip(fractions, row)], target)
                    for row in accs]
        out[st] = {
            "fraction_to_95pct_full_acc": active.fraction_to_reach(curve, target),
            "fraction_to_95pct_per_seed": per_seed,
            "mean_test_acc": mean.tolist(), "sd_test_acc": accs.std(0).tolist(),
            "gain_over_random": (accs - rand).mean(0).tolist(),
            "mean_gain_over_random_after_round0": float((accs - rand)[:, 1:].mean()),
            "seeds_better_than_random_at_last_budget": int(((accs - rand)[:, -1] > 0).sum()),
            "wall_seconds": [r["wall_seconds"] for r in rs],
        }
    return out, target


def auto_label_summary(runs, auto_random):
    by = {}
    for st, rs in runs.items():
        pts = [p["auto_label"] for r in rs for p in r["curve"] if "auto_label" in p]
        if not pts:
            continue
        by[st] = {"precision": float(np.mean([p["precision"] for p in pts])),
                  "coverage": float(np.mean([p["coverage"] for p in pts])),
                  "precision_per_seed": [p["precision"] for p in pts], "coverage_per_seed": [p["coverage"] for p in pts],
                  "precision_ci95_per_seed": [p["precision_ci95"] for p in pts],
                  "coverage_ci95_per_seed": [p["coverage_ci95"] for p in pts]}
    head = by.get(HEADLINE_STRATEGY, {})
    return {"precision": head.get("precision"), "coverage": head.get("coverage"), "strategy": HEADLINE_STRATEGY,
            "labelled_fraction": AUTO_FRACTION, "target_precision": 0.99,
            "method": f"10 % of train labelled: a seeded random start then active-learning rounds by {HEADLINE_STRATEGY} "
                      "(simulated oracle); temperature and per-class thresholds chosen on val for precision 0.99; "
                      "applied to the other 90 % (labels hidden); mean over seeds",
            **{k: head.get(k) for k in ("precision_per_seed", "coverage_per_seed", "precision_ci95_per_seed",
                                        "coverage_ci95_per_seed")},
            "random_10pct": auto_random, "by_strategy": by}


def beats_random(st, summary):
    f, fr = summary[st]["fraction_to_95pct_full_acc"], summary["random"]["fraction_to_95pct_full_acc"]
    reach_earlier = f is not None and (fr is None or f < fr)
    return bool(reach_earlier or (f is not None and f == fr and summary[st]["mean_gain_over_random_after_round0"] > 0))


def markdown(result) -> str:
    a = result["auto_label"]
    lines = ["# Annotation benchmark (BloodMNIST, simulated oracle)", "",
             f"Mode: {result['mode']}; full-label test ACC {result['full_label_test_acc']:.4f} "
             f"(95 % of it: {result['target_acc']:.4f}); seeds {list(result['settings']['seeds'])}; "
             f"wall time {result['seconds']['total']:.0f} s.", "",
             "## Auto-labelling at 10 % labelled, target precision 0.99 (per-class thresholds on val, calibrated)", "",
             "| 10 % labelled by | precision | coverage | seeds |", "| --- | --- | --- | --- |",
             f"| seeded random sample (one model) | {a['random_10pct']['precision']:.4f} "
             f"({a['random_10pct']['precision_ci95'][0]:.4f}–{a['random_10pct']['precision_ci95'][1]:.4f}) | "
             f"{a['random_10pct']['coverage']:.4f} ({a['random_10pct']['coverage_ci95'][0]:.4f}–"
             f"{a['random_10pct']['coverage_ci95'][1]:.4f}) | 1 |",
             *[f"| {result['settings']['fractions'][0]:.0%} random + active learning ({st}) | {v['precision']:.4f} | "
               f"{v['coverage']:.4f} | "
               f"{len(v['precision_per_seed'])} |" for st, v in a["by_strategy"].items()], "",
             f"Headline (`auto_label.precision/coverage`): {a['strategy']}, mean over seeds; 95 % bootstrap "
             "intervals per seed in the JSON.", "",
             "## Active learning: test ACC (mean over seeds) vs labelled fraction", ""]
    fr = result["settings"]["fractions"]
    lines.append("| strategy | " + " | ".join(f"{f:.0%}" for f in fr) + " | labels to 95 % | beats random |")
    lines.append("| --- " * (len(fr) + 3) + "|")
    for st, s in result["active_learning"].items():
        f95 = s["fraction_to_95pct_full_acc"]
        lines.append(f"| {st} | " + " | ".join(f"{v:.3f}" for v in s["mean_test_acc"]) +
                     f" | {'not reached' if f95 is None else f'{f95:.0%}'} | "
                     f"{'—' if st == 'random' else ('yes' if s['beats_random'] else 'no')} |")
    return "\n".join(lines) + "\n"


def plot(result):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    fr = np.array(result["settings"]["fractions"]) * 100
    for st, s in result["active_learning"].items():
        m, sd = np.array(s["mean_test_acc"]), np.array(s["sd_test_acc"])
        ax.plot(fr, m, marker="o", ms=3, lw=2 if st == "random" else 1.2, ls="--" if st == "random" else "-", label=st)
        ax.fill_between(fr, m - sd, m + sd, alpha=0.12)
    ax.axhline(result["target_acc"], color="grey", lw=0.8, ls=":", label="95 % of full-label ACC")
    ax.axhline(result["full_label_test_acc"], color="black", lw=0.8, ls=":", label="full-label ACC")
    ax.set_xlabel("labelled fraction of BloodMNIST train (%)")
    ax.set_ylabel("test ACC")
    ax.set_title(f"Active learning on BloodMNIST ({result['mode']}, mean ± sd over {len(result['settings']['seeds'])} seed(s))")
    ax.legend(fontsize=7)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small pool, one seed, few rounds (minutes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    t_start = time.perf_counter()
    ds = data.load_dataset("bloodmnist")
    train = subset(ds.images["train"], ds.labels["train"], s["max_train"], 0)
    test = subset(ds.images["test"], ds.labels["test"], s["max_test"], 0)
    val = (ds.images["val"], ds.labels["val"])
    cfg = active.ALConfig(fractions=s["fractions"], first_epochs=s["first_epochs"], round_epochs=s["round_epochs"],
                          min_samples=s["min_samples"], candidates=s["candidates"], n_passes=s["n_passes"],
                          tta_passes=s["tta_passes"])
    log(f"{mode}: train {len(train[1])}, val {len(val[1])}, test {len(test[1])}, load average {os.getloadavg()}")
    seconds = {}
    t = time.perf_counter()
    full_acc = reference(ds, train, test, cfg, s)
    seconds["reference"] = time.perf_counter() - t
    log(f"full-label test ACC {full_acc:.4f} ({seconds['reference']:.0f} s)")
    t = time.perf_counter()
    auto_random = auto_label_random_seed(ds, train, val, cfg, s)
    seconds["auto_label_random_10pct"] = time.perf_counter() - t
    t = time.perf_counter()
    runs = run_active(ds, train, val, test, cfg, s)
    seconds["active_learning"] = time.perf_counter() - t
    auto = auto_label_summary(runs, auto_random)
    summary, target = summarise_active(runs, full_acc, s["fractions"])
    for st in summary:
        summary[st]["beats_random"] = None if st == "random" else beats_random(st, summary)
    seconds["total"] = time.perf_counter() - t_start
    unc = {st: v for st, v in summary.items() if st != "random"}
    best = min(unc, key=lambda k: (unc[k]["fraction_to_95pct_full_acc"] or 9, -unc[k]["mean_gain_over_random_after_round0"]))
    result = {
        "benchmark": "annotate", "dataset": "bloodmnist (28 px)", "mode": mode,
        "full_label_test_acc": full_acc, "target_acc": target,
        "auto_label": auto,
        "active_learning": summary,
        "best_uncertainty_strategy": best,
        "goals": {
            "auto_label_precision_ge_0.99": bool(auto["precision"] is not None and auto["precision"] >= 0.99),
            "auto_label_coverage_ge_0.80": bool(auto["coverage"] is not None and auto["coverage"] >= 0.80),
            "random_10pct_precision_ge_0.99": auto_random["precision"] >= 0.99,
            "random_10pct_coverage_ge_0.80": auto_random["coverage"] >= 0.80,
            "uncertainty_reaches_95pct_with_le_20pct_labels": any(
                (v["fraction_to_95pct_full_acc"] or 9) <= 0.20 + 1e-9 for v in unc.values()),
            "uncertainty_beats_random": any(v["beats_random"] for v in unc.values()),
        },
        "settings": {**s, "al_config": asdict(cfg), "model": "cnn", "strategies": list(STRATEGIES)},
        "runs": {st: [r["curve"] for r in rs] for st, rs in runs.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "annotate" if mode == "full" else "annotate_quick"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    plot(result).savefig(out / f"{stem}.png", dpi=110)
    print(md)
    print(f"wrote {out / (stem + '.json')}, {stem}.md, {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Annotation benchmark on BloodMNIST (simulated oracle): `make bench-annotate` (add ARGS=--quick).

1. Full-label reference: the active-learning network and training recipe (``workbench.active.ALConfig``:
   compact CNN width 16, its augmentation, optimizer and schedule; ``active.train_model`` from scratch,
   ``reference_epochs`` epochs) trained on every label of the pool (all of train), once per
   active-learning seed, in the same run → val and test ACC (mean over seeds).
2. Auto-labelling (the headline): for each seed, a seeded random 10 % of train labelled and the rest
   a pool with labels hidden. The model is the full recipe's network (compact CNN, width 32) with
   its dihedral test-time augmentation, trained on the 10 % until it has seen ``auto_samples``
   images. Temperature and thresholds are chosen on val for precision 0.99 by every threshold rule
   of the annotate stage (``RULES``); the headline is the stage's default (one global threshold,
   Learn-then-Test guarantee 0.9). Precision and coverage achieved on the pool, with bootstrap
   intervals per seed.
3. Active learning: from a seeded k % labelled start, each round labels the top-B pool items by a
   strategy (oracle = the hidden true labels), warm-start retrains and records test ACC vs labels
   used (val ACC too); every strategy against random at equal budgets, over several seeds. The report is
   a table of every strategy: the fraction of labels at which test ACC first reaches 95 % of the
   full-label reference's test ACC (measured budgets only, no interpolation), for the mean curve and
   per seed, with the mean of the per-seed fractions. No strategy is singled out by its test numbers:
   the one strategy named (``chosen_on_val``) is chosen by a rule fixed before measuring
   (``CHOICE_RULE``), on val ACC only.

Writes bench/results/annotate.json, annotate.md (the table, also printed) and annotate.png (curves).
``--quick`` writes annotate_quick.* instead: smoke results on small subsets that say nothing about the
method; git ignores them and they are never committed or quoted.
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
from workbench.predict import predict  # noqa: E402
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
# the rule that names one strategy, fixed before measuring and applied to val ACC only (never test)
CHOICE_RULE = ("among the annotate stage's strategies, the one whose mean val ACC curve first reaches 95 % of the "
               "full-label reference's mean val ACC (fewest labels); ties and strategies that never reach it are "
               "ordered by mean val ACC over the rounds after round 0")
# auto-labelling model: the full recipe's network and TTA (train.RECIPES["full"]); a small labelled set
# trains for more epochs, until it has seen AUTO[mode]["samples"] images (100 epochs of 10 % of train)
AUTO = {"full": {"seeds": (0, 1, 2), "width": 32, "samples": 120_000},
        "quick": {"seeds": (0,), "width": 16, "samples": 6_000}}
# the annotate stage's threshold rules: name -> (thresholds, guarantee); the first is its default
RULES = {"global, guarantee 0.9 (default)": ("global", 0.9), "per-class, guarantee 0.9": ("per-class", 0.9),
         "global, point estimate": ("global", 0.0), "per-class, point estimate": ("per-class", 0.0)}
HEADLINE_RULE = next(iter(RULES))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset(x, y, n, seed):
    if not n or n >= len(y):
        return x, y
    idx = data.stratified_indices(y, n, seed)
    return x[idx], y[idx]


def reference(ds, train, val, test, cfg, s):
    """The full-label reference: per active-learning seed, the AL network and recipe (``cfg``, the same
    ``ALConfig`` the active-learning runs use) trained from scratch on every label of the pool (all of
    ``train``) for ``reference_epochs`` epochs. Returns val/test ACC per seed and their means."""
    import keras
    per_seed = []
    for seed in s["seeds"]:
        t0 = time.perf_counter()
        keras.utils.set_random_seed(seed)
        m = models.build("cnn", train[0].shape[1:], ds.num_classes, width=cfg.width, dropout=cfg.dropout)
        active.train_model(m, *train, s["reference_epochs"], replace(cfg, seed=seed), seed,
                           augment.build(cfg.augment, seed))
        per_seed.append({"seed": seed, "val_acc": active.accuracy(m, *val), "test_acc": active.accuracy(m, *test),
                         "seconds": round(time.perf_counter() - t0, 1)})
        log(f"full-label reference seed {seed}: val ACC {per_seed[-1]['val_acc']:.4f}, "
            f"test ACC {per_seed[-1]['test_acc']:.4f} ({per_seed[-1]['seconds']:.0f} s)")
    return {"recipe": "workbench.active.ALConfig (the active-learning runs' network, augmentation, optimizer and "
                      f"schedule), active.train_model from scratch, {s['reference_epochs']} epochs, on all "
                      f"{len(train[1]):,} labels of the pool (train)",
            "epochs": s["reference_epochs"], "n_labels": int(len(train[1])), "per_seed": per_seed,
            "val_acc": float(np.mean([r["val_acc"] for r in per_seed])),
            "test_acc": float(np.mean([r["test_acc"] for r in per_seed]))}


def accept_on_pool(model, val, x_pool, y_pool, target=0.99, n_resamples=1000):
    """Temperature fitted on val; thresholds on val for ``target`` by every rule in ``RULES``, applied to
    the pool. Returns the headline rule's numbers at the top level and every rule under "rules"."""
    pv = predict(model, val[0], 512, progress=False)
    t = calibration.fit_temperature(pv, val[1])["temperature"]
    pv = calibration.apply_temperature(pv, t)
    pp = calibration.apply_temperature(predict(model, x_pool, 512, progress=False), t)
    keys = ("precision", "coverage", "precision_ci95", "coverage_ci95", "n_accepted", "n")
    rules = {}
    for name, (mode, guarantee) in RULES.items():
        choice = per_class_thresholds(pv, val[1], target, mode, 20, guarantee)
        ok = pp.max(1) >= np.asarray(choice["thresholds"])[pp.argmax(1)]
        res = achieved(y_pool, pp.argmax(1), ok, n_resamples, 0)
        rules[name] = {k: res[k] for k in keys}
    return {**rules[HEADLINE_RULE], "rule": HEADLINE_RULE, "rules": rules, "temperature": t,
            "pool_acc": float((pp.argmax(1) == y_pool).mean()), "val_acc": float((pv.argmax(1) == val[1]).mean())}


def auto_label(ds, train, val, test, cfg, mode, fraction=AUTO_FRACTION, target=0.99, n_resamples=1000):
    """Per seed: a seeded random ``fraction`` of train labelled, the rest the pool; the full recipe's
    network trained on it (``AUTO``), wrapped in its dihedral TTA; auto-accept on the pool by every rule."""
    import keras

    from workbench.train import with_tta
    a = AUTO[mode]
    x, y = train
    per_seed = []
    for seed in a["seeds"]:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        lab = np.sort(rng.choice(len(y), size=int(round(fraction * len(y))), replace=False))
        pool = np.setdiff1d(np.arange(len(y)), lab)
        keras.utils.set_random_seed(seed)
        m = models.build("cnn", x.shape[1:], ds.num_classes, width=a["width"], dropout=cfg.dropout)
        c = replace(cfg, width=a["width"], min_samples=a["samples"])
        active.train_model(m, x[lab], y[lab], 1, c, seed, augment.build(cfg.augment, seed))
        tta = with_tta(m)
        res = accept_on_pool(tta, val, x[pool], y[pool], target, n_resamples)
        res.update(seed=seed, n_labelled=int(len(lab)), test_acc=active.accuracy(tta, *test),
                   seconds=round(time.perf_counter() - t0, 1))
        per_seed.append(res)
        log(f"auto-label seed {seed}: " + "; ".join(
            f"{k}: {v['precision']:.4f} at {v['coverage']:.4f}" for k, v in res["rules"].items())
            + f" (pool ACC {res['pool_acc']:.4f}, {res['seconds']:.0f} s)")
    by_rule = {}
    for name in RULES:
        rs = [r["rules"][name] for r in per_seed]
        by_rule[name] = {"precision": float(np.mean([r["precision"] for r in rs])),
                         "coverage": float(np.mean([r["coverage"] for r in rs])),
                         "precision_per_seed": [r["precision"] for r in rs],
                         "coverage_per_seed": [r["coverage"] for r in rs],
                         "precision_ci95_per_seed": [r["precision_ci95"] for r in rs],
                         "coverage_ci95_per_seed": [r["coverage_ci95"] for r in rs]}
    head = by_rule[HEADLINE_RULE]
    return {"precision": head["precision"], "coverage": head["coverage"], "rule": HEADLINE_RULE,
            "labelled_fraction": fraction, "target_precision": target,
            "method": f"per seed a seeded random {fraction:.0%} of train labelled, the other {1 - fraction:.0%} the "
                      f"pool (labels hidden); compact CNN width {a['width']} (the full recipe's network) trained on "
                      f"{a['samples']:,} augmented samples, dihedral TTA; temperature and thresholds chosen on val; "
                      f"mean over {len(a['seeds'])} seed(s)",
            **{k: head[k] for k in ("precision_per_seed", "coverage_per_seed", "precision_ci95_per_seed",
                                    "coverage_ci95_per_seed")},
            "by_rule": by_rule, "per_seed": per_seed, "settings": a}


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
                # val ACC every round (the strategy choice uses it); auto-label the rest of the pool once
                # 10 % of it is labelled
                extra = {"val_acc": active.accuracy(model, *val)}
                if abs(point["fraction"] - AUTO_FRACTION) <= 0.005:
                    rest = np.setdiff1d(np.arange(len(y)), labelled)
                    extra["auto_label"] = accept_on_pool(model, val, x[rest], y[rest], n_resamples=s["bootstrap"])
                return extra

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


def to_reach(fractions, accs, target):
    """The smallest measured fraction whose ACC ≥ target (``active.fraction_to_reach``), or None."""
    return active.fraction_to_reach([{"fraction": f, "test_acc": a} for f, a in zip(fractions, accs)], target)


def summarise_active(runs, ref, fractions):
    """Per strategy, on test: the fraction of labels to reach 95 % of the reference's test ACC (mean curve,
    per seed, mean of the per-seed fractions when every seed reaches it); the same on val for the choice."""
    target, val_target = 0.95 * ref["test_acc"], 0.95 * ref["val_acc"]
    out = {}
    rand = np.array([[p["test_acc"] for p in r["curve"]] for r in runs["random"]])
    for st, rs in runs.items():
        accs = np.array([[p["test_acc"] for p in r["curve"]] for r in rs])
        vals = np.array([[p["val_acc"] for p in r["curve"]] for r in rs])
        mean = accs.mean(0)
        per_seed = [to_reach(fractions, row, target) for row in accs]
        out[st] = {
            "fraction_to_95pct_full_acc": to_reach(fractions, mean, target),
            "fraction_to_95pct_per_seed": per_seed,
            "fraction_to_95pct_mean_over_seeds": (float(np.mean(per_seed)) if all(f is not None for f in per_seed)
                                                  else None),
            "seeds_reaching_95pct": int(sum(f is not None for f in per_seed)),
            "mean_test_acc": mean.tolist(), "sd_test_acc": accs.std(0).tolist(),
            "mean_val_acc": vals.mean(0).tolist(),
            "val_fraction_to_95pct_full_val_acc": to_reach(fractions, vals.mean(0), val_target),
            "mean_val_acc_after_round0": float(vals[:, 1:].mean()),
            "gain_over_random": (accs - rand).mean(0).tolist(),
            "mean_gain_over_random_after_round0": float((accs - rand)[:, 1:].mean()),
            "seeds_better_than_random_at_last_budget": int(((accs - rand)[:, -1] > 0).sum()),
            "wall_seconds": [r["wall_seconds"] for r in rs],
        }
    return out, target


def choose_on_val(summary):
    """``CHOICE_RULE``: val ACC only; returns the strategy's name."""
    cand = {st: v for st, v in summary.items() if st in active.STRATEGIES}
    return min(cand, key=lambda k: (cand[k]["val_fraction_to_95pct_full_val_acc"] or 9,
                                    -cand[k]["mean_val_acc_after_round0"]))


def active_auto_label(runs):
    """Auto-labelling once active learning has labelled 10 % (width-16 AL model, no TTA), per strategy."""
    by = {}
    for st, rs in runs.items():
        pts = [p["auto_label"] for r in rs for p in r["curve"] if "auto_label" in p]
        if not pts:
            continue
        by[st] = {"precision": float(np.mean([p["precision"] for p in pts])),
                  "coverage": float(np.mean([p["coverage"] for p in pts])),
                  "rule": pts[0].get("rule", "per-class, point estimate"),
                  "precision_per_seed": [p["precision"] for p in pts], "coverage_per_seed": [p["coverage"] for p in pts],
                  "precision_ci95_per_seed": [p["precision_ci95"] for p in pts],
                  "coverage_ci95_per_seed": [p["coverage_ci95"] for p in pts]}
    return by


def beats_random(st, summary):
    f, fr = summary[st]["fraction_to_95pct_full_acc"], summary["random"]["fraction_to_95pct_full_acc"]
    reach_earlier = f is not None and (fr is None or f < fr)
    return bool(reach_earlier or (f is not None and f == fr and summary[st]["mean_gain_over_random_after_round0"] > 0))


def markdown(result) -> str:
    a = result["auto_label"]
    n_seeds = len(a["precision_per_seed"])
    lines = ["# Annotation benchmark (BloodMNIST, simulated oracle)", "",
             f"Mode: {result['mode']}; active-learning seeds {list(result['settings']['seeds'])}; "
             f"wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()) + ".", "",
             f"## Auto-labelling at {a['labelled_fraction']:.0%} labelled, target precision {a['target_precision']}", "",
             a["method"] + ".", "",
             "| threshold rule | precision (mean) | coverage (mean) | precision per seed (95 % CI) | "
             "coverage per seed |", "| --- | --- | --- | --- | --- |"]
    for name, v in a["by_rule"].items():
        per = ", ".join(f"{p:.4f} ({lo:.4f}–{hi:.4f})" for p, (lo, hi) in zip(v["precision_per_seed"],
                                                                           v["precision_ci95_per_seed"]))
        cov = ", ".join(f"{c:.3f}" for c in v["coverage_per_seed"])
        bold = "**" if name == a["rule"] else ""
        lines.append(f"| {bold}{name}{bold} | {v['precision']:.4f} | {v['coverage']:.4f} | {per} | {cov} |")
    lines += ["", f"Headline (`auto_label.precision/coverage`): {a['rule']}, mean over {n_seeds} seed(s). "
              f"Pool ACC per seed: " + ", ".join(f"{r['pool_acc']:.4f}" for r in a["per_seed"]) + ".", ""]
    if result.get("active_auto_label"):
        lines += [f"After active learning to {a['labelled_fraction']:.0%} (width-16 AL model, no TTA):", "",
                  "| strategy | rule | precision | coverage | seeds |", "| --- | --- | --- | --- | --- |",
                  *[f"| {st} | {v['rule']} | {v['precision']:.4f} | {v['coverage']:.4f} | {len(v['precision_per_seed'])} |"
                    for st, v in result["active_auto_label"].items()], ""]
    lines += ["## Active learning: test ACC (mean over seeds) vs labelled fraction", ""]
    ref = result.get("full_label_reference")
    if ref:
        lines += [f"Full-label reference: {ref['recipe']}; per seed test ACC "
                  + ", ".join(f"{r['test_acc']:.4f}" for r in ref["per_seed"])
                  + f" (mean {ref['test_acc']:.4f}), val ACC mean {ref['val_acc']:.4f}. "
                  f"Target: 95 % of the mean test ACC = {result['target_acc']:.4f}.", ""]
    else:
        lines += [f"Full-label test ACC {result['full_label_test_acc']:.4f} (95 % of it: {result['target_acc']:.4f}).", ""]
    fr = result["settings"]["fractions"]
    pct = lambda f: "not reached" if f is None else f"{f:.0%}"  # noqa: E731
    lines.append("| strategy | " + " | ".join(f"{f:.0%}" for f in fr)
                 + " | labels to 95 % (mean curve) | per seed | mean over seeds | beats random |")
    lines.append("| --- " * (len(fr) + 5) + "|")
    for st, s in result["active_learning"].items():
        per = s["fraction_to_95pct_per_seed"]
        mean = s.get("fraction_to_95pct_mean_over_seeds")
        lines.append(f"| {st} | " + " | ".join(f"{v:.3f}" for v in s["mean_test_acc"]) +
                     f" | {pct(s['fraction_to_95pct_full_acc'])} | {', '.join(pct(f) for f in per)} | "
                     f"{'—' if mean is None else f'{mean:.1%}'} | "
                     f"{'—' if st == 'random' else ('yes' if s['beats_random'] else 'no')} |")
    lines += ["", "Labels to 95 %: the smallest measured budget (no interpolation); mean over seeds only when every "
              "seed reaches it. Beats random: reaches it with fewer labels than random, or as few with a higher "
              "mean test ACC after round 0."]
    if result.get("chosen_on_val"):
        c = result["chosen_on_val"]
        lines += ["", f"Chosen on val (rule fixed before measuring: {c['rule']}): **{c['strategy']}**."]
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
    ap.add_argument("--part", choices=("all", "auto", "active"), default="all",
                    help="run only the auto-labelling or only the active-learning part; the other part is kept "
                         "from the existing results file of the same mode (each part records when it ran)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    out = Path(args.out)
    stem = "annotate" if mode == "full" else "annotate_quick"
    previous = {}
    if args.part != "all":
        if not (out / f"{stem}.json").is_file():
            raise SystemExit(f"--part {args.part} keeps the other part from {out / (stem + '.json')}, which does not "
                             "exist: run with --part all first")
        previous = json.loads((out / f"{stem}.json").read_text())
    ds = data.load_dataset("bloodmnist")
    train = subset(ds.images["train"], ds.labels["train"], s["max_train"], 0)
    test = subset(ds.images["test"], ds.labels["test"], s["max_test"], 0)
    val = (ds.images["val"], ds.labels["val"])
    cfg = active.ALConfig(fractions=s["fractions"], first_epochs=s["first_epochs"], round_epochs=s["round_epochs"],
                          min_samples=s["min_samples"], candidates=s["candidates"], n_passes=s["n_passes"],
                          tta_passes=s["tta_passes"])
    log(f"{mode}: train {len(train[1])}, val {len(val[1])}, test {len(test[1])}, load average {os.getloadavg()}")
    result = dict(previous)
    seconds = dict(previous.get("seconds", {}))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ran = dict(previous.get("ran_at", {}))
    if args.part in ("all", "active"):
        t = time.perf_counter()
        ref = reference(ds, train, val, test, cfg, s)
        seconds["reference"] = time.perf_counter() - t
        log(f"full-label reference (mean over seeds): val ACC {ref['val_acc']:.4f}, test ACC {ref['test_acc']:.4f} "
            f"({seconds['reference']:.0f} s)")
        t = time.perf_counter()
        runs = run_active(ds, train, val, test, cfg, s)
        seconds["active_learning"] = time.perf_counter() - t
        summary, target = summarise_active(runs, ref, s["fractions"])
        for st in summary:
            summary[st]["beats_random"] = None if st == "random" else beats_random(st, summary)
        result.pop("best_uncertainty_strategy", None)  # a choice made on test by an earlier version
        result.update({"full_label_reference": ref, "full_label_test_acc": ref["test_acc"], "target_acc": target,
                       "active_learning": summary,
                       "chosen_on_val": {"strategy": choose_on_val(summary), "rule": CHOICE_RULE},
                       "active_auto_label": active_auto_label(runs),
                       "runs": {st: [r["curve"] for r in rs] for st, rs in runs.items()}})
        ran["active"] = now
    elif "active_auto_label" not in result and "auto_label" in result:  # a file from before --part existed
        result["active_auto_label"] = {st: {**v, "rule": "per-class, point estimate"}
                                       for st, v in result["auto_label"].get("by_strategy", {}).items()}
    if args.part in ("all", "auto"):
        t = time.perf_counter()
        result["auto_label"] = auto_label(ds, train, val, test, cfg, mode, n_resamples=s["bootstrap"])
        seconds["auto_label"] = time.perf_counter() - t
        seconds.pop("auto_label_random_10pct", None)
        ran["auto"] = now
    seconds.pop("total", None)
    auto, summary = result["auto_label"], result["active_learning"]
    unc = {st: v for st, v in summary.items() if st != "random"}
    result.update({
        "benchmark": "annotate", "dataset": "bloodmnist (28 px)", "mode": mode,
        "goals": {
            "auto_label_precision_ge_0.99": bool(auto["precision"] >= 0.99),
            "auto_label_coverage_ge_0.80": bool(auto["coverage"] >= 0.80),
            "uncertainty_reaches_95pct_with_le_20pct_labels": any(
                (v["fraction_to_95pct_full_acc"] or 9) <= 0.20 + 1e-9 for v in unc.values()),
            "uncertainty_beats_random": any(v["beats_random"] for v in unc.values()),
        },
        "settings": {**s, "al_config": asdict(cfg), "model": "cnn", "strategies": list(STRATEGIES),
                     "auto": AUTO[mode], "rules": {k: list(v) for k, v in RULES.items()}},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "ran_at": ran,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "platform": platform.platform()},
    })
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    plot(result).savefig(out / f"{stem}.png", dpi=110)
    print(md)
    print(f"wrote {out / (stem + '.json')}, {stem}.md, {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

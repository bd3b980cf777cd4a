"""`python -m bench.features` (make bench-features): what a demo run's features are worth on BloodMNIST.

The model: the demo recipe trained once on BloodMNIST (seed 0) through the product's API (``train.run``,
then ``evaluate.run``) into ``runs/bench-features/run-demo-seed0`` (git-ignored; reused when the bench is
re-run; ``--run`` names another trained BloodMNIST run). Embeddings are the product's
(``workbench.embeddings``, cached in the run's ``features/``).

1. Baselines (``neighbours.baselines``): kNN (k = 11) and a linear probe on the train embeddings, test ACC/AUC
   with 95 % bootstrap intervals, beside the network's own test numbers from ``metrics.json``.
2. OOD detection: AUROC of telling BloodMNIST test images (in distribution) from
   - another modality, presented through the BloodMNIST model's own input path (``pools.open_pool`` on the
     official files' test splits; grayscale BreastMNIST images become RGB there): BreastMNIST, RetinaMNIST;
   - corrupted BloodMNIST test images: Gaussian noise σ 10 and 25 grey levels, Gaussian blur σ 1.2 and 2 px
     (workbench.corrupt's primitives).
   For the product's score (Mahalanobis, ``neighbours.OODScorer``) and, for comparison, the mean cosine distance
   to the 11 nearest train embeddings (centred and plain cosine) and the network's max-softmax probability.
3. Near-duplicates: test images byte-identical to train images and where they fall against the threshold.
4. Auto-accept with and without the kNN agreement rule: the annotate stage (``annotate.run``, pool = the test
   split, defaults: global threshold, target 0.99, guarantee 0.9, calibrated; no label audit) → its
   ``knn.achieved``; then at equal coverage: the agreement rule's threshold lowered until it accepts as many
   items as the plain rule, and the precision of each.

Writes bench/results/features.json and features.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import workbench  # noqa: E402,F401  (JAX backend first)
from workbench.runs import strict_json  # noqa: E402

OUT = ROOT / "bench" / "results"
RUN = ROOT / "runs" / "bench-features" / "run-demo-seed0"
DATASET = "bloodmnist"
FOREIGN = {"breastmnist": ROOT / "data" / "breastmnist.npz", "retinamnist": ROOT / "data" / "retinamnist.npz"}
CORRUPTIONS = {"noise_10": ("noise", 10.0), "noise_25": ("noise", 25.0), "blur_1.2": ("blur", 1.2),
               "blur_2": ("blur", 2.0)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def get_run(path: str) -> Path:
    from workbench import evaluate, params, train
    run = Path(path) if path else RUN
    if not (run / "model.keras").is_file():
        if path:
            sys.exit(f"error: {run} has no model.keras (--run): give a trained BloodMNIST run directory")
        log(f"training the demo recipe on {DATASET} (seed 0) into {run}")
        train.run(params.make("train", {"run_dir": str(run), "seed": 0, "dataset": DATASET}))
    else:
        log(f"reusing the trained run {run}")
    if not (run / "metrics.json").is_file():
        log("evaluating it")
        evaluate.run(params.make("evaluate", {"run_dir": str(run)}))
    return run


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def ood_part(trained, log_) -> dict:
    from workbench.corrupt import blur, noise
    from workbench import embeddings as E, neighbours as N
    from workbench.pools import open_pool
    ds = trained.dataset()
    train, test = E.split_features(trained, "train"), E.split_features(trained, "test")
    y = ds.labels["train"]
    maha = N.OODScorer(train.embeddings, y, trained.task)
    cos_c, cos_p = N.Index(train.embeddings, center=True), N.Index(train.embeddings, center=False)

    def scores(f):
        return {"mahalanobis (product)": maha.scores(f.embeddings),
                "kNN cosine distance, centred": cos_c.ood_scores(f.embeddings),
                "kNN cosine distance, plain": cos_p.ood_scores(f.embeddings),
                "1 - max softmax (network, one view)": 1.0 - f.probs.max(1)}
    inside = scores(test)
    val_q99 = float(np.quantile(maha.scores(E.split_features(trained, "val").embeddings), 0.99))
    sets = {}
    for name, path in FOREIGN.items():
        if not path.is_file():
            log_(f"skipping {name}: {path} not found")
            continue
        pool = open_pool(f"{path}:test")
        sets[name] = ("another modality", E.pool_features(trained, pool))
    raw = trained.dataset(raw=True).images["test"]
    for name, (kind, arg) in CORRUPTIONS.items():
        images = noise(raw, arg, seed=0) if kind == "noise" else blur(raw, arg)
        e, p = E.embed_images(trained.model, trained.prepare(images), desc=name)
        sets[name] = ("corrupted BloodMNIST test", E.Features(name, "", e, p))
    out = {}
    for name, (kind, f) in sets.items():
        s = scores(f)
        main = "mahalanobis (product)"
        out[name] = {"kind": kind, "n": len(f), "auroc": auroc(inside[main], s[main]),
                     "auroc_by_score": {k: auroc(inside[k], s[k]) for k in inside},
                     "share_flagged_at_val_q99": float((s[main] > val_q99).mean())}
        log_(f"OOD {name}: AUROC {out[name]['auroc']:.4f}")
    return {"in_distribution": f"BloodMNIST test ({len(test)} images)", "sets": out,
            "val_share_flagged": 0.01}


def near_duplicate_part(trained) -> dict:
    from workbench import embeddings as E, neighbours as N
    ds = trained.dataset()
    train, test = E.split_features(trained, "train"), E.split_features(trained, "test")
    sims, idx = N.Index(train.embeddings).search(test.embeddings, 1)
    h = {hashlib.md5(x.tobytes()).hexdigest(): j for j, x in enumerate(ds.images["train"])}
    exact = [(i, h[hashlib.md5(x.tobytes()).hexdigest()]) for i, x in enumerate(ds.images["test"])
             if hashlib.md5(x.tobytes()).hexdigest() in h]
    flagged = np.flatnonzero(sims[:, 0] >= N.NEAR_DUPLICATE)
    exact_set = {i for i, _ in exact}
    return {"threshold": N.NEAR_DUPLICATE, "test_items_flagged": int(len(flagged)),
            "byte_identical_test_train": len(exact),
            "byte_identical_found": int(sum(i in set(flagged.tolist()) for i in exact_set)),
            "byte_identical_similarity_min": float(min(sims[i, 0] for i, _ in exact)) if exact else None,
            "flagged_not_identical": [int(i) for i in flagged if int(i) not in exact_set],
            "top1_similarity_quantiles": {str(q): float(np.quantile(sims[:, 0], q)) for q in (0.5, 0.9, 0.99, 0.999)},
            "pairs_at": {str(t): int((sims[:, 0] >= t).sum()) for t in (0.99, 0.995, 0.999, 0.9995, 0.9999)}}


def equal_coverage(conf: np.ndarray, agree: np.ndarray, correct: np.ndarray, accepted: np.ndarray) -> dict:
    """Precision of the agreement rule (agree and conf ≥ t') at the plain rule's coverage (t' lowered until
    it accepts as many items), beside the plain rule's."""
    n_plain = int(accepted.sum())
    cand = np.flatnonzero(agree)
    order = cand[np.argsort(-conf[cand], kind="stable")]
    out = {"n_accepted": n_plain, "plain_precision": float(correct[accepted].mean()) if n_plain else None}
    if len(order) < n_plain:
        out.update({"reachable": False, "agreement_max_coverage": float(len(order) / len(conf))})
        return out
    take = order[:n_plain]
    out.update({"reachable": True, "agreement_precision": float(correct[take].mean()) if n_plain else None,
                "agreement_threshold": float(conf[take].min()) if n_plain else None,
                "errors_plain": int((~correct[accepted]).sum()), "errors_agreement": int((~correct[take]).sum())})
    return out


def agreement_part(run: Path, log_) -> dict:
    import pandas as pd

    from workbench import annotate, params
    log_("annotate stage: pool = test split (audit off)")
    annotate.run(params.make("annotate", {"run_dir": str(run), "pool": "test", "audit_folds": 0}))
    pool_dir = sorted((run / "annotate").glob("test*"), key=lambda p: p.stat().st_mtime)[-1]
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    table = pd.read_csv(pool_dir / "annotations.csv")
    from workbench import runload
    y = runload.load(run).dataset().labels["test"]
    correct = table["predicted_label"].to_numpy() == y
    accepted = (table["status"] == annotate.AUTO).to_numpy()
    agree = table["knn_agree"].to_numpy(dtype=bool)
    conf = table["confidence"].to_numpy(dtype=float)
    return {"pool_dir": str(pool_dir.relative_to(ROOT)) if pool_dir.is_relative_to(ROOT) else str(pool_dir),
            "knn": summary["knn"], "threshold": summary["threshold"]["threshold"],
            "shift_fired": summary["shift"]["fired"],
            "equal_coverage": equal_coverage(conf, agree, correct, accepted),
            "wrong_and_disagree": int((~correct & ~agree).sum()), "wrong": int((~correct).sum()),
            "right_and_disagree": int((correct & ~agree).sum())}


def _f(v, d=4):
    return "–" if v is None else f"{v:.{d}f}"


def _ci(ci, d=4):
    return "" if not ci or ci[0] is None else f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def markdown(res: dict) -> str:
    b, net = res["baselines"], res["network"]
    lines = ["# bench-features: what a demo run's features are worth (BloodMNIST)", "",
             f"Model: demo recipe, seed 0 (`{res['run']}`), embeddings: `{b['layer']}` ({b['dim']}-d). "
             f"{res['machine']}; {res['elapsed_s']:.0f} s.", "",
             "## Baselines on the features (test, 95 % bootstrap intervals)", "",
             "| | ACC | AUC |", "| --- | ---: | ---: |",
             f"| network (TTA model, metrics.json) | {_f(net['acc'])}{_ci(net['acc_ci95'])} | "
             f"{_f(net['auc'])}{_ci(net['auc_ci95'])} |",
             f"| kNN (k = {b['k']}, cosine) | {_f(b['knn']['acc'])}{_ci(b['knn']['acc_ci95'])} | "
             f"{_f(b['knn']['auc'])}{_ci(b['knn']['auc_ci95'])} |",
             f"| linear probe (C = {b['linear_probe']['C']:g}) | {_f(b['linear_probe']['acc'])}"
             f"{_ci(b['linear_probe']['acc_ci95'])} | {_f(b['linear_probe']['auc'])}{_ci(b['linear_probe']['auc_ci95'])} |",
             "", "## OOD detection (AUROC against BloodMNIST test)", ""]
    o = res["ood"]["sets"]
    keys = list(next(iter(o.values()))["auroc_by_score"]) if o else []
    lines += ["| pool | kind | n | " + " | ".join(keys) + " | flagged at val q99 |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in keys) + " | ---: |"]
    for name, r in o.items():
        lines.append(f"| {name} | {r['kind']} | {r['n']} | " + " | ".join(_f(r["auroc_by_score"][k]) for k in keys)
                     + f" | {r['share_flagged_at_val_q99']:.3f} |")
    g = res["goals"]
    lines += ["", f"Goal OOD AUROC ≥ 0.99 for another modality: **{'met' if g['ood_other_modality_met'] else 'not met'}** "
              f"(min {_f(g['ood_other_modality_min'])}).", ""]
    nd = res["near_duplicates"]
    lines += ["## Near-duplicates (test → train)", "",
              f"Threshold {nd['threshold']} (centred cosine): {nd['test_items_flagged']} test items flagged; "
              f"{nd['byte_identical_found']} of the {nd['byte_identical_test_train']} test images byte-identical to "
              f"a train image found (lowest similarity {_f(nd['byte_identical_similarity_min'], 7)}); pairs at other "
              f"thresholds: {nd['pairs_at']}.", ""]
    a = res["agreement"]
    k = a["knn"]
    lines += ["## Auto-accept with and without the kNN agreement rule (pool = test split)", "",
              f"kNN agrees with the model on {k['agreement']:.4f} of the pool. Annotate defaults (global threshold "
              f"{_f(a['threshold'])}, target 0.99, guarantee 0.9){'; the shift check fired' if a['shift_fired'] else ''}.", ""]
    if "achieved" in k:
        lines += ["| rule | precision | coverage | accepted |", "| --- | ---: | ---: | ---: |"]
        for name, key in (("model", "model"), ("model and kNN agree", "model_and_knn_agree")):
            r = k["achieved"][key]
            lines.append(f"| {name} | {_f(r['precision'])}{_ci(r['precision_ci95'])} | {_f(r['coverage'])}"
                         f"{_ci(r['coverage_ci95'])} | {r['n_accepted']} |")
    e = a["equal_coverage"]
    if e.get("reachable"):
        lines += ["", f"At equal coverage ({e['n_accepted']} items): plain rule precision {_f(e['plain_precision'])} "
                      f"({e['errors_plain']} errors), agreement rule (threshold lowered to {_f(e['agreement_threshold'])}) "
                      f"{_f(e['agreement_precision'])} ({e['errors_agreement']} errors): the agreement rule "
                      f"**{'raises' if e['agreement_precision'] > e['plain_precision'] else 'does not raise'}** precision "
                      "at equal coverage."]
    else:
        lines += ["", "Equal coverage is not reachable with the agreement rule."]
    lines += ["", f"Of the {a['wrong']} wrong predictions, kNN disagrees with {a['wrong_and_disagree']}; it also "
                  f"disagrees with {a['right_and_disagree']} right ones.", ""]
    return "\n".join(lines)



def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="", help="a trained BloodMNIST run directory (default: train the demo recipe once "
                                              f"into {RUN.relative_to(ROOT)})")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-annotate", action="store_true", help="skip the annotate part (agreement rule)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from workbench import neighbours as N
    from workbench import runload
    run = get_run(args.run)
    trained = runload.load(run)
    ds = trained.dataset()
    log("baselines: kNN and linear probe")
    b = N.baselines(trained, ds)
    metrics = json.loads((run / "metrics.json").read_text())
    net = {k: metrics["test"][k] for k in ("acc", "acc_ci95", "auc", "auc_ci95")}
    log(f"network ACC {net['acc']:.4f}, kNN {b['knn']['acc']:.4f}, linear probe {b['linear_probe']['acc']:.4f}")
    ood = ood_part(trained, log)
    near = near_duplicate_part(trained)
    agreement = agreement_part(run, log) if not args.no_annotate else None
    other = [r["auroc"] for r in ood["sets"].values() if r["kind"] == "another modality"]
    res = {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run), "dataset": DATASET,
           "network": net, "baselines": b, "knn_acc": b["knn"]["acc"], "linear_probe_acc": b["linear_probe"]["acc"],
           "ood": {**ood, **{name: {"auroc": r["auroc"]} for name, r in ood["sets"].items()}},
           "near_duplicates": near, "agreement": agreement,
           "goals": {"ood_other_modality_min": min(other) if other else None,
                     "ood_other_modality_met": bool(other and min(other) >= 0.99),
                     "agreement_raises_precision_at_equal_coverage":
                         (agreement["equal_coverage"].get("agreement_precision", -1)
                          > (agreement["equal_coverage"]["plain_precision"] or 0))
                         if agreement and agreement["equal_coverage"].get("reachable") else None},
           "elapsed_s": time.perf_counter() - t0,
           "machine": f"{platform.machine()}, Python {platform.python_version()}, {__import__('os').cpu_count()} CPUs"}
    res = strict_json(res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(res, indent=1) + "\n")
    if agreement is not None:
        (out / "features.md").write_text(markdown(res) + "\n")
    log(f"wrote {out / 'features.json'}")
    return res


if __name__ == "__main__":
    main()

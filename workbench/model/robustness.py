"""Robustness in the evaluate report and the model card: accuracy under the data card's acquisition
corruptions (workbench.corrupt), so a user sees how brittle a model is before annotating with it.

``measure`` corrupts a seeded, class-stratified subset of the test split (``robustness`` images, all of
a smaller split) with every (corruption, severity) of the card's suite, at native resolution, predicts it
with the trained model (no adaptation: what the model does as saved) and writes ``robustness.json``.
``table`` and ``figure`` show it (per corruption and severity; one image under every corruption with the
model's prediction); ``card_section`` is the model card's "Robustness" section.

Which corruptions the training augmentation covered is read from the run's ``augment.yaml`` (the
photometric changes, ``-p photometric card``): the others measure generalisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import corrupt
from ..core import tasks as _tasks

ROBUSTNESS_FILE = "robustness.json"
EXAMPLE_SEVERITY = 2        # the figure shows each corruption at this severity
CORRUPTION_SEED = 1         # the test split's corruption seed (bench/robustness.py uses the same)


def _acc(y: np.ndarray, p: np.ndarray, task: str) -> float:
    pred = _tasks.decide(p, task)
    y = np.asarray(y)
    return float((pred == y).mean() if _tasks.is_multilabel(task) else (pred == y.reshape(-1)).mean())


def _subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Seeded class-stratified positions (random for multi-label), at most ``n``, sorted."""
    if len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] > 1:
        return np.sort(rng.choice(len(y), size=n, replace=False))
    y = np.asarray(y).reshape(-1)
    classes, counts = np.unique(y, return_counts=True)
    take = np.maximum(1, np.floor(counts / len(y) * n)).astype(int)
    take[np.argsort(-counts)[: max(0, n - take.sum())]] += 1
    idx = [rng.choice(np.flatnonzero(y == c), size=min(k, cnt), replace=False) for c, k, cnt in zip(classes, take, counts)]
    return np.sort(np.concatenate(idx))[:n] if idx else np.arange(0)


def trained_changes(run_dir) -> dict:
    """The acquisition changes the run's training augmentation drew (augment.yaml; {} without them)."""
    import yaml
    p = Path(run_dir) / "augment.yaml"
    doc = yaml.safe_load(p.read_text()) if p.is_file() else {}
    return dict(((doc or {}).get("photometric") or {}).get("changes") or {})


def measure(run, trained, ds, params) -> dict:
    """Accuracy on ``params.robustness`` test images under every (corruption, severity) of the card's suite;
    written to robustness.json. ``{"skipped": ...}`` when ``params.robustness`` is 0."""
    from .predict import predict
    n_max = int(getattr(params, "robustness", 1000))
    if n_max == 0:
        result = {"skipped": "parameter robustness = 0"}
        if run is not None:
            run.write_json(ROBUSTNESS_FILE, result)
        return result
    family, note = corrupt.family(ds.card) if ds.card is not None else ("stained microscopy" if ds.input_shape[-1] == 3
                                                                         else "microscopy", "no data card")
    suite = corrupt.suite(ds.card) if ds.card is not None else corrupt.suite(family)
    suite = [(n, s) for n, s in suite if ds.input_shape[-1] in corrupt.CHANNELS[n]]
    y_all = ds.labels["test"]
    idx = _subset(y_all, n_max, params.seed)
    x, y = ds.images["test"][idx], y_all[idx]
    bs = int(getattr(params, "batch_size", 512))
    from ..core.progress import tqdm
    clean = predict(trained.model, x, bs, progress=False)
    acc: dict[str, list] = {}
    example = int(np.random.default_rng(params.seed).integers(len(x))) if len(x) else 0
    shown = {"clean": _prediction(clean[example], y[example], ds)}
    for name, sev in tqdm(suite, desc="robustness", unit="condition"):
        p = predict(trained.model, corrupt.apply(x, name, sev, CORRUPTION_SEED), bs, progress=False)
        acc.setdefault(name, []).append(_acc(y, p, ds.task))
        if sev == EXAMPLE_SEVERITY:
            shown[name] = _prediction(p[example], y[example], ds)
    covered = trained_changes(trained.path)
    means = {n: float(np.mean(v)) for n, v in acc.items()}
    worst = min(means, key=means.get) if means else None
    result = {
        "split": "test", "n": int(len(idx)), "of": int(len(y_all)), "seed": int(params.seed),
        "corruption_seed": CORRUPTION_SEED, "family": family, "family_note": note,
        "clean_acc": _acc(y, clean, ds.task),
        "acc": acc, "labels": {n: [corrupt.label(n, s) for s in corrupt.SEVERITIES] for n in acc},
        "kind": {n: corrupt.KIND[n] for n in acc},
        "covered_by_training": sorted(n for n in acc if corrupt.KIND[n] in covered),
        "trained_changes": covered,
        "mean_corrupted": float(np.mean([a for v in acc.values() for a in v])) if acc else None,
        "worst": {"corruption": worst, "acc": means[worst]} if worst else None,
        "example": {"index": int(idx[example]) if len(idx) else None, "severity": EXAMPLE_SEVERITY,
                    "predictions": shown},
        "indices": idx.tolist(),
    }
    if run is not None:
        run.write_json(ROBUSTNESS_FILE, result)
    return result


def _prediction(p: np.ndarray, y, ds) -> dict:
    if _tasks.is_multilabel(ds.task):
        pred = _tasks.decide(p[None], ds.task)[0]
        return {"label": ";".join(ds.class_names[i] for i in np.flatnonzero(pred)) or "(none)",
                "confidence": float(np.min(np.where(pred == 1, p, 1 - p))), "correct": bool((pred == y).all())}
    c = int(_tasks.decide(p[None], ds.task)[0])
    return {"label": ds.class_names[c], "confidence": float(p[c]), "correct": bool(c == int(np.asarray(y).reshape(-1)[0]))}


def table(result: dict):
    """Accuracy per corruption and severity, its mean, and whether training saw that kind of change."""
    import pandas as pd
    from ..core.viz import Markdown
    if "skipped" in result:
        return Markdown(f"Robustness not measured ({result['skipped']}).")
    rows = {"clean (no corruption)": {"severity 1": "", "severity 2": "", "severity 3": "",
                                      "mean": f"{result['clean_acc']:.4f}", "in training augmentation": ""}}
    for n, v in result["acc"].items():
        rows[n] = {**{f"severity {i + 1}": f"{a:.4f}" for i, a in enumerate(v)}, "mean": f"{np.mean(v):.4f}",
                   "in training augmentation": "yes" if n in result["covered_by_training"] else "no"}
    rows["mean over corruptions"] = {"severity 1": "", "severity 2": "", "severity 3": "",
                                     "mean": f"{result['mean_corrupted']:.4f}", "in training augmentation": ""}
    return pd.DataFrame(rows).T


def figure(trained, ds, result: dict):
    """One test image under every corruption (severity 2), with the model's prediction (green: right)."""
    from ..core.viz import Markdown
    from ..core.viz import image_grid
    if "skipped" in result or result["example"]["index"] is None:
        return Markdown("Robustness not measured.")
    idx = np.asarray(result["indices"])
    x = ds.images["test"][idx]
    pos = int(np.flatnonzero(idx == result["example"]["index"])[0])
    shown = result["example"]["predictions"]
    images, caps, colors = [x[pos]], [], []
    for n in ["clean", *result["acc"]]:
        if n != "clean":
            images.append(corrupt.apply(x, n, EXAMPLE_SEVERITY, CORRUPTION_SEED)[pos])
        s = shown[n]
        caps.append(f"{n}\n{s['label'][:14]} {s['confidence']:.2f}")
        colors.append("green" if s["correct"] else "red")
    y = ds.labels["test"][result["example"]["index"]]
    truth = (";".join(ds.class_names[i] for i in np.flatnonzero(y)) if _tasks.is_multilabel(ds.task)
             else ds.class_names[int(np.asarray(y).reshape(-1)[0])])
    return image_grid(np.stack(images), caps, ncols=min(7, len(images)), caption_colors=colors,
                      title=f"Test image #{result['example']['index']} (true: {truth[:24]}), each corruption at severity "
                            f"{EXAMPLE_SEVERITY}\nprediction and confidence (green: right, red: wrong)")


def card_section(run_dir) -> list[str]:
    """The model card's "Robustness" section, from robustness.json (and augment.yaml)."""
    import json
    p = Path(run_dir) / ROBUSTNESS_FILE
    more = "[More Information Needed]"
    if not p.is_file():
        return [f"Not measured (no `{ROBUSTNESS_FILE}`; the evaluate stage writes it). {more}", ""]
    r = json.loads(p.read_text())
    if "skipped" in r:
        return [f"Not measured ({r['skipped']}). {more}", ""]
    changes = r.get("trained_changes") or {}
    trained = ("trained with photometric augmentation of the data card's acquisition changes ("
               + ", ".join(f"{k} {v}" for k, v in changes.items()) + ")") if changes else \
        "trained without photometric augmentation of acquisition changes (`photometric none`)"
    lines = [f"Accuracy on {r['n']} of {r['of']} test images (seeded, class-stratified) under the data card's "
             f"acquisition corruptions ({r['family']}: {len(r['acc'])} corruptions × 3 severities, workbench.corrupt), "
             f"predicted by the model as saved (no test-time adaptation). The model was {trained}.\n",
             f"- **Clean:** {r['clean_acc']:.4f}; **mean under corruption:** {r['mean_corrupted']:.4f}; **worst "
             f"corruption:** {r['worst']['corruption']} ({r['worst']['acc']:.4f}, mean over its severities).\n",
             "| corruption | severity 1 | severity 2 | severity 3 | in training augmentation |",
             "| --- | --- | --- | --- | --- |"]
    for n, v in r["acc"].items():
        lines.append(f"| {n} ({r['labels'][n][2]} at 3) | " + " | ".join(f"{a:.4f}" for a in v)
                     + f" | {'yes' if n in r['covered_by_training'] else 'no'} |")
    lines += ["", "- Images from another microscope, scanner, stain batch or site may differ in ways this suite does "
              "not cover; validate on data from the target site. The annotate stage's shift check (and `-p adapt` "
              "for label-free test-time adaptation) is the guard when annotating such images.", ""]
    if r.get("family_note"):
        lines.insert(1, f"- Note: {r['family_note']}.")
    return lines

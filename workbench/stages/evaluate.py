"""Evaluate stage: the numbers a paper needs, each with its uncertainty, for every task type.

- Test ACC and AUC by the MedMNIST protocol, balanced accuracy and per-class sensitivity,
  specificity, PPV, NPV and F1, each with a seeded percentile-bootstrap 95 % interval (``n_resamples``,
  default 1000; stratified by class). Ordinal tasks add mean absolute error and quadratic-weighted
  kappa; multi-label tasks report ACC at threshold 0.5 and AUC as means over labels, exact-match
  accuracy and every per-label rate with its interval (images resampled) — workbench.metrics.
- Calibration: ECE (15 bins) and reliability diagram; a temperature fitted on val (one per label for
  multi-label tasks) and applied to test, saved beside the model as ``calibration.json`` (the annotate
  stage reads it).
- Operating points: binary tasks get the threshold reaching ``target_sensitivity`` on val, reported on
  test; the others get per-class (per-label) one-vs-rest ROC and precision-recall curves.
- Explanations: Grad-CAM (workbench.explain) and occlusion for galleries of the highest-loss test images
  and of correct vs wrong predictions per class.
- Optional test-time augmentation (``tta`` passes of the run's training augmentation) and seed
  ensembles (``ensemble``: other run directories), with their paired gain and its interval.
- The data card's published baselines beside our point estimate and interval.

Writes ``metrics.json``, ``predictions.npz``, ``calibration.json`` and ``model_card.md``. The model sees
the test images through the run's input path (workbench.runload / workbench.inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..stats import calibration as _calibration
from ..core import cells as _cells
from ..stats import metrics as _metrics
from ..model import predict as _predict
from ..model import runload as _runload
from ..core import runs as _runs
from ..core import tasks as _tasks
from ..core.errors import WorkbenchError
from ..core.params import EvaluateParams

MAX_CLASSES_PLOTTED = 20   # beyond this, per-class forest rows and galleries show the worst classes only


# --- opening the stage: every parameter is checked before the run directory is touched ---------------------

def _target_dir(params: EvaluateParams) -> Path:
    if params.run_dir:
        return Path(params.run_dir).expanduser().resolve()
    return _runs.latest_run()


def ensemble_members(params: EvaluateParams, run_dir: Path | None = None) -> list[Path]:
    """The run directories named by ``ensemble`` (comma-separated), each holding a trained model."""
    names = [s.strip() for s in params.ensemble.split(",") if s.strip()]
    paths = [Path(s).expanduser().resolve() for s in names]
    if len(set(paths)) != len(paths):
        raise WorkbenchError(f"parameter 'ensemble' lists a run directory twice: {params.ensemble}")
    for p in paths:
        if run_dir is not None and p == Path(run_dir).resolve():
            raise WorkbenchError(f"parameter 'ensemble' lists the evaluated run {p} itself; name only the other runs")
        if not p.is_dir():
            raise WorkbenchError(f"parameter 'ensemble': run directory {p} does not exist")
        if not (p / "model.keras").is_file() or not (p / "params" / "train.json").is_file():
            raise WorkbenchError(f"parameter 'ensemble': {p} holds no trained model (model.keras, params/train.json); "
                                 "name run directories of the train stage")
    return paths


def _check_tta(run_dir: Path, passes: int) -> None:
    if not passes:
        return
    path = run_dir / "augment.yaml"
    if not path.is_file():
        raise WorkbenchError(f"parameter 'tta_passes' = {passes}: {run_dir} has no augment.yaml to draw the test-time "
                             "augmentations from; set tta_passes 0")
    from ..data import augment as _augment
    t, doc = _augment.load(path)
    if _augment.is_identity(t):
        raise WorkbenchError(f"parameter 'tta_passes' = {passes}: the run was trained with augmentation preset "
                             f"{doc.get('preset')!r}, which changes nothing; set tta_passes 0 or train with augmentation")


def open_stage(params: EvaluateParams):
    """Check the parameters that depend on the run (ensemble, tta, cam_layer), then open the stage.
    Returns (run, trained run, its test/val data through the run's input path)."""
    from ..model import explain as _explain
    target = _target_dir(params)
    trained = _runload.load(target)
    members = ensemble_members(params, target)
    _check_tta(target, params.tta_passes)
    _explain.check_layer(trained.model, params.cam_layer)
    run = _runs.open_stage("evaluate", params, upstream=_runs.TRAIN_ARTIFACTS)
    ds = trained.dataset()
    _runs.add_provenance(run, data=ds.describe(), ensemble=[str(p) for p in members])
    return run, trained, ds


# --- the stage's numbers ------------------------------------------------------------------------------------

def _per_class_ci(test: dict, class_names: list[str]) -> dict:
    rates = test.pop("per_class_rates")
    support = test.pop("support")
    curves = test["curves"]
    out = {}
    for c, name in enumerate(class_names):
        row = {}
        for r, v in rates.items():
            row[r] = v["value"][c]
            row[f"{r}_ci95"] = v["ci95"][c]
        row["support"] = int(support[c])
        row["roc_auc"] = curves["roc_auc"][c]
        row["average_precision"] = curves["average_precision"][c]
        out[name] = row
    return out


def compare_baselines(published: dict[str, dict], test: dict) -> dict:
    """Each published {acc, auc} with where our 95 % interval lies relative to it."""
    return {m: {"acc": v["acc"], "auc": v["auc"],
                "our_acc_interval": _metrics.interval_position(v["acc"], test["acc_ci95"]),
                "our_auc_interval": _metrics.interval_position(v["auc"], test["auc_ci95"])}
            for m, v in published.items()}


def _val_summary(y, p, task: str, class_names: list[str]) -> dict:
    val = _metrics.medmnist_acc_auc(y, p, task)
    point = _metrics.headline_point(y, p, task)
    for k in ("balanced_acc", "exact_match", "mae", "qwk"):
        if k in point:
            val[k] = point[k]
    if not _tasks.is_multilabel(task):
        val["per_class"] = _metrics.per_class_table(y, _tasks.decide(p, task), class_names).round(6).to_dict(orient="index")
    return val


def compute(run: _runs.Run, trained, ds, params: EvaluateParams) -> dict:
    """Predict val and test, compute every number with its interval, fit the temperature; write
    predictions.npz, calibration.json and metrics.json; return the metrics."""
    n_boot, seed, task = params.n_resamples, params.seed, ds.task
    model = trained.model
    probs = {s: _predict.predict(model, ds.images[s], params.batch_size, desc=f"predict {s}") for s in ("val", "test")}
    y = {s: ds.labels[s] for s in probs}
    result = {"dataset": ds.name, "task": task, "class_names": ds.class_names,
              "task_description": _tasks.describe(task, ds.num_classes)}
    result["val"] = _val_summary(y["val"], probs["val"], task, ds.class_names)

    test = _metrics.headline_intervals(y["test"], probs["test"], task, n_resamples=n_boot, seed=seed)
    if not _tasks.is_multilabel(task):
        test["per_class"] = _metrics.per_class_table(y["test"], _tasks.decide(probs["test"], task),
                                                     ds.class_names).round(6).to_dict(orient="index")
    test["curves"] = _metrics.curves_summary(y["test"], probs["test"], task)
    test["per_class_ci95"] = _per_class_ci(test, ds.class_names)

    cal = _calibration.evaluate(probs["val"], y["val"], probs["test"], y["test"], n_bins=15,
                                n_resamples=n_boot, seed=seed, task=task)
    test.update({k: cal.get(k) for k in ("ece", "ece_ci95", "ece_after_temperature", "ece_after_temperature_ci95",
                                         "temperature", "nll", "nll_after_temperature")})
    result["test"] = test
    result["calibration"] = {k: cal[k] for k in ("temperature", "fit", "n_bins", "reliability",
                                                   "reliability_after_temperature") if k in cal}
    _calibration.save(run, cal)

    if task == _tasks.BINARY:
        result["operating_point"] = _metrics.operating_point(y["val"], probs["val"][:, 1], y["test"],
                                                             probs["test"][:, 1], params.target_sensitivity,
                                                             n_resamples=n_boot, seed=seed)

    arrays = {"val_probs": probs["val"], "test_probs": probs["test"], "val_labels": y["val"], "test_labels": y["test"],
              "test_probs_calibrated": _predict.calibrated(probs["test"], cal["temperature"], task)}
    variants = {}
    if params.tta_passes:
        p_tta = _predict.tta_predict(model, ds.images["test"], trained.path / "augment.yaml", params.tta_passes, seed,
                                     params.batch_size)
        arrays["test_probs_tta"] = p_tta
        variants["tta"] = {"passes": params.tta_passes,
                           **_metrics.paired_gain(y["test"], probs["test"], p_tta, task, n_boot, seed)}
    members = ensemble_members(params, trained.path)
    if members:
        member_probs = _predict.ensemble_predict(trained, members, "test", params.batch_size)
        p_ens = np.mean([probs["test"], *member_probs], axis=0)
        arrays["test_probs_ensemble"] = p_ens
        variants["ensemble"] = {"members": [str(trained.path), *map(str, members)],
                                "member_acc": [test["acc"], *(_metrics.medmnist_acc_auc(y["test"], p, task)["acc"]
                                                              for p in member_probs)],
                                **_metrics.paired_gain(y["test"], probs["test"], p_ens, task, n_boot, seed)}
    result["variants"] = variants
    published = dict(ds.card.published_baselines) if ds.card else {}
    result["published_baselines"] = compare_baselines(published, test)
    from ..model import neighbours as _neighbours
    result["feature_baselines"] = _neighbours.baselines(trained, ds, n_boot, seed, params.batch_size)

    np.savez_compressed(run.file("predictions.npz"), **arrays)
    result = _runs.strict_json(result)
    run.write_json("metrics.json", result)
    return result



def load_predictions(run: _runs.Run) -> dict[str, np.ndarray]:
    with np.load(run.path / "predictions.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --- tables and figures for the report ----------------------------------------------------------------------

def _fmt(v, digits: int = 4) -> str:
    return "undefined" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ci(ci, digits: int = 4) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "undefined"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _label(rate: str) -> str:
    return rate.upper() if rate in ("ppv", "npv", "auc") else rate


def _with_ci(v, ci, digits: int = 3) -> str:
    return f"{_fmt(v, digits)} {_ci(ci, digits)}" if v is not None else "undefined"


def _headline_rows(result: dict) -> dict:
    t, v, task = result["test"], result["val"], result["task"]
    if task == _tasks.MULTILABEL:
        rows = {"ACC (mean over labels, threshold 0.5)": ("acc", "acc"),
                "AUC (mean over labels)": ("auc", "auc"),
                "exact match (every label right)": ("exact_match", "exact_match")}
    else:
        rows = {"ACC": ("acc", "acc"), "AUC (macro one-vs-rest)" if task != _tasks.BINARY else "AUC": ("auc", "auc"),
                "balanced ACC": ("balanced_acc", "balanced_acc")}
    if task == _tasks.ORDINAL:
        rows["mean absolute error (grades)"] = ("mae", "mae")
        rows["quadratic-weighted kappa"] = ("qwk", "qwk")
    rows["ECE (15 bins)" + (", mean over labels" if task == _tasks.MULTILABEL else "")] = (None, "ece")
    rows["ECE after temperature"] = (None, "ece_after_temperature")
    return {label: (v.get(vk) if vk else "–", t.get(tk), t.get(f"{tk}_ci95")) for label, (vk, tk) in rows.items()}


def headline(result: dict) -> pd.DataFrame:
    """Test numbers with their 95 % intervals (and the val point estimates beside them)."""
    t = result["test"]
    df = pd.DataFrame({k: {"val": a if a == "–" else _fmt(a), "test": _fmt(b), "test 95% CI": _ci(c)}
                       for k, (a, b, c) in _headline_rows(result).items()}).T
    b = t["bootstrap"]
    df.loc["images"] = [str(result["val"]["n"]), str(t["n"]), f"{b['n_resamples']} resamples, seed {b['seed']}"]
    return df


def _worst(result: dict, rate: str, n: int) -> list[str]:
    rows = result["test"]["per_class_ci95"]
    vals = {name: (r.get(rate) if r.get(rate) is not None else -1.0) for name, r in rows.items()}
    return sorted(vals, key=lambda k: vals[k])[:n]


def interval_plot(result: dict):
    """Forest plot: headline numbers and per-class sensitivity and PPV with 95 % intervals (for more than
    ``MAX_CLASSES_PLOTTED`` classes: the classes with the lowest sensitivity)."""
    from ..core.viz import forest
    t = result["test"]
    labels, vals, lows, highs = [], [], [], []

    def add(label, v, ci):
        labels.append(label)
        vals.append(np.nan if v is None else v)
        lows.append(None if not ci else ci[0])
        highs.append(None if not ci else ci[1])

    for label, (_, v, ci) in _headline_rows(result).items():
        if "ECE" not in label and "error" not in label:
            add(label, v, ci)
    names = list(t["per_class_ci95"])
    shown = names if len(names) <= MAX_CLASSES_PLOTTED else _worst(result, "sensitivity", MAX_CLASSES_PLOTTED // 2)
    for r in ("sensitivity", "ppv"):
        for name in shown:
            row = t["per_class_ci95"][name]
            add(f"{_label(r)}: {name}", row.get(r), row.get(f"{r}_ci95"))
    title = "Test metrics with 95 % bootstrap intervals"
    if len(shown) < len(names):
        title += f" (per class: the {len(shown)} of {len(names)} classes with the lowest sensitivity)"
    return forest(labels, vals, lows, highs, title=title, xlabel="value")


def per_class(result: dict, split: str = "test") -> pd.DataFrame:
    """Test: each class's (label's) one-vs-rest rates with 95 % intervals, support, AUC and AP.
    Val: precision / recall / F1 / support (point estimates; single-label tasks)."""
    if split != "test":
        return pd.DataFrame(result[split].get("per_class", {})).T
    rows = {}
    for name, r in result["test"]["per_class_ci95"].items():
        rates = [k for k in r if not k.endswith("_ci95") and k not in ("support", "roc_auc", "average_precision")]
        row = {_label(m): _with_ci(r[m], r.get(f"{m}_ci95")) for m in rates}
        row.update({"support": r["support"], "OvR AUC": _fmt(r["roc_auc"], 3), "AP": _fmt(r["average_precision"], 3)})
        rows[name] = row
    return pd.DataFrame(rows).T


def confusion_figure(ds, preds: dict):
    """Single-label: the confusion matrix of the test predictions. Multi-label: per label, the counts of
    true/false positives and negatives at threshold 0.5."""
    from ..core.viz import confusion_matrix
    y, p = preds["test_labels"], preds["test_probs"]
    if _tasks.is_multilabel(ds.task):
        pred = _tasks.decide(p, ds.task)
        return pd.DataFrame({"TP": ((pred == 1) & (y == 1)).sum(0), "FP": ((pred == 1) & (y == 0)).sum(0),
                             "FN": ((pred == 0) & (y == 1)).sum(0), "TN": ((pred == 0) & (y == 0)).sum(0)},
                            index=ds.class_names)
    return confusion_matrix(_metrics.confusion(y, _tasks.decide(p, ds.task), ds.num_classes), ds.class_names)


def operating_points(result: dict) -> pd.DataFrame:
    """Binary: the threshold chosen on val for the target sensitivity and its test rates with intervals.
    Otherwise: each class's (label's) one-vs-rest ROC AUC and average precision (area under PR) on test."""
    op = result.get("operating_point")
    if op is not None:
        rows = {"threshold (chosen on val)": _fmt(op["threshold"]),
                "target sensitivity": _fmt(op["target_sensitivity"], 3),
                "val sensitivity": _fmt(op.get("val_sensitivity"), 3),
                "val specificity": _fmt(op.get("val_specificity"), 3)}
        for m in ("sensitivity", "specificity", "ppv", "npv"):
            rows[f"test {_label(m)}"] = _with_ci(op["test"].get(m), op["test"].get(f"{m}_ci95"))
        return pd.DataFrame({"value": rows})
    curves = result["test"]["curves"]
    return pd.DataFrame({"OvR ROC AUC": [_fmt(v) for v in curves["roc_auc"]],
                         "average precision": [_fmt(v) for v in curves["average_precision"]],
                         "prevalence": [_fmt(v, 3) for v in curves["prevalence"]]}, index=result["class_names"])


def roc_figure(ds, preds: dict, result: dict):
    from ..core.viz import operating_point_roc, roc_curves
    op = result.get("operating_point")
    if op is not None and op["threshold"] is not None and np.isfinite(op["threshold"]):
        return operating_point_roc(preds["val_labels"], preds["val_probs"][:, 1], preds["test_labels"],
                                   preds["test_probs"][:, 1], op["threshold"], op["target_sensitivity"],
                                   positive=ds.class_names[1])
    return roc_curves(preds["test_labels"], preds["test_probs"], ds.class_names)


def pr_figure(ds, preds: dict):
    from ..core.viz import pr_curves
    return pr_curves(preds["test_labels"], preds["test_probs"], ds.class_names)


def calibration_table(result: dict) -> pd.DataFrame:
    t, fit = result["test"], result["calibration"]["fit"]
    temp = t["temperature"]
    temp_text = _fmt(temp) if not isinstance(temp, list) else \
        f"{len(temp)} per-label temperatures, {min(temp):.3f}–{max(temp):.3f}"
    return pd.DataFrame({
        "uncalibrated": {"test ECE": _with_ci(t["ece"], t.get("ece_ci95"), 4), "test NLL": _fmt(t["nll"]),
                         "val NLL": _fmt(fit["nll_before"]), "temperature": "1"},
        "temperature scaled": {"test ECE": _with_ci(t["ece_after_temperature"], t.get("ece_after_temperature_ci95"), 4),
                               "test NLL": _fmt(t["nll_after_temperature"]), "val NLL": _fmt(fit["nll_after"]),
                               "temperature": temp_text},
    })


def reliability_figure(result: dict):
    from ..core.viz import reliability_diagram
    c, t = result["calibration"], result["test"]
    temp = c["temperature"]
    label = temp if not isinstance(temp, list) else float(np.mean(temp))
    what = "decision confidence of every label" if result["task"] == _tasks.MULTILABEL else "top-1 confidence"
    return reliability_diagram(c["reliability"], c["reliability_after_temperature"], t["ece"],
                               t["ece_after_temperature"], label,
                               title=f"Reliability on test ({t['n']} images, {what}); temperature fitted on val")


# --- explanations --------------------------------------------------------------------------------------------

def _losses(y: np.ndarray, p: np.ndarray, task: str) -> np.ndarray:
    if _tasks.is_multilabel(task):
        q = np.clip(np.where(y == 1, p, 1 - p), 1e-12, 1)
        return -np.log(q).sum(1)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))


def _explained_class(y: np.ndarray, p: np.ndarray, task: str) -> np.ndarray:
    """The class whose Grad-CAM a gallery shows: the predicted class; for multi-label images the label
    the model got most wrong (else its most confident present label)."""
    if _tasks.is_multilabel(task):
        err = np.abs(p - y)
        return np.where(err.max(1) > 0.5, err.argmax(1), p.argmax(1))
    return _tasks.decide(p, task) if task != _tasks.BINARY else p.argmax(1)


def _caption(i, y, p, names, task):
    if _tasks.is_multilabel(task):
        pred = _tasks.label_names(_tasks.decide(p[i:i + 1], task)[0], names, task)
        true = _tasks.label_names(y[i], names, task)
        return f"#{i} pred {pred[:18]}\ntrue {true[:18]}"
    pred = int(p[i].argmax())
    return (f"#{i} pred {names[pred][:11]} {p[i][pred]:.2f}\n"
            f"true {names[y[i]][:11]} {p[i][y[i]]:.2f}")


def _wrong(y, p, task) -> np.ndarray:
    pred = _tasks.decide(p, task)
    return (pred != y).any(1) if _tasks.is_multilabel(task) else pred != y


def top_losses(trained, ds, preds: dict, params: EvaluateParams):
    """The ``gallery_size`` test images with the highest loss: the most confident errors first, with the
    Grad-CAM of the class the model predicted (multi-label: of the label it got most wrong)."""
    from ..model.explain import gradcam
    from ..core.viz import cam_gallery
    y, p, task = preds["test_labels"], preds["test_probs"], ds.task
    idx = np.argsort(-_losses(y, p, task), kind="stable")[:params.gallery_size]
    cls = _explained_class(y, p, task)
    cams = gradcam(trained.model, ds.images["test"][idx], cls[idx], layer=params.cam_layer)
    caps = [_caption(i, y, p, ds.class_names, task) for i in idx]
    wrong = _wrong(y, p, task)
    colors = ["red" if wrong[i] else "green" for i in idx]
    return cam_gallery(ds.images["test"][idx], cams, caps, colors, ncols=4,
                       title=f"Top losses: {len(idx)} highest-loss test images ({int(wrong.sum())} errors in {len(y)}); "
                             "overlay: Grad-CAM of the predicted class")


def _most_confident(mask: np.ndarray, conf: np.ndarray):
    idx = np.flatnonzero(mask)
    return int(idx[np.argmax(conf[idx])]) if len(idx) else None


def correct_vs_wrong(trained, ds, preds: dict, params: EvaluateParams):
    """Per class (label): the most confident correct prediction and the most confident error among its
    images. Beyond ``MAX_CLASSES_PLOTTED`` classes, only the classes with the most errors."""
    from ..model.explain import gradcam
    from ..core.viz import correct_wrong_grid
    y, p, task = preds["test_labels"], preds["test_probs"], ds.task
    k = ds.num_classes
    if _tasks.is_multilabel(task):
        pred = _tasks.decide(p, task)
        right = [(y[:, c] == 1) & (pred[:, c] == 1) for c in range(k)]
        wrong = [(y[:, c] == 1) & (pred[:, c] == 0) for c in range(k)]
        conf = [p[:, c] for c in range(k)]
        conf_w = [1 - p[:, c] for c in range(k)]
    else:
        pred, top = p.argmax(1), p.max(1)
        right = [(y == c) & (pred == c) for c in range(k)]
        wrong = [(y == c) & (pred != c) for c in range(k)]
        conf, conf_w = [top] * k, [top] * k
    classes = list(range(k))
    if k > MAX_CLASSES_PLOTTED:
        classes = sorted(classes, key=lambda c: -int(wrong[c].sum()))[:MAX_CLASSES_PLOTTED // 2]
    picks = {c: (_most_confident(right[c], conf[c]), _most_confident(wrong[c], conf_w[c])) for c in classes}
    cam_class = {}
    for c, (a, b) in picks.items():
        for i in (a, b):
            if i is not None:
                cam_class[i] = c if _tasks.is_multilabel(task) else int(p[i].argmax())
    chosen = sorted(cam_class)
    cams = dict(zip(chosen, gradcam(trained.model, ds.images["test"][chosen], np.array([cam_class[i] for i in chosen]),
                                    layer=params.cam_layer))) if chosen else {}

    def item(i, c):
        if i is None:
            return None
        what = f"p({ds.class_names[c][:10]})={p[i][c]:.2f}" if _tasks.is_multilabel(task) else \
            f"→ {ds.class_names[int(p[i].argmax())][:12]} {p[i].max():.2f}"
        return {"image": ds.images["test"][i], "cam": cams[i], "caption": f"#{i} {what}"}
    rows = [{"class": ds.class_names[c], "correct": item(a, c), "wrong": item(b, c)} for c, (a, b) in picks.items()]
    title = "Correct vs wrong per class (test, Grad-CAM)"
    if len(classes) < k:
        title += f": the {len(classes)} of {k} classes with the most errors"
    return correct_wrong_grid(rows, title=title)


def occlusion_figure(trained, ds, preds: dict, params: EvaluateParams, n: int = 3):
    """Grad-CAM beside occlusion sensitivity for the ``n`` most confident errors and the ``n`` most
    confident correct predictions (the explained class in both)."""
    from ..model.explain import gradcam, occlusion
    from ..core.viz import explanation_rows
    y, p, task = preds["test_labels"], preds["test_probs"], ds.task
    wrong = _wrong(y, p, task)
    conf = _tasks.confidence(p, task)
    conf = conf.min(1) if conf.ndim == 2 else conf
    cls = _explained_class(y, p, task)
    w, r = np.flatnonzero(wrong), np.flatnonzero(~wrong)
    idx = np.concatenate([w[np.argsort(-conf[w], kind="stable")][:n],
                          r[np.argsort(-conf[r], kind="stable")][:n]]).astype(int)
    images = ds.images["test"][idx]
    cams = gradcam(trained.model, images, cls[idx], layer=params.cam_layer)
    occ = occlusion(trained.model, images, cls[idx])
    caps = [("wrong: " if wrong[i] else "right: ") + _caption(i, y, p, ds.class_names, task) for i in idx]
    return explanation_rows(images, cams, occ, caps)


# --- TTA / ensembles, baselines, model card -------------------------------------------------------------------

def variants(result: dict):
    """This run, with test-time augmentation and as an ensemble: ACC/AUC and their paired gain, with intervals."""
    from ..core.viz import Markdown
    v = result["variants"]
    if not v:
        return Markdown("Test-time augmentation and ensembles are off (parameters `tta` and `ensemble`).")
    t = result["test"]
    rows = {"this run": {"ACC": _with_ci(t["acc"], t["acc_ci95"]), "AUC": _with_ci(t["auc"], t["auc_ci95"]),
                         "ACC gain": "", "AUC gain": ""}}
    for name, r in v.items():
        label = f"TTA ({r['passes']} passes + original)" if name == "tta" else f"ensemble of {len(r['members'])} runs"
        rows[label] = {"ACC": _with_ci(r["acc"], r["acc_ci95"]), "AUC": _with_ci(r["auc"], r["auc_ci95"]),
                       "ACC gain": _with_ci(r["acc_gain"], r["acc_gain_ci95"]),
                       "AUC gain": _with_ci(r["auc_gain"], r["auc_gain_ci95"])}
    return pd.DataFrame(rows).T


def baselines(ds, result: dict, model_name: str = "this run") -> pd.DataFrame:
    """The card's published baselines (test ACC/AUC) beside this run's point estimate and 95 % interval,
    and where our interval lies relative to each (above / overlaps / below)."""
    t = result["test"]
    rows = {f"{model_name} (this run)": {"test ACC": _with_ci(t["acc"], t["acc_ci95"], 4),
                                         "test AUC": _with_ci(t["auc"], t["auc_ci95"], 4),
                                         "our ACC interval is": "", "our AUC interval is": "", "source": "measured"}}
    for m, b in result["published_baselines"].items():
        rows[m] = {"test ACC": _fmt(b["acc"], 3), "test AUC": _fmt(b["auc"], 3),
                   "our ACC interval is": b["our_acc_interval"], "our AUC interval is": b["our_auc_interval"],
                   "source": "published (data card)"}
    return pd.DataFrame(rows).T


def baseline_figure(result: dict, model_name: str = "this run"):
    from ..core.viz import Markdown
    from ..core.viz import baseline_comparison
    if not result["published_baselines"]:
        return Markdown("The data card lists no published baselines for this dataset.")
    return baseline_comparison(result["published_baselines"], result["test"], name=model_name)


def write_model_card(run: _runs.Run, ds):
    """Write ``model_card.md`` from the run's files (see workbench.report.model_card); return it for display."""
    from .report import model_card
    from ..core.viz import Markdown
    text = model_card(run.path, ds.card)
    run.file("model_card.md").write_text(text, encoding="utf-8")
    return Markdown(text)


NOTEBOOK = _cells.Stage(
    stage="evaluate", title="20 · Evaluate",
    inputs="a run directory holding a trained `model.keras`",
    outputs="`metrics.json` (test ACC/AUC by the MedMNIST protocol with 95 % bootstrap intervals, per-class "
            "sensitivity/specificity/PPV/NPV/F1, ordinal MAE and kappa, multi-label per-label rates, calibration, "
            "operating points, TTA/ensemble gains, published baselines), `predictions.npz`, `calibration.json` "
            "(temperature fitted on val), `model_card.md`",
    cells=(
        _cells.code('import workbench as wb\nfrom workbench import evaluate, neighbours\n\n'
                    'P = wb.params.collect("evaluate", globals())\n'
                    "run, trained, ds = evaluate.open_stage(P)"),
        _cells.md("## Headline with 95 % intervals\nACC and AUC by the MedMNIST protocol (multi-label: means over "
                  "labels), balanced accuracy (ordinal tasks also mean absolute error and quadratic-weighted kappa) and "
                  "calibration error on the test split; intervals from a seeded bootstrap (`n_resamples`)."),
        _cells.code("result = evaluate.compute(run, trained, ds, P)"),
        _cells.show("evaluate.headline(result)"),
        _cells.show("evaluate.interval_plot(result)"),
        _cells.md("## Per class (test)\nOne-vs-rest sensitivity, specificity, PPV, NPV and F1 with 95 % intervals; "
                  "undefined where the denominator is zero (e.g. the PPV of a class never predicted)."),
        _cells.show('evaluate.per_class(result, "test")'),
        _cells.code("preds = evaluate.load_predictions(run)"),
        _cells.show("evaluate.confusion_figure(ds, preds)"),
        _cells.md("## Operating points\nBinary tasks: the threshold reaching `target_sensitivity` on val, reported on "
                  "test. Otherwise: one-vs-rest ROC and precision-recall curves per class (label)."),
        _cells.show("evaluate.operating_points(result)"),
        _cells.show("evaluate.roc_figure(ds, preds, result)"),
        _cells.show("evaluate.pr_figure(ds, preds)"),
        _cells.md("## Calibration\nExpected calibration error (15 bins) before and after temperature scaling; the "
                  "temperature (one per label for multi-label tasks) is fitted on val, applied to test and saved with "
                  "the model as `calibration.json`."),
        _cells.show("evaluate.calibration_table(result)"),
        _cells.show("evaluate.reliability_figure(result)"),
        _cells.md("## Explanations\nTop losses (the test images with the highest loss: the most confident errors "
                  "first), then each class's most confident correct and wrong prediction, then Grad-CAM beside "
                  "occlusion sensitivity. Grad-CAM (on JAX) shows where the evidence for the predicted class lies; "
                  "occlusion sensitivity is the drop in that class's probability when a patch of the image is hidden."),
        _cells.show("evaluate.top_losses(trained, ds, preds, P)"),
        _cells.show("evaluate.correct_vs_wrong(trained, ds, preds, P)"),
        _cells.show("evaluate.occlusion_figure(trained, ds, preds, P)"),
        _cells.md("## Test-time augmentation and ensembles\nGain over this run on the same test images, with paired "
                  "bootstrap intervals (`tta`, `ensemble`)."),
        _cells.show("evaluate.variants(result)"),
        _cells.md("## Against the published baselines (data card)\nOur point estimate and 95 % interval beside each "
                  "published test result, and where our interval lies relative to it."),
        _cells.show("evaluate.baselines(ds, result, trained.params.model)"),
        _cells.show("evaluate.baseline_figure(result, trained.params.model)"),
        _cells.md("## Baselines on this run's features\nkNN (k = 11, cosine) and a linear probe (logistic regression, "
                  "C chosen on val) on the network's pooled penultimate features of the train split, scored on test "
                  "with 95 % bootstrap intervals, beside the network itself (`feature_baselines` in metrics.json)."),
        _cells.show("neighbours.baselines_table(result)"),
        _cells.md("## Robustness to acquisition changes\nAccuracy on test images changed as another microscope, "
                  "scanner, stain batch or site would change them: the data card's corruption suite (workbench.corrupt, "
                  "3 severities each, `robustness` images), predicted by the model as saved. Corruptions of a kind the "
                  "training augmentation drew (`photometric card`) are marked; the others measure generalisation."),
        _cells.code("from workbench import robustness\nrob = robustness.measure(run, trained, ds, P)"),
        _cells.show("robustness.table(rob)"),
        _cells.show("robustness.figure(trained, ds, rob)"),
        _cells.md("## Model card\nWritten to `model_card.md` in the run directory."),
        _cells.code("card = evaluate.write_model_card(run, ds)"),
        _cells.show("card"),
    ),
    result=("run", "result"),
)


def run(params: EvaluateParams) -> dict:
    """The whole stage without a notebook: the notebook's code cells, in order (workbench.cells)."""
    out = _cells.run_cells(NOTEBOOK, params)
    return {"run_dir": str(out["run"].path), **out["result"]}

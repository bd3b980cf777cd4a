"""Evaluate stage: the numbers a paper needs, each with its uncertainty.

- Test ACC and macro one-vs-rest AUC by the MedMNIST protocol, balanced accuracy and per-class
  sensitivity, specificity, PPV, NPV and F1, each with a seeded, class-stratified percentile-bootstrap
  95 % interval (``n_resamples``, default 1000).
- Calibration: ECE (15 bins) and reliability diagram; a temperature fitted on val and applied to test,
  saved beside the model as ``calibration.json`` (the annotate stage reads it).
- Operating points: binary tasks get the threshold reaching ``target_sensitivity`` on val, reported on
  test; multi-class tasks get per-class one-vs-rest ROC and precision-recall curves.
- Explanations: Grad-CAM (workbench.explain, on JAX) and occlusion for galleries of the most confident
  errors ("top losses") and of correct vs wrong predictions per class.
- Optional test-time augmentation (``tta`` passes of the run's training augmentation) and seed
  ensembles (``ensemble``: other run directories), with their paired gain and its interval.
- The data card's published baselines beside our point estimate and interval.

Writes ``metrics.json``, ``predictions.npz``, ``calibration.json`` and ``model_card.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import calibration as _calibration
from . import metrics as _metrics
from . import runs as _runs
from . import train as _train
from .errors import WorkbenchError
from .params import EvaluateParams


def predict(model, images: np.ndarray, batch_size: int = 512, desc: str = "predict") -> np.ndarray:
    """Class probabilities for uint8 images, in batches, with a progress bar.

    Every batch is padded to ``batch_size`` (repeating its last image; the padding's outputs are dropped):
    JAX compiles the model once per input shape, about a second each, and a stage predicts val, test,
    augmented copies and occluded copies; with one shape it compiles once."""
    from .explain import pad_batch
    from .progress import tqdm
    out = []
    size = min(batch_size, len(images)) if len(images) else batch_size
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        x = images[i:i + batch_size].astype("float32")
        out.append(np.asarray(model.predict_on_batch(pad_batch(x, size)))[:len(x)])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, model.output_shape[-1]))


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
        raise WorkbenchError(f"parameter 'tta' = {passes}: {run_dir} has no augment.yaml to draw the test-time "
                             "augmentations from; set tta 0")
    from . import augment as _augment
    t, doc = _augment.load(path)
    if _augment.is_identity(t):
        raise WorkbenchError(f"parameter 'tta' = {passes}: the run was trained with augmentation preset "
                             f"{doc.get('preset')!r}, which changes nothing; set tta 0 or train with augmentation")


def open_stage(params: EvaluateParams):
    """Check the parameters that depend on the run (ensemble, tta, cam_layer), then open the stage."""
    from . import explain as _explain
    from . import models as _models
    target = _target_dir(params)
    _runs.require(target, _runs.TRAIN_ARTIFACTS, "train")
    members = ensemble_members(params, target)
    _check_tta(target, params.tta)
    _explain.check_layer(_models.load(target / "model.keras", compile=False), params.cam_layer)
    run = _runs.open_stage("evaluate", params, upstream=_runs.TRAIN_ARTIFACTS)
    model, ds, tp = _train.reload(run)
    _runs.add_provenance(run, data=ds.describe(), ensemble=[str(p) for p in members])
    return run, model, ds, tp


# --- predictions with test-time augmentation and ensembles -------------------------------------------------

def tta_predict(model, images: np.ndarray, augment_yaml: Path, passes: int, seed: int,
                batch_size: int = 512) -> np.ndarray:
    """Mean probabilities over the images as they are and ``passes`` copies drawn from the run's training
    augmentation (augment.yaml), re-seeded with ``seed``."""
    from . import augment as _augment
    from .progress import tqdm
    t, _ = _augment.load(augment_yaml)
    _augment.reseed(t, seed)
    total = predict(model, images, batch_size, desc="predict test")
    for _ in tqdm(range(passes), desc="test-time augmentation", unit="pass"):
        total = total + predict(model, _augment.apply(t, images), batch_size, desc="tta pass")
    return total / (passes + 1)


def ensemble_predict(ds, members: list[Path], batch_size: int = 512) -> list[np.ndarray]:
    """Test probabilities of each member run's model; every member must have been trained on the same
    data (same file md5, and the same test images in the same order)."""
    out = []
    for p in members:
        model, mds, _ = _train.reload(_runs.Run(path=p, stage="evaluate"))
        same = (mds.md5 == ds.md5 and mds.images["test"].shape == ds.images["test"].shape
                and np.array_equal(mds.labels["test"], ds.labels["test"])
                and np.array_equal(mds.images["test"], ds.images["test"]))
        if not same:
            raise WorkbenchError(f"parameter 'ensemble': {p} was trained on other data ({mds.name}, md5 {mds.md5}, "
                                 f"{len(mds.labels['test'])} test images) than this run ({ds.name}, md5 {ds.md5}, "
                                 f"{len(ds.labels['test'])}): members need the same dataset, size and subset")
        out.append(predict(model, ds.images["test"], batch_size, desc=f"predict test ({p.name})"))
    return out


# --- the stage's numbers ------------------------------------------------------------------------------------

def _per_class_ci(test: dict, class_names: list[str]) -> dict:
    rates = test.pop("per_class_rates")
    support = test.pop("support")
    curves = test["curves"]
    out = {}
    for c, name in enumerate(class_names):
        row = {}
        for r in _metrics.PER_CLASS_RATES:
            row[r] = rates[r]["value"][c]
            row[f"{r}_ci95"] = rates[r]["ci95"][c]
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


def compute(run: _runs.Run, model, ds, params: EvaluateParams) -> dict:
    """Predict val and test, compute every number with its interval, fit the temperature; write
    predictions.npz, calibration.json and metrics.json; return the metrics."""
    n_boot, seed = params.n_resamples, params.seed
    probs = {s: predict(model, ds.images[s], params.batch_size, desc=f"predict {s}") for s in ("val", "test")}
    y = {s: ds.labels[s] for s in probs}
    result = {"dataset": ds.name, "task": ds.task, "class_names": ds.class_names}

    val = _metrics.medmnist_acc_auc(y["val"], probs["val"], ds.task)
    val["balanced_acc"] = _metrics.headline_point(y["val"], probs["val"], ds.task)["balanced_acc"]
    val["per_class"] = _metrics.per_class_table(y["val"], _metrics.predicted_labels(probs["val"], ds.task),
                                                ds.class_names).round(6).to_dict(orient="index")
    result["val"] = val

    test = _metrics.headline_intervals(y["test"], probs["test"], ds.task, n_resamples=n_boot, seed=seed)
    test["per_class"] = _metrics.per_class_table(y["test"], _metrics.predicted_labels(probs["test"], ds.task),
                                                 ds.class_names).round(6).to_dict(orient="index")
    test["curves"] = _metrics.curves_summary(y["test"], probs["test"])
    test["per_class_ci95"] = _per_class_ci(test, ds.class_names)

    cal = _calibration.evaluate(probs["val"], y["val"], probs["test"], y["test"], n_bins=15,
                                n_resamples=n_boot, seed=seed)
    test.update({"ece": cal["ece"], "ece_ci95": cal["ece_ci95"], "ece_after_temperature": cal["ece_after_temperature"],
                 "ece_after_temperature_ci95": cal["ece_after_temperature_ci95"], "temperature": cal["temperature"],
                 "nll": cal["nll"], "nll_after_temperature": cal["nll_after_temperature"]})
    result["test"] = test
    result["calibration"] = {k: cal[k] for k in ("temperature", "fit", "n_bins", "reliability",
                                                   "reliability_after_temperature")}
    _calibration.save(run, cal)

    if ds.task == "binary-class":
        result["operating_point"] = _metrics.operating_point(y["val"], probs["val"][:, 1], y["test"],
                                                             probs["test"][:, 1], params.target_sensitivity,
                                                             n_resamples=n_boot, seed=seed)

    arrays = {"val_probs": probs["val"], "test_probs": probs["test"], "val_labels": y["val"], "test_labels": y["test"],
              "test_probs_calibrated": _calibration.apply_temperature(probs["test"], cal["temperature"])}
    variants = {}
    if params.tta:
        p_tta = tta_predict(model, ds.images["test"], run.path / "augment.yaml", params.tta, seed, params.batch_size)
        arrays["test_probs_tta"] = p_tta
        variants["tta"] = {"passes": params.tta,
                           **_metrics.paired_gain(y["test"], probs["test"], p_tta, ds.task, n_boot, seed)}
    members = ensemble_members(params, run.path)
    if members:
        member_probs = ensemble_predict(ds, members, params.batch_size)
        p_ens = np.mean([probs["test"], *member_probs], axis=0)
        arrays["test_probs_ensemble"] = p_ens
        variants["ensemble"] = {"members": [str(run.path), *map(str, members)],
                                "member_acc": [test["acc"], *(_metrics.medmnist_acc_auc(y["test"], p, ds.task)["acc"]
                                                              for p in member_probs)],
                                **_metrics.paired_gain(y["test"], probs["test"], p_ens, ds.task, n_boot, seed)}
    result["variants"] = variants
    published = dict(ds.card.published_baselines) if ds.card else {}
    result["published_baselines"] = compare_baselines(published, test)

    np.savez_compressed(run.file("predictions.npz"), **arrays)
    result = _strict_json(result)
    run.write_json("metrics.json", result)
    return result


def _strict_json(obj):
    """NaN/inf (an empty reliability bin, an undefined AUC) → None: metrics.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


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
    return rate.upper() if rate in ("ppv", "npv") else rate


def _with_ci(v, ci, digits: int = 3) -> str:
    return f"{_fmt(v, digits)} {_ci(ci, digits)}" if v is not None else "undefined"


def headline(result: dict) -> pd.DataFrame:
    """Test numbers with their 95 % intervals (and the val point estimates beside them)."""
    t, v = result["test"], result["val"]
    rows = {
        "ACC": (v["acc"], t["acc"], t["acc_ci95"]),
        "AUC (macro one-vs-rest)": (v["auc"], t["auc"], t["auc_ci95"]),
        "balanced ACC": (v["balanced_acc"], t["balanced_acc"], t["balanced_acc_ci95"]),
        "ECE (15 bins)": ("–", t["ece"], t["ece_ci95"]),
        "ECE after temperature": ("–", t["ece_after_temperature"], t["ece_after_temperature_ci95"]),
    }
    df = pd.DataFrame({k: {"val": a if a == "–" else _fmt(a), "test": _fmt(b), "test 95% CI": _ci(c)}
                       for k, (a, b, c) in rows.items()}).T
    b = t["bootstrap"]
    df.loc["images"] = [str(v["n"]), str(t["n"]), f"{b['n_resamples']} resamples, seed {b['seed']}"]
    return df


def interval_plot(result: dict):
    """Forest plot: headline numbers and per-class sensitivity and PPV with 95 % intervals."""
    from .viz import forest
    t = result["test"]
    labels, vals, lows, highs = [], [], [], []

    def add(label, v, ci):
        labels.append(label)
        vals.append(np.nan if v is None else v)
        lows.append(None if not ci else ci[0])
        highs.append(None if not ci else ci[1])

    add("ACC", t["acc"], t["acc_ci95"])
    add("AUC (macro OvR)", t["auc"], t["auc_ci95"])
    add("balanced ACC", t["balanced_acc"], t["balanced_acc_ci95"])
    for r in ("sensitivity", "ppv"):
        for name, row in t["per_class_ci95"].items():
            add(f"{_label(r)}: {name}", row[r], row[f"{r}_ci95"])
    return forest(labels, vals, lows, highs, title="Test metrics with 95 % bootstrap intervals", xlabel="value")


def per_class(result: dict, split: str = "test") -> pd.DataFrame:
    """Test: sensitivity, specificity, PPV, NPV, F1 with 95 % intervals, support, OvR AUC and AP.
    Val: precision / recall / F1 / support (point estimates)."""
    if split != "test":
        return pd.DataFrame(result[split]["per_class"]).T
    rows = {}
    for name, r in result["test"]["per_class_ci95"].items():
        row = {_label(m): _with_ci(r[m], r[f"{m}_ci95"]) for m in _metrics.PER_CLASS_RATES}
        row.update({"support": r["support"], "OvR AUC": _fmt(r["roc_auc"], 3), "AP": _fmt(r["average_precision"], 3)})
        rows[name] = row
    return pd.DataFrame(rows).T


def operating_points(result: dict) -> pd.DataFrame:
    """Binary: the threshold chosen on val for the target sensitivity and its test rates with intervals.
    Multi-class: each class's one-vs-rest ROC AUC and average precision (area under PR) on test."""
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
    from .viz import operating_point_roc, roc_curves
    op = result.get("operating_point")
    if op is not None and np.isfinite(op["threshold"]):
        return operating_point_roc(preds["val_labels"], preds["val_probs"][:, 1], preds["test_labels"],
                                   preds["test_probs"][:, 1], op["threshold"], op["target_sensitivity"],
                                   positive=ds.class_names[1])
    return roc_curves(preds["test_labels"], preds["test_probs"], ds.class_names)


def pr_figure(ds, preds: dict):
    from .viz import pr_curves
    return pr_curves(preds["test_labels"], preds["test_probs"], ds.class_names)


def calibration_table(result: dict) -> pd.DataFrame:
    t, fit = result["test"], result["calibration"]["fit"]
    return pd.DataFrame({
        "uncalibrated": {"test ECE": _with_ci(t["ece"], t["ece_ci95"], 4), "test NLL": _fmt(t["nll"]),
                         "val NLL": _fmt(fit["nll_before"]), "temperature": "1"},
        "temperature scaled": {"test ECE": _with_ci(t["ece_after_temperature"], t["ece_after_temperature_ci95"], 4),
                               "test NLL": _fmt(t["nll_after_temperature"]), "val NLL": _fmt(fit["nll_after"]),
                               "temperature": _fmt(t["temperature"])},
    })


def reliability_figure(result: dict):
    from .viz import reliability_diagram
    c, t = result["calibration"], result["test"]
    return reliability_diagram(c["reliability"], c["reliability_after_temperature"], t["ece"],
                               t["ece_after_temperature"], c["temperature"],
                               title=f"Reliability on test ({t['n']} images); temperature fitted on val")


# --- explanations --------------------------------------------------------------------------------------------

def _caption(i, pred, y, probs, names):
    return (f"#{i} pred {names[pred][:11]} {probs[pred]:.2f}\n"
            f"true {names[y][:11]} {probs[y]:.2f}")


def top_losses(model, ds, preds: dict, params: EvaluateParams):
    """The ``gallery_size`` test images with the highest loss (−log p(true class)): the most confident
    errors first, with the Grad-CAM of the class the model predicted."""
    from .explain import gradcam
    from .viz import cam_gallery
    y, p = preds["test_labels"], preds["test_probs"]
    loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))
    idx = np.argsort(-loss, kind="stable")[:params.gallery_size]
    pred = p.argmax(1)
    cams = gradcam(model, ds.images["test"][idx], pred[idx], layer=params.cam_layer)
    caps = [_caption(i, pred[i], y[i], p[i], ds.class_names) for i in idx]
    colors = ["red" if pred[i] != y[i] else "green" for i in idx]
    n_wrong = int((pred != y).sum())
    return cam_gallery(ds.images["test"][idx], cams, caps, colors, ncols=4,
                       title=f"Top losses: {len(idx)} highest-loss test images ({n_wrong} errors in {len(y)}); "
                             "overlay: Grad-CAM of the predicted class")


def _most_confident(mask: np.ndarray, conf: np.ndarray):
    idx = np.flatnonzero(mask)
    return int(idx[np.argmax(conf[idx])]) if len(idx) else None


def correct_vs_wrong(model, ds, preds: dict, params: EvaluateParams):
    """Per class: the most confident correct prediction and the most confident error among its images."""
    from .explain import gradcam
    from .viz import correct_wrong_grid
    y, p = preds["test_labels"], preds["test_probs"]
    pred, conf = p.argmax(1), p.max(1)
    picks = []
    for c in range(ds.num_classes):
        picks.append((_most_confident((y == c) & (pred == c), conf), _most_confident((y == c) & (pred != c), conf)))
    chosen = sorted({i for pair in picks for i in pair if i is not None})
    cams = dict(zip(chosen, gradcam(model, ds.images["test"][chosen], pred[chosen], layer=params.cam_layer))) \
        if chosen else {}

    def item(i):
        if i is None:
            return None
        return {"image": ds.images["test"][i], "cam": cams[i],
                "caption": f"#{i} → {ds.class_names[pred[i]][:12]} {conf[i]:.2f}"}
    rows = [{"class": ds.class_names[c], "correct": item(a), "wrong": item(b)} for c, (a, b) in enumerate(picks)]
    return correct_wrong_grid(rows)


def occlusion_figure(model, ds, preds: dict, params: EvaluateParams, n: int = 3):
    """Grad-CAM beside occlusion sensitivity for the ``n`` most confident errors and the ``n`` most
    confident correct predictions (the predicted class in both)."""
    from .explain import gradcam, occlusion
    from .viz import explanation_rows
    y, p = preds["test_labels"], preds["test_probs"]
    pred, conf = p.argmax(1), p.max(1)
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    idx = np.concatenate([wrong[np.argsort(-conf[wrong], kind="stable")][:n],
                          right[np.argsort(-conf[right], kind="stable")][:n]]).astype(int)
    images = ds.images["test"][idx]
    cams = gradcam(model, images, pred[idx], layer=params.cam_layer)
    occ = occlusion(model, images, pred[idx])
    caps = [("wrong: " if pred[i] != y[i] else "right: ") + _caption(i, pred[i], y[i], p[i], ds.class_names)
            for i in idx]
    return explanation_rows(images, cams, occ, caps)


# --- TTA / ensembles, baselines, model card -------------------------------------------------------------------

def variants(result: dict):
    """This run, with test-time augmentation and as an ensemble: ACC/AUC and their paired gain, with intervals."""
    from .report import Markdown
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
    from .viz import baseline_comparison
    return baseline_comparison(result["published_baselines"], result["test"], name=model_name)


def write_model_card(run: _runs.Run, ds):
    """Write ``model_card.md`` from the run's files (see workbench.report.model_card); return it for display."""
    from .report import Markdown, model_card
    text = model_card(run.path, ds.card)
    run.file("model_card.md").write_text(text, encoding="utf-8")
    return Markdown(text)


def run(params: EvaluateParams) -> dict:
    """The whole stage without a notebook (the notebook calls the same steps, one per cell)."""
    r, model, ds, _ = open_stage(params)
    result = compute(r, model, ds, params)
    write_model_card(r, ds)
    return {"run_dir": str(r.path), **result}

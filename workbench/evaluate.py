"""Evaluate stage: test ACC/AUC by the MedMNIST protocol, per-class precision/recall/F1, confusion
matrix, ROC curves and the data card's published baselines; writes metrics.json, predictions.npz."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as _metrics
from . import runs as _runs
from . import train as _train
from .params import EvaluateParams


def predict(model, images: np.ndarray, batch_size: int = 512, desc: str = "predict") -> np.ndarray:
    """Class probabilities for uint8 images, in batches, with a progress bar."""
    from .progress import tqdm
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        out.append(np.asarray(model.predict_on_batch(images[i:i + batch_size].astype("float32"))))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, model.output_shape[-1]))


def open_stage(params: EvaluateParams):
    run = _runs.open_stage("evaluate", params, upstream=_runs.TRAIN_ARTIFACTS)
    model, ds, tp = _train.reload(run)
    _runs.add_provenance(run, data=ds.describe())
    return run, model, ds, tp


def compute(run: _runs.Run, model, ds, params: EvaluateParams) -> dict:
    """Predict val and test, write predictions.npz and metrics.json; return the metrics."""
    probs = {s: predict(model, ds.images[s], params.batch_size, desc=f"predict {s}") for s in ("val", "test")}
    np.savez_compressed(run.file("predictions.npz"), **{f"{s}_probs": p for s, p in probs.items()},
                        **{f"{s}_labels": ds.labels[s] for s in probs})
    result = {"dataset": ds.name, "task": ds.task, "class_names": ds.class_names}
    for s, p in probs.items():
        result[s] = _metrics.medmnist_acc_auc(ds.labels[s], p, ds.task)
        table = _metrics.per_class_table(ds.labels[s], p.argmax(1), ds.class_names)
        result[s]["per_class"] = table.round(6).to_dict(orient="index")
    run.write_json("metrics.json", result)
    return result


def load_predictions(run: _runs.Run) -> dict[str, np.ndarray]:
    with np.load(run.path / "predictions.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def per_class(result: dict, split: str = "test") -> pd.DataFrame:
    return pd.DataFrame(result[split]["per_class"]).T


def headline(result: dict) -> pd.DataFrame:
    return pd.DataFrame({s: {"ACC": result[s]["acc"], "AUC": result[s]["auc"], "images": result[s]["n"]}
                         for s in ("val", "test")}).T


def baselines(ds, result: dict, model_name: str = "this run") -> pd.DataFrame:
    """The card's published baselines (test ACC/AUC) beside this run's test numbers."""
    rows = dict(ds.card.published_baselines) if ds.card else {}
    df = pd.DataFrame(rows).T if rows else pd.DataFrame(columns=["acc", "auc"])
    df.loc[f"{model_name} (this run)"] = [result["test"]["acc"], result["test"]["auc"]]
    df.columns = ["test ACC", "test AUC"]
    df["source"] = ["published (data card)"] * len(rows) + ["measured"]
    return df.sort_values("test ACC", ascending=False)


def run(params: EvaluateParams) -> dict:
    r, model, ds, _ = open_stage(params)
    return {"run_dir": str(r.path), **compute(r, model, ds, params)}

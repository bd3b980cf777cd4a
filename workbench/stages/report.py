"""Shareable reports beyond the stage notebooks: the model card of a run and an index of runs.

``model_card(run_dir, card)`` writes the Model Cards headings (Mitchell et al., FAT* 2019) from the
run's own files (params, train summary, metrics.json, calibration.json, provenance) and the data card;
unknowns are "[More Information Needed]", headings are never dropped.

``write_index(runs_dir)`` writes ``index.html``: one self-contained page (inline CSS and a few lines of
JavaScript, no external assets) comparing every run directory: parameters, metrics with their 95 %
intervals, links to each stage report and model card; click a column to sort by it.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from ..core.errors import WorkbenchError

MODEL_CARD_HEADINGS = ("Model details", "Intended use", "Factors", "Metrics", "Robustness", "Evaluation data",
                       "Training data", "Ethical considerations", "Caveats and recommendations")
MORE = "[More Information Needed]"
NOT_CLINICAL = "Not for clinical use"


from ..core.viz import Markdown  # noqa: E402,F401  (the display helper lives with the other display primitives)


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(v, d: int = 4) -> str:
    return "undefined" if v is None or v != v else f"{v:.{d}f}"


def _ci(ci, d: int = 4) -> str:
    return "undefined" if not ci or ci[0] is None or ci[1] is None else f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def _section(body: str, heading: str) -> str | None:
    """The text under ``## heading`` of a data card body, or None."""
    m = re.search(rf"^## +{re.escape(heading)}\s*\n(.*?)(?=^## |\Z)", body or "", flags=re.M | re.S)
    text = m.group(1).strip() if m else ""
    return text or None


def _quote(text: str) -> str:
    """Markdown block quote (lines already quoted in the card stay as they are)."""
    return "\n".join(line if line.startswith(">") else ("> " + line if line.strip() else ">")
                     for line in text.splitlines())


def _vci(v, ci, d: int = 4) -> str:
    return "undefined" if v is None else f"{_f(v, d)} {_ci(ci, d)}"


def _counts(counts: list[int], names: list[str]) -> str:
    return ", ".join(f"{n} {c}" for n, c in zip(names, counts))


@dataclass
class _CardContext:
    """What the model card is written from: the run's own files and the data card."""
    run_dir: Path
    card: object
    tp: dict
    ts: dict
    m: dict
    cal: dict
    ptrain: dict
    data: dict

    @property
    def t(self) -> dict:
        return self.m["test"]

    @property
    def names(self) -> list[str]:
        return self.m["class_names"]

    @property
    def task(self) -> str:
        return self.m.get("task", "multi-class")

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label, binary-class"

    @property
    def shape(self) -> list:
        return self.data.get("input_shape") or [MORE] * 3

    @property
    def pretty(self) -> str:
        return self.card.pretty_name if self.card else self.m["dataset"]

    @property
    def modality(self) -> str:
        return self.card.modality if self.card else MORE


def _card_model_details(c: _CardContext) -> list[str]:
    tp, ts, k = c.tp, c.ts, len(c.names)
    pkgs, git = c.ptrain.get("packages", {}), c.ptrain.get("git", {})
    out_kind = (f"one sigmoid probability per label for {k} labels (multi-label)" if c.multilabel
                else f"softmax probabilities over {k} classes")
    lines = [
        f"- **Model:** `{tp.get('model', MORE)}` from the workbench model registry (`workbench.models.MODELS`), "
        f"base width {tp.get('width', MORE)}, dropout {tp.get('dropout', MORE)}; {ts['num_params']:,} parameters."
        if "num_params" in ts else f"- **Model:** `{tp.get('model', MORE)}`.",
        f"- **Task:** {c.m.get('task_description', c.task)}.",
        f"- **Input / output:** {c.shape[0]}×{c.shape[1]}×{c.shape[2]} images as raw pixel values 0-255 (rescaled "
        f"inside the model), prepared by the run's input path (`input.json`); {out_kind}: {', '.join(c.names)}."]
    if tp:
        lines.append(
            f"- **Training:** AdamW (peak learning rate {tp['learning_rate']}, weight decay {tp['weight_decay']}), "
            f"batch size {tp['batch_size']}, {tp['warmup_epochs']} warm-up epoch(s) then cosine decay; "
            f"{ts.get('epochs_run', MORE)} of at most {tp['epochs']} epochs (early stopping on val loss, patience "
            f"{tp['patience']}); checkpoint of epoch {ts.get('best_epoch', MORE)} (val loss "
            f"{_f(ts.get('best_val_loss'))}, val ACC {_f(ts.get('best_val_acc'))}); loss "
            f"{ts.get('loss', 'sparse_categorical_crossentropy')}; augmentation preset `{tp['augment']}`; test-time "
            f"augmentation {tp.get('tta', MORE)}; class weights {'on' if tp['class_weights'] else 'off'}; seed "
            f"{tp['seed']}" + (f"; {ts['train_seconds']} s of training." if "train_seconds" in ts else "."))
    if c.cal:
        temp = c.cal["temperature"]
        shown = _f(temp) if not isinstance(temp, list) else f"one per label ({min(temp):.3f}–{max(temp):.3f})"
        how = "sigmoid(logit(p) / T) per label" if c.multilabel else "softmax(log p / T)"
        lines.append(f"- **Calibration:** temperature {shown} fitted on {c.cal.get('fitted_on', 'val')} "
                     f"({c.cal.get('n_fit', MORE)} images, minimum NLL), saved with the model as `calibration.json`; "
                     f"calibrated probabilities are {how}.")
    lines += [
        f"- **Framework:** Keras {pkgs.get('keras', MORE)} on JAX {pkgs.get('jax', MORE)}, Python "
        f"{c.ptrain.get('python', MORE)}; devices: {', '.join(c.ptrain.get('devices', [])) or MORE}.",
        f"- **Provenance:** trained {c.ptrain.get('time_utc', MORE)}; git {str(git.get('sha') or MORE)[:12]}"
        + (" with uncommitted changes" if git.get("dirty") else "") + f"; data md5 {c.data.get('md5', MORE)}.",
        f"- **Developed by / contact:** {MORE}",
        f"- **License:** {MORE}" + (f" (training data: {c.card.license})." if c.card else ""),
        f"- **Citation:** {MORE}" + (f". Dataset: {c.card.source.get('citation', MORE)}" if c.card else "") + "\n"]
    return lines


def _card_intended_use(c: _CardContext) -> list[str]:
    lines = [
        f"- **Primary intended uses:** research and education on {c.pretty} ({c.modality}) image classification: "
        "method development, benchmarking against published baselines, and assisted annotation in which a "
        "person reviews every label the model is not confident about.",
        "- **Primary intended users:** machine-learning and medical-imaging researchers.",
        f"- **Out of scope:** **{NOT_CLINICAL}**: no diagnosis, screening, triage or treatment decisions. Images "
        f"of another modality, resolution ({c.shape[0]} px), acquisition protocol or population than the training "
        f"data, and classes outside the {len(c.names)} listed, are out of scope."]
    intended = _section(c.card.body, "Intended & Out-of-Scope Use") if c.card else None
    if intended:
        lines.append("- From the data card:\n\n" + _quote(intended))
    return lines + [""]


def _card_factors(c: _CardContext) -> list[str]:
    what = "labels" if c.multilabel else "classes"
    orient = c.ptrain.get("orientation") or {}
    lines = [f"- **Groups:** the {len(c.names)} {what}; every {what[:-1] if what != 'classes' else 'class'}'s results "
             "are under Metrics.",
             f"- **Instrumentation and environment:** {c.modality}. Acquisition site, device, staining or preparation "
             f"and patient demographics are not recorded per image here, so performance across them is unknown: {MORE}"]
    if orient:
        lines.append(f"- **Orientation:** {orient.get('statement', MORE)}")
    return lines + [""]


def _card_metrics(c: _CardContext) -> list[str]:
    t, m = c.t, c.m
    b = t["bootstrap"]
    if c.multilabel:
        protocol = ("ACC is the mean over labels of the accuracy at threshold 0.5 and AUC the mean over labels of the "
                    "ROC AUC (MedMNIST protocol); images are resampled for the intervals.")
    else:
        protocol = ("ACC and AUC follow the MedMNIST protocol (AUC: mean one-vs-rest ROC AUC over classes); "
                    "decisions are the arg-max class" + (", and for binary tasks p(class 1) > 0.5." if
                                                         c.task == "binary-class" else "."))
    lines = [f"Test split, {t['n']} images. Intervals: 95 % {b['method']}, {b['n_resamples']} resamples, seed "
             f"{b['seed']}. {protocol}\n", "| metric | value | 95 % interval |\n| --- | --- | --- |",
             f"| ACC | {_f(t['acc'])} | {_ci(t['acc_ci95'])} |",
             f"| AUC | {_f(t['auc'])} | {_ci(t['auc_ci95'])} |"]
    extra = [("exact_match", "exact match (every label right)"), ("balanced_acc", "balanced ACC"),
             ("mae", "mean absolute error (grades)"), ("qwk", "quadratic-weighted kappa")]
    for key, label in extra:
        if key in t:
            lines.append(f"| {label} | {_f(t[key])} | {_ci(t.get(key + '_ci95'))} |")
    lines += [f"| ECE (15 bins) | {_f(t['ece'])} | {_ci(t.get('ece_ci95'))} |",
              f"| ECE after temperature scaling | {_f(t['ece_after_temperature'])} | "
              f"{_ci(t.get('ece_after_temperature_ci95'))} |"]
    what = "label" if c.multilabel else "class"
    lines.append(f"\nPer {what} (one-vs-rest; value [95 % interval]; undefined where the denominator is zero):\n")
    lines.append(f"| {what} | support | sensitivity | specificity | PPV | NPV | F1 |\n"
                 "| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in t["per_class_ci95"].items():
        cells = [_vci(r.get(x), r.get(f"{x}_ci95")) for x in ("sensitivity", "specificity", "ppv", "npv", "f1")]
        lines.append(f"| {name} | {r['support']} | " + " | ".join(cells) + " |")
    op = m.get("operating_point")
    if op:
        ot = op.get("test", {})
        lines.append(
            f"\nOperating point (binary): threshold {_f(op['threshold'])} on the score of class 1, chosen on val for "
            f"sensitivity ≥ {op['target_sensitivity']}; on test sensitivity {_f(ot.get('sensitivity'))} "
            f"{_ci(ot.get('sensitivity_ci95'))}, specificity {_f(ot.get('specificity'))} "
            f"{_ci(ot.get('specificity_ci95'))}, "
            f"PPV {_f(ot.get('ppv'))} {_ci(ot.get('ppv_ci95'))}, NPV {_f(ot.get('npv'))} {_ci(ot.get('npv_ci95'))}.")
    for name, v in (m.get("variants") or {}).items():
        kind = (f"test-time augmentation ({v['passes']} passes)" if name == "tta"
                else f"ensemble of {len(v['members'])} runs")
        lines.append(f"\nWith {kind}: ACC {_f(v['acc'])} {_ci(v['acc_ci95'])}, gain {_f(v['acc_gain'])} "
                     f"{_ci(v['acc_gain_ci95'])}; AUC {_f(v['auc'])} {_ci(v['auc_ci95'])}, gain {_f(v['auc_gain'])} "
                     f"{_ci(v['auc_gain_ci95'])} (paired bootstrap).")
    pb = m.get("published_baselines") or {}
    if pb:
        lines.append("\nPublished baselines (test, from the data card) against our 95 % interval:\n")
        lines.append("| method | ACC | AUC | our ACC interval is | our AUC interval is |\n| --- | --- | --- | --- | --- |")
        for meth, v in pb.items():
            lines.append(f"| {meth} | {_f(v['acc'], 3)} | {_f(v['auc'], 3)} | {v['our_acc_interval']} | "
                         f"{v['our_auc_interval']} |")
    else:
        lines.append("\nThe data card lists no published baselines for this dataset.")
    return lines + [""]


def _card_robustness(c: _CardContext) -> list[str]:
    """Accuracy under the data card's acquisition corruptions (robustness.json, workbench.robustness)."""
    from ..model.robustness import card_section
    return card_section(c.run_dir)


def _card_evaluation_data(c: _CardContext) -> list[str]:
    splits = c.data.get("split_sizes", {})
    lines = []
    if c.card:
        lines.append(f"- **Dataset:** {c.card.pretty_name} ({c.card.version}), license {c.card.license}, "
                     f"source {c.card.source.get('url')}.")
    lines.append(f"- **File:** `{Path(c.data['path']).name if c.data.get('path') else MORE}`, md5 "
                 f"{c.data.get('md5', MORE)}.")
    lines.append(f"- **Test split:** {c.t['n']} images; per {'label (positives)' if c.multilabel else 'class'}: "
                 f"{_counts([r['support'] for r in c.t['per_class_ci95'].values()], c.names)}.")
    op = c.m.get("operating_point")
    lines.append(f"- **Val split:** {splits.get('val', MORE)} images, used to pick the checkpoint (early stopping)"
                 + (", to fit the temperature and to choose the operating threshold" if op else
                    " and to fit the temperature") + "; never to train.")
    lines += [f"- Note: {note}." for note in c.data.get("notes", [])]
    return lines + [""]


def _card_training_data(c: _CardContext) -> list[str]:
    splits = c.data.get("split_sizes", {})
    inp = _read(c.run_dir / "input.json") or {}
    pre = (inp.get("preprocess") or {})
    pre_text = ("none" if not pre else ", ".join(f"{k} {pre[k]}" for k in ("denoise", "contrast", "normalize")
                                                 if pre.get(k, "none") != "none"))
    lines = [f"- **Train split** of the same dataset: {splits.get('train', MORE)} images"
             + (f" ({c.card.modality})" if c.card else "") + ".",
             f"- **Input path** (`input.json`, applied identically by every stage): {inp.get('size', MORE)} px, "
             f"{inp.get('channels', MORE)} channel(s), resize policy {inp.get('resize', MORE)}; preprocessing: "
             f"{pre_text}; pixels 0-255 rescaled inside the model. On-the-fly augmentation preset "
             f"`{c.tp.get('augment', MORE)}` (pipeline in `augment.yaml`)."]
    summary = _section(c.card.body, "Summary") if c.card else None
    if summary:
        lines.append("- From the data card:\n\n" + _quote(summary.split("\n\n")[0]))
    return lines + [""]


def _card_ethics(c: _CardContext) -> list[str]:
    lines = [f"- **{NOT_CLINICAL}.** An error of this model could lead to a wrong diagnosis or treatment if it were "
             "used on patients; it is a research artefact."]
    for h in ("Bias, Risks & Limitations", "Privacy"):
        text = _section(c.card.body, h) if c.card else None
        lines.append(f"- **{h}** (data card): " + ("\n\n" + _quote(text) if text else MORE))
    return lines + [""]


def _card_caveats(c: _CardContext) -> list[str]:
    t = c.t
    lines = ["- The intervals reflect the sampling of the test images only, not the randomness of training: repeat "
             "the training with other seeds (and evaluate them as an `ensemble`) to see that spread.",
             "- Test and training images come from the same source and split; there is no external validation. "
             "Validate on data from other sites and devices before drawing conclusions beyond this dataset.",
             "- Annotating new images: the auto-accept thresholds hold only for images like val; the annotate stage "
             "checks each pool for a shift first (`annotation_summary.json`, `shift`)."]
    small = [n for n, r in t["per_class_ci95"].items() if r["support"] < 30]
    if small:
        lines.append(f"- Fewer than 30 test positives (wide intervals): {', '.join(small[:20])}"
                     + (f" and {len(small) - 20} more" if len(small) > 20 else "") + ".")
    undefined = [n for n, r in t["per_class_ci95"].items() if r.get("ppv") is None]
    if undefined:
        lines.append(f"- Never predicted on test (PPV undefined): {', '.join(undefined[:20])}"
                     + (f" and {len(undefined) - 20} more" if len(undefined) > 20 else "") + ".")
    orient = c.ptrain.get("orientation") or {}
    if "WARNING" in orient.get("statement", ""):
        lines.append(f"- {orient['statement']}")
    lines += [f"- Calibration: test ECE {_f(t['ece'])} before and {_f(t['ece_after_temperature'])} after temperature "
              "scaling; use the calibrated probabilities (`calibration.json`) when thresholding confidence.",
              f"- {c.pretty} images are {c.shape[0]}×{c.shape[1]} px; fine detail visible at full resolution is lost."]
    return lines + [""]


MODEL_CARD_SECTIONS = {
    "Model details": _card_model_details, "Intended use": _card_intended_use, "Factors": _card_factors,
    "Metrics": _card_metrics, "Robustness": _card_robustness,
    "Evaluation data": _card_evaluation_data, "Training data": _card_training_data,
    "Ethical considerations": _card_ethics, "Caveats and recommendations": _card_caveats,
}


def model_card(run_dir, card=None) -> str:
    """The model card (Markdown) of a run that went through train and evaluate: one function per heading
    (``MODEL_CARD_SECTIONS``, in the order of ``MODEL_CARD_HEADINGS``)."""
    from .. import __version__
    run_dir = Path(run_dir)
    m = _read(run_dir / "metrics.json")
    if m is None:
        raise WorkbenchError(f"{run_dir} has no metrics.json: run the evaluate stage before writing the model card")
    prov = _read(run_dir / "provenance.json") or {}
    ptrain = prov.get("train", {})
    c = _CardContext(run_dir=run_dir, card=card, tp=_read(run_dir / "params" / "train.json") or {},
                     ts=_read(run_dir / "train_summary.json") or {}, m=m, cal=_read(run_dir / "calibration.json") or {},
                     ptrain=ptrain, data=ptrain.get("data", {}) or prov.get("evaluate", {}).get("data", {}))
    lines = [f"# Model card: {run_dir.name}\n",
             f"> **{NOT_CLINICAL}.** Research and education only: this model has not been validated for diagnosis, "
             "screening, triage or any decision about a patient.\n",
             f"Generated by workbench {__version__} from this run directory's own files (`params/train.json`, "
             "`train_summary.json`, `metrics.json`, `calibration.json`, `robustness.json`, `input.json`, "
             "`provenance.json`)"
             + (f" and the data card `{card.name}`" if card else "") + f". Unknowns are marked {MORE}.\n"]
    for heading in MODEL_CARD_HEADINGS:
        lines.append(f"## {heading}\n")
        lines += MODEL_CARD_SECTIONS[heading](c)
    return "\n".join(lines)


# --- index of runs ------------------------------------------------------------------------------------------

REPORT_FILES = (("train", "10_train.html"), ("evaluate", "20_evaluate.html"), ("model card", "model_card.md"))
SHOWN_PARAMS = ("dataset", "model", "size", "width", "epochs", "augment", "learning_rate", "seed")


# ---------------------------------------------------------------------- one vocabulary of run metrics
# The run index, the sweep's tables and plots and the command line read a run's numbers through these, so that
# one name means one number everywhere (the sweep's "auto-label coverage" and the index's "auto-accepted" were
# two different coverages on one page).
@dataclass(frozen=True)
class RunMetric:
    key: str
    header: str
    path: tuple                     # into ``run_results``: ("metrics", "test", "acc")
    ci: tuple | None = None         # its 95 % interval, where one is recorded
    higher: bool = True             # higher is better (the sort order)
    digits: int = 4


RUN_METRICS = (
    RunMetric("test_acc", "test ACC", ("metrics", "test", "acc"), ("metrics", "test", "acc_ci95")),
    RunMetric("test_auc", "test AUC", ("metrics", "test", "auc"), ("metrics", "test", "auc_ci95")),
    RunMetric("test_balanced_acc", "balanced ACC", ("metrics", "test", "balanced_acc"),
              ("metrics", "test", "balanced_acc_ci95")),
    RunMetric("test_ece", "ECE", ("metrics", "test", "ece"), ("metrics", "test", "ece_ci95"), higher=False),
    RunMetric("test_ece_after_temperature", "ECE after T", ("metrics", "test", "ece_after_temperature"),
              ("metrics", "test", "ece_after_temperature_ci95"), higher=False),
    RunMetric("tta_acc_gain", "TTA ACC gain", ("metrics", "variants", "tta", "acc_gain"),
              ("metrics", "variants", "tta", "acc_gain_ci95")),
    RunMetric("ensemble_acc_gain", "ensemble ACC gain", ("metrics", "variants", "ensemble", "acc_gain"),
              ("metrics", "variants", "ensemble", "acc_gain_ci95")),
    # the share of the pool auto-accepted (annotation_summary.json "coverage"), and the precision of those items
    # where the pool's labels are known (its "achieved" precision)
    RunMetric("auto_accept_coverage", "auto-accept coverage", ("annotate", "coverage")),
    RunMetric("auto_accept_precision", "auto-accept precision", ("annotate", "achieved", "precision"),
              ("annotate", "achieved", "precision_ci95")),
    RunMetric("train_seconds", "train seconds", ("train", "train_seconds"), higher=False, digits=1),
)
METRIC = {m.key: m for m in RUN_METRICS}


def _dig(doc, path):
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            return None
        doc = doc[p]
    return doc


def metric_value(results: dict, key: str) -> float | None:
    """A run's number (``run_results``) by its key in ``RUN_METRICS``; None when missing, null or not finite."""
    v = _dig(results, METRIC[key].path)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf") else None


def metric_ci(results: dict, key: str):
    m = METRIC[key]
    return _dig(results, m.ci) if m.ci else None


def fmt(value, digits: int = 4) -> str:
    """A number for a summary line or a table cell: 'n/a' when missing, null or not a number."""
    try:
        return f"{float(value):.{digits}f}" if value is not None and float(value) == float(value) else "n/a"
    except (TypeError, ValueError):
        return "n/a"


def run_results(run_dir) -> dict:
    """What a run's metrics are read from: ``metrics`` (metrics.json), ``annotate`` (the annotation summary of its
    first annotated pool: the pipeline's own) and ``train`` (train_summary.json)."""
    from ..core.runs import pool_dirs
    d = Path(run_dir)
    pools = pool_dirs(d)
    return {"metrics": _read(d / "metrics.json") or {}, "train": _read(d / "train_summary.json") or {},
            "annotate": (_read(pools[0] / "annotation_summary.json") if pools else None) or {}}


def sort_script(table_id: str, function: str) -> str:
    """The one click-to-sort script of the run index and the sweep page (numbers as numbers, blanks last)."""
    return (f"function {function}(col){{const t=document.getElementById('{table_id}'),b=t.tBodies[0],h=t.tHead.rows[0].cells;"
            + """
const dir=h[col].dataset.dir==='desc'?'asc':'desc';for(const c of h)c.dataset.dir='';h[col].dataset.dir=dir;
const rows=[...b.rows];rows.sort((r1,r2)=>{const x=r1.cells[col].dataset.v,y=r2.cells[col].dataset.v;
if(x===y)return 0;if(x==='')return 1;if(y==='')return -1;const nx=parseFloat(x),ny=parseFloat(y);
const r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return dir==='asc'?r:-r;});
rows.forEach(r=>b.appendChild(r));}""")


INDEX_METRICS = tuple(k for k in METRIC if k != "train_seconds")


SORT_KEYS = ("name", *INDEX_METRICS)


def _is_run(d: Path) -> bool:
    return d.is_dir() and ((d / "params").is_dir() or (d / "provenance.json").is_file() or any(d.glob("*_*.ipynb")))


def collect_runs(runs_dir) -> list[dict]:
    """Every run directory under ``runs_dir`` with its parameters, metrics and reports (none are skipped:
    a run that only trained, or failed, is listed with what it has)."""
    runs_dir = Path(runs_dir)
    out = []
    for d in sorted(p for p in runs_dir.iterdir() if _is_run(p)):
        from ..core.runs import pool_dirs
        pools = pool_dirs(d)
        params = {s: _read(d / "params" / f"{s}.json") for s in ("train", "evaluate")}
        params["annotate"] = _read(pools[0] / "params" / "annotate.json") if pools else None
        results = run_results(d)
        prov = _read(d / "provenance.json") or {}
        reports = [(label, f) for label, f in REPORT_FILES if (d / f).is_file()]
        reports += [(f"annotate: {p.name}", f"annotate/{p.name}/30_annotate.html") for p in pools
                    if (p / "30_annotate.html").is_file()]
        out.append({"name": d.name, "path": d, "params": {k: v for k, v in params.items() if v is not None},
                    "results": results, "time": (prov.get("train") or {}).get("time_utc"),
                    "stages": [s for s in ("train", "evaluate", "annotate") if params[s] is not None],
                    "reports": reports})
    return out


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3;cursor:pointer;
white-space:nowrap}th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.num{text-align:right;white-space:nowrap}.ci{color:#666;font-size:11px}.note{color:#555;font-size:12px}
details{font-size:11px}"""

def _cell(value, ci=None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return '<td class="num" data-v="">–</td>'
    shown = f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))
    extra = f'<br><span class="ci">{html.escape(_ci(ci, digits))}</span>' if ci else ""
    return f'<td class="num" data-v="{value}">{shown}{extra}</td>'


def index_html(runs: list[dict], runs_dir, sort: str = "test_acc", base: Path | None = None) -> str:
    """The index page; links are relative to ``base`` (the folder the page is written to; default runs_dir)."""
    base = Path(base or runs_dir)
    if sort not in SORT_KEYS:
        raise WorkbenchError(f"cannot sort by {sort!r}; choose one of {', '.join(SORT_KEYS)}")
    cols = [k for k in INDEX_METRICS if any(metric_value(r["results"], k) is not None for r in runs)] \
        or list(INDEX_METRICS[:2])
    # parameters: the usual ones, plus any train/evaluate parameter whose value differs between runs
    keys = list(SHOWN_PARAMS)
    for stage in ("train", "evaluate"):
        names = sorted({k for r in runs for k in (r["params"].get(stage) or {})} - {"run_dir"} - set(keys))
        for k in names:
            vals = {json.dumps((r["params"].get(stage) or {}).get(k)) for r in runs}
            if len(vals) > 1:
                keys.append(k)

    def param(r, k):
        for stage in ("train", "evaluate"):
            p = r["params"].get(stage) or {}
            if k in p:
                v = p[k]
                return Path(v).name if k == "dataset" and isinstance(v, str) and "/" in v else v
        return None

    if sort == "name":
        runs = sorted(runs, key=lambda r: r["name"])
    else:
        have = [r for r in runs if metric_value(r["results"], sort) is not None]
        have.sort(key=lambda r: metric_value(r["results"], sort), reverse=METRIC[sort].higher)
        runs = have + [r for r in runs if r not in have]

    head = ["run", "stages", *keys, *(METRIC[k].header for k in cols), "reports"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>workbench runs: {html.escape(str(runs_dir))}</title>", f"<style>{_CSS}</style>",
           f"<script>{sort_script('runs', 'sortBy')}</script></head><body>",
           f"<h1>workbench runs</h1><p class=\"note\">{len(runs)} run(s) in {html.escape(str(runs_dir))}; "
           f"generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Metrics on the test split with "
           "95 % bootstrap intervals below the value. Click a column header to sort. "
           f"<b>{NOT_CLINICAL}.</b></p>",
           '<table id="runs"><thead><tr>'
           + "".join(f'<th onclick="sortBy({i})">{html.escape(h)}</th>' for i, h in enumerate(head))
           + "</tr></thead><tbody>"]
    for r in runs:
        cells = [f'<td data-v="{html.escape(r["name"])}"><b>{html.escape(r["name"])}</b>'
                 + (f'<br><span class="ci">{html.escape(r["time"])}</span>' if r["time"] else "")
                 + "<details><summary>all parameters</summary><pre>"
                 + html.escape(json.dumps(r["params"], indent=1)) + "</pre></details></td>",
                 f'<td data-v="{len(r["stages"])}">{html.escape(", ".join(r["stages"]) or "none")}</td>']
        for k in keys:
            v = param(r, k)
            cells.append(_cell(v) if isinstance(v, float) else
                         f'<td data-v="{html.escape("" if v is None else str(v))}">'
                         f'{html.escape("–" if v is None else str(v))}</td>')
        for k in cols:
            cells.append(_cell(metric_value(r["results"], k), metric_ci(r["results"], k), METRIC[k].digits))
        links = " · ".join(f'<a href="{quote(Path(os.path.relpath(r["path"] / f, base)).as_posix())}">'
                           f'{html.escape(label)}</a>' for label, f in r["reports"])
        cells.append(f'<td data-v="{len(r["reports"])}">{links or "–"}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out)


def write_index(runs_dir, sort: str = "test_acc", out: Path | None = None) -> Path:
    """Write ``index.html`` (by default into ``runs_dir``; it is regenerated each time, runs stay untouched)."""
    runs_dir = Path(runs_dir).expanduser().resolve()
    if not runs_dir.is_dir():
        raise WorkbenchError(f"runs directory {runs_dir} does not exist: give the directory holding the run "
                             "directories (default runs/ or $WORKBENCH_RUNS_DIR)")
    if sort not in SORT_KEYS:
        raise WorkbenchError(f"cannot sort by {sort!r} (option --sort); choose one of {', '.join(SORT_KEYS)}")
    runs = collect_runs(runs_dir)
    if not runs:
        raise WorkbenchError(f"no run directories under {runs_dir}: run 'workbench pipeline' first")
    out = Path(out).expanduser().resolve() if out else runs_dir / "index.html"
    if not out.parent.is_dir():
        raise WorkbenchError(f"cannot write {out}: folder {out.parent} does not exist (option --out)")
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(index_html(runs, runs_dir, sort, base=out.parent), encoding="utf-8")
    os.replace(tmp, out)
    return out

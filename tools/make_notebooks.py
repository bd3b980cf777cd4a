"""Regenerate the stage notebooks' skeletons (parameters cell from workbench.params).

The notebooks in notebooks/ are the source of truth once written; this script documents how their
parameters cells are derived and keeps them in step after a parameter changes:
    .venv/bin/python tools/make_notebooks.py
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workbench import params  # noqa: E402
from workbench.paths import NOTEBOOKS_DIR, STAGES  # noqa: E402

HEADERS = {
    "train": ("10 · Train", "a dataset: a data card name (default the embedded BloodMNIST) or a MedMNIST-format `.npz`",
              "`model.keras` (best epoch by val loss), `history.csv`, `augment.yaml`, `train_summary.json`, "
              "`params/train.json`, `provenance.json`"),
    "evaluate": ("20 · Evaluate", "a run directory holding a trained `model.keras`",
                 "`metrics.json` (test ACC/AUC by the MedMNIST protocol, per-class precision/recall/F1), "
                 "`predictions.npz`"),
    "annotate": ("30 · Annotate", "a run directory holding a trained `model.keras` (and `calibration.json` when "
                 "evaluated); a pool of unlabelled images (a dataset split, labels hidden from the model)",
                 "`annotations.csv` (prediction, confidence, per-class threshold, auto-accepted / needs-review), "
                 "`annotation_summary.json` (precision and coverage with bootstrap intervals), `pool_predictions.npz`, "
                 "`review_queue.csv` (needs-review items ranked by the strategy), `label_issues.csv` + "
                 "`label_audit.json` (likely mislabelled train images), `review/decisions.jsonl` (the review's "
                 "append-only log) and `review/export-*/` (annotations.csv, COCO JSON, labelled.npz for "
                 "`10_train -p extra_labels`)"),
}

BODIES = {
    "train": [
        "import workbench as wb\nfrom workbench import train\n\nP = wb.params.collect(\"train\", globals())\nrun = wb.runs.open_stage(\"train\", P)",
        "## Data",
        "ds = train.load_data(P, run)\nds.describe()",
        "wb.viz.class_balance(ds.counts(), ds.class_names)",
        "wb.viz.samples_per_class(ds.images[\"train\"], ds.labels[\"train\"], ds.class_names, seed=P.seed)",
        "## Augmentation\nApplied on the fly to training batches; the pipeline is saved as `augment.yaml`.",
        "aug = train.make_augmentation(P, ds, run)\ntrain.preview_augmentation(P, ds)",
        "## Model",
        "model = train.build_model(P, ds)\nmodel.summary()",
        "## Training\nAdamW with linear warm-up and cosine decay; early stopping on val loss restores the best epoch, "
        "which is also the checkpoint saved as `model.keras`.",
        "history = train.fit(model, ds, aug, P, run)\nhistory",
        "wb.viz.training_curves(history)",
        "run.read_json(\"train_summary.json\")",
    ],
    "evaluate": [
        "import workbench as wb\nfrom workbench import evaluate\n\nP = wb.params.collect(\"evaluate\", globals())\n"
        "run, model, ds, train_params = evaluate.open_stage(P)",
        "## Headline: ACC and AUC (MedMNIST protocol)",
        "result = evaluate.compute(run, model, ds, P)\nevaluate.headline(result)",
        "## Per class (test)",
        "evaluate.per_class(result, \"test\")",
        "preds = evaluate.load_predictions(run)\n"
        "wb.viz.confusion_matrix(wb.metrics.confusion(ds.labels[\"test\"], preds[\"test_probs\"].argmax(1), ds.num_classes), ds.class_names)",
        "wb.viz.roc_curves(ds.labels[\"test\"], preds[\"test_probs\"], ds.class_names)",
        "## Against the published baselines (data card)",
        "evaluate.baselines(ds, result, train_params.model)",
    ],
    "annotate": [
        "import workbench as wb\nfrom workbench import annotate, widgets\n\nP = wb.params.collect(\"annotate\", globals())\n"
        "run, model, ds, train_params = annotate.open_stage(P)",
        "## Pool and probabilities\nThe pool's labels are hidden from the model; where the split has them they are "
        "used only to report what was achieved. Probabilities are temperature-scaled when the evaluate stage "
        "fitted a temperature.",
        "pool = annotate.load_pool(ds, P)\ntemperature = annotate.temperature(run, P)\n(pool.name, len(pool), pool.pool_id)",
        "## Auto-accept thresholds, chosen on val\nPer predicted class, the lowest confidence at which the accepted "
        "val predictions of that class still reach the target precision.",
        "choice, val_probs = annotate.choose_thresholds(model, ds, P, temperature)\n"
        "annotate.thresholds_table(choice, ds.class_names)",
        "wb.viz.per_class_thresholds(choice, ds.class_names, val_probs, ds.labels[\"val\"])",
        "## Label the pool",
        "table, pool_probs = annotate.label_pool(run, model, pool, ds, P, choice, temperature)\ntable.head(10)",
        "summary = annotate.summarise(run, pool, P, choice, table)\nannotate.achieved_table(summary)",
        "## Auto-accepted",
        "annotate.gallery(table, pool, ds, P, annotate.AUTO)",
        "## Needs review, ranked\nThe needs-review items ordered by the chosen uncertainty strategy "
        "(most informative first) into `review_queue.csv`.",
        "queue = annotate.rank_for_review(run, model, pool, table, pool_probs, ds, P, train_params, temperature)\n"
        "queue.head(10)",
        "annotate.gallery(table, pool, ds, P, annotate.REVIEW)",
        "## Label audit (train split)\nConfident learning (cleanlab) on out-of-sample probabilities from "
        "cross-validated models: train images whose given label is probably wrong, with a suggested label.",
        "issues = annotate.audit_labels(run, ds, train_params, P)\nissues.head(10) if issues is not None else None",
        "annotate.audit_gallery(issues, ds, P)",
        "## Review\nAccept the model's label, pick a class, skip or undo; every decision is saved at once to "
        "`review/decisions.jsonl` and the review resumes where it stopped (also later, with "
        "`workbench.widgets.review_run(RUN_DIR, annotator=NAME)`). Export writes the labels for "
        "`10_train -p extra_labels`. Headless reports show a static summary.",
        "widgets.review_run(run.path, annotator=P.annotator, log=P.review_log)",
    ],
}


def parameters_cell(stage: str) -> str:
    lines = ["# Parameters (papermill: -p NAME VALUE). One per line: name: type = default  # help"]
    for name, f in params.fields(stage).items():
        lines.append(f"{name}: {f.type} = {f.default!r}  # {f.metadata['help']}")
    return "\n".join(lines)


def build(stage: str):
    title, inputs, outputs = HEADERS[stage]
    cells = [new_markdown_cell(f"# {title}\n\n**Stage:** {stage}.  \n**Inputs:** {inputs}.  \n**Outputs** "
                               f"(in the run directory): {outputs}.\n\nRun headless with "
                               f"`workbench run {stage} -p NAME VALUE …` (see `workbench params {stage}`).")]
    pc = new_code_cell(parameters_cell(stage))
    pc.metadata["tags"] = ["parameters"]
    cells.append(pc)
    for src in BODIES[stage]:
        cells.append(new_markdown_cell(src) if src.startswith("#") else new_code_cell(src))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "workbench", "display_name": "Python 3 (workbench)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    for stage, stem in STAGES.items():
        nbformat.write(build(stage), str(NOTEBOOKS_DIR / f"{stem}.ipynb"))
        print("wrote", NOTEBOOKS_DIR / f"{stem}.ipynb")

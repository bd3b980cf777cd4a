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
              "`model.keras` (best epoch by val loss; with `tta` the network wrapped in test-time augmentation, "
              "the bare network in `backbone.keras`), `history.csv`, `augment.yaml`, `train_summary.json`, "
              "`params/train.json`, `provenance.json`"),
    "evaluate": ("20 · Evaluate", "a run directory holding a trained `model.keras`",
                 "`metrics.json` (test ACC/AUC by the MedMNIST protocol, per-class precision/recall/F1), "
                 "`predictions.npz`"),
    "annotate": ("30 · Annotate", "a run directory holding a trained `model.keras`; a split used as the unlabeled pool",
                 "`annotations.csv` (index, predicted label, confidence, auto-accepted / needs-review), "
                 "`annotation_summary.json`"),
}

BODIES = {
    "train": [
        "import workbench as wb\nfrom workbench import train\n\nP = wb.params.collect(\"train\", globals())\n"
        "run, P = train.open_stage(P)  # fills in the recipe's values; params/train.json records the effective ones",
        "## Data",
        "ds = train.load_data(P, run)\nds.describe()",
        "wb.viz.class_balance(ds.counts(), ds.class_names)",
        "wb.viz.samples_per_class(ds.images[\"train\"], ds.labels[\"train\"], ds.class_names, seed=P.seed)",
        "## Augmentation\nApplied on the fly to training batches; the pipeline is saved as `augment.yaml`.",
        "aug = train.make_augmentation(P, ds, run)\ntrain.preview_augmentation(P, ds)",
        "## Model",
        "model = train.build_model(P, ds, run)\nmodel.summary()",
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
        "import workbench as wb\nfrom workbench import annotate\n\nP = wb.params.collect(\"annotate\", globals())\n"
        "run, model, ds, train_params = annotate.open_stage(P)",
        "## Auto-accept threshold, chosen on val\nThe lowest confidence at which the accepted val predictions "
        "still reach the target precision.",
        "choice, val_conf, val_correct = annotate.choose_threshold(model, ds, P)\nchoice",
        "wb.viz.precision_coverage_curve(val_conf, val_correct, choice[\"threshold\"], P.target_precision)",
        "## Label the pool\nThe pool's labels are hidden from the model; where the split has them they are "
        "used below only to report what was achieved.",
        "table = annotate.label_pool(run, model, ds, P, choice)\ntable.head(10)",
        "summary = annotate.summarise(run, ds, P, choice, table)\nsummary",
        "## Auto-accepted",
        "annotate.gallery(table, ds, P, annotate.AUTO)",
        "## Needs review (least confident first)",
        "annotate.gallery(table, ds, P, annotate.REVIEW)",
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

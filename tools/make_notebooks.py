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
    "explore": ("00 · Explore", "a dataset (data card name or `.npz`) and, optionally, a run with predictions",
                "nothing but this report (the widgets are interactive in JupyterLab; headless runs show static "
                "figures)"),
    "train": ("10 · Train", "a dataset: a data card name (default the embedded BloodMNIST), a MedMNIST-format `.npz`, a folder "
              "written by `workbench ingest` or an image folder with its card",
              "`model.keras` (best epoch by val loss; with `tta` the network wrapped in test-time augmentation, "
              "the bare network in `backbone.keras`), `history.csv`, `preprocess.json`, `augment.yaml`, `train_summary.json`, "
              "`params/train.json`, `provenance.json`"),
    "evaluate": ("20 · Evaluate", "a run directory holding a trained `model.keras`",
                 "`metrics.json` (test ACC/AUC by the MedMNIST protocol with 95 % bootstrap intervals, per-class "
                 "sensitivity/specificity/PPV/NPV/F1, calibration, operating points, TTA/ensemble gains, published "
                 "baselines), `predictions.npz`, `calibration.json` (temperature fitted on val), `model_card.md`"),
    "annotate": ("30 · Annotate", "a run directory holding a trained `model.keras` (and `calibration.json` when "
                 "evaluated); a pool of unlabelled images (a dataset split, labels hidden from the model)",
                 "`annotations.csv` (prediction, confidence, threshold, auto-accepted / needs-review), "
                 "`annotation_summary.json` (precision and coverage with bootstrap intervals), `pool_predictions.npz`, "
                 "`review_queue.csv` (needs-review items ranked by the strategy), `label_issues.csv` + "
                 "`label_audit.json` (likely mislabelled train images), `review/decisions.jsonl` (the review's "
                 "append-only log) and `review/export-*/` (annotations.csv, COCO JSON, labelled.npz for "
                 "`10_train -p extra_labels`)"),
}

BODIES = {
    "explore": [
        "import workbench as wb\nfrom workbench import explore\n\nP = wb.params.collect(\"explore\", globals())\n"
        "ds = explore.open_dataset(P)\nds.describe()",
        "## Dataset browser\nImages by split and class, class balance, per-class intensity histograms and "
        "near-duplicate images across splits (perceptual hash).",
        "explore.dataset_browser(ds)",
        "## Augmentation preview\nA preset, or your own parameters (choose *custom*); originals in the first row.",
        "explore.augmentation_preview(ds, seed=P.seed)",
        "## Preprocessing preview\nDenoise, contrast and normalisation as the train stage applies them "
        "(`-p denoise …`), and DICOM window level/width on modality values (HU for CT).",
        "explore.preprocessing_preview(ds, P.dicom_file, seed=P.seed)",
        "## Prediction inspector\nA run's test predictions: image, class probabilities and Grad-CAM; "
        "filter to errors or to the most confident errors.",
        "explore.prediction_inspector(P.predictions_run)",
    ],
    "train": [
        "import workbench as wb\nfrom workbench import train\n\nP = wb.params.collect(\"train\", globals())\n"
        "run, P = train.open_stage(P)  # fills in the recipe's values; params/train.json records the effective ones",
        "## Data",
        "ds = train.load_data(P, run)\nds.describe()",
        "wb.viz.class_balance(ds.counts(), ds.class_names)",
        "wb.viz.samples_per_class(ds.images[\"train\"], ds.labels[\"train\"], ds.class_names, seed=P.seed)",
        "## Preprocessing\nDenoising, contrast and normalisation from the parameters `denoise`, `contrast` and "
        "`normalize`; the recipe (with train statistics where needed) is saved as `preprocess.json` and the "
        "evaluate and annotate stages apply it identically.",
        "prep = train.make_preprocessing(P, ds, run)\nprep",
        "train.preview_preprocessing(P, ds, prep)",
        "ds = ds.preprocessed(prep)\nds.notes",
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
        "## Headline with 95 % intervals\nACC and AUC by the MedMNIST protocol, balanced accuracy and calibration "
        "error on the test split; intervals from a seeded bootstrap stratified by class (`n_resamples`).",
        "result = evaluate.compute(run, model, ds, P)\nevaluate.headline(result)",
        "evaluate.interval_plot(result)",
        "## Per class (test)\nOne-vs-rest sensitivity, specificity, PPV, NPV and F1 with 95 % intervals; "
        "undefined where the denominator is zero (e.g. the PPV of a class never predicted).",
        "evaluate.per_class(result, \"test\")",
        "preds = evaluate.load_predictions(run)\n"
        "wb.viz.confusion_matrix(wb.metrics.confusion(ds.labels[\"test\"], preds[\"test_probs\"].argmax(1), ds.num_classes), ds.class_names)",
        "## Operating points\nBinary tasks: the threshold reaching `target_sensitivity` on val, reported on test. "
        "Multi-class tasks: one-vs-rest ROC and precision-recall curves per class.",
        "evaluate.operating_points(result)",
        "evaluate.roc_figure(ds, preds, result)",
        "evaluate.pr_figure(ds, preds)",
        "## Calibration\nExpected calibration error (15 bins) before and after temperature scaling; the temperature "
        "is fitted on val, applied to test and saved with the model as `calibration.json`.",
        "evaluate.calibration_table(result)",
        "evaluate.reliability_figure(result)",
        "## Explanations\nTop losses (the test images with the highest loss: the most confident errors first), "
        "then each class's most confident correct and wrong prediction, then Grad-CAM beside occlusion sensitivity. "
        "Grad-CAM (on JAX) shows where the evidence for the predicted class lies; occlusion sensitivity is the drop "
        "in that class's probability when a patch of the image is hidden.",
        "evaluate.top_losses(model, ds, preds, P)",
        "evaluate.correct_vs_wrong(model, ds, preds, P)",
        "evaluate.occlusion_figure(model, ds, preds, P)",
        "## Test-time augmentation and ensembles\nGain over this run on the same test images, with paired "
        "bootstrap intervals (`tta`, `ensemble`).",
        "evaluate.variants(result)",
        "## Against the published baselines (data card)\nOur point estimate and 95 % interval beside each published "
        "test result, and where our interval lies relative to it.",
        "evaluate.baselines(ds, result, train_params.model)",
        "evaluate.baseline_figure(result, train_params.model)",
        "## Model card\nWritten to `model_card.md` in the run directory.",
        "evaluate.write_model_card(run, ds)",
    ],
    "annotate": [
        "import workbench as wb\nfrom workbench import annotate, widgets\n\nP = wb.params.collect(\"annotate\", globals())\n"
        "run, model, ds, train_params = annotate.open_stage(P)",
        "## Pool and probabilities\nThe pool's labels are hidden from the model; where the split has them they are "
        "used only to report what was achieved. Probabilities are temperature-scaled when the evaluate stage "
        "fitted a temperature.",
        "pool = annotate.load_pool(ds, P)\ntemperature = annotate.temperature(run, P)\n(pool.name, len(pool), pool.pool_id)",
        "## Auto-accept thresholds, chosen on val\nThe lowest confidence (one for all classes, or one per "
        "predicted class) at which the accepted val predictions reach the target precision. With a "
        "`guarantee` g > 0 the threshold is chosen by Learn-then-Test: an exact binomial test at each cut, "
        "from the most confident down, stopping at the first that fails. The precision on new data like val "
        "then reaches the target with probability at least g. A val point estimate would miss the target "
        "about half the time.",
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
    if stage == "explore":
        cells[0].source += "\n\nIn JupyterLab (`make lab`) every section is an interactive widget."
    pc = new_code_cell(parameters_cell(stage))
    pc.metadata["tags"] = ["parameters"]
    cells.append(pc)
    for src in BODIES[stage]:
        cells.append(new_markdown_cell(src) if src.startswith("#") else new_code_cell(src))
    for i, cell in enumerate(cells):  # stable ids: regenerating gives the same file (clean diffs and merges)
        cell["id"] = f"{stage}-{i:02d}"
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "workbench", "display_name": "Python 3 (workbench)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    only = sys.argv[1:] or list(STAGES)
    for stage, stem in STAGES.items():
        if stage not in only:
            continue
        nbformat.write(build(stage), str(NOTEBOOKS_DIR / f"{stem}.ipynb"))
        print("wrote", NOTEBOOKS_DIR / f"{stem}.ipynb")

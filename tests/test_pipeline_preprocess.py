"""A preprocessed run through every stage notebook (papermill): BreastMNIST (binary, 1 channel, orientation-fixed)
with median denoising and CLAHE. The annotate notebook itself (not only run()) labels the test split and then a
folder of new PNGs of another size, each pool in its own directory; the model sees every image through the run's
one input path."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, read_json, run_cli

pytestmark = pytest.mark.slow
BREAST = FIXTURES / "breastmnist_tiny.npz"


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = run_cli("pipeline", "--name", "breast", "-q", "-p", "dataset", str(BREAST), "-p", "epochs", "1",
                   "-p", "width", "8", "-p", "batch_size", "32", "-p", "denoise", "median", "-p", "contrast", "clahe",
                   "-p", "audit_folds", "0", "-p", "n_resamples", "200", "-p", "bootstrap", "200",
                   "-p", "gallery_size", "4", env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": Path(proc.stdout.strip().splitlines()[-1]), "runs": runs, "stdout": proc.stdout}


def test_preprocessing_is_recorded_and_previewed(breast_run):
    d = breast_run["dir"]
    spec = read_json(d / "preprocess.json")
    assert (spec["version"], spec["denoise"], spec["contrast"], spec["normalize"]) == (1, "median", "clahe", "none")
    inp = read_json(d / "input.json")
    assert (inp["size"], inp["channels"], inp["preprocess"]) == (28, 1, spec)
    tr = read_json(d / "provenance.json")["train"]
    assert tr["preprocess"] == spec and tr["input"] == inp
    nb = nbformat.read(str(d / "10_train.ipynb"), as_version=4)
    preview = next(c for c in nb.cells if c.cell_type == "code" and "preview_preprocessing" in c.source)
    assert any("image/png" in o.get("data", {}) for o in preview.outputs)
    assert "Input path" in (d / "10_train.html").read_text()


def test_binary_orientation_fixed_defaults(breast_run):
    d = breast_run["dir"]
    p = read_json(d / "params/train.json")
    assert (p["augment"], p["tta"]) == ("fixed", "no")  # the card: ultrasound is orientation-fixed
    m = read_json(d / "metrics.json")
    assert m["task"] == "binary-class" and m["class_names"] == ["malignant", "normal, benign"]
    op = m["operating_point"]
    assert op["target_sensitivity"] == 0.95 and "test" in op  # one operating point at a target sensitivity
    assert "Orientation" in (d / "10_train.html").read_text()
    assert "orientation" in (d / "model_card.md").read_text().lower()


def test_every_stage_fed_the_model_through_the_input_path(breast_run):
    """evaluate's stored probabilities and the annotate notebook's pool probabilities are the model's on the
    preprocessed images, not on the raw ones (the bug this replaced: the review step reloaded raw images)."""
    import workbench  # noqa: F401
    from workbench import data, inputs, runload
    d = breast_run["dir"]
    trained = runload.load(d)
    raw = data.load_dataset(str(BREAST))
    seen = inputs.prepare(raw.images["test"], trained.input)
    assert not np.array_equal(seen, raw.images["test"])
    p_seen = trained.model.predict(seen.astype("float32"), verbose=0)
    with np.load(d / "predictions.npz") as z:
        np.testing.assert_allclose(z["test_probs"], p_seen, atol=1e-5)
    pool = d / "annotate" / "test"
    with np.load(pool / "pool_predictions.npz") as z:
        temp = read_json(d / "calibration.json")["temperature"]
        from workbench.calibration import apply_temperature
        np.testing.assert_allclose(z["probs"], apply_temperature(p_seen, temp), atol=1e-4)
    # the notebook's review cell ran on the preprocessed run (static face, headless)
    nb = nbformat.read(str(pool / "30_annotate.ipynb"), as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "Review (static view" in (pool / "30_annotate.html").read_text()


def test_a_folder_of_new_images_is_annotated_in_its_own_directory(breast_run, tmp_path):
    """New, unlabelled PNGs of another size (56 px, RGB) in sub-folders, one of them truncated, annotated with the
    trained run by the annotate notebook; the pipeline's pool is untouched; the last line printed is the pool's
    directory."""
    from PIL import Image
    d = breast_run["dir"]
    with np.load(BREAST) as z:
        imgs = z["test_images"][:12]
    root = tmp_path / "new scans"
    for i, im in enumerate(imgs):
        sub = root / ("day1" if i < 6 else "day2")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).convert("RGB").resize((56, 56), Image.BILINEAR).save(sub / f"us_{i:02d}.png")
    (root / "day2" / "broken.png").write_bytes((root / "day1" / "us_00.png").read_bytes()[:60])
    before = (d / "annotate" / "test" / "annotations.csv").read_bytes()
    proc = run_cli("run", "annotate", "--run", str(d), "-q", "-p", "pool", str(root), "-p", "resize", "stretch",
                   "-p", "audit_folds", "0", "-p", "gallery_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out.parent == d / "annotate" and out.name.startswith("new_scans-") and out.is_dir()
    table = pd.read_csv(out / "annotations.csv")
    assert sorted(table["id"]) == sorted(f"day{1 if i < 6 else 2}/us_{i:02d}.png" for i in range(12))
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["id"].tolist() == ["day2/broken.png"] and rejected["reason"].str.len().min() > 5
    summary = read_json(out / "annotation_summary.json")
    assert summary["pool_kind"] == "folder" and summary["rejected"] == 1 and not summary["pool_labels_known"]
    assert (d / "annotate" / "test" / "annotations.csv").read_bytes() == before  # earlier pool untouched
    assert read_json(out / "params" / "annotate.json")["resize"] == "stretch"
    # the same folder again: a new directory, never the earlier one
    again = run_cli("run", "annotate", "--run", str(d), "-q", "-p", "pool", str(root), "-p", "resize", "stretch",
                    "-p", "audit_folds", "0", "-p", "gallery_size", "4")
    assert again.returncode == 0, again.stderr[-2000:]
    assert Path(again.stdout.strip().splitlines()[-1]) == out.with_name(out.name + "-2")
    # without a resize policy, images of another size are refused in one line naming the fix
    refused = run_cli("run", "annotate", "--run", str(d), "-q", "-p", "pool", str(root), "-p", "audit_folds", "0")
    assert refused.returncode == 2 and "-p resize" in refused.stderr.strip().splitlines()[-1]


def test_review_of_a_folder_pool_resumes_after_a_kill_and_trains_the_next_run(breast_run, tmp_path):
    """A review of new images killed mid-way (SIGKILL) resumes where it stopped; its export (with the images,
    at the model's size, before preprocessing) extends the next training run's train split."""
    import subprocess
    import sys

    from PIL import Image

    import workbench  # noqa: F401
    from workbench import annotate, train
    from workbench.params import TrainParams
    from conftest import ROOT
    d = breast_run["dir"]
    with np.load(BREAST) as z:
        imgs = z["val_images"][:6]
    root = tmp_path / "ward7"
    root.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(root / f"scan{i}.png")
    proc = run_cli("run", "annotate", "--run", str(d), "-q", "-p", "pool", str(root), "-p", "audit_folds", "0",
                   "-p", "gallery_size", "4", "-p", "on_shift", "accept")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    queue = pd.read_csv(out / "review_queue.csv")["id"].tolist()
    if len(queue) < 3:
        pytest.skip("fewer than 3 items need review")
    child = ("import os, signal\nfrom workbench import annotate\n"
             f"s = annotate.open_review({str(out)!r}, annotator='first').session\n"
             "s.accept(); s.label(0)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    inputs = annotate.open_review(out, annotator="first")       # the same reader resumes their own log
    s = inputs.session
    assert s.progress()["decided"] == 2 and s.current == queue[2]  # resumed after the two saved decisions
    assert s.decisions[queue[1]].label == 0
    s.skip()
    export = annotate.export_review(inputs, include_auto=False)
    assert export["n_labelled"] == 2
    ext, info = train.load_data(TrainParams(dataset=str(BREAST), extra_labels=str(Path(export["npz"]).parent)))
    base = np.load(BREAST)["train_labels"].shape[0]
    assert len(ext.labels["train"]) == base + 2 and ext.images["train"].shape[1:] == (28, 28, 1)
    assert info["pool_source"]["kind"] == "folder" and ext.labels["train"][-1] == 0
    first = pd.read_csv(out / "annotations.csv").set_index("id").loc[queue[0], "index"]
    np.testing.assert_array_equal(ext.images["train"][base], imgs[int(first)][..., None])  # the raw image, 28 px

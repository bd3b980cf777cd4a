"""DICOM ingest and the PHI guard, on pydicom's bundled DICOM files (real headers with test PHI)."""

import csv
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import workbench  # noqa: F401
from workbench import cards, data, deid, ingest, preprocess
from workbench.errors import WorkbenchError

from conftest import run_cli

LAYOUT = {"ct": ["CT_small.dcm"], "mr": ["MR_small.dcm", "MR_small_RLE.dcm", "examples_overlay.dcm",
                                         "MR_small_jpeg_ls_lossless.dcm"], "dose": ["rtdose.dcm"]}
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "StudyDate", "SeriesDate",
                "AcquisitionDate", "ContentDate", "InstanceCreationDate", "InstitutionName", "InstitutionAddress",
                "StationName", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
                "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID", "DeviceSerialNumber", "StudyDescription", "SeriesDescription")


def _make_source(root: Path) -> Path:
    src = root / "dicom"
    for label, names in LAYOUT.items():
        (src / label).mkdir(parents=True)
        for n in names:
            shutil.copy(get_testdata_file(n), src / label / n)
    (src / "mr" / "broken.dcm").write_bytes(b"DICM but not really")        # unreadable among good files
    ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))          # burned-in text flagged
    ds.BurnedInAnnotation = "YES"
    ds.PatientName = "Qwertzu^Yxcvbn"
    ds.save_as(src / "mr" / "burned.dcm")
    return src


def _phi_values(src: Path) -> dict[str, str]:
    """Independently of workbench.deid: identifying header values of every source file."""
    found = {}
    for p in sorted(src.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # noqa: BLE001
            continue
        for kw in PHI_KEYWORDS:
            v = ds.get(kw)
            if v in (None, ""):
                continue
            for item in (v if isinstance(v, pydicom.multival.MultiValue) else [v]):
                s = str(item).strip()
                # not placeholders like '----' or '000000000' (a float such as 0.4000000000000001 holds it)
                if len(s) >= 4 and any(ch.isalnum() for ch in s) and len(set(s)) > 1:
                    found[s] = kw
                if kw.endswith("Name"):
                    for part in s.replace("=", "^").split("^"):
                        if len(part) >= 4 and any(ch.isalnum() for ch in part) and len(set(part)) > 1:
                            found[part] = kw
    return found


def _search(paths, phi: dict[str, str]) -> list[tuple[str, str, str]]:
    """Every file searched for every value: text (CSV, card, JSON, YAML, zip member names) case-
    insensitively; binary data (zip members, npz arrays as bytes) exactly and for values of 8+
    characters, since uniform pixel regions spell short runs like 'sssssss' by chance. A value of digits
    only counts as a whole number in text (as ``deid.audit`` matches it): papermill's timestamps hold
    every 6-digit run by chance."""
    hits = []
    for base in paths:
        for f in sorted(Path(base).rglob("*")) if Path(base).is_dir() else [Path(base)]:
            if not f.is_file():
                continue
            texts, binaries = [], []
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as z:
                    texts += [n.encode() for n in z.namelist()]
                    texts += [z.read(n) for n in z.namelist() if n.endswith((".json", ".txt", ".csv", ".yaml"))]
                    binaries += [f.read_bytes()] + [z.read(n) for n in z.namelist()]
                if f.suffix == ".npz":
                    with np.load(f, allow_pickle=False) as z:
                        binaries += [z[k].tobytes() for k in z.files]
            else:
                texts.append(f.read_bytes())
            for value, kw in phi.items():
                needle = value.encode()
                if value.isdigit():  # a number only as a whole number: "25641" is not in "10:40:57.325641Z"
                    in_text = any(re.search(rb"(?<![0-9])" + needle + rb"(?![0-9])", t) for t in texts)
                else:
                    in_text = any(needle.lower() in t.lower() for t in texts)
                if in_text or (len(value) >= 8 and any(needle in b for b in binaries)):
                    hits.append((str(f), kw, value))
    return hits


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    src = _make_source(root)
    log = []
    with pytest.warns(ingest.BurnedInAnnotationWarning, match="1 DICOM file"):
        summary = ingest.ingest(src, root / "ds", ingest.IngestOptions(split_by="image", size=28), log=log.append)
    return {"root": root, "src": src, "out": root / "ds", "summary": summary, "log": log,
            "phi": _phi_values(src)}


def test_ingest_writes_a_medmnist_npz_manifest_and_valid_card(ingested):
    out, s = ingested["out"], ingested["summary"]
    assert sorted(p.name for p in out.iterdir()) == ["ds.md", "ds.npz", "ds_manifest.csv"]
    # CT_small 1 + MR_small 1 + MR_small_RLE 1 + overlay 1 + rtdose 15 frames
    assert s["images"] == 19 and s["files_ingested"] == 5 and s["classes"] == ["ct", "dose", "mr"]
    assert s["burned_in_excluded"] == ["mr/burned.dcm"]
    skipped = {x["file"]: x["reason"] for x in s["skipped"]}
    assert set(skipped) == {"mr/broken.dcm", "mr/MR_small_jpeg_ls_lossless.dcm"}
    assert "JPEG-LS" in skipped["mr/MR_small_jpeg_ls_lossless.dcm"] and "pylibjpeg" in skipped[
        "mr/MR_small_jpeg_ls_lossless.dcm"]
    assert any(line.startswith("skipped mr/broken.dcm") for line in ingested["log"])
    card = cards.read_card(out / "ds.md")
    assert card.splits == s["splits"] and sum(card.splits.values()) == 19
    assert card.files[28]["md5"] == data.file_md5(out / "ds.npz")
    assert card.license == cards.UNKNOWN and "PS3.15" in card.body
    with np.load(out / "ds.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(f"{sp}_{k}" for sp in ("train", "val", "test") for k in ("images", "labels"))
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape[1:] == (28, 28)  # as MedMNIST
    with open(out / "ds_manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 19
    assert list(rows[0]) == ["split", "index", "label", "class", "patient", "study", "series", "frame", "modality",
                             "photometric", "window", "level", "width", "source_md5"]
    mr = {r["source_md5"]: r["patient"] for r in rows if r["class"] == "mr"}
    md5 = {n: data.file_md5(Path(get_testdata_file(n))) for n in ("MR_small.dcm", "MR_small_RLE.dcm",
                                                                   "examples_overlay.dcm")}
    # one patient, one pseudonym; another patient, another pseudonym
    assert mr[md5["MR_small.dcm"]] == mr[md5["MR_small_RLE.dcm"]] != mr[md5["examples_overlay.dcm"]]
    assert {r["frame"] for r in rows if r["class"] == "dose"} == {str(i) for i in range(15)}
    assert all(r["patient"].startswith("P") and r["study"].startswith("S") for r in rows)


def test_no_identifying_header_value_in_any_output(ingested):
    phi = ingested["phi"]
    assert {"CompressedSamples^CT1", "1CT1", "JFK IMAGING CENTER", "20040119", "Lastname", "id11111",
            "Qwertzu"} <= set(phi)  # the search really looks for names, IDs, dates, institutions
    assert any(kw == "StudyInstanceUID" for kw in phi.values())
    assert _search([ingested["out"]], phi) == []
    assert ingested["summary"]["phi_values_checked"] > 20


def test_the_audit_finds_planted_phi(tmp_path, ingested):
    """The search itself can fail: a copy of the manifest with a patient name planted is caught."""
    leak = tmp_path / "leak.csv"
    leak.write_text((ingested["out"] / "ds_manifest.csv").read_text() + "x,CompressedSamples^MR1\n")
    assert _search([leak], ingested["phi"])


def test_loader_accepts_the_folder_and_the_npz(ingested):
    out = ingested["out"]
    for spec in (str(out), str(out / "ds.npz")):
        ds = data.load_dataset(spec)
        assert ds.card.name == "ds" and ds.class_names == ["ct", "dose", "mr"] and ds.input_shape == (28, 28, 1)
    with pytest.raises(WorkbenchError, match="is DICOM: run 'workbench ingest"):
        data.load_dataset(str(ingested["src"]))
    with pytest.raises(WorkbenchError, match="is DICOM"):
        data.load_dataset(str(ingested["src"] / "ct" / "CT_small.dcm"))


def test_every_stage_accepts_the_ingested_dataset_with_preprocessing(ingested, tmp_path):
    from workbench import annotate, evaluate, params, train
    run_dir = tmp_path / "run"
    tp = params.make("train", {"run_dir": str(run_dir), "dataset": str(ingested["out"]), "epochs": 1, "width": 4,
                               "batch_size": 32, "augment": "none", "denoise": "median", "contrast": "clahe",
                               "normalize": "dataset"})
    train.run(tp)
    ev = evaluate.run(params.make("evaluate", {"run_dir": str(run_dir)}))
    an = annotate.run(params.make("annotate", {"run_dir": str(run_dir)}))
    assert ev["test"]["n"] == ingested["summary"]["splits"]["test"] == an["pool_size"]
    spec = json.loads((run_dir / "preprocess.json").read_text())
    assert (spec["denoise"], spec["contrast"], spec["normalize"]) == ("median", "clahe", "dataset")
    # evaluate saw the preprocessed images: its stored probabilities are the model's on them
    from workbench import runload
    raw = data.load_dataset(str(ingested["out"]))
    trained = runload.load(run_dir)
    model, ds = trained.model, trained.dataset()
    np.testing.assert_array_equal(ds.images["test"], preprocess.apply_spec(spec, raw.images["test"]))
    # the DICOM window and resize policy of the ingest travel with the run's input path
    assert trained.input.dicom["window"] == "auto" and trained.input.resize == "pad"
    assert not np.array_equal(ds.images["test"], raw.images["test"])
    with np.load(run_dir / "predictions.npz") as z:
        np.testing.assert_allclose(model.predict(ds.images["test"].astype("float32"), verbose=0),
                                   z["test_probs"], atol=1e-5)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["train"]["preprocess"]["stats"] == spec["stats"]
    # the run directory (JSON, CSV, npz, model) carries no PHI either
    assert _search([run_dir], ingested["phi"]) == []


def test_burned_in_images_are_included_only_when_allowed(ingested, tmp_path):
    s = ingest.ingest(ingested["src"], tmp_path / "with", ingest.IngestOptions(split_by="image", size=28,
                                                                               allow_burned_in=True), log=lambda m: None)
    assert s["images"] == 20 and s["burned_in_excluded"] == []
    assert "included because allow_burned_in was set" in (tmp_path / "with" / "with.md").read_text()


def test_phi_guard_refuses_outputs_that_repeat_header_values(ingested, tmp_path):
    src = tmp_path / "src"
    (src / "CompressedSamples").mkdir(parents=True)      # a class named like CT_small's patient
    (src / "other").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "CompressedSamples")
    shutil.copy(get_testdata_file("rtdose.dcm"), src / "other")
    with pytest.raises(WorkbenchError, match=r"PHI guard: .*holds a value of PatientName.*nothing was kept"):
        ingest.ingest(src, tmp_path / "out", ingest.IngestOptions(split_by="image", size=28), log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_labels_csv_with_split_and_patient_split(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for n in ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "rtdose.dcm"):
        shutil.copy(get_testdata_file(n), src / n)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,finding,split\nCT_small.dcm,a,train\nMR_small.dcm,b,val\n"
                      "examples_overlay.dcm,a,test\nrtdose.dcm,b,train\n")
    s = ingest.ingest(src, tmp_path / "o1", ingest.IngestOptions(labels=str(labels), label_column="finding", size=28),
                      log=lambda m: None)
    assert s["classes"] == ["a", "b"] and s["splits"] == {"train": 16, "val": 1, "test": 1}
    labels.write_text("file,finding\nCT_small.dcm,a\nmissing.dcm,b\n")
    with pytest.raises(WorkbenchError, match=r"names 1 file\(s\) not in .*missing.dcm"):
        ingest.ingest(src, tmp_path / "o2", ingest.IngestOptions(labels=str(labels), label_column="finding"))
    # by patient, four patients cannot fill train/val/test stratified by two classes
    with pytest.raises(WorkbenchError, match="would be empty .*4 patient"):
        ingest.ingest(src, tmp_path / "o3", ingest.IngestOptions(label_from="modality"), log=lambda m: None)
    with pytest.raises(WorkbenchError, match="not inside a class sub-folder"):
        ingest.ingest(src, tmp_path / "o4", ingest.IngestOptions(label_from="folder"), log=lambda m: None)
    assert not any((tmp_path / n).exists() for n in ("o2", "o3", "o4"))


def test_deidentify_applies_the_basic_profile():
    reg = deid.PHIRegistry()
    a = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    b = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    assert a.StudyInstanceUID == b.StudyInstanceUID
    a.add_new(0x00091010, "LO", "private vendor value")
    study = a.StudyInstanceUID
    deid.reset_uid_map()
    deid.deidentify(a, reg)
    deid.deidentify(b, reg)
    assert str(a.PatientName) == "" and a.PatientID in ("", "ANONYMIZED")
    assert a.StudyDate == "00010101" and "InstitutionName" not in a or a.InstitutionName in ("", "ANONYMIZED")
    assert a.StudyInstanceUID != study and a.StudyInstanceUID == b.StudyInstanceUID  # replaced consistently
    assert not any(e.tag.is_private for e in a)
    assert a.PatientIdentityRemoved == "YES"
    assert ("CompressedSamples^MR1", False) in reg.values and (study, False) in reg.values


def test_cli_ingest(tmp_path, ingested):
    out = tmp_path / "cli_ds"
    proc = run_cli("ingest", str(ingested["src"]), "--out", str(out), "--split-by", "image", "--size", "28",
                   "--window", "minmax")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out) and "ingested 19 image(s) from 5 file(s)" in proc.stdout
    assert "BurnedInAnnotation" in proc.stdout + proc.stderr
    again = run_cli("ingest", str(ingested["src"]), "--out", str(out))
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith(
        f"error: output folder {out} already exists and is not empty")
    bad = run_cli("ingest", str(ingested["src"]), "--out", str(tmp_path / "x"), "--window", "custom")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "error: window 'custom' needs a level and a width (--level L --width W)")
    assert not (tmp_path / "x").exists()


def test_audit_matches_whole_numbers_and_ignores_hashes(tmp_path):
    reg = deid.PHIRegistry()
    reg.add({("PatientID", "LO", "20231107"), ("PatientID", "LO", "1234"), ("PatientName", "PN", "Doe^Janet")}, set())
    assert ("1234", False) not in reg.values            # too short to search among row numbers
    f = tmp_path / "m.csv"
    f.write_text("index,source_md5\n120231107,0123456789abcdef20231107abcdef01\n")  # inside a number / a hash
    assert deid.audit([f], reg) == []
    f.write_text("patient,date\nP0001,20231107\nJANET,x\n")
    assert deid.audit([f], reg) == [(str(f), "PatientID"), (str(f), "PatientName")]


@pytest.mark.slow
def test_no_phi_in_the_html_reports_of_a_pipeline_on_ingested_data(ingested, tmp_path):
    """The shared reports too: the three stage notebooks (papermill + nbconvert) on the ingested dataset,
    then every file of the run directory, HTML reports and executed notebooks included, is searched."""
    from conftest import run_cli
    proc = run_cli("pipeline", "-q", "-p", "dataset", str(ingested["out"]), "-p", "epochs", "1", "-p", "width", "4",
                   "-p", "batch_size", "32", "-p", "augment", "none", "-p", "audit_folds", "0",
                   "-p", "n_resamples", "100", env={"WORKBENCH_RUNS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    reports = sorted(p.name for p in run_dir.rglob("*.html"))
    assert reports == ["10_train.html", "20_evaluate.html", "30_annotate.html"]
    assert _search([run_dir], ingested["phi"]) == []


@pytest.mark.slow
def test_a_dicom_export_is_annotated_without_phi_in_any_output(ingested, tmp_path):
    """A DICOM export with real identifying headers (pydicom's test files; one folder named after a patient) as
    the pool of a model trained on the ingested dataset: the annotate notebook (papermill), then a review with an
    export. Every file of the pool's directory (CSV, JSON, npz, review log, COCO export, executed notebook and
    HTML report) is searched for the headers' identifying values; frames are items of their own; the burned-in
    file and the broken one are listed in rejected.csv."""
    import pandas as pd

    from workbench import annotate, params, train
    run_dir = tmp_path / "run"
    train.run(params.make("train", {"run_dir": str(run_dir), "dataset": str(ingested["out"]), "epochs": 1,
                                    "width": 4, "batch_size": 32, "augment": "none"}))
    pool_src = tmp_path / "export"
    shutil.copytree(ingested["src"], pool_src)
    (pool_src / "ct").rename(pool_src / "CompressedSamples")   # CT_small's patient name as a folder name
    proc = run_cli("run", "annotate", "--run", str(run_dir), "-q", "-p", "pool", str(pool_src),
                   "-p", "audit_folds", "0", "-p", "gallery_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out.parent == run_dir / "annotate"
    ids = pd.read_csv(out / "annotations.csv")["id"].tolist()
    assert sum("rtdose.dcm#" in i for i in ids) == 15  # one item per frame
    assert not any("CompressedSamples" in i for i in ids)  # the patient-named folder: pseudonymous ids
    rejected = pd.read_csv(out / "rejected.csv")
    assert any("BurnedInAnnotation" in r for r in rejected["reason"]) and len(rejected) >= 2
    inputs = annotate.open_review(out, annotator="reviewer")
    if not inputs.session.done:
        inputs.session.accept()
    export = annotate.export_review(inputs)
    assert Path(export["coco"]).is_file()
    assert _search([out], ingested["phi"]) == []
    assert _search([out / "30_annotate.html", out / "30_annotate.ipynb"], {"CompressedSamples": "PatientName"}) == []

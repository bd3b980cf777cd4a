"""Pools (workbench.pools) on real images: BloodMNIST test images saved as PNG folders, pydicom's
bundled DICOM files (real headers with test PHI), the tiny fixture npz and a dataset split."""

import csv
import hashlib
import shutil
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import workbench  # noqa: F401
from workbench import data, inputs, pools, preprocess
from workbench.errors import WorkbenchError

from conftest import TINY

SPEC28 = inputs.InputSpec(size=28, channels=3)


def _tiny(split="test"):
    with np.load(TINY, allow_pickle=False) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].ravel().astype(np.int64)


def _open(*args, **kwargs):
    pool = pools.open_pool(*args, **kwargs)
    pool.progress = False
    return pool


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- folders
@pytest.fixture
def png_folder(tmp_path):
    """24 real BloodMNIST test images as PNG in nested class folders, with three bad files, a duplicate,
    a non-image, a hidden file and a labels CSV among them."""
    x, y = _tiny()
    root = tmp_path / "cells"
    files = {}
    for i in range(24):
        sub = root / f"class_{y[i]}" / ("batch_b" if i % 2 else "batch_a")
        sub.mkdir(parents=True, exist_ok=True)
        rel = f"class_{y[i]}/{'batch_b' if i % 2 else 'batch_a'}/img_{i:03d}.png"
        Image.fromarray(x[i]).save(root / rel)
        files[rel] = i
    good = next(iter(files))
    blob = (root / good).read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "truncated.png").write_bytes(blob[: len(blob) // 2])
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "words.png").write_text("this is a text file, not a PNG\n")
    (root / "notes.txt").write_text("scanned on the lab microscope\n")
    (root / ".DS_Store").write_bytes(b"\0\1")
    shutil.copy(root / good, root / "copy_of_first.png")
    return {"root": root, "files": files, "x": x, "y": y, "dup": (good, "copy_of_first.png")}


def test_folder_ids_rejected_duplicates_and_pixels(png_folder, tmp_path):
    root, files, x = png_folder["root"], png_folder["files"], png_folder["x"]
    pool = _open(str(root))
    assert pool.kind == "folder" and pool.name == "cells" and pool.slug.startswith("cells-")
    with pytest.raises(WorkbenchError, match="first full pass"):
        pool.ids  # noqa: B018 - not known before the scan
    pool.scan(SPEC28)
    # ids are POSIX paths relative to the root, every real image and the duplicate copy, nothing else
    assert set(pool.ids) == set(files) | {"copy_of_first.png"} and len(pool) == 25
    assert pool.ids == sorted(pool.ids)
    rejected = {r["id"]: r["reason"] for r in pool.rejected}
    assert set(rejected) == {"bad/truncated.png", "bad/empty.png", "bad/words.png", "notes.txt"}
    assert "truncated" in rejected["bad/truncated.png"]
    assert rejected["bad/empty.png"] == "empty file (0 bytes)"
    assert "not a readable image" in rejected["bad/words.png"] and "not an image file" in rejected["notes.txt"]
    rows = _read_csv(pool.write_rejected(tmp_path / "rejected.csv"))
    assert {r["id"]: r["reason"] for r in rows} == rejected
    # the copy is reported as a duplicate, with its content md5
    assert [sorted(g) for g in pool.duplicates] == [sorted(png_folder["dup"])]
    dups = _read_csv(pool.write_duplicates(tmp_path / "duplicates.csv"))
    assert {r["id"] for r in dups} == set(png_folder["dup"]) and len({r["md5"] for r in dups}) == 1
    assert len(set(pool.md5)) == 24
    # decoded pixels are the source pixels, through raw() and through the input path
    pos = np.arange(len(pool))
    src = np.stack([x[files.get(i, files[png_folder["dup"][0]])] for i in pool.ids])
    assert all(np.array_equal(a, b) for a, b in zip(pool.raw(pos), src))
    assert np.array_equal(pool.images(pos, SPEC28), src)
    assert pool.labels is None and pool.source["rejected"] == 4 and pool.source["files"] == 29


def test_folder_pool_id_depends_on_content(png_folder):
    a = _open(str(png_folder["root"])).scan(SPEC28)
    b = _open(str(png_folder["root"])).scan(SPEC28)
    assert a.pool_id == b.pool_id
    first = png_folder["root"] / png_folder["dup"][0]
    im = np.asarray(Image.open(first)).copy()
    im[0, 0] ^= 1
    Image.fromarray(im).save(first)
    c = _open(str(png_folder["root"])).scan(SPEC28)
    assert c.ids == a.ids and c.pool_id != a.pool_id


def test_on_error_raise_stops_at_the_first_bad_file(png_folder):
    pool = _open(str(png_folder["root"]), on_error="raise")
    with pytest.raises(WorkbenchError) as e:
        pool.scan(SPEC28)
    msg = str(e.value)
    # files are visited in sorted order: bad/empty.png is the first bad one
    assert "bad/empty.png" in msg and "empty file" in msg and "truncated" not in msg and "\n" not in msg
    assert not pool.scanned


def test_labels_csv_by_name_or_index_partial(png_folder, tmp_path):
    root, files, y = png_folder["root"], png_folder["files"], png_folder["y"]
    names = [f"class {k}" for k in range(8)]
    labelled = list(files)[:10]
    lines = ["file,label"] + [f"{f},{names[y[files[f]]] if k % 2 else y[files[f]]}" for k, f in enumerate(labelled)]
    (root / "truth.csv").write_text("\n".join(lines) + "\n")
    pool = _open(str(root), labels_csv=str(root / "truth.csv"), class_names=names).scan(SPEC28)
    assert "truth.csv" not in {r["id"] for r in pool.rejected}  # the CSV is not an item nor rejected
    got = dict(zip(pool.ids, pool.labels.tolist()))
    assert all(got[f] == y[files[f]] for f in labelled)
    assert all(got[f] == -1 for f in pool.ids if f not in labelled)  # not covered: unknown
    (root / "truth.csv").write_text("file,label\n" + f"{labelled[0]},no such class\n")
    with pytest.raises(WorkbenchError, match="unknown label value"):
        _open(str(root), labels_csv=str(root / "truth.csv"), class_names=names).scan(SPEC28)
    (root / "truth.csv").write_text("file,label\nmissing.png,1\n")
    with pytest.raises(WorkbenchError, match="not in the pool folder"):
        _open(str(root), labels_csv=str(root / "truth.csv"), class_names=names).scan(SPEC28)
    # one file under two spellings with two labels: an error naming both, never "the last one wins"
    (root / "truth.csv").write_text(f"file,label\n{labelled[0]},1\n./{labelled[0]},2\n")
    with pytest.raises(WorkbenchError, match="more than once") as e:
        _open(str(root), labels_csv=str(root / "truth.csv"), class_names=names).scan(SPEC28)
    assert f"./{labelled[0]}" in str(e.value) and "\n" not in str(e.value)
    # and the same rule in an image-folder dataset's labels CSV (one reader: imagefolder.labels_table)
    from workbench.imagefolder import labels_table
    with pytest.raises(WorkbenchError, match="more than once"):
        labels_table(root / "truth.csv", [labelled[0]])


def test_resize_policy_conforms_or_refuses(tmp_path):
    """Real images at 64 px (BloodMNIST test images enlarged with PIL) against a 28 px spec."""
    x, _ = _tiny()
    root = tmp_path / "big"
    root.mkdir()
    big = [np.asarray(Image.fromarray(im).resize((64, 64), Image.BICUBIC)) for im in x[:6]]
    for i, im in enumerate(big):
        Image.fromarray(im).save(root / f"{i}.png")
    stretch = inputs.InputSpec(size=28, channels=3, resize="stretch")
    pool = _open(str(root))
    got = np.concatenate([b for _, b in pool.batches(stretch, 4)])
    assert got.shape == (6, 28, 28, 3)
    assert np.array_equal(got, inputs.prepare(np.stack(big), stretch))
    gray = inputs.InputSpec(size=28, channels=1, resize="pad")       # another channel count and policy
    assert pool.images([0, 5], gray).shape == (2, 28, 28, 1)
    with pytest.raises(WorkbenchError) as e:
        _open(str(root)).scan(SPEC28)                                   # policy "none"
    assert "-p resize stretch|pad|crop" in str(e.value) and "0.png" in str(e.value)


def test_preprocessing_goes_through_the_input_path(png_folder):
    spec = inputs.InputSpec(size=28, channels=3, preprocess=preprocess.make_spec(contrast="clahe", normalize="minmax"))
    pool = _open(str(png_folder["root"]))
    got = np.concatenate([b for _, b in pool.batches(spec, 7)])
    raw = np.stack(pool.raw(np.arange(len(pool))))
    assert np.array_equal(got, inputs.prepare(raw, spec)) and not np.array_equal(got, raw)


def test_streaming_batches_are_bounded_lazy_and_consistent(tmp_path, monkeypatch):
    x, _ = _tiny("train")
    n = 37
    root = tmp_path / "stream"
    root.mkdir()
    for i in range(n):
        Image.fromarray(x[i]).save(root / f"{i:04d}.png")
    calls = []
    real = inputs.decode_image_file
    monkeypatch.setattr(inputs, "decode_image_file", lambda p: calls.append(p) or real(p))
    pool = _open(str(root))
    it = pool.batches(SPEC28, 8)
    pos0, first = next(it)
    assert len(calls) == 8 and first.shape == (8, 28, 28, 3)   # decoded lazily: one batch so far
    rest = list(it)
    sizes = [len(first)] + [len(b) for _, b in rest]
    assert max(sizes) <= 8 and sum(sizes) == n and all(len(p) == len(b) for p, b in [(pos0, first), *rest])
    positions = np.concatenate([pos0] + [p for p, _ in rest])
    assert np.array_equal(positions, np.arange(n))
    streamed = np.concatenate([first] + [b for _, b in rest])
    calls.clear()
    once = list(pool.batches(SPEC28, n))                      # second pass: no re-listing, same images
    assert len(once) == 1 and np.array_equal(once[0][1], streamed) and len(calls) == n
    assert np.array_equal(streamed, x[:n])
    assert np.array_equal(pool.images([36, 0, 36], SPEC28), x[[36, 0, 36]])
    # a file changed since the scan is an error on the next pass, not silently different data
    Image.fromarray(x[40]).save(root / "0003.png")
    with pytest.raises(WorkbenchError, match="0003.png changed"):
        list(pool.batches(SPEC28, 8))


def test_folder_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match="no readable image"):
        _open(str(empty)).scan(SPEC28)
    (empty / "junk.png").write_bytes(b"junk")
    with pytest.raises(WorkbenchError) as e:
        _open(str(empty)).scan(SPEC28)
    assert "no readable image" in str(e.value) and "junk.png" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WorkbenchError, match="not found"):
        pools.open_pool(str(tmp_path / "nowhere"))
    with pytest.raises(WorkbenchError, match="no dataset"):
        pools.open_pool("test")
    with pytest.raises(WorkbenchError, match="skip or raise"):
        pools.open_pool(str(empty), on_error="ignore")
    with pytest.raises(WorkbenchError, match="batch_size"):
        pools.open_pool(str(empty)).batches(SPEC28, 0)


# ------------------------------------------------------------------------------------------- DICOM
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "InstitutionName", "StudyID",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")


def _header_values(paths) -> set[str]:
    """Independently of workbench.deid: identifying header values (and name parts) of the sources."""
    out = set()
    for p in paths:
        ds = pydicom.dcmread(p)
        for kw in PHI_KEYWORDS:
            v = str(ds.get(kw, "") or "").strip()
            if len(v) >= 4:
                out.add(v)
                out.update(part for part in v.split("^") if len(part) >= 4 and part.lower() not in ("test", "patient"))
    return out


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom") / "scans"
    ct_name = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).PatientName)   # CompressedSamples^CT1
    named = root / ct_name.replace("^", "_") / "series1"          # a folder named after the patient
    named.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), named / "IM0001.dcm")
    (root / "mr").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr" / "IM0001.dcm")
    # a real multi-frame file (15 frames); emri_small.dcm needs a download, rtdose.dcm ships with pydicom
    shutil.copy(get_testdata_file("rtdose.dcm"), root / "mr" / "dose_multiframe")       # no suffix: DICM magic
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(named / "burned.dcm")
    (root / "mr" / "broken.dcm").write_bytes(b"DICM but not really")
    sources = [named / "IM0001.dcm", root / "mr" / "IM0001.dcm", root / "mr" / "dose_multiframe", named / "burned.dcm"]
    return {"root": root, "named": named, "ct_name": ct_name, "phi": _header_values(sources)}


DSPEC = inputs.InputSpec(size=32, channels=1, resize="stretch")


def test_dicom_pool_frames_burned_in_and_pseudonymous_ids(dicom_folder, tmp_path):
    pool = _open(str(dicom_folder["root"])).scan(DSPEC)
    ids = pool.ids
    assert [i for i in ids if i.startswith("mr/dose_multiframe")] == [f"mr/dose_multiframe#{k}" for k in range(15)]
    assert "mr/IM0001.dcm" in ids                                  # single frame: no #k
    # the CT file lives under a folder named after its patient: its id is pseudonymous
    assert "dicom/P0001/S0001/R0001/I0001" in ids and not any("CompressedSamples" in i for i in ids)
    assert len(ids) == 17 and pool.pseudonymised == 2                 # the CT item and the burned-in file
    reasons = {r["id"]: r["reason"] for r in pool.rejected}
    assert reasons["mr/broken.dcm"].startswith("file is not a readable DICOM file")
    burned = [i for i, r in reasons.items() if r == pools.BURNED_IN_REASON]
    assert len(burned) == 1 and burned[0].startswith("dicom/P")      # excluded, and its folder name withheld
    assert pool.source["dicom_files"] == 5 and "PS3.15" in pool.source["deidentification"]
    # every output written from ids and reasons is free of the original values; the audit can fail
    out = tmp_path / "out"
    out.mkdir()
    pool.write_rejected(out / "rejected.csv")
    (out / "items.csv").write_text("id,md5\n" + "".join(f"{i},{m}\n" for i, m in zip(ids, pool.md5)))
    (out / "source.txt").write_text(repr(pool.source) + pool.name + pool.slug)
    assert pool.audit([out]) == []
    text = "".join(p.read_text() for p in out.iterdir())
    assert dicom_folder["phi"] and not any(v in text for v in dicom_folder["phi"])  # independent check
    (out / "leak.csv").write_text("id,patient\nx," + dicom_folder["ct_name"] + "\n")
    assert any(kw == "PatientName" for _, kw in pool.audit([out]))
    # images: the two passes agree (de-identified on each read), frames differ from one another
    a = np.concatenate([b for _, b in pool.batches(DSPEC, 4)])
    b = pool.images(np.arange(len(pool)), DSPEC)
    assert a.shape == (17, 32, 32, 1) and np.array_equal(a, b)
    frames = [k for k, i in enumerate(ids) if "#" in i]
    assert len({a[k].tobytes() for k in frames}) > 1
    with pytest.raises(WorkbenchError, match="DICOM options"):
        pool.images([0], inputs.InputSpec(size=32, channels=1, resize="stretch",
                                          dicom={**DSPEC.dicom, "frames": "first"}))


def test_phi_registry_rereads_the_same_values(dicom_folder):
    """annotate.phi_check re-reads the headers after the kernel is gone: the same values as the pool's."""
    pool = _open(str(dicom_folder["root"])).scan(DSPEC)
    again = pools.phi_registry(str(dicom_folder["root"]))
    assert len(pool.registry) > 20 and set(again.values) == set(pool.registry.values)
    assert pools.phi_registry("test") is None and pools.phi_registry(f"{TINY}:test") is None


def test_dicom_burned_in_allowed_and_frames_selected(dicom_folder):
    pool = _open(str(dicom_folder["root"]), allow_burned_in=True).scan(DSPEC)
    assert len(pool) == 18 and not any(r["reason"] == pools.BURNED_IN_REASON for r in pool.rejected)
    middle = inputs.InputSpec(size=32, channels=1, resize="stretch", dicom={**DSPEC.dicom, "frames": "middle"})
    pool = _open(str(dicom_folder["root"])).scan(middle)
    assert [i for i in pool.ids if i.startswith("mr/dose")] == ["mr/dose_multiframe#7"]


def test_dicom_file_that_cannot_be_deidentified_is_left_out_and_searched_for(dicom_folder, tmp_path, monkeypatch):
    from workbench import deid
    real = deid.deidentify

    def failing(ds, registry):
        if str(ds.get("Modality")) == "CT":
            raise WorkbenchError("de-identification failed (TypeError: planted)")
        return real(ds, registry)
    monkeypatch.setattr(deid, "deidentify", failing)
    pool = _open(str(dicom_folder["root"])).scan(DSPEC)
    reasons = {r["id"]: r["reason"] for r in pool.rejected}
    failed = [i for i, r in reasons.items() if r.startswith("de-identification failed")]
    assert len(failed) == 1 and failed[0].startswith("dicom/P") and len(pool) == 16   # CT left out, id withheld
    (tmp_path / "leak.txt").write_text("1CT1")                        # the CT's PatientID (and StudyID)
    hits = pool.audit([tmp_path / "leak.txt"])
    assert [f for f, _ in hits] == [str(tmp_path / "leak.txt")] and hits[0][1] in ("PatientID", "StudyID")


def test_dicom_raw_pixels_are_the_windowed_frames(dicom_folder):
    pool = _open(str(dicom_folder["root"])).scan(DSPEC)
    k = pool.ids.index("mr/IM0001.dcm")
    ds = pydicom.dcmread(dicom_folder["root"] / "mr" / "IM0001.dcm")
    (frame, expected), = inputs.decode_dicom(ds, DSPEC)
    assert np.array_equal(pool.raw([k])[0], expected) and expected.shape == (64, 64, 1)


# ------------------------------------------------------------------------------------------- npz
def test_npz_pool_streams_rows_with_labels(tmp_path):
    x, y = _tiny()
    with pytest.raises(WorkbenchError, match=r"bloodmnist_tiny.npz:test"):
        pools.open_pool(str(TINY))                                   # three *_images keys: name one
    pool = _open(f"{TINY}:test")
    assert pool.kind == "npz" and pool.source["key"] == "test_images"
    got = list(pool.batches(SPEC28, 50))
    assert [len(b) for _, b in got] == [50, 50, 20]
    assert np.array_equal(np.concatenate([b for _, b in got]), x)
    assert pool.ids[17] == "bloodmnist_tiny:17" and np.array_equal(pool.labels, y)
    assert pool.md5[0] == hashlib.md5(x[0].tobytes()).hexdigest()
    assert np.array_equal(pool.images([100, 3, 100], SPEC28), x[[100, 3, 100]])
    # an unlabelled, uncompressed npz with the key "images" (grayscale, another size)
    gray = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in x[:9]])
    np.savez(tmp_path / "new_cells.npz", images=gray)
    p2 = _open(str(tmp_path / "new_cells.npz"))
    spec = inputs.InputSpec(size=28, channels=1)
    assert np.array_equal(np.concatenate([b for _, b in p2.batches(spec, 4)])[..., 0], gray)
    assert p2.labels is None and p2.ids[0] == "new_cells:0" and p2.rejected == []
    assert p2.slug.startswith("new_cells-") and p2.slug != _open(f"{TINY}:test").slug


def test_npz_refuses_non_images(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(WorkbenchError, match="uint8"):
        pools.open_pool(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "g.npz", other=np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(WorkbenchError, match="no 'images'"):
        pools.open_pool(str(tmp_path / "g.npz"))


# ------------------------------------------------------------------------------------------- splits
def test_split_pool_matches_the_dataset():
    ds = data.load_dataset(str(TINY))
    pool = _open("test", dataset=ds)
    assert pool.kind == "dataset-split" and pool.slug == "test" and pool.ids[17] == "test:17"
    assert np.array_equal(pool.labels, ds.labels["test"]) and pool.source["dataset_md5"] == ds.md5
    streamed = np.concatenate([b for _, b in pool.batches(SPEC28, 32)])
    assert np.array_equal(streamed, ds.images["test"])
    assert pool.md5[3] == hashlib.md5(ds.images["test"][3].tobytes()).hexdigest()
    assert _open("test", dataset=ds).pool_id == pool.pool_id != _open("val", dataset=ds).pool_id
    x = ds.images["test"].copy()
    x[5] = x[3]                                                         # a byte-identical pair
    dup = _open("test", dataset=replace(ds, images={**ds.images, "test": x}))
    assert pool.duplicates == [] and dup.duplicates == [["test:3", "test:5"]]
    assert dup.ids == pool.ids and dup.pool_id != pool.pool_id          # same ids, other content


def test_split_pool_is_not_preprocessed_twice():
    spec = inputs.InputSpec(size=28, channels=3, preprocess=preprocess.make_spec(contrast="clahe"))
    ds = data.load_dataset(str(TINY))
    pre = ds.preprocessed(spec.preprocess)
    once = np.concatenate([b for _, b in _open("val", dataset=pre).batches(spec, 64)])
    fresh = np.concatenate([b for _, b in _open("val", dataset=ds).batches(spec, 64)])
    assert np.array_equal(once, pre.images["val"]) and np.array_equal(fresh, once)


# ------------------------------------------------------------------------------------------- bench
def test_bench_pools_runs_checks_and_reports(tmp_path, monkeypatch):
    """bench.pools on 300 real PNGs (from the tiny fixture): the child's own checks pass and the report
    holds the row (the real run, 10,000 and 100,000 files, is `python -m bench.pools`)."""
    import json

    from bench import pools as bench_pools
    monkeypatch.setattr(bench_pools, "DATA", TINY)
    folder = tmp_path / "pngs"
    bench_pools.write_pngs(folder, 300, source=TINY)
    r = bench_pools.child(folder, batch_size=128, source=TINY)
    assert r["items"] == 300 and r["rejected"] == 0 and r["first_pass"]["max_batch"] == 128
    assert 0 < r["traced"]["second_pass_working_mib"] < 50 and r["traced"]["index_bytes_per_file"] > 0
    doc = {"date": "d", "batch_size": 128, "machine": {"cpus": 2},
           "rows": [{**r, "n": 300, "images_in_ram_mib": 0.7, "load_avg_1min": [1.0, 1.0]}]}
    md = bench_pools.markdown(doc)
    assert "| 300 |" in md and json.loads(json.dumps(doc))["rows"][0]["n"] == 300

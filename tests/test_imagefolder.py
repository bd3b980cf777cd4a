"""Image folder + labels CSV: formats, splits, duplicates, card drafting, and every failure mode."""

import hashlib
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import workbench  # noqa: F401
from workbench import cards, data
from workbench.errors import WorkbenchError
from workbench.imagefolder import FolderOptions, draft_card, load_folder

from conftest import TINY, run_cli

CLASSES = ("basophil", "eosinophil", "platelet")  # BloodMNIST labels 0, 1, 7
PER_CLASS = 10


def _pixel_key(img):
    return hashlib.md5(np.ascontiguousarray(img).tobytes()).hexdigest()


@pytest.fixture
def folder(tmp_path):
    """30 real BloodMNIST images (RGB 28 px) as PNG, JPEG and TIFF with a labels CSV using
    non-default column names; returns (folder, {pixel md5 of lossless files: class})."""
    with np.load(TINY) as z:
        x, y = z["train_images"], z["train_labels"].reshape(-1)
    root = tmp_path / "cells"
    (root / "img").mkdir(parents=True)
    rows, truth = ["filename,diagnosis"], {}
    for c, name in zip((0, 1, 7), CLASSES):
        for j, i in enumerate(np.flatnonzero(y == c)[:PER_CLASS]):
            ext = (".png", ".jpg", ".tif")[j % 3]
            rel = f"img/{name[:3]}_{j}{ext}"
            Image.fromarray(x[i]).save(root / rel)
            rows.append(f"{rel},{name}")
            if ext != ".jpg":
                truth[_pixel_key(x[i])] = name
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, truth


OPTS = FolderOptions(file_column="filename", label_column="diagnosis")


def _check_labels(d, truth):
    """Every lossless image carries the label it was written with (no silent wrong label)."""
    checked = 0
    for s in ("train", "val", "test"):
        for img, lab in zip(d.images[s], d.labels[s]):
            key = _pixel_key(img)
            if key in truth:
                assert d.class_names[lab] == truth[key]
                checked += 1
    return checked


def test_png_jpeg_tiff_with_seeded_stratified_split(folder):
    root, truth = folder
    d = load_folder(root, 28, OPTS)
    assert d.class_names == list(CLASSES)
    assert {s: len(d.labels[s]) for s in d.labels} == {"train": 21, "val": 3, "test": 6}
    assert all(np.bincount(d.labels["test"], minlength=3).tolist() == [2, 2, 2] for _ in [0])
    assert d.images["train"].shape[1:] == (28, 28, 3) and d.images["train"].dtype == np.uint8
    assert _check_labels(d, truth) == 21  # PNG and TIFF (7 per class) are pixel-exact
    again = load_folder(root, 28, OPTS)
    assert again.files == d.files and again.fingerprint == d.fingerprint
    other = load_folder(root, 28, FolderOptions(file_column="filename", label_column="diagnosis", seed=1))
    assert other.files != d.files


def test_split_column_and_duplicates_across_splits_are_reported(folder):
    root, _ = folder
    lines = (root / "labels.csv").read_text().splitlines()
    out = ["filename,diagnosis,split"] + [f"{ln},{('train', 'val', 'test')[k % 3]}" for k, ln in enumerate(lines[1:])]
    shutil.copy(root / "img/bas_0.png", root / "img/copy_of_bas_0.png")
    out.append("img/copy_of_bas_0.png,basophil,test")   # bas_0 is in train
    (root / "labels.csv").write_text("\n".join(out) + "\n")
    d = load_folder(root, 28, OPTS)
    assert {s: len(d.labels[s]) for s in d.labels} == {"train": 10, "val": 10, "test": 11}
    cross = [x for x in d.duplicates if len(x["splits"]) > 1]
    assert cross == [{"md5": cross[0]["md5"], "files": ["img/bas_0.png", "img/copy_of_bas_0.png"],
                      "splits": ["test", "train"], "labels": ["basophil"]}]
    assert any("different splits (leakage)" in n for n in d.notes)


def test_seeded_split_keeps_identical_files_together(folder):
    root, _ = folder
    csv = (root / "labels.csv").read_text()
    for k in range(3):
        shutil.copy(root / "img/eos_1.jpg", root / f"img/dup{k}.jpg")
        csv += f"img/dup{k}.jpg,eosinophil\n"
    (root / "labels.csv").write_text(csv)
    d = load_folder(root, 28, OPTS)
    where = {f: s for s, fs in d.files.items() for f in fs}
    assert len({where[f] for f in ("img/eos_1.jpg", "img/dup0.jpg", "img/dup1.jpg", "img/dup2.jpg")}) == 1
    assert not [x for x in d.duplicates if len(x["splits"]) > 1]


def test_class_subfolders_grayscale_and_16bit_tiff(tmp_path):
    rng = np.random.default_rng(0)  # seeded synthetic arrays: formats only
    root = tmp_path / "xr"
    for c in ("normal", "effusion"):
        (root / c).mkdir(parents=True)
        for j in range(10):
            if j % 2:
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(root / c / f"{j}.png")
            else:
                Image.fromarray(rng.integers(0, 4095, (28, 28)).astype(np.uint16)).save(root / c / f"{j}.tiff")
    d = load_folder(root, 28, FolderOptions())
    assert d.class_names == ["effusion", "normal"] and d.images["train"].shape[-1] == 1
    assert "labels from class sub-folder names" in d.notes
    x = np.concatenate([d.images[s] for s in d.images])
    assert x.min() == 0 and x.max() == 255  # 16-bit images stretched per image


def test_resize_policy_must_be_chosen(folder):
    root, _ = folder
    with pytest.raises(WorkbenchError, match=r"img/bas_0.png: image is 28x28 but size is 64: choose a resize policy"):
        load_folder(root, 64, OPTS)
    d = load_folder(root, 64, FolderOptions(file_column="filename", label_column="diagnosis", resize="stretch"))
    assert d.images["test"].shape[1:] == (64, 64, 3)


def test_unreadable_image_is_skipped_with_its_label_and_listed(folder):
    root, truth = folder
    (root / "img/bas_3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")   # damaged, still named in the CSV
    d = load_folder(root, 28, OPTS)
    assert [f for f, _ in d.skipped] == ["img/bas_3.png"]
    assert sum(len(v) for v in d.labels.values()) == 29
    assert any("1 unreadable image(s) skipped with their labels: img/bas_3.png" in n for n in d.notes)
    assert _check_labels(d, truth) == 20
    with pytest.raises(WorkbenchError, match=r"img/bas_3.png cannot be read"):
        load_folder(root, 28, FolderOptions(file_column="filename", label_column="diagnosis", on_error="raise"))


def test_csv_naming_missing_files(folder):
    root, _ = folder
    (root / "img/pla_3.png").unlink()
    with pytest.raises(WorkbenchError, match=r"names 1 file\(s\) not in .*: img/pla_3.png"):
        load_folder(root, 28, OPTS)


def test_csv_errors_name_the_problem(folder):
    root, _ = folder
    with pytest.raises(WorkbenchError, match=r"no column 'file' \(columns: filename, diagnosis\)"):
        load_folder(root, 28, FolderOptions())
    csv = root / "labels.csv"
    text = csv.read_text()
    csv.write_text(text.replace("img/bas_0.png,basophil", "img/bas_0.png,"))
    with pytest.raises(WorkbenchError, match="empty label on line"):
        load_folder(root, 28, OPTS)
    csv.write_text("filename,diagnosis,split\nimg/bas_0.png,basophil,training\n")
    with pytest.raises(WorkbenchError, match="'split' has value.*training.*expected train, val or test"):
        load_folder(root, 28, OPTS)


def test_mixed_channel_counts(folder):
    root, _ = folder
    gray = np.asarray(Image.open(root / "img/bas_0.png").convert("L"))
    Image.fromarray(gray, mode="L").save(root / "img/bas_0.png")
    with pytest.raises(WorkbenchError, match=r"mixes channel counts: 1 grayscale \(e.g. img/bas_0.png\) and 29 RGB"):
        load_folder(root, 28, OPTS)
    d = load_folder(root, 28, FolderOptions(file_column="filename", label_column="diagnosis", channels=3))
    assert d.images["train"].shape[-1] == 3
    d1 = load_folder(root, 28, FolderOptions(file_column="filename", label_column="diagnosis", channels=1))
    assert d1.images["train"].shape[-1] == 1


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(WorkbenchError, match="holds no PNG, JPEG or TIFF images"):
        load_folder(tmp_path / "empty", 28)
    with pytest.raises(WorkbenchError, match="holds no PNG, JPEG or TIFF images"):
        data.load_dataset(str(tmp_path / "empty"))


def test_folder_without_card_loads_as_custom_dataset_with_warnings(folder):
    root, _ = folder
    shutil.copy(root / "img/bas_0.png", root / "img/bas_0_again.png")  # not in the CSV: ignored, noted
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("filename,diagnosis", "file,label"))  # the default column names
    with pytest.warns(data.CustomDatasetWarning, match="no data card cells.md"):
        ds = data.load_dataset(str(root), size=28)
    assert ds.is_custom and ds.class_names == list(CLASSES)
    assert any("not in the labels CSV ignored" in n for n in ds.notes)


def test_card_init_drafts_a_valid_card_and_the_loader_uses_it(folder):
    root, truth = folder
    proc = run_cli("card", "init", str(root), "--file-column", "filename", "--label-column", "diagnosis",
                   "--size", "28", "--size", "64", "--resize", "pad", "--modality", "blood cell microscopy")
    assert proc.returncode == 0, proc.stderr
    card_path = root.parent / "cells.md"
    assert proc.stdout.strip().splitlines()[-1] == str(card_path)
    card = cards.read_card(card_path)   # validated
    assert card.class_names == list(CLASSES) and card.n_channels == 3
    assert card.splits == {"train": 21, "val": 3, "test": 6} and sorted(card.files) == [28, 64]
    assert card.extra["image_folder"]["file_column"] == "filename" and card.license == cards.UNKNOWN
    text = card_path.read_text()
    for h in cards.HEADINGS:
        assert f"\n## {h}\n" in text
    assert text.count("[More Information Needed]") >= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no custom-dataset warning: the card describes it
        ds = data.load_dataset(str(root), size=64)
    assert ds.card.name == "cells" and ds.md5 == card.files[64]["md5"] and ds.input_shape == (64, 64, 3)
    # a size the card does not list
    with pytest.raises(WorkbenchError, match="lists no size 128"):
        data.load_dataset(str(root), size=128)
    # the card pins the content: a changed label is caught
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("img/pla_0.png,platelet", "img/pla_0.png,basophil"))
    with pytest.raises(WorkbenchError, match="changed after the card was written"):
        data.load_dataset(str(root), size=28)
    # a label value the card does not know
    csv.write_text(csv.read_text().replace("img/pla_1.jpg,platelet", "img/pla_1.jpg,platypus"))
    with pytest.raises(WorkbenchError, match=r"unknown label value\(s\) platypus .*classes are basophil, eosinophil, platelet"):
        data.load_dataset(str(root), size=28)
    with pytest.raises(WorkbenchError, match="already exists"):
        draft_card(root, [28], OPTS)

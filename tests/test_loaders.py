"""Loaders: counts/dtypes/shapes match the card; subsets are stratified and seeded; bad input fails
with one line naming the file and the fix; data files are never unpickled."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench import WorkbenchError, cards
from workbench.data import loaders as data       # the dataset loaders (workbench.data before the layers)
from workbench.data import CustomDatasetWarning
from workbench.paths import DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "bloodmnist_tiny.npz"
BLOOD_PATH = DATA_DIR / "bloodmnist.npz"


@pytest.fixture(scope="module")
def blood():
    """The embedded official BloodMNIST 28 px, loaded by card name (read once per module)."""
    return data.load_dataset("bloodmnist")


@pytest.fixture(scope="module")
def blood_card():
    return cards.load_card("bloodmnist")


# --- real data matches its card -------------------------------------------------------------------

def test_bloodmnist_by_name_matches_card(blood, blood_card):
    assert blood.name == "bloodmnist"
    assert blood.card == blood_card
    assert blood.task == "multi-class"
    assert blood.class_names == blood_card.class_names
    assert blood.md5 == "7053d0359d879ad8a5505303e11de1dc"
    assert blood.size == 28 and blood.input_shape == (28, 28, 3)
    assert not blood.is_custom
    for s in data.SPLITS:
        x, y = blood.images[s], blood.labels[s]
        assert x.shape == (blood_card.splits[s], 28, 28, 3)
        assert x.dtype == np.uint8
        assert y.shape == (blood_card.splits[s],)
        assert y.dtype == np.int64
        assert y.min() == 0 and y.max() == 7


def test_bloodmnist_class_counts_match_card_body(blood):
    # the per-class counts the card's "Dataset Structure" section lists
    assert blood.counts()["train"] == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
    assert blood.counts()["val"] == [122, 312, 155, 290, 122, 143, 333, 235]
    assert blood.counts()["test"] == [244, 624, 311, 579, 243, 284, 666, 470]


def test_bloodmnist_by_path_matches_card_by_md5(blood, monkeypatch):
    # The file's arrays were already read and checked by the `blood` fixture; to read the 35 MB at most
    # once per module they are served from memory here. Everything else is real: the md5 is hashed
    # from the file and the card is found by that md5 alone (no name is given).
    served = []

    def read_npz(path):
        served.append(path)
        return {f"{s}_{k}": getattr(blood, k)[s] for s in data.SPLITS for k in ("images", "labels")}

    monkeypatch.setattr(data, "_read_npz", read_npz)
    ds = data.load_dataset(str(BLOOD_PATH))
    assert served == [BLOOD_PATH]
    assert ds.card is not None and ds.card.name == "bloodmnist"
    assert ds.name == "bloodmnist"
    assert ds.md5 == blood.md5
    assert any("md5 matches data card bloodmnist (size 28)" in n for n in ds.notes)
    assert {s: len(v) for s, v in ds.labels.items()} == {"train": 11959, "val": 1712, "test": 3421}
    assert np.array_equal(ds.labels["test"], blood.labels["test"])


def test_tiny_fixture_uses_its_sibling_card():
    ds = data.load_dataset(str(TINY))
    assert ds.name == "bloodmnist_tiny"
    assert ds.card is not None and ds.card.path == TINY.with_suffix(".md")
    assert {s: len(ds.labels[s]) for s in data.SPLITS} == {"train": 240, "val": 96, "test": 120}
    assert {s: ds.images[s].shape[1:] for s in data.SPLITS} == {s: (28, 28, 3) for s in data.SPLITS}
    assert ds.class_names == cards.load_card("bloodmnist").class_names
    assert all(min(c) >= 1 for c in ds.counts().values())  # every class in every split
    assert any("own data card" in n for n in ds.notes)


# --- stratified, seeded subsets ------------------------------------------------------------------

def test_subsample_is_stratified_and_keeps_every_class(blood):
    n = 200
    sub = blood.subsample(n, seed=1)
    for s in data.SPLITS:
        full = np.bincount(blood.labels[s], minlength=8)
        part = np.bincount(sub.labels[s], minlength=8)
        assert part.sum() == n
        assert (part >= 1).all()
        # each class within one image of its exact proportional share
        assert np.all(np.abs(part - full / full.sum() * n) < 1)
    assert sub.notes[-1] == "stratified subset: at most 200 images per split (seed 1)"
    assert blood.subsample(0, seed=1) is blood


def test_subsample_images_stay_paired_with_labels(blood):
    idx = data.stratified_indices(blood.labels["val"], 50, seed=4)
    sub = blood.subsample(50, seed=4)
    assert np.array_equal(sub.images["val"], blood.images["val"][idx])
    assert np.array_equal(sub.labels["val"], blood.labels["val"][idx])


def test_subsample_same_seed_same_indices_different_seed_different(blood):
    y = blood.labels["train"]
    a = data.stratified_indices(y, 100, seed=7)
    b = data.stratified_indices(y, 100, seed=7)
    c = data.stratified_indices(y, 100, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(np.bincount(y[a], minlength=8), np.bincount(y[c], minlength=8))


def test_load_with_max_per_split():
    ds = data.load_dataset(str(TINY), max_per_split=40, seed=3)
    again = data.load_dataset(str(TINY), max_per_split=40, seed=3)
    for s in data.SPLITS:
        assert len(ds.labels[s]) == 40
        assert set(ds.labels[s].tolist()) == set(range(8))
        assert np.array_equal(ds.images[s], again.images[s])


def test_stratified_indices_edge_cases():
    y = np.array([0, 0, 0, 1, 1, 2])
    assert np.array_equal(data.stratified_indices(y, 6, 0), np.arange(6))
    assert np.array_equal(data.stratified_indices(y, 100, 0), np.arange(6))
    one_each = data.stratified_indices(y, 3, 0)
    assert sorted(y[one_each].tolist()) == [0, 1, 2]
    single_class = data.stratified_indices(np.zeros(10, dtype=int), 4, 5)
    assert len(single_class) == 4 and len(set(single_class.tolist())) == 4
    idx = data.stratified_indices(np.repeat(np.arange(4), 25), 10, 0)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert sorted(np.bincount(np.repeat(np.arange(4), 25)[idx]).tolist()) == [2, 2, 3, 3]


def test_stratified_indices_never_exceeds_n():
    y = np.array([0] * 1000 + [1, 2])
    idx = data.stratified_indices(y, 10, 0)
    assert len(idx) <= 10


# --- bad input: one line, names the file, says what to do ----------------------------------------

def _err(spec, **kw) -> str:
    with pytest.raises(WorkbenchError) as ei:
        data.load_dataset(str(spec), **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def _arrays(rng, n=(12, 6, 6), k=3, shape=(28, 28, 3)):
    out = {}
    for s, m in zip(data.SPLITS, n):
        out[f"{s}_images"] = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
        out[f"{s}_labels"] = (np.arange(m) % k).astype(np.uint8).reshape(-1, 1)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_missing_file(tmp_path):
    p = tmp_path / "absent.npz"
    msg = _err(p)
    assert str(p) in msg and "not found" in msg and "check the path" in msg


def test_truncated_npz(tmp_path):
    p = tmp_path / "half.npz"
    raw = TINY.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    msg = _err(p)
    assert str(p) in msg and "truncated or corrupt" in msg and "re-download or re-create" in msg


def test_non_zip_file_is_refused(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("this is not a numpy archive\n")
    msg = _err(p)
    assert str(p) in msg


def test_non_zip_file_is_reported_as_not_an_npz(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("this is not a numpy archive\n")
    msg = _err(p)
    assert "Python objects" not in msg
    assert "re-download or re-create" in msg


def test_npy_file_is_a_workbench_error(tmp_path, rng):
    p = tmp_path / "images.npy"
    np.save(p, rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8))
    msg = _err(p)
    assert str(p) in msg


def test_wrong_keys(tmp_path, rng):
    p = tmp_path / "keys.npz"
    arrays = _arrays(rng)
    arrays["x_train"] = arrays.pop("train_images")
    np.savez(p, **arrays)
    msg = _err(p)
    assert str(p) in msg
    assert "lacks key(s) train_images" in msg
    assert "x_train" in msg  # lists what it found
    assert "MedMNIST-format npz needs" in msg


def test_wrong_image_shape(tmp_path, rng):
    p = tmp_path / "shape.npz"
    np.savez(p, **_arrays(rng, shape=(28, 27, 3)))
    msg = _err(p)
    assert str(p) in msg and "train_images has shape (12, 28, 27, 3)" in msg and "expected (N, S, S" in msg


def test_splits_with_different_shapes(tmp_path, rng):
    p = tmp_path / "mixed.npz"
    arrays = _arrays(rng)
    arrays["val_images"] = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(p, **arrays)
    msg = _err(p)
    assert str(p) in msg and "val_images" in msg and "one shape" in msg


def test_float_images(tmp_path, rng):
    p = tmp_path / "float.npz"
    arrays = _arrays(rng)
    arrays["train_images"] = arrays["train_images"].astype(np.float32) / 255
    np.savez(p, **arrays)
    msg = _err(p)
    assert str(p) in msg and "dtype float32" in msg and "expected uint8" in msg


def test_multi_label_train_with_single_label_val_refused(tmp_path, rng):
    p = tmp_path / "multilabel.npz"
    arrays = _arrays(rng)
    arrays["train_labels"] = rng.integers(0, 2, (12, 3)).astype(np.uint8)
    np.savez(p, **arrays)
    msg = _err(p)
    assert str(p) in msg and "multi-label" in msg and "(12, 3)" in msg and "one label layout" in msg


def test_negative_and_float_labels_refused(tmp_path, rng):
    neg, flt = tmp_path / "neg.npz", tmp_path / "flt.npz"
    arrays = _arrays(rng)
    arrays["test_labels"] = arrays["test_labels"].astype(np.int64) - 1
    np.savez(neg, **arrays)
    assert "negative label -1" in _err(neg)
    arrays = _arrays(rng)
    arrays["val_labels"] = arrays["val_labels"].astype(np.float32)
    np.savez(flt, **arrays)
    msg = _err(flt)
    assert str(flt) in msg and "integer class indices" in msg


def test_empty_label_columns_refused(tmp_path, rng):
    p = tmp_path / "nolabels.npz"
    arrays = _arrays(rng)
    arrays["train_labels"] = np.zeros((12, 0), dtype=np.uint8)
    np.savez(p, **arrays)
    assert str(p) in _err(p)


class _Canary:
    """Unpickling an instance records itself: proves the loader never unpickles."""

    tripped: list = []

    def __reduce__(self):
        return (_trip, ())


def _trip():
    _Canary.tripped.append(1)
    return "unpickled!"


def test_object_arrays_refused_without_unpickling(tmp_path, rng):
    p = tmp_path / "objects.npz"
    arrays = _arrays(rng)
    labels = np.empty(12, dtype=object)
    labels[:] = [_Canary() for _ in range(12)]
    arrays["train_labels"] = labels
    np.savez(p, **arrays)
    _Canary.tripped.clear()
    msg = _err(p)
    assert _Canary.tripped == []
    assert str(p) in msg and "Python objects" in msg and "np.savez" in msg


def _card_text(name, classes, splits, md5, size=28, n_channels=3):
    labels = "".join(f'  {i}: "{c}"\n' for i, c in enumerate(classes))
    split_lines = "".join(f"  {s}: {n}\n" for s, n in splits.items())
    headings = "".join(f"## {h}\n\n[More Information Needed]\n\n" for h in cards.HEADINGS)
    return (
        f"---\nname: {name}\npretty_name: {name}\nversion: '1'\nlicense: CC0\n"
        "source:\n  url: https://example.org\n  citation: none\n"
        f"modality: test\ntask: multi-class\nlabel_classes:\n{labels}n_channels: {n_channels}\n"
        f"splits:\n{split_lines}files:\n  {size}: {{file: {name}.npz, md5: \"{md5}\"}}\n---\n\n# {name}\n\n{headings}"
    )


def test_labels_out_of_range_for_sibling_card(tmp_path, rng):
    p = tmp_path / "mine.npz"
    arrays = _arrays(rng, k=3)
    arrays["test_labels"][0, 0] = 3  # card says 3 classes: 0..2
    np.savez(p, **arrays)
    p.with_suffix(".md").write_text(_card_text("mine", ["a", "b", "c"], {"train": 12, "val": 6, "test": 6},
                                               data.file_md5(p)))
    msg = _err(p)
    assert str(p) in msg
    assert "test_labels contains label 3 but card mine has 3 classes (0..2)" in msg


def test_split_count_differs_from_sibling_card(tmp_path, rng):
    p = tmp_path / "mine.npz"
    np.savez(p, **_arrays(rng, k=3))
    p.with_suffix(".md").write_text(_card_text("mine", ["a", "b", "c"], {"train": 13, "val": 6, "test": 6},
                                               data.file_md5(p)))
    msg = _err(p)
    assert str(p) in msg and "train has 12 images but card mine says 13" in msg


def test_changed_file_vs_sibling_card_md5(tmp_path, rng):
    p = tmp_path / "bloodmnist_tiny.npz"
    shutil.copy(TINY, p)
    shutil.copy(TINY.with_suffix(".md"), p.with_suffix(".md"))
    assert data.load_dataset(str(p)).card.name == "bloodmnist_tiny"  # unchanged copy is fine
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"][0, 0, 0, 0] ^= 1
    np.savez_compressed(p, **arrays)
    msg = _err(p)
    assert str(p) in msg and "changed after the card was written" in msg and "restore it or update the card" in msg


def test_md5_mismatch_with_named_card(tmp_path, rng, monkeypatch):
    fake = tmp_path / "bloodmnist.npz"
    np.savez(fake, **_arrays(rng, k=8))
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    msg = _err("bloodmnist")
    assert str(fake) in msg
    assert "but data card bloodmnist says 7053d0359d879ad8a5505303e11de1dc" in msg
    assert "re-download it" in msg


def test_card_file_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    msg = _err("bloodmnist", size=64)
    assert "bloodmnist_64.npz" in msg and "download" in msg and "2b94928a2ae4916078ca51e05b6b800b" in msg


def test_unknown_size_for_card():
    msg = _err("bloodmnist", size=32)
    assert "lists no file of size 32" in msg and "28, 64, 128, 224" in msg


def test_unknown_card_name_lists_known_cards():
    msg = _err("bloodmnistt")
    assert "no data card named 'bloodmnistt'" in msg
    assert all(n in msg for n in ("bloodmnist", "pathmnist", "organsmnist"))
    assert "path to a MedMNIST-format .npz" in msg


def test_empty_dataset_parameter():
    with pytest.raises(WorkbenchError, match="parameter 'dataset' is empty"):
        data.load_dataset("  ")


# --- custom datasets ------------------------------------------------------------------------------

def test_valid_npz_without_card_loads_as_custom(tmp_path, rng):
    p = tmp_path / "custom.npz"
    arrays = _arrays(rng, k=4, shape=(28, 28))  # grayscale (N, S, S) gets a channel axis
    np.savez(p, **arrays)
    with pytest.warns(CustomDatasetWarning, match="matches no data card"):
        ds = data.load_dataset(str(p))
    assert ds.is_custom and ds.card is None
    assert ds.name == "custom"
    assert ds.class_names == ["0", "1", "2", "3"]
    assert ds.task == "multi-class"
    assert ds.input_shape == (28, 28, 1)
    assert ds.labels["train"].dtype == np.int64
    assert np.array_equal(ds.labels["train"], np.arange(12) % 4)
    assert ds.md5 == data.file_md5(p)


def test_custom_binary_dataset_and_absent_class_warning(tmp_path, rng):
    p = tmp_path / "binary.npz"
    arrays = _arrays(rng, k=2)
    np.savez(p, **arrays)
    with pytest.warns(CustomDatasetWarning):
        ds = data.load_dataset(str(p))
    assert ds.task == "binary-class" and ds.class_names == ["0", "1"]

    q = tmp_path / "gappy.npz"
    arrays = _arrays(rng, k=2)
    arrays["test_labels"][0, 0] = 4  # classes 2 and 3 (and 4) never appear in train
    np.savez(q, **arrays)
    with pytest.warns(CustomDatasetWarning, match=r"classes \[2, 3, 4\] have no training images"):
        ds = data.load_dataset(str(q))
    assert ds.num_classes == 5


# --- the embedded BreastMNIST and RetinaMNIST files -----------------------------------------------

@pytest.mark.parametrize("name, md5, shape, task, train_counts", [
    ("breastmnist", "750601b1f35ba3300ea97c75c52ff8f6", (28, 28, 1), "binary-class", [147, 399]),
    ("retinamnist", "bd4c0672f1bba3e3a89f0e4e876791e4", (28, 28, 3), "ordinal-regression", [486, 128, 206, 194, 66]),
])
def test_embedded_files_load_by_card_name(name, md5, shape, task, train_counts):
    assert (DATA_DIR / f"{name}.npz").is_file()
    assert data.file_md5(DATA_DIR / f"{name}.npz") == md5
    ds = data.load_dataset(name)
    card = cards.load_card(name)
    assert ds.card == card and ds.md5 == md5 == card.md5_for_size(28)
    assert ds.input_shape == shape and ds.task == task and ds.describe()["task"] == task
    assert not ds.is_multilabel and ds.num_classes == len(train_counts)
    for s in data.SPLITS:
        assert ds.labels[s].shape == (card.splits[s],) and ds.labels[s].dtype == np.int64
        assert ds.images[s].shape == (card.splits[s], *shape) and ds.images[s].dtype == np.uint8
    assert ds.counts()["train"] == train_counts


def test_embedded_files_are_committed_not_ignored():
    import subprocess
    for name in ("bloodmnist", "breastmnist", "retinamnist"):
        rel = f"data/{name}.npz"
        ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode == 0
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", rel], cwd=ROOT, capture_output=True).returncode == 0
        assert not ignored and tracked, rel


def test_ordinal_loads_as_single_label_ints():
    ds = data.load_dataset("retinamnist", max_per_split=50, seed=0)
    assert ds.task == "ordinal-regression" and ds.labels["test"].ndim == 1
    assert set(np.unique(ds.labels["test"]).tolist()) == {0, 1, 2, 3, 4}  # every grade kept by the subset
    assert ds.describe()["multilabel"] is False and "labels_per_image" not in ds.describe()


# --- multi-label -----------------------------------------------------------------------------------

MOSAIC = ROOT / "tests" / "fixtures" / "bloodmosaic_tiny.npz"


@pytest.fixture(scope="module")
def mosaics():
    return data.load_dataset(str(MOSAIC))


def test_multilabel_fixture_loads_with_its_card(mosaics):
    ds = mosaics
    assert ds.card is not None and ds.card.name == "bloodmosaic_tiny" and ds.task == "multi-label, binary-class"
    assert ds.is_multilabel and ds.num_classes == 8 and ds.class_names == cards.load_card("bloodmnist").class_names
    assert {s: ds.labels[s].shape for s in data.SPLITS} == {"train": (64, 8), "val": (24, 8), "test": (24, 8)}
    assert all(ds.labels[s].dtype == np.int64 and set(np.unique(ds.labels[s])) == {0, 1} for s in data.SPLITS)
    assert ds.input_shape == (56, 56, 3) and ds.size == 56
    assert ds.counts() == {s: ds.labels[s].sum(axis=0).tolist() for s in data.SPLITS}
    assert ds.counts()["train"] == [20] * 8
    d = ds.describe()
    assert d["multilabel"] is True and d["num_classes"] == 8 and d["labels_per_image"]["train"] == 2.5


def test_multilabel_labels_are_exact_recomputed_from_the_tiles(mosaics):
    """Each 28 px tile is a real cell of the same split of bloodmnist_tiny; its class sets the label."""
    tiny = data.load_dataset(str(TINY))
    for s, picks in (("train", (0, 7, 31, 63)), ("test", (0, 11, 23))):
        index = {im.tobytes(): i for i, im in enumerate(tiny.images[s])}
        for i in picks:
            img = mosaics.images[s][i]
            tiles = [img[r:r + 28, c:c + 28] for r in (0, 28) for c in (0, 28)]
            classes = {int(tiny.labels[s][index[t.tobytes()]]) for t in tiles}
            assert np.flatnonzero(mosaics.labels[s][i]).tolist() == sorted(classes)


def test_multilabel_subsample_is_seeded_and_keeps_every_label(mosaics):
    a, b, c = mosaics.subsample(8, seed=1), mosaics.subsample(8, seed=1), mosaics.subsample(8, seed=2)
    for s in data.SPLITS:
        assert a.labels[s].shape == (8, 8)
        assert np.array_equal(a.labels[s], b.labels[s]) and np.array_equal(a.images[s], b.images[s])
        assert (a.labels[s].sum(axis=0) >= 1).all()  # every label still has a positive
    assert any(not np.array_equal(a.labels[s], c.labels[s]) for s in data.SPLITS)


def test_multilabel_indices_take_a_rare_label_when_the_budget_allows():
    y = np.zeros((100, 3), dtype=np.int64)
    y[:, 0] = 1
    y[::10, 1] = 1
    y[57, 2] = 1  # one positive in 100
    for seed in range(5):
        idx = data.stratified_indices(y, 3, seed)
        assert len(idx) == 3 and 57 in idx and (y[idx].sum(axis=0) >= 1).all()
        assert np.all(np.diff(idx) > 0)
    assert np.array_equal(data.stratified_indices(y, 200, 0), np.arange(100))


def _ml_arrays(rng, n=(12, 6, 6), labels=4, shape=(28, 28, 3)):
    out = {}
    for s, m in zip(data.SPLITS, n):
        out[f"{s}_images"] = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
        y = (rng.random((m, labels)) < 0.4).astype(np.uint8)
        y[0] = 1  # every label present
        out[f"{s}_labels"] = y
    return out


def test_custom_multilabel_npz_loads_with_a_warning(tmp_path, rng):
    p = tmp_path / "findings.npz"
    arrays = _ml_arrays(rng)
    np.savez(p, **arrays)
    with pytest.warns(CustomDatasetWarning, match="custom multi-label dataset 'findings' \\(4 0/1 label columns"):
        ds = data.load_dataset(str(p))
    assert ds.is_multilabel and ds.task == "multi-label, binary-class" and ds.class_names == ["0", "1", "2", "3"]
    assert np.array_equal(ds.labels["val"], arrays["val_labels"].astype(np.int64))
    arrays["train_labels"][:, 3] = 0
    np.savez(p, **arrays)
    with pytest.warns(CustomDatasetWarning, match=r"labels \[3\] have no positive training image"):
        data.load_dataset(str(p))


@pytest.mark.parametrize("case, needles", [
    ("value_2", ["val_labels is multi-label (shape (6, 4))", "value(s) 2", "must be 0 or 1"]),
    ("negative", ["test_labels is multi-label", "value(s) -1"]),
    ("columns_differ", ["val_labels has 3 multi-label columns but train_labels has 4"]),
    ("mixed_layout", ["test_labels has shape (6, 1) but train_labels has shape (12, 4)", "multi-label"]),
    ("float", ["train_labels has dtype float32", "0/1 multi-label values"]),
])
def test_bad_multilabel_values_are_one_line_errors(tmp_path, rng, case, needles):
    p = tmp_path / "bad.npz"
    arrays = _ml_arrays(rng)
    if case == "value_2":
        arrays["val_labels"][2, 1] = 2
    elif case == "negative":
        arrays["test_labels"] = arrays["test_labels"].astype(np.int8)
        arrays["test_labels"][1, 0] = -1
    elif case == "columns_differ":
        arrays["val_labels"] = arrays["val_labels"][:, :3]
    elif case == "mixed_layout":
        arrays["test_labels"] = np.zeros((6, 1), dtype=np.uint8)
    else:
        arrays["train_labels"] = arrays["train_labels"].astype(np.float32)
    np.savez(p, **arrays)
    msg = _err(p)
    assert str(p) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def _ml_card(name, classes, splits, md5, task="multi-label, binary-class"):
    return _card_text(name, classes, splits, md5).replace("task: multi-class", f"task: {task}")


def test_multilabel_label_count_must_match_the_card(tmp_path, rng):
    p = tmp_path / "mine.npz"
    np.savez(p, **_ml_arrays(rng, labels=4))
    splits = {"train": 12, "val": 6, "test": 6}
    p.with_suffix(".md").write_text(_ml_card("mine", ["a", "b", "c"], splits, data.file_md5(p)))
    msg = _err(p)
    assert "train_labels has 4 label columns but card mine has 3 label_classes" in msg
    p.with_suffix(".md").write_text(_ml_card("mine", ["a", "b", "c", "d"], splits, data.file_md5(p)))
    ds = data.load_dataset(str(p))
    assert ds.is_multilabel and ds.class_names == ["a", "b", "c", "d"]


def test_multilabel_file_under_a_single_label_card_and_vice_versa(tmp_path, rng):
    p = tmp_path / "mine.npz"
    splits = {"train": 12, "val": 6, "test": 6}
    np.savez(p, **_ml_arrays(rng, labels=3))
    p.with_suffix(".md").write_text(_card_text("mine", ["a", "b", "c"], splits, data.file_md5(p)))
    msg = _err(p)
    assert "labels are (N, 3) multi-label columns but card mine has task 'multi-class'" in msg
    np.savez(p, **_arrays(rng, k=3))
    p.with_suffix(".md").write_text(_ml_card("mine", ["a", "b", "c"], splits, data.file_md5(p)))
    msg = _err(p)
    assert "labels are (N,) class indices but card mine has task 'multi-label, binary-class'" in msg
    assert "needs (N, 3) 0/1 label columns" in msg


# --- the tiny real fixtures -------------------------------------------------------------------------

FIX = ROOT / "tests" / "fixtures"


@pytest.mark.parametrize("name, task, shape, k", [
    ("breastmnist_tiny", "binary-class", (28, 28, 1), 2),
    ("retinamnist_tiny", "ordinal-regression", (28, 28, 3), 5),
    ("union15_tiny", "multi-class", (28, 28, 3), 15),
    ("bloodmosaic_tiny", "multi-label, binary-class", (56, 56, 3), 8),
])
def test_tiny_fixtures_load_by_path_with_their_cards(name, task, shape, k):
    p = FIX / f"{name}.npz"
    assert p.stat().st_size < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load_dataset(str(p))
    assert ds.card is not None and ds.card.name == name and ds.card.path == p.with_suffix(".md")
    assert ds.task == task and ds.input_shape == shape and ds.num_classes == k
    assert ds.card.orientation is not None
    for s in data.SPLITS:
        c = np.asarray(ds.counts()[s])
        assert (c >= 1).all() and (c <= 20).all()  # every class in every split, about 10-20 each


def test_tiny_subsets_are_real_images_of_their_source():
    for name, source in (("breastmnist_tiny", "breastmnist"), ("retinamnist_tiny", "retinamnist")):
        tiny, full = data.load_dataset(str(FIX / f"{name}.npz")), data.load_dataset(source)
        for s in data.SPLITS:
            index = {im.tobytes(): i for i, im in enumerate(full.images[s])}
            for x, y in zip(tiny.images[s], tiny.labels[s]):
                assert full.labels[s][index[x.tobytes()]] == y  # same split, same label, same pixels


def test_union15_is_the_union_of_three_sources():
    ds = data.load_dataset(str(FIX / "union15_tiny.npz"))
    assert ds.card.orientation["flips"] is False and "breast" in ds.card.orientation["reason"]
    names = ds.class_names
    assert names[:8] == [f"blood: {c}" for c in cards.load_card("bloodmnist").class_names]
    assert names[8:10] == ["breast: malignant", "breast: normal, benign"]
    assert names[10:] == [f"retina: DR grade {g}" for g in range(5)]
    sources = {"blood": (data.load_dataset("bloodmnist"), 0), "breast": (data.load_dataset("breastmnist"), 8),
               "retina": (data.load_dataset("retinamnist"), 10)}
    for s in data.SPLITS:
        assert ds.counts()[s][:10] == [10] * 10
        for prefix, (src, offset) in sources.items():
            index = {im.tobytes(): i for i, im in enumerate(src.images[s])}
            mine = np.flatnonzero((ds.labels[s] >= offset) & (ds.labels[s] < offset + src.num_classes))
            for i in mine:
                x = ds.images[s][i]
                if prefix == "breast":  # grayscale repeated into RGB, nothing else changed
                    assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
                    x = x[..., :1]
                assert src.labels[s][index[x.tobytes()]] == ds.labels[s][i] - offset

"""Multi-label mosaics of real BloodMNIST cells: labels exact by construction, splits never crossed,
seeded, written as a loadable npz + card; the shipped fixture is what the generator makes."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from workbench import WorkbenchError, cards, data, mosaic

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "bloodmnist_tiny.npz"
MOSAIC = FIXTURES / "bloodmosaic_tiny.npz"


@pytest.fixture(scope="module")
def blood():
    return data.load_dataset(str(TINY))


def _tiles(img, grid=2):
    s = img.shape[0] // grid
    return [img[r * s:(r + 1) * s, c * s:(c + 1) * s] for r in range(grid) for c in range(grid)]


def _lookup(images):
    """pixel bytes → index: real cells are told apart by their exact pixels."""
    return {im.tobytes(): i for i, im in enumerate(images)}


def test_make_mosaic_shapes_and_exact_labels(blood):
    x, y = blood.images["train"], blood.labels["train"]
    imgs, lab = mosaic.make_mosaic(x, y, blood.class_names, n=40, seed=3)
    assert imgs.shape == (40, 56, 56, 3) and imgs.dtype == np.uint8
    assert lab.shape == (40, 8) and lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
    index = _lookup(x)
    for i in range(40):
        classes = {int(y[index[t.tobytes()]]) for t in _tiles(imgs[i])}  # every tile is a real train cell
        assert set(np.flatnonzero(lab[i]).tolist()) == classes


def test_plan_and_assemble_agree(blood):
    x, y = blood.images["val"], blood.labels["val"]
    src, lab = mosaic.mosaic_plan(y, 12, seed=5, grid=2, num_classes=8)
    imgs = mosaic.assemble(x, src, grid=2)
    for i in range(12):
        for t, tile in enumerate(_tiles(imgs[i])):
            assert np.array_equal(tile, x[src[i, t]])
        assert lab[i].tolist() == [int(j in set(y[src[i]].tolist())) for j in range(8)]


def test_cardinality_covers_one_to_four_and_every_class_appears(blood):
    _, lab = mosaic.make_mosaic(blood.images["train"], blood.labels["train"], blood.class_names, n=32, seed=0)
    card = lab.sum(axis=1)
    assert sorted(set(card.tolist())) == [1, 2, 3, 4]
    assert np.bincount(card, minlength=5)[1:].tolist() == [8, 8, 8, 8]  # equal shares
    assert (lab.sum(axis=0) >= 1).all()
    # least-used-first: class usage stays balanced (8 classes, 80 class slots → 10 each)
    assert lab.sum(axis=0).tolist() == [10] * 8


def test_seeded(blood):
    args = (blood.images["test"], blood.labels["test"], blood.class_names)
    a = mosaic.make_mosaic(*args, n=10, seed=1)
    b = mosaic.make_mosaic(*args, n=10, seed=1)
    c = mosaic.make_mosaic(*args, n=10, seed=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_grayscale_and_larger_grid(blood):
    gray = blood.images["train"][..., 0]
    imgs, lab = mosaic.make_mosaic(gray, blood.labels["train"], blood.class_names, n=9, seed=0, grid=3)
    assert imgs.shape == (9, 84, 84)
    assert lab.sum(axis=1).max() <= 8 and lab.sum(axis=1).min() == 1
    index = _lookup(gray)
    for i in range(9):
        classes = {int(blood.labels["train"][index[t.tobytes()]]) for t in _tiles(imgs[i], 3)}
        assert set(np.flatnonzero(lab[i]).tolist()) == classes


def test_fewer_classes_than_tiles_caps_cardinality():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)  # shape-only edge case: 2 classes, 4 tiles
    imgs, lab = mosaic.make_mosaic(x, np.array([0, 0, 0, 1, 1, 1]), ["a", "b"], n=6, seed=0)
    assert imgs.shape == (6, 16, 16, 3)
    assert sorted(set(lab.sum(axis=1).tolist())) == [1, 2]


@pytest.mark.parametrize("bad", ["multilabel", "float", "n0", "nonsquare"])
def test_bad_input_is_one_line_workbench_error(blood, bad):
    x, y, n = blood.images["train"], blood.labels["train"], 4
    if bad == "multilabel":
        y = np.eye(8, dtype=np.uint8)[y]
    elif bad == "float":
        x = x.astype(np.float32)
    elif bad == "n0":
        n = 0
    else:
        x = x[:, :, :20]
    with pytest.raises(WorkbenchError) as ei:
        mosaic.make_mosaic(x, y, blood.class_names, n=n, seed=0)
    assert "\n" not in str(ei.value) and str(ei.value).startswith("mosaic:")


def test_write_mosaic_dataset_npz_card_splits_and_determinism(blood, tmp_path):
    out = tmp_path / "mosaics.npz"
    path = mosaic.write_mosaic_dataset(blood, out, {"train": 12, "val": 6, "test": 6}, seed=4)
    assert path == out and out.with_suffix(".md").is_file()
    card = cards.read_card(out.with_suffix(".md"))
    assert card.task == "multi-label, binary-class" and card.class_names == blood.class_names
    assert card.splits == {"train": 12, "val": 6, "test": 6}
    assert card.md5_for_size(56) == data.file_md5(out)
    assert card.orientation["flips"] and card.orientation["quarter_turns"]
    assert card.license == "CC BY 4.0" and "exact by construction" in card.body.lower()
    assert "seed 4" in card.body and "bloodmnist_tiny" in card.body
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a card beside it: no custom-dataset warning
        ds = data.load_dataset(str(out))
    assert ds.is_multilabel and ds.labels["train"].shape == (12, 8)
    # every tile of a split's mosaics is a cell of the same source split, never of another
    lookups = {s: _lookup(blood.images[s]) for s in data.SPLITS}
    for s in data.SPLITS:
        for i, img in enumerate(ds.images[s]):
            tiles = _tiles(img)
            assert all(t.tobytes() in lookups[s] for t in tiles)
            classes = {int(blood.labels[s][lookups[s][t.tobytes()]]) for t in tiles}
            assert set(np.flatnonzero(ds.labels[s][i]).tolist()) == classes
    md5 = data.file_md5(out)
    mosaic.write_mosaic_dataset(blood, out, {"train": 12, "val": 6, "test": 6}, seed=4)
    assert data.file_md5(out) == md5  # byte-identical rewrite (fixed zip timestamps)


def test_orientation_follows_the_source(tmp_path):
    breast = data.load_dataset(str(FIXTURES / "breastmnist_tiny.npz"))
    out = mosaic.write_mosaic_dataset(breast, tmp_path / "breastmosaic.npz", 6, seed=0)
    card = cards.read_card(out.with_suffix(".md"))
    assert card.orientation["flips"] is False and card.orientation["quarter_turns"] is False
    ds = data.load_dataset(str(out))
    assert ds.images["train"].shape == (6, 56, 56, 1) and ds.labels["train"].shape == (6, 2)


def test_write_refuses_multilabel_source_and_bad_sizes(tmp_path):
    ml = data.load_dataset(str(MOSAIC))
    with pytest.raises(WorkbenchError, match="multi-label"):
        mosaic.write_mosaic_dataset(ml, tmp_path / "x.npz", 4, seed=0)
    blood = data.load_dataset(str(TINY))
    with pytest.raises(WorkbenchError, match=r"n_per_split\[val\]"):
        mosaic.write_mosaic_dataset(blood, tmp_path / "x.npz", {"train": 4, "val": 0, "test": 4}, seed=0)
    with pytest.raises(WorkbenchError, match=r"\.npz"):
        mosaic.write_mosaic_dataset(blood, tmp_path / "x.zip", 4, seed=0)


def test_save_npz_is_deterministic_and_loadable(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": np.ones((2, 2), dtype=np.int64)}
    mosaic.save_npz(tmp_path / "one.npz", arrays)
    mosaic.save_npz(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz", allow_pickle=False) as z:
        assert np.array_equal(z["a"], arrays["a"]) and z["b"].dtype == np.int64


# --- the shipped fixture ----------------------------------------------------------------------------

def test_fixture_is_what_the_documented_command_makes(tmp_path):
    """The card's 'Re-create with' command, run from another directory, gives the fixture byte for byte."""
    card = cards.read_card(MOSAIC.with_suffix(".md"))
    cmd = card.body.split("Re-create with `", 1)[1].split("`", 1)[0].split()
    assert cmd[0] == "tools/make_mosaic.py"
    args = cmd[1:]
    args[args.index("--source") + 1] = str(ROOT / args[args.index("--source") + 1])
    args[args.index("--out") + 1] = str(tmp_path / "again.npz")
    proc = subprocess.run([sys.executable, str(ROOT / cmd[0]), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert data.file_md5(tmp_path / "again.npz") == data.file_md5(MOSAIC) == card.md5_for_size(56)


def test_cli_refuses_to_overwrite(tmp_path):
    out = tmp_path / "m.npz"
    out.write_bytes(b"")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_mosaic.py"), "--source", str(TINY), "--out", str(out),
                           "--train", "2", "--val", "2", "--test", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "exists already" in proc.stderr and proc.stderr.count("\n") == 1

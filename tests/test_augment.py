"""Augmentation presets: shape/dtype kept, seeded, serialise -> deserialise gives array-equal output."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from workbench import WorkbenchError, augment

TINY = Path(__file__).resolve().parent / "fixtures" / "bloodmnist_tiny.npz"
PRESETS = tuple(augment.PRESETS)


@pytest.fixture(scope="module")
def rgb():
    with np.load(TINY, allow_pickle=False) as z:
        return z["train_images"][:24]  # real BloodMNIST cells, (24, 28, 28, 3) uint8


def _images(n_channels, rgb):
    if n_channels == 3:
        return rgb
    return rgb.mean(axis=-1, keepdims=True).astype(np.uint8)  # (24, 28, 28, 1)


def test_presets():
    assert PRESETS == ("none", "light", "microscopy", "dihedral", "fixed")
    assert set(augment.ORIENTATION_CHANGES) == set(PRESETS)
    assert set(augment.DIHEDRAL_PRESETS) <= {p for p, c in augment.ORIENTATION_CHANGES.items() if c}


def test_fixed_preset_never_mirrors_or_turns(rgb):
    """The orientation-fixed preset: small shifts, scale, a few degrees of rotation, brightness/contrast —
    an asymmetric image never comes out as its mirror image or a quarter turn of itself."""
    names = [type(op).__name__ for op in augment.build("fixed", 0, 3).transforms]
    assert names == ["Affine", "RandomBrightnessContrast"]
    aff = augment.build("fixed", 0, 3).transforms[0]
    assert max(abs(a) for a in aff.rotate_range if a is not None) <= 5 if hasattr(aff, "rotate_range") else True
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 4:10, 2:20] = 255          # a bar in the top-left: its mirror or turn lands far away
    t = augment.build("fixed", 0, 1)
    for _ in range(40):
        out = augment.apply(t, x)[0, ..., 0].astype(float)
        top_left = out[:14, :14].sum()
        assert top_left > out[14:, :].sum() and top_left > out[:, 14:].sum() - out[:14, 14:].sum()


def test_dihedral_is_geometric_only_and_covers_all_eight_symmetries(rgb):
    names = [type(op).__name__ for op in augment.build("dihedral", 0, 3).transforms]
    assert names == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine"]
    # without the affine step every output is one of the 8 flips/quarter turns of its input, and all 8 occur
    t = augment.build("dihedral", 0, 3)
    t.transforms[3].p = 0.0
    x = rgb[:1]
    seen = set()
    for _ in range(64):
        out = augment.apply(t, x)[0]
        match = [k for k in range(8) if np.array_equal(out, np.rot90(x[0] if k < 4 else x[0][:, ::-1], k % 4))]
        assert match, "dihedral produced an image that is not a flip/quarter turn of its input"
        seen.add(match[0])
    assert len(seen) == 8


@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keeps_shape_and_dtype(preset, n_channels, rgb):
    x = _images(n_channels, rgb)
    before = x.copy()
    out = augment.apply(augment.build(preset, seed=0, n_channels=n_channels), x)
    assert out.shape == x.shape == (24, 28, 28, n_channels)
    assert out.dtype == np.uint8
    assert np.array_equal(x, before)  # input untouched
    if preset != "none":
        assert not np.array_equal(out, x)  # 24 images: something was augmented


@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("preset", ["light", "microscopy", "dihedral"])
def test_same_seed_same_output_different_seed_different(preset, n_channels, rgb):
    x = _images(n_channels, rgb)
    a = augment.apply(augment.build(preset, 11, n_channels), x)
    b = augment.apply(augment.build(preset, 11, n_channels), x)
    c = augment.apply(augment.build(preset, 12, n_channels), x)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("preset", ["light", "microscopy", "dihedral"])
def test_transforms_draw_independently(preset, rgb):
    # albumentations' own seeding puts every transform in lockstep (each its own generator, same seed):
    # HorizontalFlip then fired exactly when the next p=0.5 transform did. With the shared stream the
    # horizontal flip must fire both with and without the second transform.
    t = augment.build(preset, 0, 3)
    first, second = t.transforms[0], t.transforms[1]
    assert type(first).__name__ == "HorizontalFlip"
    seen = set(_fired(t, rgb[:1], [first, second], 200))
    assert {(True, False), (False, True)} <= seen


def _fired(t, x, watched, n):
    """Per call, which of the ``watched`` transforms ran (each one's ``should_apply`` is wrapped to record it)."""
    ran = {}

    def recording(i, fn):
        def wrapper(*args, **kwargs):
            ran[i] = fn(*args, **kwargs)
            return ran[i]
        return wrapper

    for i, op in enumerate(watched):
        op.should_apply = recording(i, op.should_apply)
    out = []
    for _ in range(n):
        ran.clear()
        augment.apply(t, x)
        out.append(tuple(ran.get(i, False) for i in range(len(watched))))
    return out


def test_colour_jitter_only_for_rgb():
    names = lambda t: [type(op).__name__ for op in t.transforms]  # noqa: E731
    assert "HueSaturationValue" in names(augment.build("microscopy", 0, 3))
    assert "HueSaturationValue" not in names(augment.build("microscopy", 0, 1))


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_round_trip_is_array_equal(preset, tmp_path, rgb):
    path = tmp_path / "augment.yaml"
    used = augment.build(preset, 5, 3)
    augment.apply(used, rgb)  # its RNG has advanced: the file must still rebuild the seeded pipeline
    augment.save(used, preset, 5, path)
    loaded, doc = augment.load(path)
    assert doc["preset"] == preset and doc["seed"] == 5
    expected = augment.apply(augment.build(preset, 5, 3), rgb)
    assert np.array_equal(augment.apply(loaded, rgb), expected)


def test_saved_yaml_is_plain_data(tmp_path):
    path = tmp_path / "augment.yaml"
    augment.save(augment.build("microscopy", 3, 3), "microscopy", 3, path)
    doc = yaml.safe_load(path.read_text())  # no python/tuple tags: safe_load succeeds

    def leaves(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, str) for k in obj)
            for v in obj.values():
                yield from leaves(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from leaves(v)
        else:
            yield obj

    assert all(v is None or type(v) in (str, int, float, bool) for v in leaves(doc))
    assert "!!python" not in path.read_text()
    ops = [t["__class_fullname__"] for t in doc["albumentations"]["transform"]["transforms"]]
    assert ops == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine", "RandomBrightnessContrast",
                   "HueSaturationValue", "GaussianBlur"]


def test_unknown_preset_lists_presets():
    with pytest.raises(WorkbenchError) as ei:
        augment.build("heavy", 0)
    msg = str(ei.value)
    assert "'heavy'" in msg and "parameter 'augment'" in msg
    assert "none, light, microscopy" in msg


def test_none_is_identity(rgb):
    t = augment.build("none", 0)
    assert augment.is_identity(t)
    assert not augment.is_identity(augment.build("light", 0))
    out = augment.apply(t, rgb)
    assert np.array_equal(out, rgb)
    assert out.dtype == np.uint8

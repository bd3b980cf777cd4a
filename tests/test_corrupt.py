"""workbench.corrupt: the seeded acquisition-corruption suite, and the data cards' ``acquisition`` field
that chooses it. Real fixture images (BloodMNIST RGB, BreastMNIST grayscale); seeded synthetic arrays
only for sizes the fixtures do not have."""

import re

import numpy as np
import pytest

from tests.conftest import FIXTURES, TINY
from workbench import cards, corrupt
from workbench.errors import WorkbenchError


def _load(path, n=12):
    with np.load(path, allow_pickle=False) as z:
        x = z["val_images"][:n]
    return x[..., None] if x.ndim == 3 else x


RGB = _load(TINY)
GRAY = _load(FIXTURES / "breastmnist_tiny.npz")
BLOOD_TEXT = (cards.CARDS_DIR / "bloodmnist.md").read_text()


def _batches(name):
    return [x for x in (RGB, GRAY) if x.shape[-1] in corrupt.CHANNELS[name]]


@pytest.mark.parametrize("name", sorted(corrupt.CORRUPTIONS))
def test_every_corruption_keeps_shape_dtype_and_is_deterministic(name):
    for x in _batches(name):
        for s in corrupt.SEVERITIES:
            out = corrupt.apply(x, name, s, seed=3)
            assert out.shape == x.shape and out.dtype == np.uint8
            assert np.array_equal(out, corrupt.apply(x, name, s, seed=3)), (name, s)
            assert np.array_equal(out, corrupt.CORRUPTIONS[name](x, s, 3))   # the registry is the same function
        assert not np.array_equal(corrupt.apply(x, name, 3, seed=0), x), name   # it changes something


@pytest.mark.parametrize("name", sorted(corrupt.CORRUPTIONS))
def test_severities_are_ordered(name):
    """Severity 3 moves the images further from the originals than 2, and 2 further than 1."""
    for x in _batches(name):
        d = [np.abs(corrupt.apply(x, name, s, seed=0).astype(int) - x).mean() for s in corrupt.SEVERITIES]
        assert d[0] < d[1] < d[2], (name, x.shape[-1], d)


def test_seeds_differ_only_where_the_corruption_is_random():
    for name in corrupt.CORRUPTIONS:
        x = _batches(name)[0]
        a, b = corrupt.apply(x, name, 2, seed=0), corrupt.apply(x, name, 2, seed=1)
        assert np.array_equal(a, b) == (name not in corrupt.RANDOM), name
    assert {"gaussian_noise", "shot_noise", "speckle", "bubbles"} <= corrupt.RANDOM


def test_any_size_and_spatial_parameters_scale_with_it():
    rng = np.random.default_rng(0)
    big = np.repeat(np.repeat(RGB[:3], 4, axis=1), 4, axis=2)       # 112 px, the same content
    odd = rng.integers(0, 256, (2, 37, 53, 1), dtype=np.uint8)     # not square
    for name in corrupt.CORRUPTIONS:
        for x in (big, odd):
            if x.shape[-1] in corrupt.CHANNELS[name]:
                assert corrupt.apply(x, name, 2, seed=1).shape == x.shape
    # a 28-px blur of σ 0.8 is a 112-px blur of σ 3.2: downsampled back, both look alike
    import cv2
    small = corrupt.apply(RGB[:3], "gaussian_blur", 2)
    back = np.stack([cv2.resize(im, (28, 28), interpolation=cv2.INTER_AREA) for im in corrupt.apply(big, "gaussian_blur", 2)])
    same_sigma = corrupt.blur(big, 0.8)
    back_same = np.stack([cv2.resize(im, (28, 28), interpolation=cv2.INTER_AREA) for im in same_sigma])
    assert np.abs(back.astype(int) - small).mean() < np.abs(back_same.astype(int) - small).mean()


def test_known_values():
    x = np.full((1, 8, 8, 3), 100, np.uint8)
    assert (corrupt.apply(x, "darker", 2) == 80).all()
    assert (corrupt.apply(x, "brighter", 3) == 130).all()
    assert (corrupt.apply(x, "contrast_down", 3) == 100).all()        # a flat image has no contrast to lose
    assert np.abs(corrupt.stain(RGB, (1, 1, 1)).astype(int) - RGB).max() <= 1
    k = corrupt.disk_kernel(1.5)
    assert k.sum() == pytest.approx(1.0) and k.shape == (5, 5) and k[2, 2] == k.max()
    top, bottom = corrupt.apply(np.full((1, 16, 16, 1), 100, np.uint8), "depth_gain", 1)[0, [0, -1], 0, 0]
    assert top > 100 > bottom                                          # deeper is darker
    v = corrupt.apply(np.full((1, 16, 16, 1), 200, np.uint8), "vignette", 3)[0, ..., 0]
    assert v[8, 8] > v[0, 8] > v[0, 0]                                  # darker towards the corners


def test_hue_and_saturation_change_colour_not_grey():
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    for name in ("hue_shift", "saturation_down"):
        assert np.abs(corrupt.apply(grey, name, 3).astype(int) - grey).max() <= 1, name
    sat = corrupt.apply(RGB, "saturation_up", 2).astype(int)
    spread = lambda a: (a.max(-1) - a.min(-1)).mean()
    assert spread(sat) > spread(RGB.astype(int))


def test_bad_input_is_one_line():
    cases = [
        (lambda: corrupt.apply(RGB, "fog", 1), "unknown corruption 'fog'"),
        (lambda: corrupt.apply(RGB, "jpeg", 4), "severity 4"),
        (lambda: corrupt.apply(RGB, "jpeg", True), "severity True"),
        (lambda: corrupt.apply(RGB, "jpeg", 1, seed=-1), "seed -1"),
        (lambda: corrupt.apply(RGB.astype(np.float32), "jpeg", 1), "uint8"),
        (lambda: corrupt.apply(RGB[0], "jpeg", 1), "(N, H, W, C)"),
        (lambda: corrupt.apply(GRAY, "hue_shift", 1), "needs RGB"),
        (lambda: corrupt.suite("sonar"), "no corruption family"),
    ]
    for call, words in cases:
        with pytest.raises(WorkbenchError) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value)
    assert "gaussian_blur" in str(pytest.raises(WorkbenchError, corrupt.apply, RGB, "fog", 1).value)


def test_labels_name_the_setting():
    assert corrupt.label("darker", 2) == "darker (illumination / gain × 0.8)"
    assert corrupt.label("stain_cast", 3) == "dye balance (OD R×1.3 G×1 B×0.7)"


# ---------------------------------------------------------------------- suites, families and cards
@pytest.mark.parametrize("family", sorted(corrupt.FAMILIES))
def test_every_family_has_at_least_8_corruptions_times_3_severities(family):
    s = corrupt.suite(family)
    names = corrupt.suite_names(family)
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert s == [(n, k) for n in names for k in (1, 2, 3)]
    assert set(names) <= set(corrupt.CORRUPTIONS)


def test_every_card_names_its_acquisition_and_gets_a_suite_for_its_channels():
    cards._all_cards.cache_clear()
    for card in cards.all_cards():
        a = card.acquisition
        assert a is not None and a["family"] in corrupt.FAMILIES and a["reason"].strip(), card.name
        assert set(a["changes"]) <= set(corrupt.CHANGES)
        names = corrupt.suite_names(card)
        assert len(names) >= 8, card.name
        assert all(card.n_channels in corrupt.CHANNELS[n] for n in names), card.name
        assert corrupt.family(card) == (a["family"], None)
    assert corrupt.suite_names(cards.load_card("bloodmnist"))[:2] == ["darker", "brighter"]
    assert "speckle" in corrupt.suite_names(cards.load_card("breastmnist"))
    assert "stain_cast" in corrupt.suite_names(cards.load_card("bloodmnist"))
    assert "vignette" in corrupt.suite_names(cards.load_card("retinamnist"))


def test_modality_text_maps_to_a_family():
    assert corrupt.family_of("blood cell microscopy") == "stained microscopy"
    assert corrupt.family_of("breast ultrasound") == "ultrasound"
    assert corrupt.family_of("retinal OCT") == "oct"
    assert corrupt.family_of("abdominal CT") == "ct"
    assert corrupt.family_of("pediatric chest X-ray") == "radiograph"
    assert corrupt.family_of("fundus photography") == "fundus"
    assert corrupt.family_of("sonar") is None
    assert corrupt.suite("breast ultrasound") == corrupt.suite("ultrasound")


def test_card_without_acquisition_loads_and_gets_a_family_with_a_warning(tmp_path):
    text = re.sub(r"^acquisition: .*\n", "", BLOOD_TEXT, flags=re.M)
    p = tmp_path / "x.md"
    p.write_text(text)
    card = cards.read_card(p)
    assert card.acquisition is None
    fam, note = corrupt.family(card)
    assert fam == "stained microscopy" and "bloodmnist" in note and "acquisition" in note
    assert corrupt.suite(card) == corrupt.suite("stained microscopy")


ACQ_LINE = re.search(r"^acquisition: .*$", BLOOD_TEXT, flags=re.M).group(0)
BAD_ACQ = {
    "unknown_family": ("acquisition: {family: sonar, changes: {blur: 1}, reason: x}", ["acquisition.family", "sonar"]),
    "unknown_change": ("acquisition: {family: ct, changes: {fog: 1}, reason: x}", ["unknown change 'fog'"]),
    "out_of_range": ("acquisition: {family: ct, changes: {brightness: 2}, reason: x}", ["changes.brightness", "[0.0, 0.5]"]),
    "not_a_number": ("acquisition: {family: ct, changes: {blur: lots}, reason: x}", ["changes.blur", "'lots'"]),
    "empty_changes": ("acquisition: {family: ct, changes: {}, reason: x}", ["non-empty mapping"]),
    "no_reason": ("acquisition: {family: ct, changes: {blur: 1}}", ["acquisition.reason"]),
    "unknown_key": ("acquisition: {family: ct, changes: {blur: 1}, reason: x, strength: 3}", ["unknown key", "strength"]),
    "not_mapping": ("acquisition: microscopy", ["'acquisition' must be a mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ACQ))
def test_broken_acquisition_fails_with_one_line(tmp_path, case):
    line, words = BAD_ACQ[case]
    p = tmp_path / "bad.md"
    p.write_text(BLOOD_TEXT.replace(ACQ_LINE, line))
    with pytest.raises(WorkbenchError) as e:
        cards.read_card(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    for w in words:
        assert w in msg, (case, msg)


def test_rgb_only_change_on_a_grayscale_card_is_refused(tmp_path):
    text = (cards.CARDS_DIR / "breastmnist.md").read_text()
    line = re.search(r"^acquisition: .*$", text, flags=re.M).group(0)
    p = tmp_path / "bad.md"
    p.write_text(text.replace(line, "acquisition: {family: ultrasound, changes: {hue: 5}, reason: x}"))
    with pytest.raises(WorkbenchError, match="RGB images only"):
        cards.read_card(p)


def test_benchmarks_reuse_the_suite_primitives():
    from bench import features
    import inspect
    assert "from workbench.corrupt import blur, noise" in inspect.getsource(features.ood_part)


def test_importing_corrupt_loads_no_heavy_library():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(corrupt))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"keras", "jax", "matplotlib", "albumentations", "tensorflow", "torch"}

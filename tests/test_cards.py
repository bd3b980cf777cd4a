"""Data cards: every shipped card parses and validates; broken cards fail with one line naming the field."""

import re

import pytest

from workbench import WorkbenchError, cards
from workbench.paths import CARDS_DIR

NAMES = ("pathmnist chestmnist dermamnist octmnist pneumoniamnist retinamnist breastmnist bloodmnist "
         "tissuemnist organamnist organcmnist organsmnist").split()

BLOOD_BASELINES = {
    "ResNet-18 (28)": (0.958, 0.998),
    "ResNet-18 (224)": (0.963, 0.998),
    "ResNet-50 (28)": (0.956, 0.997),
    "ResNet-50 (224)": (0.950, 0.997),
    "auto-sklearn": (0.878, 0.984),
    "AutoKeras": (0.961, 0.998),
    "Google AutoML Vision": (0.966, 0.998),
}


def test_shipped_cards_are_exactly_the_twelve_medmnist_2d_datasets():
    assert sorted(cards.card_names()) == sorted(NAMES)
    assert sorted(p.stem for p in CARDS_DIR.glob("*.md")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_card_validates_with_all_sizes_and_headings(name):
    card = cards.read_card(CARDS_DIR / f"{name}.md")  # read_card validates
    assert card.name == name
    assert card.path == CARDS_DIR / f"{name}.md"
    assert sorted(card.files) == [28, 64, 128, 224]
    for size, entry in card.files.items():
        assert re.fullmatch(r"[0-9a-f]{32}", entry["md5"])
        assert entry["file"] == (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
    found = re.findall(r"^## +(.+?)\s*$", card.body, flags=re.M)
    assert set(cards.HEADINGS) <= set(found)
    assert card.task in cards.TASKS
    assert card.n_channels in (1, 3)
    assert card.class_names == [card.label_classes[i] for i in range(card.num_classes)]
    assert set(card.splits) == {"train", "val", "test"}


def test_md5s_are_unique_across_all_cards():
    md5s = [e["md5"] for c in cards.all_cards() for e in c.files.values()]
    assert len(md5s) == 12 * 4
    assert len(set(md5s)) == len(md5s)


def test_bloodmnist_card_contents():
    card = cards.load_card("bloodmnist")
    assert card.num_classes == 8
    assert card.class_names[0] == "basophil" and card.class_names[7] == "platelet"
    assert card.task == "multi-class"
    assert card.n_channels == 3
    assert card.splits == {"train": 11959, "val": 1712, "test": 3421}
    assert card.md5_for_size(28) == "7053d0359d879ad8a5505303e11de1dc"
    assert card.size_for_md5("7053d0359d879ad8a5505303e11de1dc") == 28
    assert card.md5_for_size(32) is None


def test_bloodmnist_published_baselines_exact():
    card = cards.load_card("bloodmnist")
    assert card.published_baselines == {m: {"acc": a, "auc": u} for m, (a, u) in BLOOD_BASELINES.items()}


def test_card_for_md5_finds_bloodmnist_size_28():
    match = cards.card_for_md5("7053d0359d879ad8a5505303e11de1dc")
    assert match is not None
    card, size = match
    assert (card.name, size) == ("bloodmnist", 28)
    assert cards.card_for_md5("0" * 32) is None


def test_unknown_card_name_lists_known_cards():
    with pytest.raises(WorkbenchError) as ei:
        cards.load_card("nosuchmnist")
    msg = str(ei.value)
    assert "'nosuchmnist'" in msg
    assert all(n in msg for n in NAMES)


# --- broken cards ---------------------------------------------------------------------------------

BLOOD_TEXT = (CARDS_DIR / "bloodmnist.md").read_text(encoding="utf-8")


def _write(tmp_path, text, name="broken.md"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _edit(old, new):
    assert BLOOD_TEXT.count(old) == 1, old
    return BLOOD_TEXT.replace(old, new)


def test_unmodified_copy_is_valid(tmp_path):
    card = cards.read_card(_write(tmp_path, BLOOD_TEXT))
    assert card.name == "bloodmnist"


BROKEN = {
    "missing_field": (_edit("modality: blood cell microscopy\n", ""), ["missing field", "modality"]),
    "bad_task": (_edit("task: multi-class\n", "task: segmentation\n"), ["'task'", "segmentation", "multi-class"]),
    "label_gap": (_edit('  7: "platelet"', '  9: "platelet"'), ["'label_classes'", "without gaps"]),
    "bad_md5": (_edit('md5: "7053d0359d879ad8a5505303e11de1dc"', 'md5: "7053d0359d879ad8"'),
                ["files[28]", "md5"]),
    "missing_heading": (_edit("## Privacy\n", "## Confidentiality\n"), ["missing heading", "Privacy"]),
    "unclosed_front_matter": (_edit("\n---\n\n# BloodMNIST", "\n\n# BloodMNIST"), ["front matter", "not closed"]),
    "no_front_matter": (BLOOD_TEXT.split("\n---\n", 1)[1], ["must start with", "---"]),
    "bad_n_channels": (_edit("n_channels: 3\n", "n_channels: 4\n"), ["'n_channels'", "1 or 3"]),
    "bad_splits": (_edit("  val: 1712\n", "  valid: 1712\n"), ["'splits'", "train/val/test"]),
    "bad_baseline": (_edit("auto-sklearn: {acc: 0.878", "auto-sklearn: {acc: 87.8"),
                     ["published_baselines['auto-sklearn']", "[0, 1]"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_card_fails_with_one_line_naming_field(tmp_path, case):
    text, needles = BROKEN[case]
    path = _write(tmp_path, text)
    with pytest.raises(WorkbenchError) as ei:
        cards.read_card(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_card_file(tmp_path):
    with pytest.raises(WorkbenchError, match="not found"):
        cards.read_card(tmp_path / "absent.md")


def test_all_cards_reads_a_directory_and_fails_on_a_broken_card(tmp_path):
    # all_cards is lru_cached by directory string: every case uses its own directory
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    _write(good, BLOOD_TEXT, "bloodmnist.md")
    _write(good, _edit("name: bloodmnist\n", "name: bloodcopy\n"), "bloodcopy.md")
    assert cards.card_names(good) == ["bloodcopy", "bloodmnist"]
    assert cards.load_card("bloodcopy", good).splits["train"] == 11959
    _write(bad, BLOOD_TEXT, "bloodmnist.md")
    _write(bad, BROKEN["bad_task"][0], "zz.md")
    with pytest.raises(WorkbenchError, match="zz.md"):
        cards.all_cards(bad)


def test_non_integer_file_size_is_a_workbench_error(tmp_path):
    path = _write(tmp_path, _edit("  28: {file: bloodmnist.npz", "  small: {file: bloodmnist.npz"))
    with pytest.raises(WorkbenchError, match="files"):
        cards.read_card(path)

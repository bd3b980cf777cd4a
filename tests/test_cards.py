"""Data cards: every shipped card parses and validates; broken cards fail with one line naming the field."""

import re
from pathlib import Path

import numpy as np
import pytest

from workbench import WorkbenchError, cards
from workbench.paths import CARDS_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures"
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


# --- published baselines: only the cells that could be checked --------------------------------------

def test_breastmnist_baseline_is_the_checked_cell_only():
    card = cards.load_card("breastmnist")
    assert card.published_baselines == {"ResNet-18 (28)": {"acc": 0.863, "auc": 0.901}}
    assert "Table 3" in card.body and "left out" in card.body  # the Summary says where it comes from


def test_retinamnist_baselines_left_out_with_the_reason():
    card = cards.load_card("retinamnist")
    assert card.published_baselines == {}
    assert "no independent check" in card.body


# --- orientation ------------------------------------------------------------------------------------

FREE = {"bloodmnist", "pathmnist", "dermamnist", "tissuemnist", "retinamnist"}
FIXED = {"breastmnist", "chestmnist", "pneumoniamnist", "octmnist", "organamnist", "organcmnist", "organsmnist"}


def test_free_and_fixed_cover_the_twelve_cards():
    assert FREE | FIXED == set(NAMES) and not FREE & FIXED


@pytest.mark.parametrize("name", NAMES)
def test_every_card_states_its_orientation(name):
    card = cards.load_card(name)
    o = card.orientation
    assert set(o) == {"flips", "quarter_turns", "reason"}
    free = name in FREE
    assert o["flips"] is free and o["quarter_turns"] is free
    assert isinstance(o["reason"], str) and len(o["reason"]) > 30 and "\n" not in o["reason"]
    assert cards.orientation_of(card) == ({"flips": free, "quarter_turns": free}, None)


def test_orientation_reasons_name_what_matters():
    reason = {n: cards.load_card(n).orientation["reason"] for n in NAMES}
    assert "transducer" in reason["breastmnist"] and "shadowing" in reason["breastmnist"]
    assert "fellow eye" in reason["retinamnist"]
    assert "layers" in reason["octmnist"]
    for n in ("organamnist", "organcmnist", "organsmnist"):
        assert "kidney" in reason[n] and "left" in reason[n]
    for n in ("chestmnist", "pneumoniamnist"):
        assert "left/right" in reason[n]


def test_card_without_orientation_loads_and_defaults_to_fixed(tmp_path):
    text = re.sub(r"^orientation: .*\n", "", BLOOD_TEXT, flags=re.M)
    card = cards.read_card(_write(tmp_path, text))
    assert card.orientation is None
    o, note = cards.orientation_of(card)
    assert o == {"flips": False, "quarter_turns": False}
    assert "bloodmnist" in note and "orientation-fixed" in note
    o, note = cards.orientation_of(None)
    assert o == {"flips": False, "quarter_turns": False} and "no data card" in note


ORIENT_LINE = re.search(r"^orientation: .*$", BLOOD_TEXT, flags=re.M).group(0)
BROKEN_ORIENTATION = {
    "string_bool": ("orientation: {flips: 'yes', quarter_turns: true, reason: x}", ["orientation.flips", "'yes'"]),
    "missing_key": ("orientation: {flips: true, reason: x}", ["orientation.quarter_turns", "None"]),
    "empty_reason": ("orientation: {flips: true, quarter_turns: true, reason: ' '}", ["orientation.reason"]),
    "no_reason": ("orientation: {flips: true, quarter_turns: true}", ["orientation.reason"]),
    "unknown_key": ("orientation: {flips: true, quarter_turns: true, reason: x, rotate: 45}", ["unknown key", "rotate"]),
    "not_mapping": ("orientation: free", ["'orientation' must be a mapping"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ORIENTATION))
def test_broken_orientation_fails_with_one_line(tmp_path, case):
    line, needles = BROKEN_ORIENTATION[case]
    path = _write(tmp_path, BLOOD_TEXT.replace(ORIENT_LINE, line))
    with pytest.raises(WorkbenchError) as ei:
        cards.read_card(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# --- image sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, ok", [(8, True), (40, True), (96, True), (1024, True), (7, False), (1025, False),
                                      (0, False)])
def test_card_file_sizes_from_8_to_1024(tmp_path, size, ok):
    path = _write(tmp_path, _edit("  28: {file: bloodmnist.npz", f"  {size}: {{file: bloodmnist.npz"))
    if ok:
        assert size in cards.read_card(path).files
    else:
        with pytest.raises(WorkbenchError, match="from 8 to 1024"):
            cards.read_card(path)


def test_check_size():
    assert cards.check_size(8, "x") == 8 and cards.check_size(np.int64(300), "x") == 300
    for bad in (7, 1025, True, 28.0, "28"):
        with pytest.raises(WorkbenchError, match="size .* must be an integer from 8 to 1024"):
            cards.check_size(bad, "option size")


# --- card init and ingest write the orientation -----------------------------------------------------

def _image_folder(root, n_per_class=10):
    """Class sub-folders of real BloodMNIST cells (from the tiny fixture) as PNG files."""
    from PIL import Image
    z = np.load(FIXTURES / "bloodmnist_tiny.npz")
    x, y = z["train_images"], z["train_labels"].reshape(-1)
    folder = root / "cells"
    for c, name in ((0, "basophil"), (6, "neutrophil"), (7, "platelet")):
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(y == c)[:n_per_class]:
            Image.fromarray(x[i]).save(folder / name / f"{i}.png")
    return folder


def test_card_init_writes_orientation_and_any_size(tmp_path, capsys):
    from workbench import cli
    folder = _image_folder(tmp_path)
    rc = cli.main(["card", "init", str(folder), "--orientation", "free", "--size", "40", "--size", "28",
                   "--resize", "stretch"])
    assert rc == 0, capsys.readouterr().err
    card = cards.read_card(tmp_path / "cells.md")
    assert card.orientation["flips"] is True and card.orientation["quarter_turns"] is True
    assert "--orientation free" in card.orientation["reason"]
    assert sorted(card.files) == [28, 40]
    from workbench import data
    ds = data.load_dataset(str(folder), size=40)
    assert ds.input_shape == (40, 40, 3) and ds.card.name == "cells"

    rc = cli.main(["card", "init", str(folder), "--force", "--orientation", "fixed"])
    assert rc == 0
    o = cards.read_card(tmp_path / "cells.md").orientation
    assert o["flips"] is False and "do not preserve" in o["reason"]


def test_card_init_without_orientation_off_a_terminal_writes_fixed_not_stated(tmp_path, monkeypatch):
    import io

    from workbench import cli
    folder = _image_folder(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a TTY
    assert cli.main(["card", "init", str(folder)]) == 0
    o = cards.read_card(tmp_path / "cells.md").orientation
    assert o == {"flips": False, "quarter_turns": False,
                 "reason": "[More Information Needed] (not stated; treated as orientation-fixed)"}


def test_card_init_size_out_of_range_is_one_line(tmp_path, capsys):
    from workbench import cli
    folder = _image_folder(tmp_path)
    assert cli.main(["card", "init", str(folder), "--size", "4", "--orientation", "free"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "from 8 to 1024" in err


class _Terminal:
    def isatty(self):
        return True


def test_card_orientation_asks_on_a_terminal():
    from workbench import cli
    prompts, answers = [], iter(["maybe", "Y"])

    def ask(prompt):
        prompts.append(prompt)
        return next(answers)

    tty = {"stdin": _Terminal(), "stdout": _Terminal()}
    o = cli.card_orientation(None, **tty, ask=ask)
    assert o["flips"] is True and o["quarter_turns"] is True and "answered" in o["reason"]
    assert len(prompts) == 2 and all(cli.ORIENTATION_QUESTION in p and "y/n" in p for p in prompts)
    o = cli.card_orientation(None, **tty, ask=lambda p: "no")
    assert o["flips"] is False and "do not preserve" in o["reason"]
    o = cli.card_orientation("free", **tty, ask=lambda p: pytest.fail("asked despite --orientation"))
    assert o["flips"] is True
    def eof(prompt):
        raise EOFError

    assert "not stated" in cli.card_orientation(None, **tty, ask=eof)["reason"]  # Ctrl-D: fixed, not stated
    # output captured (a script, or a test spawning the CLI from a terminal): never wait for an answer
    import io
    o = cli.card_orientation(None, stdin=_Terminal(), stdout=io.StringIO(), ask=lambda p: pytest.fail("asked"))
    assert o["flips"] is False and "not stated" in o["reason"]


def _dicom_folder(root):
    import shutil

    from pydicom.data import get_testdata_file
    src = root / "dicom"
    for label, names in {"ct": ["CT_small.dcm"], "mr": ["MR_small.dcm", "MR_small_RLE.dcm",
                                                        "MR_small_jpeg_ls_lossless.dcm"], "dose": ["rtdose.dcm"]}.items():
        (src / label).mkdir(parents=True)
        for n in names:
            shutil.copy(get_testdata_file(n), src / label / n)
    return src


def test_ingest_writes_orientation_and_takes_any_size(tmp_path):
    from workbench import data, ingest
    src = _dicom_folder(tmp_path)
    s = ingest.ingest(src, tmp_path / "free", ingest.IngestOptions(split_by="image", size=40, orientation="free"),
                      log=lambda m: None)
    card = cards.read_card(s["card"])
    assert card.orientation["flips"] is True and "--orientation free" in card.orientation["reason"]
    assert sorted(card.files) == [40]
    assert data.load_dataset(str(tmp_path / "free")).input_shape[:2] == (40, 40)
    s = ingest.ingest(src, tmp_path / "default", ingest.IngestOptions(split_by="image", size=28), log=lambda m: None)
    assert cards.read_card(s["card"]).orientation == {
        "flips": False, "quarter_turns": False,
        "reason": "[More Information Needed] (not stated; treated as orientation-fixed)"}
    for bad, needle in ((ingest.IngestOptions(size=2000), "from 8 to 1024"),
                        (ingest.IngestOptions(orientation="sideways"), "orientation 'sideways'")):
        with pytest.raises(WorkbenchError, match=needle):
            bad.check()


def test_cli_ingest_orientation_flag(tmp_path):
    from conftest import run_cli
    src = _dicom_folder(tmp_path)
    proc = run_cli("ingest", str(src), "--out", str(tmp_path / "out"), "--split-by", "image", "--size", "40",
                   "--orientation", "fixed")
    assert proc.returncode == 0, proc.stderr
    card = cards.read_card(tmp_path / "out" / "out.md")
    assert card.orientation["flips"] is False and "--orientation fixed" in card.orientation["reason"]
    assert sorted(card.files) == [40]


def test_card_init_asks_on_a_real_terminal(tmp_path):
    """End to end through a pseudo-terminal: the question is printed and 'y' writes orientation-free."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time
    folder = _image_folder(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "card", "init", str(folder)],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    os.close(slave)
    seen, deadline = b"", time.time() + 120
    while b"[y/n]" not in seen and time.time() < deadline and proc.poll() is None:
        if select.select([master], [], [], 1)[0]:
            seen += os.read(master, 1024)
    assert b"Do flips and 90\xc2\xb0 turns preserve the labels? [y/n]" in seen, seen
    os.write(master, b"y\n")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    os.close(master)
    o = cards.read_card(tmp_path / "cells.md").orientation
    assert o["flips"] is True and o["quarter_turns"] is True and "answered" in o["reason"]

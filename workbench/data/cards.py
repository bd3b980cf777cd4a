"""Data cards: ``data_cards/<name>.md`` with validated YAML front matter (HF dataset-card style).

The front matter is machine-read; the markdown body keeps fixed headings (unknowns are written as
"[More Information Needed]", headings are never deleted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from ..core.errors import WorkbenchError
from ..core.paths import CARDS_DIR

HEADINGS = (
    "Summary",
    "Dataset Structure",
    "Source Data",
    "Annotations",
    "Bias, Risks & Limitations",
    "Privacy",
    "Intended & Out-of-Scope Use",
    "Citation",
)
TASKS = ("multi-class", "binary-class", "multi-label, binary-class", "ordinal-regression")
SIZES = (28, 64, 128, 224)            # the sizes MedMNIST publishes (``workbench fetch``)
MIN_SIZE, MAX_SIZE = 8, 1024          # any square side in this range for image folders, DICOM ingests, npz
REQUIRED = ("name", "pretty_name", "version", "license", "source", "modality", "task",
            "label_classes", "n_channels", "splits", "files")
UNKNOWN = "[More Information Needed]"
# what a card without an ``orientation`` field is taken to say: nothing may be flipped or turned
ORIENTATION_FIXED = {"flips": False, "quarter_turns": False}
ORIENTATION_FREE = {"flips": True, "quarter_turns": True}
ORIENTATION_UNSTATED = f"{UNKNOWN} (not stated; treated as orientation-fixed)"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Card:
    name: str
    pretty_name: str
    version: str
    license: str
    source: dict
    modality: str
    task: str
    label_classes: dict[int, str]
    n_channels: int
    splits: dict[str, int]
    files: dict[int, dict]
    published_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    path: Path | None = None
    body: str = ""
    extra: dict = field(default_factory=dict)   # front-matter keys beyond the standard ones (e.g. image_folder)

    @property
    def num_classes(self) -> int:
        return len(self.label_classes)

    @property
    def class_names(self) -> list[str]:
        return [self.label_classes[i] for i in range(self.num_classes)]

    @property
    def orientation(self) -> dict | None:
        """``{flips, quarter_turns, reason}`` from the front matter, or None when the card does not say
        (cards written before the field existed); ``orientation_of`` turns None into a safe default."""
        o = self.extra.get("orientation")
        return dict(o) if o is not None else None

    @property
    def acquisition(self) -> dict | None:
        """``{family, changes: {kind: range}, reason}`` from the front matter (the plausible acquisition
        changes between sites: workbench.corrupt, workbench.augment), or None when the card does not say."""
        a = self.extra.get("acquisition")
        return {**a, "changes": dict(a["changes"])} if a is not None else None

    def md5_for_size(self, size: int) -> str | None:
        entry = self.files.get(int(size))
        return entry["md5"] if entry else None

    def size_for_md5(self, md5: str) -> int | None:
        for size, entry in self.files.items():
            if entry["md5"] == md5:
                return size
        return None


def _fail(where: str, what: str) -> None:
    raise WorkbenchError(f"data card {where}: {what}")


def check_size(size, where: str) -> int:
    """An image side length in MIN_SIZE..MAX_SIZE (bools and non-integers refused); returns it as int."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise WorkbenchError(f"{where}: image size {size!r} must be an integer from {MIN_SIZE} to {MAX_SIZE} "
                             f"(MedMNIST publishes {', '.join(map(str, SIZES))})")
    return int(size)


def orientation_meta(free: bool, reason: str) -> dict:
    """The ``orientation`` front-matter mapping for a drafted card."""
    base = ORIENTATION_FREE if free else ORIENTATION_FIXED
    return {**base, "reason": reason}


def orientation_of(card: "Card | None") -> tuple[dict, str | None]:
    """The orientation a consumer (augmentation, TTA) may rely on, and a warning note when it is a default:
    a missing card or a card without the field is orientation-fixed (no flips, no quarter turns)."""
    if card is None:
        return dict(ORIENTATION_FIXED), ("no data card: treated as orientation-fixed (no flips or 90° turns); "
                                         "write a card with an 'orientation' field to allow them")
    o = card.orientation
    if o is None:
        return dict(ORIENTATION_FIXED), (f"data card {card.name} does not state its orientation: treated as "
                                         "orientation-fixed (no flips or 90° turns); add 'orientation: {flips: "
                                         "true|false, quarter_turns: true|false, reason: ...}' to its front matter")
    return {"flips": bool(o["flips"]), "quarter_turns": bool(o["quarter_turns"])}, None


def _check_orientation(o, where: str) -> None:
    form = "orientation: {flips: true|false, quarter_turns: true|false, reason: \"...\"}"
    if not isinstance(o, dict):
        _fail(where, f"field 'orientation' must be a mapping ({form})")
    unknown = sorted(set(map(str, o)) - {"flips", "quarter_turns", "reason"})
    if unknown:
        _fail(where, f"field 'orientation' has unknown key(s) {', '.join(unknown)} ({form})")
    for k in ("flips", "quarter_turns"):
        if not isinstance(o.get(k), bool):
            _fail(where, f"orientation.{k} is {o.get(k)!r}; expected true or false ({form})")
    if not isinstance(o.get("reason"), str) or not o["reason"].strip():
        _fail(where, f"orientation.reason must be a non-empty one-line string ({form})")
    if "\n" in o["reason"].strip():
        _fail(where, "orientation.reason must be one line")


ACQUISITION_FORM = "acquisition: {family: <family>, changes: {<kind>: <range>, ...}, reason: \"...\"}"


def _check_acquisition(a, where: str, n_channels) -> None:
    """``acquisition``: the modality's family (workbench.corrupt.FAMILIES: its corruption suite) and the
    plausible acquisition changes between sites with their ranges (workbench.corrupt.CHANGES: the
    photometric training augmentation), and a one-line reason."""
    from .corrupt import CHANGES, FAMILIES
    form = ACQUISITION_FORM
    if not isinstance(a, dict):
        _fail(where, f"field 'acquisition' must be a mapping ({form})")
    unknown = sorted(set(map(str, a)) - {"family", "changes", "reason"})
    if unknown:
        _fail(where, f"field 'acquisition' has unknown key(s) {', '.join(unknown)} ({form})")
    if a.get("family") not in FAMILIES:
        _fail(where, f"acquisition.family is {a.get('family')!r}; expected one of {', '.join(FAMILIES)}")
    ch = a.get("changes")
    if not isinstance(ch, dict) or not ch:
        _fail(where, f"acquisition.changes must be a non-empty mapping of change: range (changes: {', '.join(CHANGES)})")
    for kind, value in ch.items():
        if kind not in CHANGES:
            _fail(where, f"acquisition.changes has unknown change {kind!r}; known: {', '.join(CHANGES)}")
        lo, hi = CHANGES[kind]["min"], CHANGES[kind]["max"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            _fail(where, f"acquisition.changes.{kind} is {value!r}; expected a number in [{lo}, {hi}] "
                         f"({CHANGES[kind]['unit']})")
        if n_channels == 1 and "RGB only" in CHANGES[kind]["unit"]:
            _fail(where, f"acquisition.changes.{kind} applies to RGB images only; this card has 1 channel")
    if not isinstance(a.get("reason"), str) or not a["reason"].strip() or "\n" in a["reason"].strip():
        _fail(where, f"acquisition.reason must be a non-empty one-line string ({form})")


def split_front_matter(text: str, where: str) -> tuple[dict, str]:
    if not text.startswith("---"):
        _fail(where, "must start with a '---' YAML front-matter block")
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        _fail(where, "front matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load(parts[0][3:])
    except yaml.YAMLError as e:
        _fail(where, f"front matter is not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(meta, dict):
        _fail(where, "front matter must be a YAML mapping")
    body = parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
    return meta, body


def validate(meta: dict, body: str, where: str) -> Card:
    """Check every required field and its type; return a Card. Errors name the card and field."""
    required = REQUIRED
    missing = [k for k in required if k not in meta]
    if missing:
        _fail(where, f"missing field(s) {', '.join(missing)}")
    for k in ("name", "pretty_name", "version", "license", "modality"):
        if not isinstance(meta[k], str) or not meta[k].strip():
            _fail(where, f"field '{k}' must be a non-empty string")
    if not isinstance(meta["source"], dict) or "url" not in meta["source"] or "citation" not in meta["source"]:
        _fail(where, "field 'source' must be a mapping with 'url' and 'citation'")
    if meta["task"] not in TASKS:
        _fail(where, f"field 'task' is {meta['task']!r}; expected one of {', '.join(TASKS)}")
    lc = meta["label_classes"]
    if not isinstance(lc, dict) or not lc:
        _fail(where, "field 'label_classes' must be a non-empty mapping {int: name}")
    try:
        labels = {int(k): str(v) for k, v in lc.items()}
    except (TypeError, ValueError):
        _fail(where, "field 'label_classes' keys must be integers")
    if sorted(labels) != list(range(len(labels))):
        _fail(where, "field 'label_classes' keys must be 0..K-1 without gaps")
    if isinstance(meta["n_channels"], bool) or meta["n_channels"] not in (1, 3):
        _fail(where, f"field 'n_channels' is {meta['n_channels']!r}; expected 1 or 3")
    sp = meta["splits"]
    if not isinstance(sp, dict) or set(sp) != {"train", "val", "test"} or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sp.values()
    ):
        _fail(where, "field 'splits' must map train/val/test to positive integer counts")
    files = meta["files"]
    if not isinstance(files, dict) or not files:
        _fail(where, "field 'files' must map image size to {file, md5}")
    parsed_files = {}
    for size, entry in files.items():
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
            _fail(where, f"files key {size!r} must be an integer image size from {MIN_SIZE} to {MAX_SIZE} "
                         f"(e.g. {', '.join(map(str, SIZES))})")
        if not isinstance(entry, dict) or not _MD5.match(str(entry.get("md5", ""))) or "file" not in entry:
            _fail(where, f"files[{size}] needs 'file' and a 32-hex 'md5'")
        parsed_files[int(size)] = dict(entry)
    if "orientation" in meta:
        _check_orientation(meta["orientation"], where)
    if "acquisition" in meta:
        _check_acquisition(meta["acquisition"], where, meta["n_channels"])
    baselines = meta.get("published_baselines") or {}
    if not isinstance(baselines, dict):
        _fail(where, "field 'published_baselines' must be a mapping {method: {acc, auc}}")
    for method, vals in baselines.items():
        if not isinstance(vals, dict) or not all(
            isinstance(vals.get(k), (int, float)) and not isinstance(vals.get(k), bool) and 0 <= vals[k] <= 1
            for k in ("acc", "auc")
        ):
            _fail(where, f"published_baselines[{method!r}] needs numeric acc and auc in [0, 1]")
    found = re.findall(r"^## +(.+?)\s*$", body, flags=re.M)
    absent = [h for h in HEADINGS if h not in found]
    if absent:
        _fail(where, f"missing heading(s) {', '.join(absent)} (keep every heading; write '[More Information Needed]')")
    return Card(
        name=meta["name"], pretty_name=meta["pretty_name"], version=str(meta["version"]),
        license=meta["license"], source=dict(meta["source"]), modality=meta["modality"],
        task=meta["task"], label_classes=labels, n_channels=int(meta["n_channels"]),
        splits=dict(sp), files=parsed_files,
        published_baselines={k: {"acc": float(v["acc"]), "auc": float(v["auc"])} for k, v in baselines.items()},
        body=body, extra={k: v for k, v in meta.items() if k not in REQUIRED and k != "published_baselines"},
    )


def render(meta: dict, sections: dict[str, str], title: str, where: str = "draft") -> str:
    """A card's text: YAML front matter, then every heading in order; a section without content reads
    "[More Information Needed]". The text is validated before it is returned."""
    unknown = sorted(set(sections) - set(HEADINGS))
    if unknown:
        raise ValueError(f"unknown card section(s) {unknown}")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    body = f"\n# {title}\n\n" + "".join(f"## {h}\n\n{(sections.get(h) or '').strip() or UNKNOWN}\n\n" for h in HEADINGS)
    text = f"---\n{front}---\n{body}"
    validate(*split_front_matter(text, where), where)
    return text


def read_card(path: str | Path) -> Card:
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"data card {path} not found; check the path or run 'workbench cards' to list cards")
    meta, body = split_front_matter(path.read_text(encoding="utf-8"), str(path))
    card = validate(meta, body, str(path))
    object.__setattr__(card, "path", path)
    return card


@lru_cache(maxsize=None)
def _all_cards(cards_dir: str) -> tuple[Card, ...]:
    return tuple(read_card(p) for p in sorted(Path(cards_dir).glob("*.md")))


def all_cards(cards_dir: Path = CARDS_DIR) -> tuple[Card, ...]:
    return _all_cards(str(cards_dir))


def card_names(cards_dir: Path = CARDS_DIR) -> list[str]:
    return [c.name for c in all_cards(cards_dir)]


def load_card(name: str, cards_dir: Path = CARDS_DIR) -> Card:
    for c in all_cards(cards_dir):
        if c.name == name:
            return c
    raise WorkbenchError(
        f"no data card named {name!r}; known cards: {', '.join(card_names(cards_dir))} "
        "(or pass a path to a MedMNIST-format .npz)"
    )


def card_for_md5(md5: str, cards_dir: Path = CARDS_DIR) -> tuple[Card, int] | None:
    for c in all_cards(cards_dir):
        size = c.size_for_md5(md5)
        if size is not None:
            return c, size
    return None

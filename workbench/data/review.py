"""Human review of a ranked queue: decisions, undo, resume, export. Pure Python (no widgets, no Keras).

Two kinds of task. Single-label (binary, multi-class with any number of classes, ordinal): each item gets
one class index. Multi-label (task ``multi-label, binary-class``): each item gets the *set* of labels
present (possibly empty); "accept" confirms the model's predicted set (probabilities > 0.5), "label"
records the reviewer's set.

Every decision is one JSON line appended to a log and made durable (flush + ``os.fsync``) before the
call returns, so a decision the caller saw confirmed survives the process being killed. The log is
append-only: an undo is a new record, never a rewrite.

Log format (``workbench-review/1``), one JSON object per line::

    {"type": "header", "format": ..., "pool_id": ..., "model_hash": ..., "class_names": [...], "task": ..., ...}
    {"type": "decision", "seq": 1, "item": "test:17", "action": "accept"|"label"|"skip", "label": 3|null,
     "predicted": 3, "annotator": "ana", "time": "2026-…Z"}
    {"type": "undo", "seq": 2, "undoes": 1, "item": "test:17", "annotator": "ana", "time": ...}
    {"type": "recovered", "line": 7, "bytes": 23, "time": ...}

A multi-label review writes ``workbench-review/2``: the same records, where a decision carries the label
set in ``labels`` (``label`` is null) and ``predicted`` is the model's set::

    {"type": "decision", "seq": 1, "item": "img7.png", "action": "accept"|"label"|"skip", "label": null,
     "labels": [0, 4]|null, "predicted": [4], "annotator": "ana", "time": ...}

Single-label reviews keep writing ``/1`` (the header's ``task`` field is new and optional: a log
without it is single-label), so their logs stay readable by earlier versions; ``/2`` exists so that an
earlier version refuses a multi-label log instead of misreading it. Both open here.

**Several annotators.** Each annotator of a pool writes their own log,
``review/annotators/<name>.jsonl`` (``annotator_log``), whose header names them (``"annotator"``);
``review/decisions.jsonl``, the one log of earlier versions, is still read (and resumed by the one
annotator who wrote it: ``log_for``). ``pool_decisions`` reads every log of a pool, by annotator.

**Blind items** (``ReviewSession.blind``: the blind overlap every annotator reads, the certification
sample) are labelled without the model's opinion: the session holds no prediction for them, "accept"
is refused, and their decisions carry ``"blind": true`` and ``"predicted": null``::

    {"type": "decision", "seq": 4, "item": "test:9", "action": "label", "label": 2, "predicted": null,
     "blind": true, "annotator": "ana", "time": ...}

A log belongs to one pool and one model (``pool_id``, ``model_hash`` in the header): opening it for
another is refused. A last line cut short (a crash or a full disk mid-write) is reported, skipped and
acknowledged by a ``recovered`` record before anything new is appended; an unreadable line anywhere
else is corruption and refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.errors import WorkbenchError

FORMAT = "workbench-review/1"               # single-label reviews (unchanged since the first release)
FORMAT_MULTILABEL = "workbench-review/2"    # multi-label reviews: decisions carry label sets
FORMATS = (FORMAT, FORMAT_MULTILABEL)
ACTIONS = ("accept", "label", "skip")
LABEL_SEPARATOR = ";"                       # joins label names in the CSV export's ``labels`` column
LEGACY_LOG = "decisions.jsonl"              # the one log of a pool before per-annotator logs (still read)
ANNOTATORS_DIR = "annotators"               # review/annotators/<name>.jsonl: one log per annotator
UNNAMED = "(unnamed)"                       # the annotator of a decision recorded without a name


def is_multilabel(task: str | None) -> bool:
    """True for the MedMNIST task "multi-label, binary-class" (any task string starting "multi-label")."""
    return str(task or "").strip().lower().startswith("multi-label")


class ReviewLogWarning(UserWarning):
    """The review log needed recovery (a truncated last line was skipped)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class LogContents:
    header: dict | None
    records: list[dict]            # decisions / undos / recovered markers, in order, header excluded
    problems: list[str]            # a damaged last line just found (to report)
    size: int                      # bytes read
    pending_recovery: tuple[int, int] | None = None  # (line, bytes) of an unacknowledged truncated tail
    ends_with_newline: bool = True
    recovered: list[str] = field(default_factory=list)  # damaged lines reported and acknowledged earlier


def read_log(path: Path) -> LogContents:
    """Parse a review log, tolerating only a damaged *last* line (or one already acknowledged)."""
    path = Path(path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    ends_nl = raw.endswith(b"\n") or not raw
    if ends_nl:
        lines = lines[:-1]  # the empty string after the final newline
    parsed: list[tuple[int, dict | None, int]] = []  # (line number, record or None, byte length)
    for i, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict) or "type" not in rec:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            rec = None
        parsed.append((i, rec, len(line)))
    header, records, problems, recovered = None, [], [], []
    pending = None
    acknowledged = {r["line"] for _, r, _ in parsed if r is not None and r.get("type") == "recovered"}
    for pos, (i, rec, nbytes) in enumerate(parsed):
        if rec is None:
            last = pos == len(parsed) - 1
            if i in acknowledged:
                recovered.append(f"line {i} ({nbytes} bytes) was cut short by an earlier crash and is skipped")
                continue
            if last:
                what = "is cut short (no newline)" if not ends_nl else "is not valid JSON"
                problems.append(f"the last line (line {i}, {nbytes} bytes) {what}: a write was interrupted; "
                                "it is skipped (it held no confirmed decision)")
                pending = (i, nbytes)
                continue
            raise WorkbenchError(
                f"review log {path} is corrupt at line {i} (not a JSON record, and not the last line): "
                "restore it from a backup or start a new log (parameter review_log)")
        if rec["type"] == "header":
            if header is not None:
                raise WorkbenchError(f"review log {path} has a second header at line {i}: it is not one log")
            header = rec
            continue
        if header is None:
            raise WorkbenchError(f"review log {path} has no header before line {i}: it is not a workbench review log")
        records.append(rec)
    return LogContents(header, records, problems, len(raw), pending, ends_nl, recovered)


def _apply(rec: dict, decisions: dict, stack: list, path) -> None:
    """Replay one log record onto the effective decisions (``decisions``: item -> Decision) and the undo
    ``stack`` (effective decisions, oldest first)."""
    kind = rec.get("type")
    if kind == "decision":
        if rec.get("action") not in ACTIONS:
            raise WorkbenchError(f"review log {path}: unknown action {rec.get('action')!r} (seq {rec.get('seq')})")
        pred, labels = rec.get("predicted"), rec.get("labels")
        if isinstance(pred, list):
            pred = tuple(int(x) for x in pred)
        if labels is not None:
            labels = tuple(int(x) for x in labels)
        d = Decision(int(rec["seq"]), str(rec["item"]), rec["action"], rec.get("label"), pred,
                     rec.get("annotator", ""), rec.get("time", ""), labels, bool(rec.get("blind", False)),
                     str(rec.get("origin", "")))
        if d.item in decisions:
            raise WorkbenchError(f"review log {path}: item {d.item} decided twice without an undo "
                                 f"(seq {d.seq}): the log was edited by hand")
        decisions[d.item] = d
        stack.append(d)
    elif kind == "undo":
        if not stack or stack[-1].seq != rec.get("undoes"):
            raise WorkbenchError(f"review log {path}: undo (seq {rec.get('seq')}) does not undo the latest "
                                 "decision: the log was edited by hand")
        d = stack.pop()
        del decisions[d.item]
    elif kind != "recovered":
        raise WorkbenchError(f"review log {path}: unknown record type {kind!r}")


@dataclass
class Decision:
    seq: int
    item: str
    action: str
    label: int | None                       # single-label: the class given (None for a skip or multi-label)
    predicted: int | tuple[int, ...] | None  # the model's class (single-label) or label set (multi-label)
    annotator: str
    time: str
    labels: tuple[int, ...] | None = None   # multi-label: the set of labels present (None for a skip)
    blind: bool = False                     # labelled without seeing the model's prediction
    origin: str = ""                        # "" (the widget / API) or "import:<file name>"


@dataclass
class ReviewSession:
    """A review of ``queue`` (pool item ids, most useful first) recorded in the log at ``log_path``.

    ``predicted`` maps each item to the model's label (what "accept" confirms): a class index, or for a
    multi-label ``task`` the predicted label set (label indices, or a boolean vector of length L). The
    session resumes from the log if it exists. Methods ``accept``, ``label``, ``skip``, ``undo`` return
    only once the record is on disk.

    ``blind``: items labelled without the model's opinion (module docstring): their predictions are
    dropped from ``predicted``, so nothing that reads the session can show them. ``owner``: the annotator
    whose own log this is (``annotator_log``): the header records them, a log of another annotator is
    refused, and every decision is theirs. Without an owner (a log given by path, or the log of earlier
    versions) ``annotator`` may change between decisions, as before.
    """
    log_path: Path
    queue: list[str]
    predicted: dict[str, int]
    class_names: list[str]
    pool_id: str
    model_hash: str
    annotator: str = ""
    meta: dict = field(default_factory=dict)
    task: str = "multi-class"
    blind: frozenset = frozenset()
    owner: str = ""

    def __post_init__(self):
        self.log_path = Path(self.log_path)
        self.queue = [str(q) for q in self.queue]
        self.multilabel = is_multilabel(self.task)
        self.blind = frozenset(str(b) for b in self.blind)
        self._in_queue = frozenset(self.queue)
        if self.owner:
            self.owner = check_annotator(self.owner)
            self.annotator = self.owner
        if len(set(self.queue)) != len(self.queue):
            raise WorkbenchError("the review queue lists an item twice: item ids must be unique")
        self.predicted = {str(k): v for k, v in self.predicted.items() if str(k) not in self.blind}
        missing = [q for q in self.queue if q not in self.predicted and q not in self.blind]
        if missing:
            raise WorkbenchError(f"no predicted label for queue item(s) {missing[:3]}")
        if self.multilabel:
            self.predicted = {str(k): self._label_set(v, f"predicted labels of {k}") for k, v in self.predicted.items()}
        self.notes: list[str] = []                 # damage found (and repaired) on this open: reported
        self.recovered: list[str] = []             # damage repaired by an earlier open
        self.decisions: dict[str, Decision] = {}   # effective decision per item
        self._stack: list[Decision] = []           # effective decisions, oldest first (undo pops)
        self._seq = 0
        self._size = 0
        self._open()

    def _label_set(self, labels, what: str = "labels") -> tuple[int, ...]:
        """A multi-label set as sorted unique label indices (from indices or a boolean vector)."""
        if isinstance(labels, (int, np.integer)):
            raise WorkbenchError(f"{what}: a multi-label review records a set of labels, not one index; "
                                 f"pass a list such as [{int(labels)}] (or [] for none present)")
        k = len(self.class_names)
        if isinstance(labels, (list, tuple, set, frozenset)) and all(type(x) is int for x in labels):
            out = tuple(sorted(set(labels)))  # the common case, fast (a whole pool's predictions at open)
            if out and not (0 <= out[0] and out[-1] < k):
                bad = next(x for x in out if not 0 <= x < k)
                raise WorkbenchError(f"{what}: label {bad} is not a label index 0..{k - 1}")
            return out
        arr = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
        if arr.dtype == bool:
            if arr.shape != (len(self.class_names),):
                raise WorkbenchError(f"{what}: a boolean vector needs one entry per label ({len(self.class_names)})")
            arr = np.flatnonzero(arr)
        out = tuple(sorted({int(x) for x in arr.reshape(-1)}))
        bad = [x for x in out if not 0 <= x < len(self.class_names)]
        if bad:
            raise WorkbenchError(f"{what}: label {bad[0]} is not a label index 0..{len(self.class_names) - 1}")
        return out

    # ------------------------------------------------------------------ log I/O
    def _header(self) -> dict:
        from .. import __version__
        return {"type": "header", "format": FORMAT_MULTILABEL if self.multilabel else FORMAT,
                "pool_id": self.pool_id, "model_hash": self.model_hash, "class_names": list(self.class_names),
                "task": self.task, "queue_size": len(self.queue), "created": _now(),
                "workbench": __version__, **({"annotator": self.owner} if self.owner else {}),
                **({"meta": self.meta} if self.meta else {})}

    def _open(self) -> None:
        p = self.log_path
        if not p.exists():
            new_dirs = [d for d in (p.parent.parent, p.parent) if not d.exists()]
            p.parent.mkdir(parents=True, exist_ok=True)
            self._write([self._header()], expect_size=None)
            for d in [p.parent, *[x.parent for x in new_dirs]]:   # the new file's entry, and new folders' entries
                _fsync_dir(d)
            return
        contents = read_log(p)
        if contents.header is None and not contents.records:
            # nothing but (at most) an interrupted first write: start the log properly after it
            self.notes.extend(contents.problems)
            self.recovered = list(contents.recovered)
            recs = []
            if contents.pending_recovery:
                line, nbytes = contents.pending_recovery
                recs.append({"type": "recovered", "line": line, "bytes": nbytes, "time": _now()})
            self._size = contents.size
            self._write([*recs, self._header()], expect_size=contents.size,
                        newline_first=not contents.ends_with_newline)
            self._warn()
            return
        self._check_header(contents.header)
        for rec in contents.records:
            self._replay(rec)
        self.notes.extend(contents.problems)
        self.recovered = list(contents.recovered)
        self._size = contents.size
        if contents.pending_recovery:
            line, nbytes = contents.pending_recovery
            self._write([{"type": "recovered", "line": line, "bytes": nbytes, "time": _now()}],
                        expect_size=contents.size, newline_first=not contents.ends_with_newline)
        self._warn()

    def _warn(self):
        for note in self.notes:
            warnings.warn(f"review log {self.log_path}: {note}", ReviewLogWarning, stacklevel=3)

    def _check_header(self, h: dict) -> None:
        p = self.log_path
        if h.get("format") not in FORMATS:
            raise WorkbenchError(f"review log {p} has format {h.get('format')!r}, expected one of "
                                 f"{', '.join(FORMATS)}: it was written by another program or a newer workbench")
        logged_multi = h.get("format") == FORMAT_MULTILABEL or is_multilabel(h.get("task"))
        if logged_multi != self.multilabel:
            kind = {True: "multi-label", False: "single-label"}
            raise WorkbenchError(f"review log {p} records a {kind[logged_multi]} review (task {h.get('task')!r}) but "
                                 f"this review is {kind[self.multilabel]} (task {self.task!r}): it belongs to another "
                                 "task; give a new log path (parameter review_log)")
        if h.get("pool_id") != self.pool_id or h.get("model_hash") != self.model_hash:
            raise WorkbenchError(
                f"review log {p} was written for pool {h.get('pool_id')} and model {h.get('model_hash')}, but this "
                f"review is of pool {self.pool_id} with model {self.model_hash}: it belongs to another pool or model; "
                "open the run it came from, or give a new log path (parameter review_log)")
        if list(h.get("class_names", [])) != list(self.class_names):
            raise WorkbenchError(f"review log {p} names classes {h.get('class_names')} but the model has "
                                 f"{list(self.class_names)}: it belongs to another dataset")
        if self.owner and h.get("annotator") not in (None, self.owner):
            raise WorkbenchError(f"review log {p} is the log of annotator {h.get('annotator')!r}, not of "
                                 f"{self.owner!r}: every annotator writes their own log (open the review under your "
                                 "own name)")

    def _write(self, records: list[dict], expect_size: int | None, newline_first: bool = False) -> None:
        data = ("\n" if newline_first else "") + "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with open(self.log_path, "ab") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                size = os.fstat(f.fileno()).st_size
                if expect_size is not None and size != expect_size:
                    raise WorkbenchError(
                        f"review log {self.log_path} was changed by another review session since this one opened it "
                        "(two widgets on one log?): this decision was not recorded; re-open the review")
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                self._size = size + len(data.encode("utf-8"))
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _replay(self, rec: dict) -> None:
        self._seq = max(self._seq, int(rec.get("seq", 0)))
        _apply(rec, self.decisions, self._stack, self.log_path)

    # ------------------------------------------------------------------ state
    @property
    def position(self) -> int:
        """Queue position of the first item without a decision (== len(queue) when done)."""
        for i, item in enumerate(self.queue):
            if item not in self.decisions:
                return i
        return len(self.queue)

    @property
    def current(self) -> str | None:
        pos = self.position
        return self.queue[pos] if pos < len(self.queue) else None

    @property
    def done(self) -> bool:
        return self.current is None

    def progress(self) -> dict:
        """Counts over the queue. ``corrected`` counts labels that differ from the model's, for items shown
        with the model's label only: a blind decision is never compared (that would tell the annotator)."""
        in_queue = [self.decisions[q] for q in self.queue if q in self.decisions]
        counts = {a: sum(d.action == a for d in in_queue) for a in ACTIONS}
        return {"decided": len(in_queue), "total": len(self.queue), **counts,
                "corrected": sum(d.action == "label" and not d.blind and not agrees_with_model(d) for d in in_queue)}

    def is_blind(self, item: str | None = None) -> bool:
        """True when ``item`` (default: the current one) is labelled without the model's opinion."""
        item = self.current if item is None else item
        return item is not None and item in self.blind

    # ------------------------------------------------------------------ actions
    def _label_record(self, label) -> dict:
        """The label part of a decision record (checked), without the prediction."""
        if self.multilabel:
            labels = None if label is None else self._label_set(label)
            return {"label": None, "labels": None if labels is None else list(labels)}
        if label is not None:
            if isinstance(label, (list, tuple, set, frozenset, np.ndarray)):
                raise WorkbenchError(f"label {label!r} is a set of labels, but a single-label review (task "
                                     f"{self.task!r}) records one class index 0..{len(self.class_names) - 1}")
            if not 0 <= int(label) < len(self.class_names):
                raise WorkbenchError(f"label {label} is not a class index 0..{len(self.class_names) - 1}")
        return {"label": None if label is None else int(label)}

    def _check_annotator(self) -> None:
        if self.owner and self.annotator != self.owner:
            raise WorkbenchError(f"this is the review log of {self.owner!r}: {self.annotator!r} cannot decide in it "
                                 "(open the review under your own name)")

    def _decide(self, action: str, label=None) -> Decision:
        item = self.current
        if item is None:
            raise WorkbenchError("the review queue is done: nothing left to decide (undo to change a decision)")
        self._check_annotator()
        rec = {"type": "decision", "seq": self._seq + 1, "item": item, "action": action, **self._label_record(label)}
        if item in self.blind:
            rec.update({"predicted": None, "blind": True})
        elif self.multilabel:
            rec["predicted"] = list(self.predicted[item])
        else:
            rec["predicted"] = int(self.predicted[item])
        rec.update({"annotator": self.annotator, "time": _now()})
        self._write([rec], expect_size=self._size)
        self._seq += 1
        self._replay(rec)
        return self.decisions[item]

    def accept(self) -> Decision:
        """Confirm the model's label (multi-label: its predicted label set) for the current item. Refused for
        a blind item: it is labelled without the model's opinion."""
        if self.current is None:
            return self._decide("accept", None)
        if self.current in self.blind:
            raise WorkbenchError(f"item {self.current} is labelled blind (the model's label is not shown): give "
                                 "its label (a class number, the class box)")
        pred = self.predicted[self.current]
        return self._decide("accept", pred if self.multilabel else int(pred))

    def record(self, items: list[str], labels: list, origin: str) -> int:
        """Append "label" decisions for ``items`` (any items of the pool, not only the queue) in one durable
        write: labels given elsewhere (``workbench review import``). Items already decided in this log are
        refused by the caller. Returns the number of records written."""
        self._check_annotator()
        recs, seq = [], self._seq
        for item, label in zip(items, labels):
            item = str(item)
            if item in self.decisions:
                raise WorkbenchError(f"item {item} already has a decision in {self.log_path}")
            seq += 1
            pred = None if item in self.blind or item not in self.predicted else self.predicted[item]
            if pred is not None:
                pred = list(pred) if self.multilabel else int(pred)
            recs.append({"type": "decision", "seq": seq, "item": item, "action": "label", **self._label_record(label),
                         "predicted": pred, **({"blind": True} if item in self.blind else {}), "origin": origin,
                         "annotator": self.annotator, "time": _now()})
        if recs:
            self._write(recs, expect_size=self._size)
            for rec in recs:
                self._replay(rec)
        return len(recs)

    def label(self, label) -> Decision:
        """Give the current item class ``label`` (a correction when it differs from the prediction).

        Multi-label: ``label`` is the set of labels present (indices, possibly empty)."""
        return self._decide("label", label)

    def skip(self) -> Decision:
        """Leave the current item unlabelled and move on."""
        return self._decide("skip", None)

    def undo(self) -> Decision | None:
        """Revert the latest decision (the review goes back to that item); None when there is none. A
        latest decision made in another queue of this log (the review queue, the certification queue) is
        undone there, not here."""
        if not self._stack:
            return None
        d = self._stack[-1]
        if d.item not in self._in_queue:
            raise WorkbenchError(f"the latest decision in this log ({d.item}, {d.action}) was made outside this queue "
                                 "(another queue or an import): undo it there")
        self._check_annotator()
        rec = {"type": "undo", "seq": self._seq + 1, "undoes": d.seq, "item": d.item,
               "annotator": self.annotator, "time": _now()}
        self._write([rec], expect_size=self._size)
        self._seq += 1
        self._replay(rec)
        return d


def agrees_with_model(d: Decision) -> bool:
    """True when a decision's label (or label set) is the model's prediction (False when the decision
    recorded none: a blind one)."""
    if d.predicted is None:
        return False
    if d.labels is not None:
        return set(d.labels) == set(d.predicted or ())
    return d.label == d.predicted


# ---------------------------------------------------------------------- several annotators
_NAME_OK = re.compile(r"[A-Za-z0-9._-]+")


def check_annotator(name: str) -> str:
    """An annotator's name as recorded (surrounding spaces removed); one-line error when unusable."""
    text = str(name or "").strip()
    if not text:
        raise WorkbenchError("an annotator name is needed: every decision records who made it (parameter annotator)")
    if len(text) > 100 or any(ord(ch) < 32 for ch in text) or text == UNNAMED:
        raise WorkbenchError(f"annotator name {text[:40]!r} is not usable: at most 100 printable characters")
    return text


def annotator_file(name: str) -> str:
    """The file name of an annotator's log: the name itself when it is safe as a file name (letters, digits,
    ``._-``), else a safe form plus a hash of the exact name (two names never share a file)."""
    name = check_annotator(name)
    if _NAME_OK.fullmatch(name) and not name.startswith("."):
        return f"{name}.jsonl"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "annotator"
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}.jsonl"


def annotator_log(review_dir, name: str) -> Path:
    """``review/annotators/<name>.jsonl``: the log of one annotator of a pool."""
    return Path(review_dir) / ANNOTATORS_DIR / annotator_file(name)


def review_logs(review_dir) -> list[Path]:
    """Every review log of a pool: ``decisions.jsonl`` (earlier versions' one log) and the annotators' logs."""
    review_dir = Path(review_dir)
    legacy = [review_dir / LEGACY_LOG] if (review_dir / LEGACY_LOG).is_file() else []
    return legacy + sorted((review_dir / ANNOTATORS_DIR).glob("*.jsonl"))


def read_decisions(path) -> tuple[dict | None, dict[str, Decision]]:
    """The header and the effective decisions (item -> Decision, undos applied) of one log, read only."""
    contents = read_log(Path(path))
    decisions, stack = {}, []
    for rec in contents.records:
        _apply(rec, decisions, stack, path)
    return contents.header, decisions


def _check_pool(path, header: dict | None, pool_id: str | None, model_hash: str | None) -> None:
    if header is None or pool_id is None:
        return
    if header.get("pool_id") != pool_id or (model_hash is not None and header.get("model_hash") != model_hash):
        raise WorkbenchError(f"review log {path} was written for pool {header.get('pool_id')} and model "
                             f"{header.get('model_hash')}, not this pool ({pool_id}, model {model_hash}): move it out "
                             "of the pool's review folder")


def logged_decisions(review_dir, extra_logs=(), pool_id: str | None = None,
                     model_hash: str | None = None) -> list[tuple[Path, str, dict[str, Decision]]]:
    """(log, annotator, item -> Decision) for every annotator in every log of a pool (``review_logs`` and
    ``extra_logs``). An annotator's own log names them in its header; the decisions of ``decisions.jsonl``
    (or a log given by path) go to the name each records. Logs of another pool or model are refused."""
    out, seen = [], set()
    for path in [*review_logs(review_dir), *[Path(p) for p in extra_logs]]:
        key = Path(path).resolve()
        if key in seen or not Path(path).is_file():
            continue
        seen.add(key)
        header, decisions = read_decisions(path)
        _check_pool(path, header, pool_id, model_hash)
        owner = (header or {}).get("annotator")
        by_name: dict[str, dict[str, Decision]] = {}
        for item, d in decisions.items():
            by_name.setdefault(owner or d.annotator or UNNAMED, {})[item] = d
        out.extend((Path(path), name, decs) for name, decs in by_name.items())
    return out


def pool_decisions(review_dir, extra_logs=(), pool_id: str | None = None,
                   model_hash: str | None = None) -> dict[str, dict[str, Decision]]:
    """Every annotator's effective decisions on a pool, from all its logs: annotator -> item -> Decision
    (``logged_decisions``). A name with decisions in two logs keeps, per item, the later decision."""
    out: dict[str, dict[str, Decision]] = {}
    for _, name, decisions in logged_decisions(review_dir, extra_logs, pool_id, model_hash):
        mine = out.setdefault(name, {})
        for item, d in decisions.items():
            if item not in mine or mine[item].time <= d.time:
                mine[item] = d
    return out


def labelled(decisions: dict[str, Decision]) -> dict[str, Decision]:
    """The decisions that give a label (accept or label; not skip)."""
    return {i: d for i, d in decisions.items() if d.action in ("accept", "label")}


def log_for(review_dir, name: str) -> Path:
    """Where annotator ``name`` writes: their own log; or ``decisions.jsonl`` when that log of an earlier
    version holds decisions by ``name`` alone (they resume it) and they have no own log yet."""
    own = annotator_log(review_dir, name)
    legacy = Path(review_dir) / LEGACY_LOG
    if own.exists() or not legacy.is_file():
        return own
    _, decisions = read_decisions(legacy)
    names = {d.annotator for d in decisions.values()}
    return legacy if names == {check_annotator(name)} else own


def overlap_items(ids: list[str], share: float, seed: int) -> list[str]:
    """The blind overlap: a seeded random ``share`` of the pool's items (at least one when share > 0), in a
    seeded random order; every annotator reads them, blind."""
    ids = [str(i) for i in ids]
    if share <= 0 or not ids:
        return []
    n = min(len(ids), max(1, int(round(share * len(ids)))))
    order = np.random.default_rng([int(seed), 27]).permutation(len(ids))[:n]
    return [ids[i] for i in order]


def annotator_queue(first: list[str], ranked: list[str], taken: set, done_elsewhere: set) -> list[str]:
    """One annotator's queue: ``first`` (items every annotator reads: the blind overlap, in its order),
    then ``ranked`` (the review queue, most useful first) less ``first`` and less ``taken`` (items another
    annotator has labelled: the rest of the queue is shared out, not read twice); items this annotator
    decided in another log (``done_elsewhere``) are left out of both."""
    out, seen = [], set(done_elsewhere)
    for item in first:
        if item not in seen:
            out.append(item)
            seen.add(item)
    for item in ranked:
        if item not in seen and item not in taken:
            out.append(item)
            seen.add(item)
    return out


# ---------------------------------------------------------------------- export
LABELLED_SOURCES = ("auto-accepted", "accepted", "corrected", "blind", "consensus", "certification")
CERTIFIED = "labelled"   # annotations.csv status of an item a person labelled for certification (column ``label``)


def _table_label(row):
    """The human label annotations.csv gives a ``labelled`` item (the certification sample: column ``label``,
    a class index, multi-label indices joined by ``;``), or None."""
    if row.get("status") != CERTIFIED:
        return None
    text = row.get("label")
    if text is None or (isinstance(text, float) and text != text) or str(text).strip() == "":
        return None
    return str(text).strip()


def label_source_of(d: Decision) -> str:
    """label_source of a human label: blind (given without the model's label), accepted or corrected."""
    if d.blind:
        return "blind"
    return "accepted" if agrees_with_model(d) else "corrected"


def label_column(name: str) -> str:
    """The 0/1 column of one label in a multi-label export's CSV."""
    return f"label:{name}"


def _auto_set(session: ReviewSession, row, item: str) -> tuple[int, ...]:
    """The model's label set of an auto-accepted multi-label item: from the session, else from the table's
    ``predicted_labels`` column (label names joined by ``;``)."""
    if item in session.predicted:
        return tuple(session.predicted[item])
    text = row.get("predicted_labels")
    if text is None:
        raise WorkbenchError(f"no predicted label set for auto-accepted item {item}: give the session a prediction "
                             "for every pool item, or the table a 'predicted_labels' column")
    names = {n: i for i, n in enumerate(session.class_names)}
    parts = [] if not isinstance(text, str) else [t for t in text.split(LABEL_SEPARATOR) if t]
    unknown = [t for t in parts if t not in names]
    if unknown:
        raise WorkbenchError(f"predicted_labels of item {item} names unknown label {unknown[0]!r}")
    return tuple(sorted(names[t] for t in parts))


def _label_rows(session: ReviewSession, table, id_column: str, include_auto: bool, decided, certified, auto):
    """Per row of ``table``: (label, label_source, annotator, decided_at), from the first that has it: this
    session's decision (a skip gives no label), the table's certification label, the model's own label when
    ``include_auto`` and the row was auto-accepted; else unreviewed. The label itself is read by the task's
    readers: ``decided(decision)``, ``certified(text)``, ``auto(row, item)``."""
    rows = []
    for _, row in table.iterrows():
        item = str(row[id_column])
        d, text = session.decisions.get(item), _table_label(row)
        if d is not None and d.action in ("accept", "label"):
            rows.append((decided(d), label_source_of(d), d.annotator, d.time))
        elif d is not None:
            rows.append((None, "skipped", d.annotator, d.time))
        elif text is not None:
            rows.append((certified(text), "certification", "", ""))
        elif include_auto and row.get("status") == "auto-accepted":
            rows.append((auto(row, item), "auto-accepted", "model", ""))
        else:
            rows.append((None, "unreviewed", "", ""))
    return [list(col) for col in zip(*rows)] if rows else [[], [], [], []]


def _labelled_table_multilabel(session: ReviewSession, table, id_column: str, include_auto: bool):
    import pandas as pd
    out = table.copy()
    names = session.class_names
    sets, source, who, when = _label_rows(
        session, out, id_column, include_auto, decided=lambda d: tuple(d.labels or ()),
        certified=lambda text: tuple(sorted(int(float(j)) for j in text.split(LABEL_SEPARATOR) if j)),
        auto=lambda row, item: _auto_set(session, row, item))
    out["labels"] = [LABEL_SEPARATOR.join(names[i] for i in s) if s is not None else "" for s in sets]
    for j, name in enumerate(names):
        col = np.array([np.nan if s is None else float(j in s) for s in sets], dtype=float)
        out[label_column(name)] = pd.array(col, dtype="Float64").astype("Int64")
    out["label_source"] = source
    out["annotator"] = who
    out["decided_at"] = when
    return out


def label_sets(session: ReviewSession, labelled) -> np.ndarray:
    """(n, L) uint8 label matrix of a multi-label ``labelled_table`` (rows without a label set are 0)."""
    cols = [label_column(n) for n in session.class_names]
    if not len(labelled):
        return np.zeros((0, len(cols)), dtype=np.uint8)
    return labelled[cols].fillna(0).to_numpy(dtype=np.uint8)


def _with_pool_labels(session: ReviewSession, out, pool, id_column: str):
    """Where ``pool`` (``agreement.pool_labels``: every annotator's labels combined) has an item, its consensus
    label replaces this session's; every row gets consensus_quality and num_annotations (empty without a
    human label)."""
    names = session.class_names
    ids = out[id_column].astype(str)
    hit = ids.isin(pool.index).to_numpy()
    rows = pool.reindex(ids[hit])
    if session.multilabel:
        sets = [tuple(int(j) for j in str(v).split(LABEL_SEPARATOR) if j != "") for v in rows["label"]]
        out.loc[hit, "labels"] = [LABEL_SEPARATOR.join(names[j] for j in s) for s in sets]
        for j, name in enumerate(names):
            out.loc[hit, label_column(name)] = [int(j in s) for s in sets]
    else:
        labels = rows["label"].astype(int).to_numpy()
        out.loc[hit, "label"] = labels
        out.loc[hit, "label_class"] = [names[c] for c in labels]
    out.loc[hit, "label_source"] = rows["label_source"].to_numpy()
    out.loc[hit, "annotator"] = rows["annotators"].to_numpy()
    out.loc[hit, "decided_at"] = rows["decided_at"].to_numpy()
    quality = np.full(len(out), np.nan)
    quality[hit] = rows["consensus_quality"].to_numpy(dtype=float)
    count = np.zeros(len(out), dtype=int)
    count[hit] = rows["num_annotations"].to_numpy(dtype=int)
    out["consensus_quality"] = quality
    out["num_annotations"] = count
    return out


def labelled_table(session: ReviewSession, table, id_column: str = "id", include_auto: bool = True, pool=None):
    """``table`` (annotations.csv rows) with the final labels: columns label, label_class, label_source,
    annotator, decided_at added. label_source: auto-accepted | accepted | corrected | blind (labelled without
    the model's label) | certification (status ``labelled``: the certification sample's label in the table's
    ``label`` column) | skipped | unreviewed.

    Multi-label: instead of label/label_class, ``labels`` (the label names present, joined by ``;``;
    empty when none is present or the item has no label set) and one 0/1 column ``label:<name>`` per
    label (empty when the item has no label set: skipped or unreviewed).

    ``pool`` (``agreement.pool_labels``): the labels of all the pool's annotators, combined: where it has
    an item, its consensus label (label_source "consensus" when two or more annotators labelled it), and
    columns consensus_quality and num_annotations."""
    if session.multilabel:
        out = _labelled_table_multilabel(session, table, id_column, include_auto)
        return out if pool is None else _with_pool_labels(session, out, pool, id_column)
    out = table.copy()
    names = session.class_names
    label, source, who, when = _label_rows(
        session, out, id_column, include_auto, decided=lambda d: int(d.label),
        certified=lambda text: int(float(text)), auto=lambda row, item: int(row["predicted_label"]))
    out["label"] = np.array([np.nan if v is None else v for v in label], dtype=float)
    out["label"] = out["label"].astype("Int64")
    out["label_class"] = [names[v] if v is not None else "" for v in label]
    out["label_source"] = source
    out["annotator"] = who
    out["decided_at"] = when
    return out if pool is None else _with_pool_labels(session, out, pool, id_column)


def _consensus_fields(r) -> dict:
    """A COCO annotation's consensus fields (when the export carries several annotators' labels)."""
    if "num_annotations" not in r or not r["num_annotations"]:
        return {}
    q = r["consensus_quality"]
    return {"consensus_quality": None if q != q else round(float(q), 6), "num_annotations": int(r["num_annotations"])}


def _coco_multilabel(session: ReviewSession, labelled, h: int, w: int, info: dict) -> dict:
    images, anns = [], []
    pos = {i: k for k, i in enumerate(session.class_names)}
    for _, r in labelled.iterrows():
        item = str(r["id"])
        images.append({"id": int(r["index"]), "file_name": item, "width": w, "height": h,
                       "label_source": r["label_source"]})
        if r["label_source"] not in LABELLED_SOURCES:
            continue
        model = set(session.predicted.get(item, ()))
        for name in [t for t in str(r["labels"]).split(LABEL_SEPARATOR) if t]:
            c = pos[name]
            anns.append({"id": len(anns) + 1, "image_id": int(r["index"]), "category_id": c,
                         "source": r["label_source"], "annotator": r["annotator"], "time": r["decided_at"],
                         "model_predicted": c in model, **_consensus_fields(r)})
    return {"info": {"description": "workbench review export (multi-label: one annotation per present label; "
                                    "an image without annotations whose label_source is accepted, corrected or "
                                    "auto-accepted has none of the labels)",
                     "format": FORMAT_MULTILABEL, "task": session.task, "date_created": _now(),
                     "pool_id": session.pool_id, "model_hash": session.model_hash, **info},
            "licenses": [],
            "categories": [{"id": i, "name": n, "supercategory": "label"} for i, n in enumerate(session.class_names)],
            "images": images, "annotations": anns}


def coco(session: ReviewSession, labelled, image_shape: tuple, info: dict | None = None) -> dict:
    """COCO-style classification document: categories, images, annotations (with annotator and time).

    Multi-label: one annotation per present label (several categories per image); each image records
    its ``label_source`` so that "no label present" is told apart from "not labelled"."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if session.multilabel:
        return _coco_multilabel(session, labelled, h, w, info or {})
    has_label = labelled["label"].notna().to_numpy()
    images = [{"id": int(r["index"]), "file_name": str(r["id"]), "width": w, "height": h}
              for _, r in labelled.iterrows()]
    anns = []
    for k, (_, r) in enumerate(labelled[has_label].iterrows(), start=1):
        anns.append({"id": k, "image_id": int(r["index"]), "category_id": int(r["label"]),
                     "source": r["label_source"], "annotator": r["annotator"], "time": r["decided_at"],
                     "model_label": int(r["predicted_label"]), "score": float(r["confidence"]), **_consensus_fields(r)})
    return {"info": {"description": "workbench review export", "format": FORMAT, "date_created": _now(),
                     "pool_id": session.pool_id, "model_hash": session.model_hash, **(info or {})},
            "licenses": [],
            "categories": [{"id": i, "name": n, "supercategory": "class"} for i, n in enumerate(session.class_names)],
            "images": images, "annotations": anns}


def export(session: ReviewSession, table, out_dir: Path, images=None,
           source: dict | None = None, include_auto: bool = True, pool=None) -> dict:
    """Write ``annotations.csv``, ``annotations_coco.json`` and ``labelled.npz`` (the labelled images,
    their labels and ids: what ``10_train -p extra_labels=DIR`` reads) into a new directory.

    ``images``: the pool's images as an array (pool order), or a function ``positions -> (n, H, W, C)``
    uint8 (a pool streamed from disk: only the labelled images are read). None: no labelled.npz.
    Multi-label: ``labels`` in labelled.npz is (n, L) uint8 (1 = present), ``task`` is recorded.
    ``pool`` (``agreement.pool_labels``): several annotators' labels, combined; the exports then carry the
    consensus label with its quality and number of annotations (CSV columns, COCO annotation fields,
    labelled.npz arrays ``consensus_quality`` and ``num_annotations``)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise WorkbenchError(f"export directory {out_dir} already exists: exports are write-once; choose a new one")
    labelled = labelled_table(session, table, include_auto=include_auto, pool=pool)
    if session.multilabel:
        has = labelled["label_source"].isin(LABELLED_SOURCES).to_numpy()
    else:
        has = labelled["label"].notna().to_numpy()
    pos = labelled.loc[has, "index"].to_numpy(dtype=int)
    picked, shape = None, (0, 0)
    if images is not None:
        picked = np.asarray(images(pos) if callable(images) else images[pos])
        if len(picked):
            shape = picked.shape[1:3]
        elif callable(images) and len(labelled):
            shape = np.asarray(images(labelled["index"].to_numpy(dtype=int)[:1])).shape[1:3]
        elif not callable(images):
            shape = images.shape[1:3]
    out_dir.mkdir(parents=True)
    labelled.to_csv(out_dir / "annotations.csv", index=False)
    doc = coco(session, labelled, shape, info={"source": source or {}})
    (out_dir / "annotations_coco.json").write_text(json.dumps(doc, indent=1) + "\n")
    paths = {"csv": out_dir / "annotations.csv", "coco": out_dir / "annotations_coco.json"}
    if picked is not None:
        if session.multilabel:
            labels = label_sets(session, labelled.loc[has])
            extra = {"task": np.array(session.task, dtype="U")}
        else:
            labels = labelled.loc[has, "label"].to_numpy(dtype=np.int64)
            extra = {}
        np.savez_compressed(out_dir / "labelled.npz", images=picked, labels=labels,
                            ids=labelled.loc[has, "id"].astype(str).to_numpy(dtype="U"),
                            label_source=labelled.loc[has, "label_source"].to_numpy(dtype="U"),
                            class_names=np.array(session.class_names, dtype="U"),
                            source=np.array(json.dumps(source or {}), dtype="U"),
                            pool_id=np.array(session.pool_id, dtype="U"), **extra,
                            **({"consensus_quality": labelled.loc[has, "consensus_quality"].to_numpy(dtype=np.float64),
                                "num_annotations": labelled.loc[has, "num_annotations"].to_numpy(dtype=np.int64)}
                               if "num_annotations" in labelled else {}))
        paths["npz"] = out_dir / "labelled.npz"
    return {k: str(v) for k, v in paths.items()} | {"n_labelled": int(has.sum()),
                                                     "sources": labelled["label_source"].value_counts().to_dict()}


# ---------------------------------------------------------------------- consensus without the model
@contextmanager
def seeded_global_rng(seed: int):
    """cleanlab breaks the last majority-vote ties with NumPy's global generator (its warning suggests
    seeding it): seed it for the call and restore its state after, so results are reproducible and no
    other code's randomness changes."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def majority_vote(matrix: np.ndarray, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model-free consensus of an (items, annotators) label matrix (NaN: not labelled; every row has a
    label): cleanlab's majority vote, its ties broken by the empirical class frequencies, then by the
    annotators' agreement with the untied majority, then at random (seeded). Returns (labels, tied:
    True where the vote was a tie)."""
    from cleanlab.multiannotator import get_majority_vote_label
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or not len(m):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=bool)
    counts = np.stack([(m == c).sum(1) for c in range(num_classes)], 1)
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    if m.shape[1] == 1:
        return m[:, 0].astype(int), tied
    with seeded_global_rng(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "breaking ties ... by random selection": reported as ``tied``
        labels = get_majority_vote_label(m, pred_probs=None, verbose=False)
    return np.asarray(labels, dtype=int), tied



# ---------------------------------------------------------------------- certification sample
CERTIFICATION_QUEUE = "certification_queue.csv"


def certification_labels(pool_dir, seed: int = 0):
    """The labels given, blind, to the certification sample of an annotated pool (``certification_queue.csv``,
    labelled in the widget with ``queue="certification"``, or imported): a DataFrame with columns ``id``
    and ``label`` (the class index; multi-label: the label indices present, joined by ``;``), in the
    queue's order, one row per item that has a label.

    One annotator: their label. Several: the consensus of their blind labels by majority vote without the
    model (``majority_vote``), since labels that certify the model must not lean on it. Only
    blind decisions count (an item someone labelled while seeing the model's label does not). ``attrs``:
    ``annotators``, ``n_queue`` (the sample's size), ``unlabelled`` (ids without a label yet), ``tied`` (ids
    whose majority was a tie, broken as ``majority_vote`` says: worth a third reader)."""
    import pandas as pd
    pool_dir = Path(pool_dir)
    path = pool_dir / CERTIFICATION_QUEUE
    if not path.is_file():
        raise WorkbenchError(f"{pool_dir} has no {CERTIFICATION_QUEUE}: this pool was not sent for certification on "
                             "its own labels")
    ids = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)["id"].astype(str).tolist()
    summary_path = pool_dir / "annotation_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    decisions = pool_decisions(pool_dir / "review", pool_id=summary.get("pool_id"), model_hash=summary.get("model_hash"))
    headers = [read_log(p).header or {} for p in review_logs(pool_dir / "review")]
    class_names = next((h["class_names"] for h in headers if h.get("class_names")), [])
    summary.setdefault("task", next((h.get("task") for h in headers if h.get("task")), None))
    summary["class_names"] = class_names
    in_sample = set(ids)
    names = sorted(n for n, decs in decisions.items()
                   if any(i in in_sample and d.blind for i, d in labelled(decs).items()))
    multilabel = is_multilabel(summary.get("task"))
    given = {i: [labelled(decisions[n]).get(i) for n in names] for i in ids}
    given = {i: [d if d is not None and d.blind else None for d in ds] for i, ds in given.items()}
    rows, tied_ids = [], []
    todo = [i for i in ids if any(d is not None for d in given[i])]
    if multilabel:
        n_labels = len(summary.get("class_names") or []) or 1 + max(
            [max(d.labels or (0,)) for i in todo for d in given[i] if d is not None] or [0])
        present = np.full((len(todo), len(names), n_labels), np.nan)
        for r, i in enumerate(todo):
            for a, d in enumerate(given[i]):
                if d is not None:
                    present[r, a] = 0
                    present[r, a, list(d.labels or ())] = 1
        votes = np.zeros((len(todo), n_labels), dtype=int)
        any_tie = np.zeros(len(todo), dtype=bool)
        for j in range(n_labels):
            votes[:, j], tied = majority_vote(present[:, :, j], 2, seed=seed + j)
            any_tie |= tied
        rows = [(i, LABEL_SEPARATOR.join(str(j) for j in np.flatnonzero(v))) for i, v in zip(todo, votes)]
        tied_ids = [i for i, t in zip(todo, any_tie) if t]
    else:
        m = np.array([[np.nan if d is None else float(d.label) for d in given[i]] for i in todo]).reshape(len(todo), len(names))
        k = max(len(summary.get("class_names") or []), int(np.nanmax(m)) + 1 if m.size else 1)
        labels, tied = majority_vote(m, k, seed=seed)
        rows = list(zip(todo, labels.tolist()))
        tied_ids = [i for i, t in zip(todo, tied) if t]
    out = pd.DataFrame(rows, columns=["id", "label"])
    if not multilabel:
        out["label"] = out["label"].astype(int)
    out.attrs.update({"annotators": names, "n_queue": len(ids), "unlabelled": [i for i in ids if i not in set(todo)],
                      "tied": tied_ids})
    return out

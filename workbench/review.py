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

A log belongs to one pool and one model (``pool_id``, ``model_hash`` in the header): opening it for
another is refused. A last line cut short (a crash or a full disk mid-write) is reported, skipped and
acknowledged by a ``recovered`` record before anything new is appended; an unreadable line anywhere
else is corruption and refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import WorkbenchError

FORMAT = "workbench-review/1"               # single-label reviews (unchanged since the first release)
FORMAT_MULTILABEL = "workbench-review/2"    # multi-label reviews: decisions carry label sets
FORMATS = (FORMAT, FORMAT_MULTILABEL)
ACTIONS = ("accept", "label", "skip")
LABEL_SEPARATOR = ";"                       # joins label names in the CSV export's ``labels`` column


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


@dataclass
class ReviewSession:
    """A review of ``queue`` (pool item ids, most useful first) recorded in the log at ``log_path``.

    ``predicted`` maps each item to the model's label (what "accept" confirms): a class index, or for a
    multi-label ``task`` the predicted label set (label indices, or a boolean vector of length L). The
    session resumes from the log if it exists. Methods ``accept``, ``label``, ``skip``, ``undo`` return
    only once the record is on disk.
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

    def __post_init__(self):
        self.log_path = Path(self.log_path)
        self.queue = [str(q) for q in self.queue]
        self.multilabel = is_multilabel(self.task)
        if len(set(self.queue)) != len(self.queue):
            raise WorkbenchError("the review queue lists an item twice: item ids must be unique")
        missing = [q for q in self.queue if q not in self.predicted]
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
        from . import __version__
        return {"type": "header", "format": FORMAT_MULTILABEL if self.multilabel else FORMAT,
                "pool_id": self.pool_id, "model_hash": self.model_hash, "class_names": list(self.class_names),
                "task": self.task, "queue_size": len(self.queue), "created": _now(),
                "workbench": __version__, **({"meta": self.meta} if self.meta else {})}

    def _open(self) -> None:
        p = self.log_path
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            self._write([self._header()], expect_size=None)
            _fsync_dir(p.parent)
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
        kind = rec.get("type")
        self._seq = max(self._seq, int(rec.get("seq", 0)))
        if kind == "decision":
            if rec.get("action") not in ACTIONS:
                raise WorkbenchError(f"review log {self.log_path}: unknown action {rec.get('action')!r} (seq {rec.get('seq')})")
            pred, labels = rec.get("predicted"), rec.get("labels")
            if isinstance(pred, list):
                pred = tuple(int(x) for x in pred)
            if labels is not None:
                labels = tuple(int(x) for x in labels)
            d = Decision(int(rec["seq"]), str(rec["item"]), rec["action"], rec.get("label"), pred,
                         rec.get("annotator", ""), rec.get("time", ""), labels)
            if d.item in self.decisions:
                raise WorkbenchError(f"review log {self.log_path}: item {d.item} decided twice without an undo "
                                     f"(seq {d.seq}): the log was edited by hand")
            self.decisions[d.item] = d
            self._stack.append(d)
        elif kind == "undo":
            if not self._stack or self._stack[-1].seq != rec.get("undoes"):
                raise WorkbenchError(f"review log {self.log_path}: undo (seq {rec.get('seq')}) does not undo the latest "
                                     "decision: the log was edited by hand")
            d = self._stack.pop()
            del self.decisions[d.item]
        elif kind != "recovered":
            raise WorkbenchError(f"review log {self.log_path}: unknown record type {kind!r}")

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
        in_queue = [self.decisions[q] for q in self.queue if q in self.decisions]
        counts = {a: sum(d.action == a for d in in_queue) for a in ACTIONS}
        return {"decided": len(in_queue), "total": len(self.queue), **counts,
                "corrected": sum(d.action == "label" and not agrees_with_model(d) for d in in_queue)}

    # ------------------------------------------------------------------ actions
    def _decide(self, action: str, label=None) -> Decision:
        item = self.current
        if item is None:
            raise WorkbenchError("the review queue is done: nothing left to decide (undo to change a decision)")
        rec = {"type": "decision", "seq": self._seq + 1, "item": item, "action": action}
        if self.multilabel:
            labels = None if label is None else self._label_set(label)
            rec.update({"label": None, "labels": None if labels is None else list(labels),
                        "predicted": list(self.predicted[item])})
        else:
            if label is not None:
                if isinstance(label, (list, tuple, set, frozenset, np.ndarray)):
                    raise WorkbenchError(f"label {label!r} is a set of labels, but a single-label review (task "
                                         f"{self.task!r}) records one class index 0..{len(self.class_names) - 1}")
                if not 0 <= int(label) < len(self.class_names):
                    raise WorkbenchError(f"label {label} is not a class index 0..{len(self.class_names) - 1}")
            rec.update({"label": None if label is None else int(label), "predicted": int(self.predicted[item])})
        rec.update({"annotator": self.annotator, "time": _now()})
        self._write([rec], expect_size=self._size)
        self._seq += 1
        self._replay(rec)
        return self.decisions[item]

    def accept(self) -> Decision:
        """Confirm the model's label (multi-label: its predicted label set) for the current item."""
        if self.current is None:
            return self._decide("accept", None)
        pred = self.predicted[self.current]
        return self._decide("accept", pred if self.multilabel else int(pred))

    def label(self, label) -> Decision:
        """Give the current item class ``label`` (a correction when it differs from the prediction).

        Multi-label: ``label`` is the set of labels present (indices, possibly empty)."""
        return self._decide("label", label)

    def skip(self) -> Decision:
        """Leave the current item unlabelled and move on."""
        return self._decide("skip", None)

    def undo(self) -> Decision | None:
        """Revert the latest decision (the review goes back to that item); None when there is none."""
        if not self._stack:
            return None
        d = self._stack[-1]
        rec = {"type": "undo", "seq": self._seq + 1, "undoes": d.seq, "item": d.item,
               "annotator": self.annotator, "time": _now()}
        self._write([rec], expect_size=self._size)
        self._seq += 1
        self._replay(rec)
        return d


def agrees_with_model(d: Decision) -> bool:
    """True when a decision's label (or label set) is the model's prediction."""
    if d.labels is not None:
        return set(d.labels) == set(d.predicted or ())
    return d.label == d.predicted


# ---------------------------------------------------------------------- export
LABELLED_SOURCES = ("auto-accepted", "accepted", "corrected")


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


def _labelled_table_multilabel(session: ReviewSession, table, id_column: str, include_auto: bool):
    import pandas as pd
    out = table.copy()
    names = session.class_names
    sets, source, who, when = [], [], [], []
    for _, row in out.iterrows():
        item = str(row[id_column])
        d = session.decisions.get(item)
        if d is not None and d.action in ("accept", "label"):
            sets.append(tuple(d.labels or ()))
            source.append("accepted" if agrees_with_model(d) else "corrected")
            who.append(d.annotator)
            when.append(d.time)
        elif d is not None:
            sets.append(None)
            source.append("skipped")
            who.append(d.annotator)
            when.append(d.time)
        elif include_auto and row.get("status") == "auto-accepted":
            sets.append(_auto_set(session, row, item))
            source.append("auto-accepted")
            who.append("model")
            when.append("")
        else:
            sets.append(None)
            source.append("unreviewed")
            who.append("")
            when.append("")
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


def labelled_table(session: ReviewSession, table, id_column: str = "id", include_auto: bool = True):
    """``table`` (annotations.csv rows) with the final labels: columns label, label_class, label_source,
    annotator, decided_at added. label_source: auto-accepted | accepted | corrected | skipped | unreviewed.

    Multi-label: instead of label/label_class, ``labels`` (the label names present, joined by ``;``;
    empty when none is present or the item has no label set) and one 0/1 column ``label:<name>`` per
    label (empty when the item has no label set: skipped or unreviewed)."""
    if session.multilabel:
        return _labelled_table_multilabel(session, table, id_column, include_auto)
    out = table.copy()
    names = session.class_names
    label, source, who, when = [], [], [], []
    for _, row in out.iterrows():
        d = session.decisions.get(str(row[id_column]))
        if d is not None and d.action in ("accept", "label"):
            label.append(int(d.label))
            source.append("accepted" if d.label == d.predicted else "corrected")
            who.append(d.annotator)
            when.append(d.time)
        elif d is not None:
            label.append(None)
            source.append("skipped")
            who.append(d.annotator)
            when.append(d.time)
        elif include_auto and row.get("status") == "auto-accepted":
            label.append(int(row["predicted_label"]))
            source.append("auto-accepted")
            who.append("model")
            when.append("")
        else:
            label.append(None)
            source.append("unreviewed")
            who.append("")
            when.append("")
    out["label"] = np.array([np.nan if v is None else v for v in label], dtype=float)
    out["label"] = out["label"].astype("Int64")
    out["label_class"] = [names[v] if v is not None else "" for v in label]
    out["label_source"] = source
    out["annotator"] = who
    out["decided_at"] = when
    return out


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
                         "model_predicted": c in model})
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
                     "model_label": int(r["predicted_label"]), "score": float(r["confidence"])})
    return {"info": {"description": "workbench review export", "format": FORMAT, "date_created": _now(),
                     "pool_id": session.pool_id, "model_hash": session.model_hash, **(info or {})},
            "licenses": [],
            "categories": [{"id": i, "name": n, "supercategory": "class"} for i, n in enumerate(session.class_names)],
            "images": images, "annotations": anns}


def export(session: ReviewSession, table, out_dir: Path, images=None,
           source: dict | None = None, include_auto: bool = True) -> dict:
    """Write ``annotations.csv``, ``annotations_coco.json`` and ``labelled.npz`` (the labelled images,
    their labels and ids: what ``10_train -p extra_labels=DIR`` reads) into a new directory.

    ``images``: the pool's images as an array (pool order), or a function ``positions -> (n, H, W, C)``
    uint8 (a pool streamed from disk: only the labelled images are read). None: no labelled.npz.
    Multi-label: ``labels`` in labelled.npz is (n, L) uint8 (1 = present), ``task`` is recorded."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise WorkbenchError(f"export directory {out_dir} already exists: exports are write-once; choose a new one")
    labelled = labelled_table(session, table, include_auto=include_auto)
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
                            pool_id=np.array(session.pool_id, dtype="U"), **extra)
        paths["npz"] = out_dir / "labelled.npz"
    return {k: str(v) for k, v in paths.items()} | {"n_labelled": int(has.sum()),
                                                     "sources": labelled["label_source"].value_counts().to_dict()}

"""Human review of a ranked queue: decisions, undo, resume, export. Pure Python (no widgets, no Keras).

Every decision is one JSON line appended to a log and made durable (flush + ``os.fsync``) before the
call returns, so a decision the caller saw confirmed survives the process being killed. The log is
append-only: an undo is a new record, never a rewrite.

Log format (``workbench-review/1``), one JSON object per line::

    {"type": "header", "format": ..., "pool_id": ..., "model_hash": ..., "class_names": [...], ...}
    {"type": "decision", "seq": 1, "item": "test:17", "action": "accept"|"label"|"skip", "label": 3|null,
     "predicted": 3, "annotator": "ana", "time": "2026-…Z"}
    {"type": "undo", "seq": 2, "undoes": 1, "item": "test:17", "annotator": "ana", "time": ...}
    {"type": "recovered", "line": 7, "bytes": 23, "time": ...}

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

FORMAT = "workbench-review/1"
ACTIONS = ("accept", "label", "skip")


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
    label: int | None
    predicted: int | None
    annotator: str
    time: str


@dataclass
class ReviewSession:
    """A review of ``queue`` (pool item ids, most useful first) recorded in the log at ``log_path``.

    ``predicted`` maps each item to the model's label (what "accept" confirms). The session resumes
    from the log if it exists. Methods ``accept``, ``label``, ``skip``, ``undo`` return only once the
    record is on disk.
    """
    log_path: Path
    queue: list[str]
    predicted: dict[str, int]
    class_names: list[str]
    pool_id: str
    model_hash: str
    annotator: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.log_path = Path(self.log_path)
        self.queue = [str(q) for q in self.queue]
        if len(set(self.queue)) != len(self.queue):
            raise WorkbenchError("the review queue lists an item twice: item ids must be unique")
        missing = [q for q in self.queue if q not in self.predicted]
        if missing:
            raise WorkbenchError(f"no predicted label for queue item(s) {missing[:3]}")
        self.notes: list[str] = []                 # damage found (and repaired) on this open: reported
        self.recovered: list[str] = []             # damage repaired by an earlier open
        self.decisions: dict[str, Decision] = {}   # effective decision per item
        self._stack: list[Decision] = []           # effective decisions, oldest first (undo pops)
        self._seq = 0
        self._size = 0
        self._open()

    # ------------------------------------------------------------------ log I/O
    def _header(self) -> dict:
        from . import __version__
        return {"type": "header", "format": FORMAT, "pool_id": self.pool_id, "model_hash": self.model_hash,
                "class_names": list(self.class_names), "queue_size": len(self.queue), "created": _now(),
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
        if h.get("format") != FORMAT:
            raise WorkbenchError(f"review log {p} has format {h.get('format')!r}, expected {FORMAT!r}")
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
            d = Decision(int(rec["seq"]), str(rec["item"]), rec["action"], rec.get("label"), rec.get("predicted"),
                         rec.get("annotator", ""), rec.get("time", ""))
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
                "corrected": sum(d.action == "label" and d.label != d.predicted for d in in_queue)}

    # ------------------------------------------------------------------ actions
    def _decide(self, action: str, label: int | None) -> Decision:
        item = self.current
        if item is None:
            raise WorkbenchError("the review queue is done: nothing left to decide (undo to change a decision)")
        if label is not None and not 0 <= int(label) < len(self.class_names):
            raise WorkbenchError(f"label {label} is not a class index 0..{len(self.class_names) - 1}")
        rec = {"type": "decision", "seq": self._seq + 1, "item": item, "action": action,
               "label": None if label is None else int(label), "predicted": int(self.predicted[item]),
               "annotator": self.annotator, "time": _now()}
        self._write([rec], expect_size=self._size)
        self._seq += 1
        self._replay(rec)
        return self.decisions[item]

    def accept(self) -> Decision:
        """Confirm the model's label for the current item."""
        return self._decide("accept", int(self.predicted[self.current]) if self.current is not None else None)

    def label(self, label: int) -> Decision:
        """Give the current item class ``label`` (a correction when it differs from the prediction)."""
        return self._decide("label", int(label))

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


# ---------------------------------------------------------------------- export
def labelled_table(session: ReviewSession, table, id_column: str = "id", include_auto: bool = True):
    """``table`` (annotations.csv rows) with the final labels: columns label, label_class, label_source,
    annotator, decided_at added. label_source: auto-accepted | accepted | corrected | skipped | unreviewed."""
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


def coco(session: ReviewSession, labelled, image_shape: tuple, info: dict | None = None) -> dict:
    """COCO-style classification document: categories, images, annotations (with annotator and time)."""
    h, w = int(image_shape[0]), int(image_shape[1])
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


def export(session: ReviewSession, table, out_dir: Path, images: np.ndarray | None = None,
           source: dict | None = None, include_auto: bool = True) -> dict:
    """Write ``annotations.csv``, ``annotations_coco.json`` and ``labelled.npz`` (the labelled images,
    their labels and ids: what ``10_train -p extra_labels=DIR`` reads) into a new directory."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise WorkbenchError(f"export directory {out_dir} already exists: exports are write-once; choose a new one")
    out_dir.mkdir(parents=True)
    labelled = labelled_table(session, table, include_auto=include_auto)
    labelled.to_csv(out_dir / "annotations.csv", index=False)
    shape = images.shape[1:3] if images is not None else (0, 0)
    doc = coco(session, labelled, shape, info={"source": source or {}})
    (out_dir / "annotations_coco.json").write_text(json.dumps(doc, indent=1) + "\n")
    paths = {"csv": out_dir / "annotations.csv", "coco": out_dir / "annotations_coco.json"}
    if images is not None:
        has = labelled["label"].notna().to_numpy()
        pos = labelled.loc[has, "index"].to_numpy(dtype=int)
        np.savez_compressed(out_dir / "labelled.npz", images=images[pos],
                            labels=labelled.loc[has, "label"].to_numpy(dtype=np.int64),
                            ids=labelled.loc[has, "id"].astype(str).to_numpy(dtype="U"),
                            label_source=labelled.loc[has, "label_source"].to_numpy(dtype="U"),
                            class_names=np.array(session.class_names, dtype="U"),
                            source=np.array(json.dumps(source or {}), dtype="U"),
                            pool_id=np.array(session.pool_id, dtype="U"))
        paths["npz"] = out_dir / "labelled.npz"
    return {k: str(v) for k, v in paths.items()} | {"n_labelled": int(labelled["label"].notna().sum()),
                                                     "sources": labelled["label_source"].value_counts().to_dict()}

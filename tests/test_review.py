"""Review logic (workbench.review): decisions, undo, resume, durability, damaged and foreign logs, export."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TINY
from workbench.errors import WorkbenchError
from workbench.review import ReviewLogWarning, ReviewSession, export, read_log

NAMES = ["a", "b", "c"]


def session(path, queue=("x0", "x1", "x2", "x3"), pool="pool1", model="model1", annotator="ana"):
    predicted = {q: i % 3 for i, q in enumerate(queue)}
    return ReviewSession(path, list(queue), predicted, NAMES, pool, model, annotator=annotator)


def test_decisions_undo_and_resume(tmp_path):
    log = tmp_path / "review" / "decisions.jsonl"
    s = session(log)
    assert s.current == "x0" and s.progress()["decided"] == 0
    assert s.accept().label == 0                 # x0 predicted 0
    assert s.label(2).label == 2                 # x1 predicted 1 → corrected to 2
    assert s.skip().action == "skip"             # x2
    assert s.current == "x3"
    undone = s.undo()
    assert undone.item == "x2" and s.current == "x2"
    assert s.label(1).item == "x2"
    p = s.progress()
    assert p == {"decided": 3, "total": 4, "accept": 1, "label": 2, "skip": 0, "corrected": 2}

    # a new process (here: a new session object) resumes exactly there
    again = session(log)
    assert again.current == "x3"
    assert {k: (d.action, d.label) for k, d in again.decisions.items()} == \
        {"x0": ("accept", 0), "x1": ("label", 2), "x2": ("label", 1)}
    assert again.undo().item == "x2"             # undo history survives the restart too
    assert again.current == "x2"
    # the log is append-only: header + 5 records + this undo, nothing rewritten
    lines = log.read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["type"] == "header"
    assert [json.loads(line)["type"] for line in lines[1:]] == ["decision"] * 3 + ["undo", "decision", "undo"]


def test_done_and_bad_label(tmp_path):
    s = session(tmp_path / "l.jsonl", queue=("only",))
    with pytest.raises(WorkbenchError, match="not a class index"):
        s.label(7)
    s.accept()
    assert s.done and s.current is None
    with pytest.raises(WorkbenchError, match="queue is done"):
        s.skip()
    assert session(tmp_path / "l.jsonl", queue=("only",)).done


def test_log_of_another_pool_or_model_is_refused(tmp_path):
    log = tmp_path / "d.jsonl"
    session(log).accept()
    before = log.read_bytes()
    with pytest.raises(WorkbenchError, match="written for pool pool1 and model model1.*pool other"):
        session(log, pool="other")
    with pytest.raises(WorkbenchError, match="belongs to another pool or model"):
        session(log, model="model2")
    assert log.read_bytes() == before  # refusing wrote nothing


def test_truncated_last_line_is_reported_skipped_and_acknowledged(tmp_path):
    log = tmp_path / "d.jsonl"
    s = session(log)
    s.accept()
    s.accept()
    with open(log, "ab") as f:  # a write cut short by a crash: half a record, no newline
        f.write(b'{"type":"decision","seq":3,"item":"x2","act')
    with pytest.warns(ReviewLogWarning, match="cut short"):
        s2 = session(log)
    assert set(s2.decisions) == {"x0", "x1"} and s2.current == "x2"
    assert any("last line" in n for n in s2.notes)
    s2.skip()  # appends cleanly after the damaged line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already acknowledged: no new warning
        s3 = session(log)
    assert set(s3.decisions) == {"x0", "x1", "x2"} and s3.recovered
    rec = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"type":"recovered"')]
    assert rec and rec[0]["line"] == 4


def test_corruption_in_the_middle_is_refused(tmp_path):
    log = tmp_path / "d.jsonl"
    s = session(log)
    s.accept()
    s.accept()
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:10]
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkbenchError, match="corrupt at line 2"):
        session(log)


def test_two_sessions_on_one_log_do_not_lose_decisions(tmp_path):
    log = tmp_path / "d.jsonl"
    a, b = session(log), session(log)
    a.accept()
    with pytest.raises(WorkbenchError, match="changed by another review session"):
        b.accept()
    assert list(session(log).decisions) == ["x0"]


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from workbench.review import ReviewSession
    queue = [f"item{{i}}" for i in range(100000)]
    s = ReviewSession({log!r}, queue, {{q: i % 3 for i, q in enumerate(queue)}}, ["a", "b", "c"], "p", "m", annotator="k")
    i = 0
    while True:
        d = s.label(i % 3) if i % 2 else s.accept()
        print("confirmed", d.item, d.label, flush=True)   # only after the record is on disk
        i += 1
""")


def test_sigkill_during_review_loses_no_confirmed_decision(tmp_path):
    log = tmp_path / "kill.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), log=str(log))],
                            stdout=subprocess.PIPE, text=True)
    confirmed = {}
    try:
        for line in proc.stdout:
            _, item, label = line.split()
            confirmed[item] = int(label)
            if len(confirmed) >= 150:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    queue = [f"item{i}" for i in range(100000)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReviewLogWarning)  # the kill may have cut the last write
        s = ReviewSession(log, queue, {q: i % 3 for i, q in enumerate(queue)}, NAMES, "p", "m")
    for item, label in confirmed.items():
        assert s.decisions[item].label == label
    assert s.current == f"item{len(s.decisions)}"  # resumes right after the last saved decision


def _tiny_pool():
    with np.load(TINY) as z:
        return z["val_images"][:6], z["val_labels"].reshape(-1)[:6]


def test_export_csv_coco_and_npz(tmp_path):
    images, _ = _tiny_pool()
    ids = [f"val:{i}" for i in range(6)]
    table = pd.DataFrame({"index": range(6), "split": "val", "predicted_label": [0, 1, 2, 0, 1, 2],
                          "predicted_class": [NAMES[c] for c in [0, 1, 2, 0, 1, 2]],
                          "confidence": [0.99, 0.5, 0.6, 0.97, 0.4, 0.3],
                          "status": ["auto-accepted", "needs-review", "needs-review", "auto-accepted",
                                     "needs-review", "needs-review"], "id": ids})
    queue = ["val:1", "val:2", "val:4", "val:5"]
    s = ReviewSession(tmp_path / "d.jsonl", queue, dict(zip(ids, table["predicted_label"])), NAMES, "p", "m",
                      annotator="ana")
    s.accept()      # val:1 → 1
    s.label(0)      # val:2 → 0 (corrected)
    s.skip()        # val:4
    out = export(s, table, tmp_path / "export", images=images, source={"kind": "test"})
    df = pd.read_csv(out["csv"])
    assert list(df.columns[:7]) == ["index", "split", "predicted_label", "predicted_class", "confidence", "status", "id"]
    src = dict(zip(df["id"], df["label_source"]))
    assert src == {"val:0": "auto-accepted", "val:1": "accepted", "val:2": "corrected", "val:3": "auto-accepted",
                   "val:4": "skipped", "val:5": "unreviewed"}
    assert df.set_index("id").loc["val:2", "label"] == 0 and df.set_index("id").loc["val:2", "annotator"] == "ana"
    doc = json.loads(open(out["coco"]).read())
    assert [c["name"] for c in doc["categories"]] == NAMES and len(doc["images"]) == 6
    anns = {a["image_id"]: a for a in doc["annotations"]}
    assert set(anns) == {0, 1, 2, 3}
    assert anns[2]["category_id"] == 0 and anns[2]["annotator"] == "ana" and anns[2]["time"].endswith("Z")
    assert anns[0]["annotator"] == "model" and doc["info"]["pool_id"] == "p"
    with np.load(out["npz"], allow_pickle=False) as z:
        assert z["images"].shape == (4, 28, 28, 3) and z["labels"].tolist() == [0, 1, 0, 0]
        np.testing.assert_array_equal(z["images"][2], images[2])
        assert z["ids"].tolist() == ["val:0", "val:1", "val:2", "val:3"]
    with pytest.raises(WorkbenchError, match="write-once"):
        export(s, table, tmp_path / "export", images=images)
    assert read_log(tmp_path / "d.jsonl").header["pool_id"] == "p"


# ---------------------------------------------------------------------- any class count, multi-label
ML_NAMES = ["effusion", "nodule", "mass", "edema"]
ML_TASK = "multi-label, binary-class"


def ml_session(path, queue=("m0", "m1", "m2"), predicted=None, **kw):
    predicted = predicted or {"m0": [1], "m1": [], "m2": [0, 3]}
    return ReviewSession(path, list(queue), predicted, ML_NAMES, "pool-ml", "model-ml", annotator="ana",
                         task=ML_TASK, **kw)


def test_single_label_review_with_100_classes(tmp_path):
    names = [f"class {i}" for i in range(100)]
    s = ReviewSession(tmp_path / "d.jsonl", ["x", "y"], {"x": 5, "y": 99}, names, "p", "m", annotator="a")
    assert s.label(87).label == 87 and s.accept().label == 99
    with pytest.raises(WorkbenchError, match="set of labels"):
        ReviewSession(tmp_path / "e.jsonl", ["x"], {"x": 5}, names, "p", "m").label([1, 2])
    again = ReviewSession(tmp_path / "d.jsonl", ["x", "y"], {"x": 5, "y": 99}, names, "p", "m")
    assert {k: d.label for k, d in again.decisions.items()} == {"x": 87, "y": 99}


def test_multilabel_sets_undo_resume_and_log_format(tmp_path):
    log = tmp_path / "ml.jsonl"
    s = ml_session(log)
    d = s.accept()                                   # m0: the model's set {1}
    assert d.action == "accept" and d.labels == (1,) and d.label is None
    assert s.label([3, 0, 3]).labels == (0, 3)       # m1: model said none; reviewer: {0, 3} (deduplicated, sorted)
    assert s.undo().item == "m1"
    assert s.label([]).labels == ()                  # m1: explicitly none present
    assert s.label(np.array([True, False, True, True])).labels == (0, 2, 3)  # m2, as a boolean vector
    assert s.done
    assert s.progress() == {"decided": 3, "total": 3, "accept": 1, "label": 2, "skip": 0, "corrected": 1}
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert recs[0]["format"] == "workbench-review/2" and recs[0]["task"] == ML_TASK
    last = recs[-1]
    assert last["action"] == "label" and last["labels"] == [0, 2, 3] and last["predicted"] == [0, 3]
    again = ml_session(log)                          # resume: same sets, undo history kept
    assert {k: d.labels for k, d in again.decisions.items()} == {"m0": (1,), "m1": (), "m2": (0, 2, 3)}
    assert again.undo().item == "m2" and again.current == "m2"
    with pytest.raises(WorkbenchError, match="set of labels, not one index"):
        again.label(2)
    with pytest.raises(WorkbenchError, match="not a label index 0..3"):
        again.label([4])


def test_single_and_multilabel_logs_are_not_mixed_and_old_logs_open(tmp_path):
    ml = tmp_path / "ml.jsonl"
    ml_session(ml).accept()
    with pytest.raises(WorkbenchError, match="multi-label review .* this review is single-label"):
        ReviewSession(ml, ["m0"], {"m0": 1}, ML_NAMES, "pool-ml", "model-ml")
    # a log written before tasks were recorded: format /1, no "task" in the header
    old = tmp_path / "old.jsonl"
    header = {"type": "header", "format": "workbench-review/1", "pool_id": "p", "model_hash": "m",
              "class_names": NAMES, "queue_size": 2, "created": "2025-01-01T00:00:00.000Z", "workbench": "0.1"}
    dec = {"type": "decision", "seq": 1, "item": "x0", "action": "label", "label": 2, "predicted": 0,
           "annotator": "ana", "time": "2025-01-01T00:00:01.000Z"}
    old.write_text(json.dumps(header) + "\n" + json.dumps(dec) + "\n")
    s = ReviewSession(old, ["x0", "x1"], {"x0": 0, "x1": 1}, NAMES, "p", "m")
    assert s.decisions["x0"].label == 2 and s.current == "x1" and s.progress()["corrected"] == 1
    with pytest.raises(WorkbenchError, match="single-label review .* this review is multi-label"):
        ReviewSession(old, ["x0"], {"x0": [0]}, NAMES, "p", "m", task=ML_TASK)
    header["format"] = "workbench-review/9"
    (tmp_path / "future.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(WorkbenchError, match="format 'workbench-review/9'"):
        ReviewSession(tmp_path / "future.jsonl", ["x0"], {"x0": 0}, NAMES, "p", "m")


def test_multilabel_export_csv_coco_and_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    ids = [f"f{i}.png" for i in range(5)]
    predicted = {"f0.png": [0], "f1.png": [1, 2], "f2.png": [], "f3.png": [3], "f4.png": [0, 1]}
    table = pd.DataFrame({"index": range(5), "split": "pool", "status": ["auto-accepted", "needs-review",
                          "needs-review", "needs-review", "needs-review"], "id": ids})
    s = ReviewSession(tmp_path / "d.jsonl", ids[1:], predicted, ML_NAMES, "p", "m", annotator="ana", task=ML_TASK)
    s.label([1, 3])     # f1: corrected (model {1, 2})
    s.accept()          # f2: accepted, nothing present
    s.skip()            # f3
    calls = []

    def display(positions):  # a streamed pool: only the labelled images are read
        calls.append(list(positions))
        return images[np.asarray(positions, dtype=int)]

    out = export(s, table, tmp_path / "export", images=display, source={"kind": "folder"})
    assert calls == [[0, 1, 2]] and out["n_labelled"] == 3
    df = pd.read_csv(out["csv"], dtype={"labels": str}, keep_default_na=False).set_index("id")
    assert df.loc["f0.png", "labels"] == "effusion" and df.loc["f0.png", "label_source"] == "auto-accepted"
    assert df.loc["f1.png", "labels"] == "nodule;edema" and df.loc["f1.png", "label_source"] == "corrected"
    assert df.loc["f2.png", "labels"] == "" and df.loc["f2.png", "label_source"] == "accepted"
    assert df.loc["f3.png", "label_source"] == "skipped" and df.loc["f4.png", "label_source"] == "unreviewed"
    assert [df.loc["f1.png", f"label:{n}"] for n in ML_NAMES] == ["0", "1", "0", "1"]
    assert [df.loc["f2.png", f"label:{n}"] for n in ML_NAMES] == ["0"] * 4
    assert df.loc["f3.png", "label:nodule"] == ""            # no label set: empty, not 0
    doc = json.loads(open(out["coco"]).read())
    assert {c["name"] for c in doc["categories"]} == set(ML_NAMES) and doc["info"]["task"] == ML_TASK
    by_image = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["category_id"])
    assert by_image == {0: [0], 1: [1, 3]}                   # f2: labelled, none present → no annotation
    assert {i["file_name"]: i["label_source"] for i in doc["images"]}["f2.png"] == "accepted"
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (16, 16)
    with np.load(out["npz"], allow_pickle=False) as z:
        assert z["labels"].dtype == np.uint8 and z["labels"].tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
        assert z["ids"].tolist() == ["f0.png", "f1.png", "f2.png"] and str(z["task"]) == ML_TASK
        np.testing.assert_array_equal(z["images"], images[:3])


# ---------------------------------------------------------------------- several annotators, blind certification
def _annotator(pool_dir, name, queue, labels, blind=True, names=NAMES, task="multi-class"):
    """``name`` labels ``queue`` in their own log of ``pool_dir`` (review/annotators/<name>.jsonl)."""
    from workbench.review import annotator_log
    predicted = {q: 0 if task == "multi-class" else [0] for q in queue}
    s = ReviewSession(annotator_log(pool_dir / "review", name), list(queue), predicted, names, "pool1", "model1",
                      task=task, owner=name, blind=frozenset(queue) if blind else frozenset())
    for lab in labels:
        s.label(lab) if lab is not None else s.skip()
    return s


def test_annotator_logs_are_separate_and_named(tmp_path):
    from workbench.review import annotator_file, log_for, pool_decisions, review_logs
    assert annotator_file("ana") == "ana.jsonl"
    odd = annotator_file("Dr. Ana Pérez")
    assert odd.startswith("Dr._Ana_P") and odd.endswith(".jsonl") and odd != annotator_file("Dr. Ana Perez")
    with pytest.raises(WorkbenchError, match="annotator name is needed"):
        annotator_file("  ")
    a = _annotator(tmp_path, "ana", ["x0", "x1"], [1, 2])
    before = a.log_path.read_bytes()
    b = _annotator(tmp_path, "ben", ["x0", "x1"], [1, 0])
    b.undo()                                                     # ben resumes and undoes: ana's log untouched
    _annotator(tmp_path, "ben", ["x0", "x1"], [0])
    assert a.log_path.read_bytes() == before
    assert [p.name for p in review_logs(tmp_path / "review")] == ["ana.jsonl", "ben.jsonl"]
    got = {n: {i: d.label for i, d in decs.items()} for n, decs in pool_decisions(tmp_path / "review").items()}
    assert got == {"ana": {"x0": 1, "x1": 2}, "ben": {"x0": 1, "x1": 0}}
    # a single log of an earlier version: its one annotator resumes it, anyone else gets their own
    legacy = tmp_path / "old" / "review" / "decisions.jsonl"
    session(legacy, annotator="cleo").accept()
    assert log_for(legacy.parent, "cleo") == legacy
    assert log_for(legacy.parent, "dan") == legacy.parent / "annotators" / "dan.jsonl"
    assert {n: list(d) for n, d in pool_decisions(legacy.parent).items()} == {"cleo": ["x0"]}


def test_certification_labels_one_and_several_annotators(tmp_path):
    from workbench.review import certification_labels
    pool = tmp_path / "pool"
    (pool / "review").mkdir(parents=True)
    queue = ["i3", "i1", "i4", "i2"]
    pd.DataFrame({"id": queue}).to_csv(pool / "certification_queue.csv", index=False)
    (pool / "annotation_summary.json").write_text(json.dumps({"pool_id": "pool1", "model_hash": "model1",
                                                              "task": "multi-class"}))
    with pytest.raises(WorkbenchError, match="no certification_queue.csv"):
        certification_labels(tmp_path)
    _annotator(pool, "ana", queue, [2, 0, 1])                    # i2 not labelled yet
    one = certification_labels(pool)
    assert list(one.columns) == ["id", "label"] and one["label"].dtype.kind == "i"
    assert one.values.tolist() == [["i3", 2], ["i1", 0], ["i4", 1]] and one.attrs["unlabelled"] == ["i2"]
    _annotator(pool, "ben", queue, [2, 1, 1, 2])
    _annotator(pool, "cleo", queue, [2, 1, 0, None])             # cleo skips i2
    # a decision made while the model's label was shown does not count for certification
    _annotator(pool, "dan", queue, [0, 0, 0, 0], blind=False)
    three = certification_labels(pool)
    assert three.attrs["annotators"] == ["ana", "ben", "cleo"]
    assert dict(three.values.tolist()) == {"i3": 2, "i1": 1, "i4": 1, "i2": 2}   # majorities; i2: ben alone
    assert three.attrs["tied"] == [] and three["id"].tolist() == queue


def test_certification_labels_multilabel_majority_per_label(tmp_path):
    from workbench.review import certification_labels
    pool = tmp_path / "pool"
    (pool / "review").mkdir(parents=True)
    pd.DataFrame({"id": ["a", "b"]}).to_csv(pool / "certification_queue.csv", index=False)
    (pool / "annotation_summary.json").write_text(json.dumps({"pool_id": "pool1", "model_hash": "model1",
                                                              "task": ML_TASK}))
    for name, sets in (("ana", [[0, 1], []]), ("ben", [[0], [3]]), ("cleo", [[0, 1, 2], [3]])):
        _annotator(pool, name, ["a", "b"], sets, names=ML_NAMES, task=ML_TASK)
    got = certification_labels(pool)
    assert got.values.tolist() == [["a", "0;1"], ["b", "3"]]


def test_overlap_is_seeded_and_queues_share_out_the_rest():
    from workbench.review import annotator_queue, overlap_items
    ids = [f"i{k}" for k in range(50)]
    a = overlap_items(ids, 0.1, seed=3)
    assert len(a) == 5 and a == overlap_items(ids, 0.1, seed=3) and a != overlap_items(ids, 0.1, seed=4)
    assert overlap_items(ids, 0.0, 0) == [] and len(overlap_items(ids, 0.001, 0)) == 1
    ranked = [f"i{k}" for k in range(49, 39, -1)]
    q = annotator_queue(a, ranked, taken={"i49", a[0]}, done_elsewhere={"i48"})
    assert q[:5] == a                                   # everyone's items first, whoever took them
    assert "i49" not in q and "i48" not in q and q[5:] == [i for i in ranked if i not in {"i49", "i48", *a}]


def test_export_keeps_the_certification_samples_labels(tmp_path):
    """annotations.csv of a pool certified on its own labels: status 'labelled' with the person's label in
    column 'label' (issue 24); the export keeps that label (label_source certification)."""
    images, _ = _tiny_pool()
    ids = [f"val:{i}" for i in range(4)]
    table = pd.DataFrame({"index": range(4), "id": ids, "predicted_label": [0, 1, 2, 0],
                          "predicted_class": [NAMES[c] for c in (0, 1, 2, 0)], "confidence": [0.9, 0.5, 0.6, 0.99],
                          "status": ["labelled", "needs-review", "labelled", "auto-accepted"],
                          "label": [2.0, np.nan, 1.0, np.nan]})
    s = ReviewSession(tmp_path / "d.jsonl", ["val:1"], dict(zip(ids, table["predicted_label"])), NAMES, "p", "m",
                      annotator="ana")
    s.label(0)
    out = export(s, table, tmp_path / "export", images=images[:4])
    df = pd.read_csv(out["csv"]).set_index("id")
    assert df["label"].tolist() == [2, 0, 1, 0]
    assert df["label_source"].tolist() == ["certification", "corrected", "certification", "auto-accepted"]
    with np.load(out["npz"], allow_pickle=False) as z:
        assert z["labels"].tolist() == [2, 0, 1, 0]


def test_a_cut_last_line_in_one_annotators_log(tmp_path):
    """A crash mid-write in ana's log: the pool's decisions still read (the cut line skipped), ana's next
    session reports and acknowledges it, ben's log is never touched."""
    from workbench.review import pool_decisions
    a = _annotator(tmp_path, "ana", ["x0", "x1", "x2"], [1, 2])
    b = _annotator(tmp_path, "ben", ["x0", "x1", "x2"], [0])
    ben_bytes = b.log_path.read_bytes()
    with open(a.log_path, "ab") as f:
        f.write(b'{"type":"decision","seq":3,"item":"x2","act')
    got = {n: {i: d.label for i, d in decs.items()} for n, decs in pool_decisions(tmp_path / "review").items()}
    assert got == {"ana": {"x0": 1, "x1": 2}, "ben": {"x0": 0}}
    with pytest.warns(ReviewLogWarning, match="cut short"):
        again = _annotator(tmp_path, "ana", ["x0", "x1", "x2"], [0])
    assert again.decisions["x2"].label == 0 and b.log_path.read_bytes() == ben_bytes
    assert json.loads(a.log_path.read_text().splitlines()[-2])["type"] == "recovered"

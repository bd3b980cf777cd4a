"""The review widget driven through its Python API (button clicks, key box, class box): on a real
annotated run (slow), and on seeded synthetic inputs for 30 classes and a multi-label task (shape and
control tests: the images are noise, the probabilities made up)."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError
from workbench.review import ReviewSession, export


@pytest.fixture()
def widget(pipeline_run, tmp_path):
    from workbench import widgets
    return widgets.review_run(pipeline_run["dir"], log=str(tmp_path / "log.jsonl"), headless=False, overlay=None)


@pytest.mark.slow
def test_review_widget_buttons_keys_undo_resume_export(widget, pipeline_run, tmp_path):
    from workbench import widgets
    w = widget
    s = w.session
    queue = w.inputs.queue
    assert len(queue) == len(s.queue) > 3
    assert w.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    first = queue.iloc[0]
    assert str(first["id"]) in w.info.value and str(first["predicted_class"])[:10] in w.info.value

    w.accept_button.click()  # no annotator yet: refused, nothing recorded
    assert "Annotator" in w.message.value and not s.decisions
    w.annotator.value = "tester"
    w.accept_button.click()
    w.class_buttons[2].click()
    w.keys.value = "s"          # shortcut: skip
    assert w.keys.value == ""   # the key box clears itself
    w.keys.value = "u"          # shortcut: undo the skip
    w.keys.value = "4"          # shortcut: class 4 (index 3)
    ids = queue["id"].astype(str).tolist()
    got = {k: (d.action, d.label, d.annotator) for k, d in s.decisions.items()}
    assert got == {ids[0]: ("accept", int(first["predicted_label"]), "tester"), ids[1]: ("label", 2, "tester"),
                   ids[2]: ("label", 3, "tester")}
    assert w.progress.value == 3 and "3/" in w.progress_label.value
    assert s.current == ids[3] and ids[3] in w.info.value

    # a new widget on the same log resumes at the same item with the same decisions
    again = widgets.review_run(pipeline_run["dir"], annotator="tester", log=str(tmp_path / "log.jsonl"),
                               headless=False, overlay=None)
    assert again.session.current == ids[3] and set(again.session.decisions) == set(ids[:3])

    w.export_dir = tmp_path / "export"
    out = w.export()
    df = pd.read_csv(out["csv"], dtype={"id": str}).set_index("id")
    assert df.loc[ids[1], "label"] == 2 and df.loc[ids[1], "label_source"] == "corrected"
    assert df.loc[ids[1], "annotator"] == "tester"
    coco = json.loads(open(out["coco"]).read())
    assert len(coco["categories"]) == 8 and len(coco["images"]) == 120
    assert {a["annotator"] for a in coco["annotations"]} >= {"tester"}
    with np.load(out["npz"], allow_pickle=False) as z:
        assert len(z["labels"]) == out["n_labelled"] >= 3


@pytest.mark.slow
def test_widget_with_overlay_and_done_queue(pipeline_run, tmp_path):
    from workbench import annotate, widgets
    inputs = annotate.open_review(pipeline_run["dir"], annotator="t", log=tmp_path / "l.jsonl")
    seen = []

    def overlay(image, cls):
        seen.append(cls)
        return image[..., 0].astype(float)

    w = widgets.ReviewWidget(inputs, overlay=overlay)
    assert seen and w.image.value[:4] == b"\x89PNG"
    for _ in range(len(inputs.session.queue)):
        w.keys.value = "a"
    assert inputs.session.done and w.accept_button.disabled and "Queue done" in w.info.value
    w.keys.value = "u"
    assert not inputs.session.done and not w.accept_button.disabled


@pytest.mark.slow
def test_gradcam_overlay_of_the_trained_model(pipeline_run, tmp_path):
    """overlay "auto": Grad-CAM of the run's own model by workbench.explain, beside the image."""
    from workbench import explain, widgets
    w = widgets.review_run(pipeline_run["dir"], annotator="t", log=str(tmp_path / "l.jsonl"), headless=False)
    assert w.overlay is not None and "Grad-CAM unavailable" not in w.message.value
    k = w._pos[w.session.current]
    image = w.inputs.model_input([k])[0]
    heat = w.overlay(image, 2)
    want = explain.gradcam(w.inputs.trained.model, image[None].astype("float32"), class_index=2)[0]
    np.testing.assert_allclose(heat, want, atol=1e-5)
    assert heat.shape == image.shape[:2] and 0 <= heat.min() and heat.max() <= 1
    plain = widgets._png(w.inputs.display([k])[0])
    assert len(w.image.value) > len(plain)          # image and heat map side by side


@pytest.mark.slow
def test_key_box_lost_clear_does_not_repeat_a_decision(pipeline_run, tmp_path):
    """The browser may not see the kernel's clear before the next key: "a" then "aa" is one more accept."""
    from workbench import annotate, widgets
    inputs = annotate.open_review(pipeline_run["dir"], annotator="t", log=tmp_path / "l.jsonl")
    w = widgets.ReviewWidget(inputs, overlay=None)
    s = inputs.session
    w.keys.value = "a"                       # first key: acted on, box cleared in the kernel
    assert len(s.decisions) == 1 and w.keys.value == ""
    w.keys.value = "aa"                      # clear lost in the browser: stale "a" + the new key
    assert len(s.decisions) == 2
    w.keys.value = "aas"                     # still stale: only the new "s" (skip) counts
    assert len(s.decisions) == 3 and [d.action for d in s.decisions.values()][-1] == "skip"
    w.keys.value = "a"                       # clear applied this time: the box holds only the new key
    assert len(s.decisions) == 4
    w.keys.value = "u"                       # a different key after a clear is new, too
    assert len(s.decisions) == 3


@pytest.mark.slow
def test_log_for_another_pool_is_refused(pipeline_run, tmp_path):
    from workbench import widgets
    from workbench.review import ReviewSession
    log = tmp_path / "foreign.jsonl"
    ReviewSession(log, ["a"], {"a": 0}, ["x"], "otherpool", "othermodel").accept()
    with pytest.raises(WorkbenchError, match="belongs to another pool or model"):
        widgets.review_run(pipeline_run["dir"], log=str(log), headless=False, overlay=None)


@pytest.mark.slow
def test_headless_static_summary(pipeline_run):
    from workbench import widgets
    html = widgets.review_run(pipeline_run["dir"], headless=True)._repr_html_()
    queue_csv = next((pipeline_run["dir"] / "annotate").glob("*/review_queue.csv"))  # RUN/annotate/<pool>/
    n = len(pd.read_csv(queue_csv))
    assert f"{n} image(s) need review" in html and "data:image/png;base64," in html


# ---------------------------------------------------------------------- any class count, multi-label
@dataclass
class FakeInputs:
    """What ReviewWidget reads (the ReviewInputs contract) over seeded synthetic arrays."""
    session: object
    ids: list
    probs: np.ndarray
    class_names: list
    task: str
    table: pd.DataFrame
    queue: pd.DataFrame
    run_dir: Path
    params: dict = field(default_factory=lambda: {"strategy": "margin"})
    images: np.ndarray = None
    seen: list = field(default_factory=list)

    def display(self, positions):
        self.seen.append(("display", list(positions)))
        return self.images[np.asarray(positions, dtype=int)]

    def model_input(self, positions):
        self.seen.append(("model_input", list(positions)))
        return self.images[np.asarray(positions, dtype=int)].astype(np.float32) / 255


def fake_inputs(tmp_path, k: int, task: str = "multi-class", n: int = 6, side: int = 20):
    rng = np.random.default_rng(k)
    names = [f"finding {c:02d}" for c in range(k)]
    ids = [f"img/{i}.png" for i in range(n)]
    if task.startswith("multi-label"):
        probs = rng.uniform(0, 1, (n, k))
        predicted = {i: np.flatnonzero(p > 0.5).tolist() for i, p in zip(ids, probs)}
    else:
        probs = rng.dirichlet(np.ones(k), n)
        predicted = {i: int(p.argmax()) for i, p in zip(ids, probs)}
    table = pd.DataFrame({"index": range(n), "split": "pool", "status": "needs-review", "id": ids,
                          "predicted_label": [int(p.argmax()) for p in probs],
                          "confidence": probs.max(1)})
    queue = pd.DataFrame({"rank": range(1, n + 1), "id": ids})
    session = ReviewSession(tmp_path / "log.jsonl", ids, predicted, names, "pool", "model", annotator="t", task=task)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return FakeInputs(session, ids, probs, names, task, table, queue, tmp_path, images=images)


def logged(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if '"decision"' in line]


def test_thirty_classes_pick_by_class_box_and_by_number(tmp_path):
    from workbench import widgets
    inputs = fake_inputs(tmp_path, 30)
    w = widgets.ReviewWidget(inputs, overlay=None)
    log = tmp_path / "log.jsonl"
    assert w.class_buttons == [] and len(w.class_box.options) == 30      # 30 buttons do not fit: the class box
    assert w.class_box.options[27] == "28 · finding 27" and w.class_box.options[4] == "05 · finding 04"
    assert inputs.seen == [("display", [0])] and w.image.value[:4] == b"\x89PNG"
    assert w.info.value.count("<tr>") == 3                                 # top-3 probabilities
    # the class box: picking an option from the list labels the item at once
    w.class_box.value = "28 · finding 27"
    assert w.class_box.value == "" and logged(log)[-1]["label"] == 27
    # typed text + Enter: part of one name only; part of several only asks for more
    w.class_box.value = "ding 1"                                           # finding 10..19
    w.class_box._handle_custom_msg({"event": "submit"}, [])
    assert len(inputs.session.decisions) == 1 and "part of 10 names" in w.message.value
    w.class_box.value = "finding 03"
    w.class_box._handle_custom_msg({"event": "submit"}, [])
    assert logged(log)[-1]["label"] == 3 and w.class_box.value == ""
    # the keys box: 2 waits (20-29 are classes too), Enter commits nothing, 8 completes 28
    w.keys.value = "2"
    w.keys._handle_custom_msg({"event": "submit"}, [])                     # Enter
    assert len(inputs.session.decisions) == 2 and "2…" in w.pending.value and "not a commit key" in w.message.value
    w.keys.value = "8"
    last = logged(log)[-1]
    assert last["label"] == 27 and last["item"] == "img/2.png" and w.pending.value == ""
    # a lost clear: the box still holds "2" when "7" is typed: the stale "2" is not appended twice
    w.keys.value = "2"
    w.keys.value = "27"
    assert logged(log)[-1]["label"] == 26 and logged(log)[-1]["item"] == "img/3.png"
    # complete at once when no digit can follow (4: 40 > 30); a space ends a short number (1 + space)
    w.keys.value = "4"
    assert logged(log)[-1]["label"] == 3
    w.keys.value = "1"
    w.keys.value = " "
    assert logged(log)[-1]["label"] == 0 and inputs.session.done
    w.keys.value = "u"
    w.keys.value = "u"
    # out of range; a letter drops a half-typed number
    w.keys.value = "3"
    w.keys.value = "5"
    assert len(inputs.session.decisions) == 4 and "no class 35" in w.message.value
    w.keys.value = "1"
    w.keys.value = "s"
    assert inputs.session.decisions["img/4.png"].action == "skip" and w.pending.value == ""
    assert {d.item: d.label for d in inputs.session.decisions.values()} == \
        {"img/0.png": 27, "img/1.png": 3, "img/2.png": 27, "img/3.png": 26, "img/4.png": None}


def test_up_to_twelve_classes_have_buttons_and_digit_keys(tmp_path):
    from workbench import widgets
    w = widgets.ReviewWidget(fake_inputs(tmp_path, 12), overlay=None)
    assert len(w.class_buttons) == 12 and w.class_buttons[11].description.startswith("12 ")
    assert w.class_buttons[0].description.startswith("01 ")
    w.class_buttons[11].click()
    w.keys.value = "1"                       # 12 classes: "1" waits (it may be the start of 10, 11, 12)
    assert len(w.session.decisions) == 1
    w.keys.value = "."
    w.keys.value = "0"
    w.keys.value = "3"                       # "03": class 3
    assert [d.label for d in w.session.decisions.values()] == [11, 0, 2]
    small = widgets.ReviewWidget(fake_inputs(tmp_path / "k3", 3), overlay=None)
    small.keys.value = "3"                   # 3 classes: a digit acts at once, as before
    assert [d.label for d in small.session.decisions.values()] == [2]
    assert small.class_buttons[2].description.startswith("3 · ")


def test_overlay_gets_the_model_input_and_a_failing_overlay_is_dropped(tmp_path):
    from workbench import widgets
    inputs = fake_inputs(tmp_path, 30, side=20)
    got = []

    def overlay(image, cls):
        got.append((image.dtype, image.shape, cls))
        return np.ones((7, 7))               # a coarse map: stretched over the displayed image

    w = widgets.ReviewWidget(inputs, overlay=overlay)
    assert got == [(np.float32, (20, 20, 3), int(inputs.probs[0].argmax()))]
    assert ("model_input", [0]) in inputs.seen
    wide = w.image.value
    plain = widgets._png(inputs.images[0])
    assert len(wide) > len(plain)            # image and overlay side by side

    def broken(image, cls):
        raise RuntimeError("no conv layer")
    w2 = widgets.ReviewWidget(fake_inputs(tmp_path / "b", 30), overlay=broken)
    assert w2.overlay is None and "Grad-CAM unavailable" in w2.message.value and w2.image.value[:4] == b"\x89PNG"


def test_multilabel_toggle_two_labels_save_and_export(tmp_path):
    from workbench import widgets
    task = "multi-label, binary-class"
    inputs = fake_inputs(tmp_path, 14, task=task)
    log = tmp_path / "log.jsonl"
    w = widgets.ReviewWidget(inputs, overlay=None)
    s = inputs.session
    assert len(w.label_toggles) == 14 and w.class_buttons == [] and w.save_button is w.accept_button
    assert w.save_button.description == "Save"
    pred0 = np.flatnonzero(inputs.probs[0] > 0.5).tolist()
    assert w.selected_labels() == pred0                                   # pre-set to the model's prediction
    assert f"{inputs.probs[0][0]:.2f}" in w.label_toggles[0].description  # each toggle shows its probability
    # item 0: clear the model's set, toggle two labels (a click and the class box), Save
    for c in pred0:
        w.label_toggles[c].value = False
    w.label_toggles[2].value = True
    w.class_box.value = w.class_box.options[9]                            # "10 · finding 09": toggles label 9
    assert w.selected_labels() == [2, 9] and not s.decisions              # toggling records nothing yet
    w.save_button.click()
    assert logged(log)[-1]["labels"] == [2, 9] and logged(log)[-1]["action"] == "label"
    # item 1: the toggles start again at the model's prediction; "a" saves it unchanged: an accept
    pred1 = np.flatnonzero(inputs.probs[1] > 0.5).tolist()
    assert w.selected_labels() == pred1
    w.keys.value = "a"
    assert logged(log)[-1]["labels"] == pred1 and logged(log)[-1]["action"] == "accept"
    # item 2: label numbers toggle (1 waits for 10-14; 14 is complete), Enter saves nothing, "a" saves
    before = set(w.selected_labels())
    w.keys.value = "1"
    w.keys.value = "4"
    assert set(w.selected_labels()) == before ^ {13} and len(s.decisions) == 2
    w.press("\n")
    assert len(s.decisions) == 2
    w.keys.value = "a"
    assert logged(log)[-1]["labels"] == sorted(before ^ {13}) and logged(log)[-1]["action"] == "label"
    assert s.progress()["decided"] == 3 and "3/6 decided" in w.progress_label.value
    # resume and export: the sets are in the CSV, the COCO file and labelled.npz
    again = ReviewSession(log, inputs.ids, s.predicted, inputs.class_names, "pool", "model", task=task)
    assert again.decisions["img/0.png"].labels == (2, 9)
    out = export(again, inputs.table, tmp_path / "export", images=inputs.display)
    df = pd.read_csv(out["csv"], dtype={"id": str, "labels": str}, keep_default_na=False).set_index("id")
    assert df.loc["img/0.png", "labels"] == "finding 02;finding 09" and df.loc["img/0.png", "label_source"] == "corrected"
    with np.load(out["npz"], allow_pickle=False) as z:
        assert z["labels"].shape == (3, 14) and np.flatnonzero(z["labels"][0]).tolist() == [2, 9]
    coco = json.loads(open(out["coco"]).read())
    assert sorted(a["category_id"] for a in coco["annotations"] if a["image_id"] == 0) == [2, 9]


def test_task_mismatch_between_session_and_inputs_is_refused(tmp_path):
    from workbench import widgets
    inputs = fake_inputs(tmp_path, 5)
    inputs.task = "multi-label, binary-class"
    with pytest.raises(WorkbenchError, match="disagree on the task"):
        widgets.ReviewWidget(inputs, overlay=None)


def test_static_review_for_100_classes_and_multilabel(tmp_path):
    from workbench import widgets
    for k, task in ((100, "multi-class"), (14, "multi-label, binary-class")):
        inputs = fake_inputs(tmp_path / str(k), k, task=task, n=5)
        html = widgets.StaticReview(inputs, n=3, log=tmp_path / "none.jsonl")._repr_html_()
        assert "5 image(s) need review" in html and "no review yet" in html and "data:image/png;base64," in html
        assert inputs.seen == [("display", [0, 1, 2])]
    p = np.array([0.1, 0.7, 0.2])
    assert widgets.queue_caption(p, ["a", "b", "c"]) == "b\n0.70 / c 0.20"
    assert widgets.queue_caption(np.array([0.9, 0.2, 0.6]), ["a", "b", "c"], "multi-label, binary-class") == "a;c\nmax 0.90"


def test_class_box_enter_never_names_another_class_than_the_full_text(tmp_path):
    """Enter may reach the kernel before the last characters typed (widgets docstring): whatever the kernel
    resolves from the beginning of a text, the whole text names the same class or none."""
    from workbench import widgets
    inputs = fake_inputs(tmp_path, 5)
    inputs.class_names[:] = ["mass", "massive lesion", "nodule", "effusion", "edema"]
    inputs.session.class_names[:] = inputs.class_names
    w = widgets.ReviewWidget(inputs, overlay=None)
    assert w.resolve("mass") is None and "part of 2" in w.message.value   # also part of "massive lesion"
    assert w.resolve("massive") == 1 and w.resolve("nod") == 2 and w.resolve("3") == 2   # "3 · nodule"
    for full in ("massive lesion", "effusion", "5 · edema"):
        whole = w.resolve(full)
        for i in range(1, len(full)):
            part = w.resolve(full[:i])
            assert part is None or part == whole, (full[:i], part, whole)


def test_class_box_enter_that_overtook_its_text_takes_the_rest_of_it(tmp_path, monkeypatch):
    """Enter can reach the kernel while it holds only "finding 0" of "finding 05" (the browser test saw
    this): the next text update, extending that text at once, is resolved as if Enter followed it; a
    late one, a text that does not extend it, or a second update never is."""
    from workbench import widgets
    inputs = fake_inputs(tmp_path, 30)
    w = widgets.ReviewWidget(inputs, overlay=None)
    log = tmp_path / "log.jsonl"
    w.class_box.value = "finding 0"                                        # finding 00..09: ambiguous
    w.class_box._handle_custom_msg({"event": "submit"}, [])
    assert not inputs.session.decisions and "part of 10 names" in w.message.value
    w.class_box.value = "finding 05"                                       # the rest of the text arrives
    assert logged(log)[-1]["label"] == 5 and w.class_box.value == ""
    w.class_box._handle_custom_msg({"event": "submit"}, [])                # Enter before any text arrived
    w.class_box.value = "finding 2"                                        # 20..29: still ambiguous
    w.class_box.value = "finding 27"                                       # a second update: no Enter for it
    assert len(inputs.session.decisions) == 1
    w.class_box.value = ""
    w.class_box.value = "finding 1"
    w.class_box._handle_custom_msg({"event": "submit"}, [])
    w.class_box.value = "nodule"                                           # does not extend "finding 1"
    assert len(inputs.session.decisions) == 1
    w.class_box.value = "finding 1"
    w.class_box._handle_custom_msg({"event": "submit"}, [])
    monkeypatch.setattr(widgets, "ENTER_CATCH_UP_S", -1.0)                  # the rest came too late
    w.class_box.value = "finding 12"
    assert len(inputs.session.decisions) == 1


# ---------------------------------------------------------------------- blind items (certification, overlap)
def _shown(w) -> list:
    """Everything the widget shows: the synced state of every widget in its tree (values, descriptions,
    tooltips, options, images, disabled and hidden flags), model references left out."""
    import ipywidgets as W
    out = []

    def walk(x):
        state = {k: v for k, v in x.get_state().items()
                 if not k.startswith("_") and k not in ("layout", "style", "children")}
        state["layout"] = {k: v for k, v in x.layout.get_state().items() if not k.startswith("_")} \
            if hasattr(x, "layout") else None
        out.append((type(x).__name__, state))
        for child in getattr(x, "children", ()):
            if isinstance(child, W.Widget):
                walk(child)

    walk(w.box)
    return out


def _blind_inputs(tmp_path, k, task, probs_seed, blind=True, n=4):
    """Two pools alike in all but the model's output (``probs_seed``)."""
    rng = np.random.default_rng(probs_seed)
    names = [f"finding {c:02d}" for c in range(k)]
    ids = [f"img/{i}.png" for i in range(n)]
    if task.startswith("multi-label"):
        probs = rng.uniform(0, 1, (n, k))
        predicted = {i: np.flatnonzero(p > 0.5).tolist() for i, p in zip(ids, probs)}
    else:
        probs = rng.dirichlet(np.ones(k) * 0.3, n)
        predicted = {i: int(p.argmax()) for i, p in zip(ids, probs)}
    table = pd.DataFrame({"index": range(n), "id": ids, "status": "needs-review",
                          "predicted_label": [int(p.argmax()) for p in probs], "confidence": probs.max(1)})
    queue = pd.DataFrame({"rank": range(1, n + 1), "id": ids})
    tmp_path.mkdir(parents=True, exist_ok=True)
    session = ReviewSession(tmp_path / "log.jsonl", ids, predicted, names, "pool", "model", task=task,
                            owner="ana", blind=frozenset(ids) if blind else frozenset())
    images = np.random.default_rng(99).integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)   # the same images
    return FakeInputs(session, ids, probs, names, task, table, queue, tmp_path, images=images)


@pytest.mark.parametrize("k,task", [(5, "multi-class"), (30, "multi-class"), (6, "multi-label, binary-class")])
def test_blind_queue_never_shows_the_model_prediction(tmp_path, k, task):
    """Blind items (the certification sample, the overlap): what the widget shows, through a whole queue,
    is identical for two models that predict differently; no overlay is drawn, Accept is refused and the
    log records no prediction. The same widgets without blindness differ (the check can fail)."""
    from workbench import widgets
    calls = []

    def overlay(image, cls):
        calls.append(cls)
        return image[..., 0].astype(float)

    views = []
    for seed in (1, 2):
        inputs = _blind_inputs(tmp_path / f"m{seed}", k, task, seed)
        w = widgets.ReviewWidget(inputs, overlay=overlay)
        seen = [_shown(w)]
        if task.startswith("multi-label"):
            assert w.selected_labels() == []                   # toggles start off, not at the model's set
            w.keys.value = "a"                                 # Save: the set shown (none present), a label
            assert inputs.session.decisions["img/0.png"].action == "label"
            w.label_toggles[1].value = True
            w.save_button.click()
            seen.append(_shown(w))
            w.label_toggles[0].value = True
            w.save_button.click()
        else:
            w.keys.value = "a"                                 # accept: refused on a blind item
            assert not inputs.session.decisions and "blind" in w.message.value
            seen.append(_shown(w))
            assert w.accept_button.layout.display == "none" and w.accept_button.disabled
            w.keys.value = "2"
            w.class_box.value = w.class_box.options[0]
        seen.append(_shown(w))
        w.keys.value = "u"
        seen.append(_shown(w))
        views.append(seen)
        recs = logged(tmp_path / f"m{seed}" / "log.jsonl")
        assert recs and all(r["predicted"] is None and r["blind"] is True for r in recs)
        assert all(r["annotator"] == "ana" for r in recs)
        probs_text = {f"{p:.2f}" for p in inputs.probs.reshape(-1)} | {f"{p:.3f}" for p in inputs.probs.reshape(-1)}
        text = json.dumps([st for view in seen for _, st in view], default=str)
        assert not any(n in w.info.value for n in inputs.class_names)   # the item's text names no class
        assert not any(f">{t}<" in text or f" {t}" in text for t in probs_text)
    assert calls == []                                         # no Grad-CAM of a blind item
    assert views[0] == views[1]

    a = widgets.ReviewWidget(_blind_inputs(tmp_path / "s1", k, task, 1, blind=False), overlay=None)
    b = widgets.ReviewWidget(_blind_inputs(tmp_path / "s2", k, task, 2, blind=False), overlay=None)
    assert _shown(a) != _shown(b)                              # shown with the model: the views differ


def test_blind_session_holds_no_prediction_and_refuses_accept(tmp_path):
    s = ReviewSession(tmp_path / "l.jsonl", ["x", "y"], {"x": 1, "y": 2}, ["a", "b", "c"], "p", "m",
                      blind=frozenset({"x"}), owner="ben")
    assert "x" not in s.predicted and s.predicted == {"y": 2}
    with pytest.raises(WorkbenchError, match="blind"):
        s.accept()
    d = s.label(2)
    assert d.blind and d.predicted is None and s.progress()["corrected"] == 0
    assert s.accept().label == 2 and not s.decisions["y"].blind          # y is shown with the model's label
    s.annotator = "eve"
    with pytest.raises(WorkbenchError, match="log of 'ben'"):
        s.undo()
    header = json.loads((tmp_path / "l.jsonl").read_text().splitlines()[0])
    assert header["annotator"] == "ben"
    with pytest.raises(WorkbenchError, match="log of annotator 'ben', not of 'eve'"):
        ReviewSession(tmp_path / "l.jsonl", ["x"], {"x": 1}, ["a", "b", "c"], "p", "m", owner="eve")


@pytest.fixture()
def pool_copy(pipeline_run, tmp_path):
    """A copy of the pipeline's run (its trained model and its annotated test pool): the pool directory."""
    import shutil

    from workbench import runs
    run = tmp_path / "run"
    shutil.copytree(pipeline_run["dir"], run)
    return runs.pool_dirs(run)[0]


@pytest.mark.slow
def test_certification_queue_blind_in_order_two_annotators(pool_copy):
    """queue="certification": certification_queue.csv in its order, every item blind (no prediction, no
    probabilities, no overlay, no Accept), in each annotator's own log; one annotator's review leaves the
    other's log untouched; certification_labels gives their consensus."""
    from workbench import annotate, widgets
    from workbench.review import certification_labels
    table = pd.read_csv(pool_copy / "annotations.csv", dtype={"id": str})
    cert = table["id"].sample(6, random_state=3).tolist()
    pd.DataFrame({"id": cert}).to_csv(pool_copy / "certification_queue.csv", index=False)
    with pytest.raises(WorkbenchError, match="not one of review, certification"):
        annotate.review_inputs(pool_copy, queue="audit")
    predicted = dict(zip(table["id"], table["predicted_class"]))
    logs = {}
    for name, keys in (("ana", "123456"), ("ben", "124456")):
        w = widgets.review_run(pool_copy, annotator=name, queue="certification", headless=False)
        assert w.session.queue == cert and w.overlay is None and w.annotator.value == name
        assert w.session.predicted.keys().isdisjoint(cert)               # the session holds no prediction
        for key in keys:
            item = w.session.current
            assert "<table>" not in w.info.value and predicted[item] not in w.info.value and "blind" in w.info.value
            assert w.accept_button.layout.display == "none"
            w.keys.value = "a"                                           # refused: nothing recorded
            w.keys.value = key
            assert w.session.decisions[item].label == int(key) - 1
        assert w.session.done
        logs[name] = w.session.log_path
        assert logs[name] == pool_copy / "review" / "annotators" / f"{name}.jsonl"
        if name == "ana":
            ana_bytes = logs["ana"].read_bytes()
    assert logs["ana"].read_bytes() == ana_bytes
    recs = [json.loads(line) for line in logs["ben"].read_text().splitlines()[1:]]
    assert all(r["blind"] and r["predicted"] is None and r["annotator"] == "ben" for r in recs if r["type"] == "decision")
    got = certification_labels(pool_copy)
    assert got["id"].tolist() == cert and got.attrs["annotators"] == ["ana", "ben"]
    agree = got["label"].tolist()
    assert [agree[i] for i in (0, 1, 3, 4, 5)] == [0, 1, 3, 4, 5] and got.attrs["tied"] == [cert[2]]
    # the same items in the ranked review queue stay blind there too
    inputs = annotate.open_review(pool_copy, annotator="cleo")
    blind_in_queue = [i for i in inputs.session.queue if inputs.session.is_blind(i)]
    assert set(blind_in_queue) == set(cert) & set(inputs.session.queue)


@pytest.mark.slow
def test_widget_asks_for_a_name_then_opens_that_annotators_log(pool_copy):
    """Opened without a name (the notebook's default) the widget records nothing until a name is given;
    each name then gets its own log and queue, and a second annotator's queue leaves out what the first
    labelled (the ranked queue is shared out)."""
    from workbench import widgets
    w = widgets.review_run(pool_copy, headless=False, overlay=None)
    assert w.session is None and w.accept_button.disabled and "Type your name" in w.info.value
    w.keys.value = "1"
    assert not (pool_copy / "review").exists()
    w.annotator.value = "ana"
    first = w.session.queue[:2]
    w.keys.value = "a"
    w.keys.value = "2"
    assert (pool_copy / "review" / "annotators" / "ana.jsonl").is_file()
    w.annotator.value = "ben"                                            # another annotator takes over the widget
    assert w.session.owner == "ben" and not w.session.decisions
    assert w.session.queue[:1] != first[:1] and set(first).isdisjoint(w.session.queue)
    w.keys.value = "3"
    w.annotator.value = "ana"                                            # ana again: resumes her own log
    assert list(w.session.decisions) == first and w.session.position == 2

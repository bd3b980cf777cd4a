"""The review widget driven through its Python API (button clicks, key box) on a real annotated run."""

import json

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError

pytestmark = pytest.mark.slow


@pytest.fixture()
def widget(pipeline_run, tmp_path):
    from workbench import widgets
    return widgets.review_run(pipeline_run["dir"], log=str(tmp_path / "log.jsonl"), headless=False, overlay=None)


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


def test_log_for_another_pool_is_refused(pipeline_run, tmp_path):
    from workbench import widgets
    from workbench.review import ReviewSession
    log = tmp_path / "foreign.jsonl"
    ReviewSession(log, ["a"], {"a": 0}, ["x"], "otherpool", "othermodel").accept()
    with pytest.raises(WorkbenchError, match="belongs to another pool or model"):
        widgets.review_run(pipeline_run["dir"], log=str(log), headless=False, overlay=None)


def test_headless_static_summary(pipeline_run):
    from workbench import widgets
    html = widgets.review_run(pipeline_run["dir"], headless=True)._repr_html_()
    n = len(pd.read_csv(pipeline_run["dir"] / "review_queue.csv"))
    assert f"{n} image(s) need review" in html and "data:image/png;base64," in html

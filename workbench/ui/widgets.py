"""ipywidgets wiring only: the review widget over ``workbench.review.ReviewSession``.

All review logic (queue, durable decisions log, undo, resume, export) lives in ``workbench.review``
and ``workbench.annotate``; this module draws it and turns clicks and keys into session calls.

Any number of classes. Classes are numbered from 1 on screen (the buttons, the class box's options,
the probability table), so what the reviewer types is what they see; the log records the 0-based
class index (typing ``28`` records label 27).

* **Class box** (a searchable ``Combobox`` of "number · name"): type any part of a class name (or
  its number) and pick it from the list (the pick acts at once), or press Enter when what is typed
  names one class only (part of one "number · name" and of no other); otherwise the candidates are
  listed. A class labels the item (multi-label: toggles that label).
* **Class buttons**, one per class, only up to ``MAX_CLASS_BUTTONS`` (12) classes; beyond that the
  class box alone (a row of 100 buttons is not a control).
* **Keys box**: ipywidgets 8 has no key events of its own, so a small text box keeps the focus and
  each character typed is a shortcut: ``a`` accepts, ``s`` skips, ``u`` undoes. Digits type a class
  number, which takes effect as soon as it is complete: when it has as many digits as the class count
  (``05`` or ``28`` of 30 classes, ``007`` of 100), when no further digit could follow (``4`` of 30:
  40 > 30), or when a space ends it (``1␣`` is class 1 of 30). Up to 9 classes every digit is complete
  at once (``1``–``9``, as before). A half-typed number waits beside the box; a letter drops it.
* **Multi-label tasks** (``inputs.task`` "multi-label, …"): one toggle button per label showing the
  model's probability, pre-set to the model's prediction (probability > 0.5); the reviewer toggles
  (click, class box, or label numbers as above) and **Save** (key ``a``) records the set shown: left
  untouched, that accepts the model's set (action "accept"), otherwise it records the toggled set
  (action "label").

Enter is never a commit key. Its "submit" message is not throttled like the box's text updates
(ipywidgets sends a text update only after the previous one was acknowledged, and sends the latest
text then), so an Enter pressed quickly after ``2`` ``8`` can reach the kernel before the ``8``: acting
on it would record class 2. Everything that records a decision therefore travels in the text itself
(the class box's Enter resolves only text that names a single class, which the rest of the text can
no longer change to another class). Where the kernel holds too little of the class box's text when
Enter arrives ("finding 0" of "finding 05"), the next text update, if it extends that text within
``ENTER_CATCH_UP_S`` seconds, is resolved as if Enter followed it.

**Several annotators, blind items.** Opened under a name (``review_run(POOL, annotator=NAME)``, or a
name typed into *Annotator* and confirmed with Enter), the widget writes that annotator's own log and
walks their queue; typing another name switches to that annotator's log. An item labelled blind (the
blind overlap, the certification sample, ``queue="certification"``) is shown without anything of the
model: no prediction, no probabilities, no Grad-CAM overlay, no Accept (and ``a`` does nothing); label
toggles start all off; the progress line counts no corrections. What the widget shows of a blind item
is the same whatever the model predicted (tests/test_widgets.py checks this).

The buttons' tooltips name their key. Under papermill (``WORKBENCH_HEADLESS=1``) ``review_run``
returns a static summary instead (queue size, progress, the first items as a gallery).

What the widget reads from its ``inputs`` (``workbench.annotate.ReviewInputs``): ``session``, ``ids``
(pool item ids, pool order), ``probs`` (N, K), ``class_names``, ``task``, ``table``, ``queue``,
``params``, ``run_dir``, ``display(positions)`` (uint8 (n, H, W, C): what the reviewer sees) and
``model_input(positions)`` (what the model sees, for the Grad-CAM overlay). Nothing else: pools may
stream from disk.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from . import maps
from ..core.errors import WorkbenchError
from ..data.review import is_multilabel

MAX_CLASS_BUTTONS = 12   # more classes than this: the class box only
ENTER = "\n"
ENTER_CATCH_UP_S = 3.0   # class box: how long an Enter that overtook its text waits for the rest of it


def _png(image: np.ndarray, size: int = 224, overlay: np.ndarray | None = None) -> bytes:
    """Nearest-neighbour upscaled PNG of one uint8 image; with ``overlay`` (h, w in [0, 1], any size: it
    is stretched to the image) a heat map blended beside it."""
    import matplotlib
    from matplotlib.image import imsave
    img = image[..., 0] if image.shape[-1] == 1 else image
    rgb = np.stack([img] * 3, -1) if img.ndim == 2 else img
    k = max(1, size // max(rgb.shape[0], 1))
    big = np.repeat(np.repeat(rgb, k, 0), k, 1)
    if overlay is not None:
        heat = np.asarray(overlay, dtype=np.float64)
        heat = (heat - heat.min()) / (np.ptp(heat) + 1e-12)
        rows = np.arange(big.shape[0]) * heat.shape[0] // big.shape[0]
        cols = np.arange(big.shape[1]) * heat.shape[1] // big.shape[1]
        heat = heat[rows][:, cols]
        cm = (matplotlib.colormaps["jet"](heat)[..., :3] * 255)
        blend = (0.55 * big + 0.45 * cm).clip(0, 255).astype(np.uint8)
        big = np.concatenate([big, np.full((big.shape[0], 4, 3), 255, np.uint8), blend], axis=1)
    buf = io.BytesIO()
    imsave(buf, big.astype(np.uint8), format="png")
    return buf.getvalue()


def gradcam_overlay(model, layer: str = ""):
    """A function (model-input image (H, W, C), class) -> Grad-CAM heat map (H, W) in [0, 1] of ``model``
    (a loaded Keras model: the caller loads it once), computed by ``workbench.explain.gradcam``."""
    from ..model import explain

    def overlay(image: np.ndarray, cls: int) -> np.ndarray:
        x = np.asarray(image, dtype=np.float32)[None]
        return explain.gradcam(model, x, class_index=int(cls), layer=layer, batch_size=1)[0]

    return overlay


class ReviewWidget:
    """Image (+ Grad-CAM), top-k probabilities, Accept / class / Skip / Undo, class box, keys, progress,
    annotator; for a multi-label task, one toggle per label and Save. See the module docstring."""

    def __init__(self, inputs, top_k: int = 3, overlay=None, export_dir=None, open_session=None):
        """``open_session(name) -> session``: opens an annotator's own session when a name is typed (the
        widget may then start without a session: it asks for the name first)."""
        import ipywidgets as W
        self.inputs, self.session, self.open_session = inputs, inputs.session, open_session
        if self.session is None and open_session is None:
            raise WorkbenchError("open the review first (workbench.annotate.open_review)")
        self.top_k, self.overlay, self.export_dir = top_k, overlay, export_dir
        self.names = names = [str(n) for n in inputs.class_names]
        self.multilabel = is_multilabel(inputs.task)
        if self.session is not None and self.multilabel != bool(getattr(self.session, "multilabel", False)):
            raise WorkbenchError(f"the review session and its inputs disagree on the task ({inputs.task!r}): "
                                 "open the review again (workbench.annotate.open_review)")
        self._pos = {str(i): k for k, i in enumerate(inputs.ids)}
        self._digits = len(str(len(names)))   # a class number is complete at this many digits
        what = "label" if self.multilabel else "class"
        self.image = W.Image(format="png", layout=W.Layout(width="auto", height="240px"))
        self.info = W.HTML()
        self.message = W.HTML()
        self.pending = W.HTML()   # a class number typed in the keys box, not complete yet
        self.annotator = W.Text(value=self.session.annotator if self.session else "", description="Annotator",
                                placeholder="your name, then Enter", continuous_update=False)
        self.keys = W.Text(value="", description="Keys", continuous_update=True, placeholder=self._key_help(short=True))
        self.accept_button = W.Button(
            description="Save" if self.multilabel else "Accept", button_style="success",
            tooltip=("record the labels toggled on; untouched, that accepts the model's set" if self.multilabel
                     else "accept the model's label") + " (a)")
        self.skip_button = W.Button(description="Skip", tooltip="leave unlabelled, next item (s)")
        self.undo_button = W.Button(description="Undo", button_style="warning", tooltip="revert the last decision (u)")
        self.export_button = W.Button(description="Export", button_style="info",
                                      tooltip="write annotations.csv, COCO JSON and labelled.npz")
        self._options = [self._option(c) for c in range(len(names))]
        self._option_index = {o: c for c, o in enumerate(self._options)}
        self.class_box = W.Combobox(options=self._options, value="", description="Class" if not self.multilabel else "Label",
                                    placeholder=f"type part of a {what} name (or its number)", ensure_option=False,
                                    continuous_update=True, layout=W.Layout(width="320px"))
        self.class_buttons, self.label_toggles, self.save_button = [], [], None
        if self.multilabel:
            self.label_toggles = [W.ToggleButton(value=False, description=self._option(c, 16),
                                                 tooltip=f"{n} present? ({self._keys_for(c)})",
                                                 layout=W.Layout(width="auto"))
                                  for c, n in enumerate(names)]
            self.save_button = self.accept_button
            for t in self.label_toggles:
                t.observe(lambda ch, t=t: setattr(t, "icon", "check" if ch["new"] else ""), names="value")
        elif len(names) <= MAX_CLASS_BUTTONS:
            self.class_buttons = [W.Button(description=self._option(c, 18), layout=W.Layout(width="auto"),
                                           tooltip=f"label as {n} ({self._keys_for(c)})")
                                  for c, n in enumerate(names)]
        self.progress = W.IntProgress(min=0, max=max(len(self.session.queue) if self.session else 0, 1),
                                      description="Progress")
        self.progress_label = W.Label()
        self.accept_button.on_click(lambda _: self.save() if self.multilabel else self._act(lambda: self.session.accept()))
        self.skip_button.on_click(lambda _: self._act(lambda: self.session.skip()))
        self.undo_button.on_click(lambda _: self._undo())
        self.export_button.on_click(lambda _: self.export())
        for c, b in enumerate(self.class_buttons):
            b.on_click(lambda _, c=c: self.pick(c))
        self._last_keys = ""  # the key box's text as last received from the browser (see _on_keys)
        self._number = ""     # digits of a class number typed in the keys box, not complete yet
        self._shown = None    # the item the label toggles were last set for
        self._enter_at = None  # (class-box text, time) of an Enter that named no single class yet
        self.keys.observe(self._on_keys, names="value")
        self.keys.on_msg(self._on_keys_msg)
        self.class_box.observe(self._on_class_box, names="value")
        self.class_box.on_msg(self._on_class_box_msg)
        self.annotator.observe(self._on_annotator, names="value")
        actions = [self.accept_button, self.skip_button, self.undo_button, self.export_button]
        self.box = W.VBox([
            W.HBox([self.annotator, self.progress, self.progress_label]),
            W.HBox([self.image, self.info]),
            W.HBox([*actions, self.keys, self.pending]),
            W.HBox([self.class_box]),
            W.HBox(self.class_buttons or self.label_toggles, layout=W.Layout(flex_flow="row wrap")),
            self.message,
        ])
        for note in (self.session.notes if self.session else []):
            self._say(f"log recovered: {note}", "darkorange")
        self.refresh()

    # -------------------------------------------------------------- display
    def _ipython_display_(self):
        from IPython.display import display
        display(self.box)

    def _option(self, c: int, width: int = 60) -> str:
        """"28 · name": the class's number as typed in the keys box (zero-padded to the class count's digits)."""
        name = self.names[c]
        return f"{self._keys_for(c)} · {name if len(name) <= width else name[:width - 1] + '…'}"

    def _keys_for(self, c: int) -> str:
        """What to type in the keys box for class ``c`` (0-based)."""
        return f"{c + 1:0{self._digits}d}"

    def _key_help(self, short: bool = False) -> str:
        k = len(self.names)
        number = "1-9" if self._digits == 1 else f"{self._keys_for(0)}-{k} (or number + space)"
        if self.multilabel:
            return f"{number} toggle · a save · s skip · u undo"
        return f"a accept · {number} class · s skip · u undo"

    def _say(self, text: str, color: str = "black"):
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _names_of(self, labels) -> str:
        return ", ".join(self.names[c] for c in labels) if labels else "none present"

    def refresh(self):
        s = self.session
        controls = (self.accept_button, self.skip_button, self.class_box, *self.class_buttons, *self.label_toggles)
        if s is None:   # no annotator yet: the name chooses the log and the queue
            for b in (*controls, self.undo_button, self.export_button):
                b.disabled = True
            self.info.value = ("<b>Type your name in Annotator and press Enter.</b> Each annotator has their own "
                               "log and queue; nobody sees another annotator's labels.")
            self.progress_label.value = ""
            self.image.value = b""
            return
        self.annotator.disabled = False
        self.export_button.disabled = False
        p = s.progress()
        self.progress.max = max(p["total"], 1)
        self.progress.value = p["decided"]
        self.progress_label.value = (f"{p['decided']}/{p['total']} decided · {p['accept']} accepted · "
                                     f"{p['corrected']} corrected · {p['skip']} skipped")
        item = s.current
        done = item is None
        for b in controls:
            b.disabled = done
        self.undo_button.disabled = not s.decisions
        if done:
            self.info.value = "<b>Queue done.</b> Undo to change a decision, Export to write the labels."
            self.accept_button.layout.display = None
            self._shown = None
            return
        k = self._pos[item]
        if s.is_blind(item):
            self._show_blind(item, k)
            return
        self.accept_button.layout.display = None
        probs = np.asarray(self.inputs.probs[k], dtype=np.float64)
        order = np.argsort(-probs, kind="stable")[: self.top_k]
        pred = s.predicted[item]
        if self.multilabel:
            cam_class = int(np.argmax(probs))
            if self._shown != item:  # a new item: the toggles start at the model's prediction
                for c, t in enumerate(self.label_toggles):
                    t.value = c in pred
            for c, t in enumerate(self.label_toggles):
                t.description = f"{self._option(c, 16)} {probs[c]:.2f}"
            model = f"model: <b>{html.escape(self._names_of(pred))}</b> (probability &gt; 0.5)"
        else:
            cam_class = int(pred)
            model = f"model: <b>{html.escape(self._option(int(pred)))}</b>"
        self._shown = item
        overlay = None
        if self.overlay is not None:
            try:
                overlay = self.overlay(np.asarray(self.inputs.model_input([k]))[0], cam_class)
            except Exception as e:  # an optional explanation must never block the review
                self.overlay = None
                self._say(f"Grad-CAM unavailable ({type(e).__name__}: {e}); reviewing without it", "darkorange")
        self.image.value = _png(np.asarray(self.inputs.display([k]))[0], overlay=overlay)
        rows = "".join(f"<tr><td>{html.escape(self._option(int(c)))}</td><td>{probs[c]:.3f}</td></tr>"
                       for c in order)
        self.info.value = (f"<b>{html.escape(item)}</b> (queue #{s.position + 1})<br>{model}<br>"
                           f"<table>{rows}</table>")

    def _show_blind(self, item: str, k: int):
        """A blind item: the image alone (no overlay), no prediction, no probabilities, no Accept; the
        label toggles start all off. Nothing here depends on the model's output."""
        s = self.session
        if self.multilabel:
            if self._shown != item:
                for t in self.label_toggles:
                    t.value = False
            for c, t in enumerate(self.label_toggles):
                t.description = self._option(c, 16)
        else:
            self.accept_button.disabled = True
            self.accept_button.layout.display = "none"
        self._shown = item
        self.image.value = _png(np.asarray(self.inputs.display([k]))[0])
        what = "toggle the labels present and Save" if self.multilabel else "pick its class"
        self.info.value = (f"<b>{html.escape(item)}</b> (queue #{s.position + 1})<br><b>blind</b>: labelled without "
                           f"the model's opinion; {what}")

    # -------------------------------------------------------------- actions
    def _on_annotator(self, change):
        name = change["new"].strip()
        s = self.session
        if s is not None and not getattr(s, "owner", ""):   # a log given by path: the name is recorded per decision
            s.annotator = name
            return
        if s is not None and name == s.owner:
            return
        if self.open_session is None or not name:
            if s is not None:
                self._say(f"this is the review log of {s.owner}: open the review under your own name", "darkred")
                self.annotator.value = s.owner
            return
        try:
            self.session = self.open_session(name)
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return
        self._pos = {str(i): k for k, i in enumerate(self.inputs.ids)}
        self._shown = None
        self._say(f"{self.session.annotator}: your own log and queue ({len(self.session.queue)} item(s), "
                  f"{self.session.progress()['decided']} decided)", "green")
        for note in self.session.notes:
            self._say(f"log recovered: {note}", "darkorange")
        self.refresh()

    def _act(self, fn):
        if self.session is None or not self.session.annotator:
            self._say("type your name in Annotator first: every decision records who made it", "darkred")
            return None
        try:
            d = fn()
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return None
        if d.labels is not None:
            what = f" {self._names_of(d.labels)}"
        else:
            what = f" {self.names[d.label]}" if d.label is not None else ""
        self._say(f"saved: {d.item} → {d.action}{what}", "green")
        self.refresh()
        return d

    def _undo(self):
        if self.session is None:
            return
        try:
            d = self.session.undo()
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return
        self._say(f"undone: {d.item} ({d.action})" if d else "nothing to undo")
        self.refresh()

    def pick(self, c: int):
        """Class ``c`` (0-based) chosen: label the item with it, or (multi-label) toggle that label."""
        if self.session is None:
            self._say("type your name in Annotator first (then Enter)", "darkred")
            return None
        if self.session.done:
            self._say("the queue is done: undo to change a decision")
            return None
        if self.multilabel:
            t = self.label_toggles[c]
            t.value = not t.value
            self._say(f"{self.names[c]}: {'present' if t.value else 'absent'} (Save, key a, records the set)")
            return None
        return self._act(lambda: self.session.label(c))

    def selected_labels(self) -> list[int]:
        """Multi-label: the labels toggled on now."""
        return [c for c, t in enumerate(self.label_toggles) if t.value]

    def save(self):
        """Multi-label: record the set toggled on for the current item: "accept" when it is the model's
        set, else "label" with the set."""
        if self.session is None:
            return self._act(None)
        if not self.multilabel:
            return self._act(self.session.accept)
        chosen = self.selected_labels()
        item = self.session.current
        if item is not None and not self.session.is_blind(item) and set(chosen) == set(self.session.predicted[item]):
            return self._act(self.session.accept)
        return self._act(lambda: self.session.label(chosen))

    def _set_number(self, digits: str):
        self._number = digits
        self.pending.value = (f"<span style='color:#555'>{'label' if self.multilabel else 'class'} "
                              f"{html.escape(digits)}… (next digit, or space)</span>" if digits else "")

    def _commit_number(self):
        digits = self._number
        self._set_number("")
        n = int(digits)
        if not 1 <= n <= len(self.names):
            self._say(f"no {'label' if self.multilabel else 'class'} {digits}: numbers run 1-{len(self.names)}",
                      "darkred")
            return None
        return self.pick(n - 1)

    def press(self, key: str):
        """Handle one character typed into the keys box (see the module docstring); ``"\\n"`` is Enter."""
        if key in (ENTER, "\r"):
            if self._number:
                self._say(f"{self._number}: finish the number with a space, or type all {self._digits} digits "
                          f"({int(self._number):0{self._digits}d}); Enter is not a commit key", "darkorange")
            return None
        key = key.lower()
        if len(key) == 1 and "0" <= key <= "9":
            self._set_number(self._number + key)
            n = int(self._number)
            if len(self._number) >= self._digits or n * 10 > len(self.names):
                return self._commit_number()
            return None
        if key in (" ", "."):
            return self._commit_number() if self._number else None
        if self._number:
            self._say(f"number {self._number} dropped (not finished before {key!r})", "darkorange")
            self._set_number("")
        if key == "a":
            self.accept_button.click()
        elif key == "s":
            self.skip_button.click()
        elif key == "u":
            self.undo_button.click()
        else:
            self._say(f"unknown key {key!r}: {self._key_help()}")
        return None

    def _on_keys(self, change):
        """Act on the keys typed since the last message, then clear the box.

        The clear can lose a race with the browser: ipywidgets 8 drops a kernel update for a field
        whose own change is still awaiting its echo, and a reviewer may type the next key before
        the clear arrives. The box then still holds what was already acted on ("a" → "aa"), and
        acting on the whole text would record a decision twice. The browser sends one message per
        keystroke, so its text is either what the kernel last received plus new keys (clear lost)
        or only new keys (clear applied): a strictly longer text that starts with the last one
        received is the stale case, and only its tail is new.

        The digits of a class number are "acted on" by appending them to the number held in the
        kernel (``_number``), so a stale digit is not appended twice either; the box is cleared after
        every key as before. Enter arrives as a separate "submit" message (``_on_keys_msg``) that may
        overtake the last text update, which is why it commits nothing (module docstring).
        """
        text = change["new"]
        if not text:  # our own clear, or the reviewer emptied the box
            return
        last, self._last_keys = self._last_keys, text
        fresh = text[len(last):] if last and len(text) > len(last) and text.startswith(last) else text
        self.keys.value = ""
        for ch in fresh:
            self.press(ch)

    def _on_keys_msg(self, _widget, content, _buffers):
        if isinstance(content, dict) and content.get("event") == "submit":
            self.press(ENTER)

    # -------------------------------------------------------------- class box
    def resolve(self, text: str) -> int | None:
        """The class (0-based) a class-box text names: an option of the list, or text that is part of one
        class's "number · name" (any case) and of no other; None (with a message) otherwise.

        The kernel may not have the box's latest text yet when Enter arrives (module docstring): what it
        has is then the beginning of it, and a class named by the beginning alone is the only one the whole
        text can still name. So a name that is also part of another ("mass", "massive lesion") is picked
        from the list."""
        t = text.strip()
        if t in self._option_index:
            return self._option_index[t]
        low = t.lower()
        hits = [c for c, n in enumerate(self.names) if low and low in f"{self._keys_for(c)} · {n}".lower()]
        if len(hits) == 1:
            return hits[0]
        if hits:
            shown = ", ".join(self.names[c] for c in hits[:6]) + (" …" if len(hits) > 6 else "")
            self._say(f"{t!r} is part of {len(hits)} names ({shown}): type more, or pick one from the list",
                      "darkorange")
        else:
            self._say(f"no class name contains {t!r}", "darkred")
        return None

    def _on_class_box(self, change):
        """An option picked from the list (the text is exactly an option): act at once. Other text is
        still being typed: wait for Enter (``_on_class_box_msg``), or, where Enter overtook the text
        (``_enter_at``), resolve the text that was behind it."""
        new, enter, self._enter_at = change["new"], self._enter_at, None
        c = self._option_index.get(new)
        if c is None and enter is not None and new.startswith(enter[0]) and len(new) > len(enter[0]) \
                and time.monotonic() - enter[1] <= ENTER_CATCH_UP_S:
            c = self.resolve(new)
        if c is not None:
            self.class_box.value = ""
            self.pick(c)

    def _on_class_box_msg(self, _widget, content, _buffers):
        """Enter in the class box. The kernel may hold only the beginning of the text typed (module
        docstring): where that names no single class yet, the next text update (if it comes at once
        and extends it) is resolved as if Enter followed it."""
        if not (isinstance(content, dict) and content.get("event") == "submit"):
            return
        text = self.class_box.value
        if text in self._option_index:  # an option was acted on when it arrived
            return
        c = self.resolve(text) if text.strip() else None  # None: a message names the candidates
        if c is None:
            self._enter_at = (text, time.monotonic())
            return
        self.class_box.value = ""
        self.pick(c)

    def export(self):
        from ..stages.annotate import export_review
        if self.session is None:
            self._say("type your name in Annotator first (then Enter)", "darkred")
            return None
        try:
            out = export_review(self.inputs, self.export_dir)
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return None
        others = len(out.get("annotators") or [])
        note = (f" (the consensus of {others} annotators: in a blind study, open it once the reading is done)"
                if others > 1 else "")
        self._say(f"exported {out['n_labelled']} labels to {Path(out['csv']).parent}{note}", "green")
        self.export_dir = None  # the next export goes to a new directory
        return out


class StaticReview:
    """What a headless report shows instead of the widget: queue size, progress so far, first items."""

    def __init__(self, inputs, n: int = 16, log: Path | None = None):
        from ..stages.annotate import default_log
        from ..data.review import read_log
        from ..core.viz import image_grid, to_png
        self.inputs = inputs
        q = inputs.queue.head(n)
        pos = {str(i): k for k, i in enumerate(inputs.ids)}
        idx = np.array([pos[str(i)] for i in q["id"]], dtype=int)
        ranks = q["rank"].tolist() if "rank" in q else list(range(1, len(q) + 1))
        blind = getattr(inputs, "blind", frozenset())
        caps = [f"{r}. blind" if str(i) in blind else
                f"{r}. {queue_caption(np.asarray(inputs.probs[k], dtype=np.float64), inputs.class_names, inputs.task)}"
                for r, k, i in zip(ranks, idx, q["id"])]
        images = np.asarray(inputs.display(idx)) if len(idx) else np.zeros((0, 1, 1, 1), np.uint8)
        fig = image_grid(images, caps, ncols=8, cell=1.5,
                         title=f"Review queue: first {len(q)} of {len(inputs.queue)} "
                               f"(strategy {inputs.params.get('strategy')})")
        self.png = to_png(fig)
        self.decided, self.annotators = None, 0
        if log:
            log = Path(log)
            if log.is_file():
                contents = read_log(log)
                self.decided = sum(1 for r in contents.records if r.get("type") == "decision") - \
                    sum(1 for r in contents.records if r.get("type") == "undo")
        else:
            from ..data.review import pool_decisions
            log = default_log(inputs.run_dir).parent
            by_name = pool_decisions(log) if log.is_dir() else {}
            if by_name:
                self.decided, self.annotators = sum(len(d) for d in by_name.values()), len(by_name)
        self.log = log

    def _repr_html_(self) -> str:
        n = len(self.inputs.queue)
        n_auto = int((self.inputs.table["status"] == "auto-accepted").sum())
        who = f" by {self.annotators} annotator(s)" if self.annotators else ""
        done = (f"{self.decided} decisions{who} in {html.escape(str(self.log))}" if self.decided is not None
                else "no review yet")
        img = base64.b64encode(self.png).decode()
        return (f"<div><p><b>Review (static view: the report was run headless).</b> {n} image(s) need review, "
                f"{n_auto} auto-accepted of {len(self.inputs.table)}; {done}. Open the notebook in JupyterLab "
                f"to review.</p><img src='data:image/png;base64,{img}'/></div>")


def queue_caption(probs: np.ndarray, class_names: list[str], task: str = "") -> str:
    """Two short caption lines for one queue item: the model's top two classes and their probabilities,
    or (multi-label) the labels predicted present and the highest probability."""
    if is_multilabel(task):
        present = [str(class_names[c])[:10] for c in np.flatnonzero(probs > 0.5)]
        text = ";".join(present[:2]) + (f" +{len(present) - 2}" if len(present) > 2 else "") if present else "none"
        return f"{text}\nmax {probs.max():.2f}"
    order = np.argsort(-probs, kind="stable")
    first = f"{str(class_names[order[0]])[:12]}\n{probs[order[0]]:.2f}"
    if len(order) < 2:
        return first
    return f"{first} / {str(class_names[order[1]])[:8]} {probs[order[1]]:.2f}"


def review_run(run_dir, annotator: str = "", log: str = "", headless: bool | None = None, overlay="auto",
               n_static: int = 16, queue: str = "review"):
    """The review widget of an annotated pool (resumes its log); a static summary when headless.

    ``annotator`` NAME: NAME's own log and queue (``workbench.annotate.open_review``); empty: the widget
    asks for the name first. ``log`` PATH: that log, the whole queue (the name is recorded per decision).
    ``queue`` "certification": the pool's certification sample (``certification_queue.csv``), in its order,
    blind: no prediction, no probabilities, no Grad-CAM, no Accept.
    ``overlay`` "auto": Grad-CAM of the trained run's model (``inputs.trained.model``, loaded once); None:
    no overlay; or a function (model-input image, class) -> heat map (never drawn on a blind item)."""
    from ..stages.annotate import open_session, review_inputs
    headless = _progress.headless() if headless is None else headless
    if headless:
        return StaticReview(review_inputs(run_dir, queue=queue), n=n_static, log=Path(log) if log else None)
    inputs = review_inputs(run_dir, queue=queue)
    factory = None
    if log:
        open_session(inputs, annotator=annotator, log=log)
    else:
        def factory(name):
            return open_session(inputs, annotator=name).session
        if annotator:
            factory(annotator)
    note = None
    if overlay == "auto" and queue != "review":
        overlay = None   # every item of the certification and adjudication queues is blind: no explanation
    if overlay == "auto":
        try:
            overlay = gradcam_overlay(inputs.trained.model)
        except (WorkbenchError, AttributeError) as e:  # an optional explanation must never block the review
            overlay, note = None, f"Grad-CAM unavailable ({e}); reviewing without it"
    w = ReviewWidget(inputs, overlay=overlay, open_session=factory)
    if note:
        w._say(note, "darkorange")
    return w


# ------------------------------------------------------------------------------------ the embedding map
class EmbeddingMap:
    """The interactive map: a plotly ``FigureWidget`` with one WebGL scatter (``Scattergl``) of every point
    and a colour menu; a lasso/box selection or a click shows the selected points' images (a seeded sample of
    at most ``max_thumbnails``: the points are never subsampled, the thumbnails are). ``select(points)`` does
    what a selection in the browser does. Display it as the cell's value."""

    def __init__(self, data, colour: str = "", max_thumbnails: int = maps.MAX_THUMBNAILS, seed: int = 0,
                 height: int = 520):
        import ipywidgets as W
        import plotly.graph_objects as go
        self.data, self.max_thumbnails, self.seed = data, int(max_thumbnails), seed
        self.selected = np.zeros(0, dtype=int)
        self.shown = np.zeros(0, dtype=int)
        colour = colour or ("label" if "label" in data.colourings else next(iter(data.colourings)))
        self.menu = W.Dropdown(options=list(data.colourings), value=colour, description="colour by")
        self.info = W.HTML("Select points (lasso or box in the toolbar, or click one) to see their images.")
        self.info.add_class("wb-map-info")
        self.thumbs = W.Image(format="png", layout=W.Layout(max_width="520px", display="none"))
        self.thumbs.add_class("wb-map-thumbs")
        self.figure = go.FigureWidget(layout=dict(
            height=height, width=620, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10),
            title=dict(text=f"{data.title}: {len(data)} points ({data.method})", font=dict(size=13)),
            xaxis=dict(visible=False), yaxis=dict(visible=False), legend=dict(itemsizing="constant"),
            hovermode="closest"))
        self.figure.add_scattergl(x=data.xy[:, 0], y=data.xy[:, 1], mode="markers", name="points",
                                  showlegend=False, customdata=np.arange(len(data)),
                                  hovertemplate="point %{customdata}<extra></extra>",
                                  marker=dict(size=float(np.clip(2400 / max(len(data), 1) ** 0.75, 2, 8)),
                                              opacity=0.8))
        self.points = self.figure.data[0]
        self.points.on_selection(self._on_selection)
        self.points.on_click(self._on_selection)
        self.recolour(colour)
        self.menu.observe(lambda ch: self.recolour(ch["new"]), names="value")
        self.widget = W.VBox([W.HBox([self.menu, self.info]), W.HBox([self.figure, self.thumbs])])
        self.widget.add_class("wb-embedding-map")

    # ------------------------------------------------------------------ colours
    def recolour(self, name: str) -> None:
        values = self.data.colourings[name]
        with self.figure.batch_update():
            self.figure.data = self.figure.data[:1]
            if maps.is_continuous(values):
                v = np.asarray(values, dtype=float)
                self.points.marker.update(color=np.nan_to_num(v, nan=np.nanmin(v) if np.isfinite(v).any() else 0.0),
                                          colorscale="Viridis", showscale=True, cmin=None, cmax=None,
                                          colorbar=dict(title=dict(text=name), thickness=12))
            else:
                codes, cats = maps.categories(values)
                pal = maps.palette(len(cats))
                k = len(cats)
                scale = []
                for c in range(k):      # a stepped colour scale: code c ↦ its palette colour
                    scale += [[c / k, pal[c]], [(c + 1) / k, pal[c]]]
                self.points.marker.update(color=codes.astype(np.float32), colorscale=scale, cmin=-0.5,
                                          cmax=k - 0.5, showscale=False)
                for c, cat in enumerate(cats):     # legend entries only (no points)
                    self.figure.add_scattergl(x=[None], y=[None], mode="markers", name=str(cat)[:24],
                                              marker=dict(color=pal[c], size=8), hoverinfo="skip")
        self.colour = name

    # ------------------------------------------------------------------ selection
    def _on_selection(self, trace, points, selector=None) -> None:
        self.select(points.point_inds)

    def select(self, points) -> None:
        """Show the images of these points (indices into the map)."""
        pts = np.unique(np.asarray(points, dtype=int).reshape(-1))
        pts = pts[(pts >= 0) & (pts < len(self.data))]
        self.selected = pts
        if not len(pts):
            self.shown = pts
            self.info.value = "nothing selected"
            self.thumbs.layout.display = "none"
            return
        rng = np.random.default_rng(self.seed)
        shown = pts if len(pts) <= self.max_thumbnails else np.sort(rng.choice(pts, self.max_thumbnails, replace=False))
        self.shown = shown
        images, caps = self.data.thumbnails(shown)
        by = self.data.colourings.get("split")
        counts = ", ".join(f"{s} {n}" for s, n in zip(*np.unique(by[pts].astype(str), return_counts=True))) \
            if by is not None else ""
        self.info.value = (f"<b>{len(pts)} selected</b> ({counts}); showing "
                           f"{len(shown) if len(shown) < len(pts) else 'all'}"
                           f"{' (a random sample)' if len(shown) < len(pts) else ''}")
        self.thumbs.value = maps.thumbnail_png(images, caps)
        self.thumbs.layout.display = ""

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def show_map(data, colour: str = "", seed: int = 0):
    """An embedding map (workbench.maps.MapData): the interactive widget in JupyterLab, its static face (a
    matplotlib figure) when headless."""
    from ..core.progress import headless
    if headless():
        return maps.map_figure(data, tuple(c for c in (colour or "label", "split") if c in data.colourings))
    return EmbeddingMap(data, colour=colour, seed=seed)


def explore_map(run_dir="", method: str = "auto", seed: int = 0):
    """The explore notebook's map: a run's train/val/test embeddings (``run_dir`` empty: the latest run with
    predictions; "none": skip)."""
    from IPython.display import HTML
    if str(run_dir).lower() == "none":
        return HTML("<p>Embedding map skipped (predictions_run is 'none').</p>")
    if not run_dir:
        from ..core.paths import runs_root
        root = runs_root()
        found = sorted((p for p in root.glob("*/") if (p / "predictions.npz").is_file()), reverse=True) \
            if root.is_dir() else []
        if not found:
            return HTML("<p>No trained run yet: run the pipeline (<code>make demo</code>) and re-run this cell.</p>")
        run_dir = found[0]
    return show_map(maps.run_map(run_dir, method, seed), "label", seed)

"""ipywidgets wiring only: the review widget over ``workbench.review.ReviewSession``.

All review logic (queue, durable decisions log, undo, resume, export) lives in ``workbench.review``
and ``workbench.annotate``; this module draws it and turns clicks and keys into session calls.

Keyboard shortcuts: ipywidgets 8 has no key events of its own, so the widget has a small "keys"
box that keeps the focus: typing ``a`` accepts, ``1``–``9`` picks that class, ``s`` skips, ``u``
undoes (the buttons' tooltips name their key). Under papermill (``WORKBENCH_HEADLESS=1``)
``review_run`` returns a static summary instead (queue size, progress, the first items as a gallery).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from . import progress as _progress
from .errors import WorkbenchError


def _png(image: np.ndarray, size: int = 224, overlay: np.ndarray | None = None) -> bytes:
    """Nearest-neighbour upscaled PNG of one uint8 image; with ``overlay`` (H, W in [0, 1]) a heat map
    blended beside it."""
    import matplotlib
    from matplotlib.image import imsave
    img = image[..., 0] if image.shape[-1] == 1 else image
    rgb = np.stack([img] * 3, -1) if img.ndim == 2 else img
    k = max(1, size // rgb.shape[0])
    big = np.repeat(np.repeat(rgb, k, 0), k, 1)
    if overlay is not None:
        heat = np.asarray(overlay, dtype=np.float64)
        heat = (heat - heat.min()) / (np.ptp(heat) + 1e-12)
        kk = max(1, big.shape[0] // heat.shape[0])
        heat = np.repeat(np.repeat(heat, kk, 0), kk, 1)[:big.shape[0], :big.shape[1]]
        cm = (matplotlib.colormaps["jet"](heat)[..., :3] * 255)
        blend = (0.55 * big + 0.45 * cm).clip(0, 255).astype(np.uint8)
        big = np.concatenate([big, np.full((big.shape[0], 4, 3), 255, np.uint8), blend], axis=1)
    buf = io.BytesIO()
    imsave(buf, big.astype(np.uint8), format="png")
    return buf.getvalue()


def gradcam_overlay(run_dir):
    """A function (image, class) -> heat map from ``workbench.explain`` when that module exists, else None."""
    try:
        from . import explain  # noqa: F401  (optional: written by the evaluate-stage work)
    except ImportError:
        return None
    fn = getattr(explain, "gradcam", None) or getattr(explain, "grad_cam", None)
    if fn is None:
        return None
    from .models import load
    model = load(Path(run_dir) / "model.keras")

    def overlay(image: np.ndarray, cls: int) -> np.ndarray:
        heat = np.asarray(fn(model, image[None].astype("float32"), int(cls)))
        return heat.reshape(heat.shape[-2:]) if heat.ndim > 2 else heat

    return overlay


class ReviewWidget:
    """Image (+ Grad-CAM), top-k probabilities, Accept / class / Skip / Undo, keys, progress, annotator."""

    def __init__(self, inputs, top_k: int = 3, overlay=None, export_dir=None):
        import ipywidgets as W
        self.inputs, self.session = inputs, inputs.session
        if self.session is None:
            raise WorkbenchError("open the review first (workbench.annotate.open_review)")
        self.top_k, self.overlay, self.export_dir = top_k, overlay, export_dir
        self._pos = {i: k for k, i in enumerate(inputs.pool.ids)}
        names = inputs.class_names
        self.image = W.Image(format="png", layout=W.Layout(width="auto", height="240px"))
        self.info = W.HTML()
        self.message = W.HTML()
        self.annotator = W.Text(value=self.session.annotator, description="Annotator", placeholder="your name")
        self.keys = W.Text(value="", description="Keys", continuous_update=True,
                           placeholder="a accept · 1-9 class · s skip · u undo")
        self.accept_button = W.Button(description="Accept", button_style="success", tooltip="accept the model's label (a)")
        self.skip_button = W.Button(description="Skip", tooltip="leave unlabelled, next item (s)")
        self.undo_button = W.Button(description="Undo", button_style="warning", tooltip="revert the last decision (u)")
        self.export_button = W.Button(description="Export", button_style="info",
                                      tooltip="write annotations.csv, COCO JSON and labelled.npz")
        self.class_buttons = [W.Button(description=f"{c + 1 if c < 9 else ''} {n[:18]}".strip(),
                                       tooltip=f"label as {n}" + (f" ({c + 1})" if c < 9 else ""),
                                       layout=W.Layout(width="auto")) for c, n in enumerate(names)]
        self.progress = W.IntProgress(min=0, max=max(len(self.session.queue), 1), description="Progress")
        self.progress_label = W.Label()
        self.accept_button.on_click(lambda _: self._act(self.session.accept))
        self.skip_button.on_click(lambda _: self._act(self.session.skip))
        self.undo_button.on_click(lambda _: self._undo())
        self.export_button.on_click(lambda _: self.export())
        for c, b in enumerate(self.class_buttons):
            b.on_click(lambda _, c=c: self._act(lambda: self.session.label(c)))
        self._last_keys = ""  # the key box's text as last received from the browser (see _on_keys)
        self.keys.observe(self._on_keys, names="value")
        self.annotator.observe(self._on_annotator, names="value")
        self.box = W.VBox([
            W.HBox([self.annotator, self.progress, self.progress_label]),
            W.HBox([self.image, self.info]),
            W.HBox([self.accept_button, self.skip_button, self.undo_button, self.export_button, self.keys]),
            W.HBox(self.class_buttons, layout=W.Layout(flex_flow="row wrap")),
            self.message,
        ])
        for note in self.session.notes:
            self._say(f"log recovered: {note}", "darkorange")
        self.refresh()

    # -------------------------------------------------------------- display
    def _ipython_display_(self):
        from IPython.display import display
        display(self.box)

    def _say(self, text: str, color: str = "black"):
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def refresh(self):
        s = self.session
        p = s.progress()
        self.progress.value = p["decided"]
        self.progress_label.value = (f"{p['decided']}/{p['total']} decided · {p['accept']} accepted · "
                                     f"{p['corrected']} corrected · {p['skip']} skipped")
        item = s.current
        done = item is None
        for b in (self.accept_button, self.skip_button, *self.class_buttons):
            b.disabled = done
        self.undo_button.disabled = not s.decisions
        if done:
            self.info.value = "<b>Queue done.</b> Undo to change a decision, Export to write the labels."
            return
        k = self._pos[item]
        probs = np.asarray(self.inputs.probs[k], dtype=np.float64)
        order = np.argsort(-probs)[: self.top_k]
        pred = int(s.predicted[item])
        overlay = None
        if self.overlay is not None:
            try:
                overlay = self.overlay(self.inputs.pool.images[k], pred)
            except Exception as e:  # an optional explanation must never block the review
                self.overlay = None
                self._say(f"Grad-CAM unavailable ({type(e).__name__}: {e}); reviewing without it", "darkorange")
        self.image.value = _png(self.inputs.pool.images[k], overlay=overlay)
        rows = "".join(f"<tr><td>{html.escape(self.inputs.class_names[c])}</td><td>{probs[c]:.3f}</td></tr>"
                       for c in order)
        self.info.value = (f"<b>{html.escape(item)}</b> (queue #{s.position + 1})<br>"
                           f"model: <b>{html.escape(self.inputs.class_names[pred])}</b><br>"
                           f"<table>{rows}</table>")

    # -------------------------------------------------------------- actions
    def _on_annotator(self, change):
        self.session.annotator = change["new"].strip()

    def _act(self, fn):
        if not self.session.annotator:
            self._say("type your name in Annotator first: every decision records who made it", "darkred")
            return None
        try:
            d = fn()
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return None
        self._say(f"saved: {d.item} → {d.action}" + (f" {self.inputs.class_names[d.label]}" if d.label is not None else ""),
                  "green")
        self.refresh()
        return d

    def _undo(self):
        try:
            d = self.session.undo()
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return
        self._say(f"undone: {d.item} ({d.action})" if d else "nothing to undo")
        self.refresh()

    def press(self, key: str):
        """Handle one shortcut key (what typing into the keys box does)."""
        key = key.lower()
        if key == "a":
            self.accept_button.click()
        elif key == "s":
            self.skip_button.click()
        elif key == "u":
            self.undo_button.click()
        elif key.isdigit() and 1 <= int(key) <= min(9, len(self.class_buttons)):
            self.class_buttons[int(key) - 1].click()
        else:
            self._say(f"unknown key {key!r}: a accept, 1-9 class, s skip, u undo")

    def _on_keys(self, change):
        """Act on the keys typed since the last message, then clear the box.

        The clear can lose a race with the browser: ipywidgets 8 drops a kernel update for a field
        whose own change is still awaiting its echo, and a reviewer may type the next key before
        the clear arrives. The box then still holds what was already acted on ("a" → "aa"), and
        acting on the whole text would record a decision twice. The browser sends one message per
        keystroke, so its text is either what the kernel last received plus new keys (clear lost)
        or only new keys (clear applied): a strictly longer text that starts with the last one
        received is the stale case, and only its tail is new.
        """
        text = change["new"]
        if not text:  # our own clear, or the reviewer emptied the box
            return
        last, self._last_keys = self._last_keys, text
        fresh = text[len(last):] if last and len(text) > len(last) and text.startswith(last) else text
        self.keys.value = ""
        for ch in fresh:
            self.press(ch)

    def export(self):
        from .annotate import export_review
        try:
            out = export_review(self.inputs, self.export_dir)
        except WorkbenchError as e:
            self._say(str(e), "darkred")
            return None
        self._say(f"exported {out['n_labelled']} labels to {Path(out['csv']).parent}", "green")
        self.export_dir = None  # the next export goes to a new directory
        return out


class StaticReview:
    """What a headless report shows instead of the widget: queue size, progress so far, first items."""

    def __init__(self, inputs, n: int = 16, log: Path | None = None):
        from .annotate import default_log
        from .review import read_log
        from .viz import image_grid, to_png
        self.inputs = inputs
        q = inputs.queue.head(n)
        pos = {i: k for k, i in enumerate(inputs.pool.ids)}
        idx = np.array([pos[i] for i in q["id"]], dtype=int)
        caps = [f"{r['rank']}. {str(r['predicted_class'])[:12]}\n{r['confidence']:.2f} / {str(r['second_class'])[:8]} "
                f"{r['second_prob']:.2f}" for _, r in q.iterrows()]
        fig = image_grid(inputs.pool.images[idx], caps, ncols=8, cell=1.5,
                         title=f"Review queue: first {len(q)} of {len(inputs.queue)} "
                               f"(strategy {inputs.params.get('strategy')})")
        self.png = to_png(fig)
        log = Path(log) if log else default_log(inputs.run_dir)
        self.decided = None
        if log.is_file():
            contents = read_log(log)
            self.decided = sum(1 for r in contents.records if r.get("type") == "decision") - \
                sum(1 for r in contents.records if r.get("type") == "undo")
        self.log = log

    def _repr_html_(self) -> str:
        n = len(self.inputs.queue)
        n_auto = int((self.inputs.table["status"] == "auto-accepted").sum())
        done = (f"{self.decided} decisions in {html.escape(str(self.log))}" if self.decided is not None
                else "no review yet")
        img = base64.b64encode(self.png).decode()
        return (f"<div><p><b>Review (static view: the report was run headless).</b> {n} image(s) need review, "
                f"{n_auto} auto-accepted of {len(self.inputs.table)}; {done}. Open the notebook in JupyterLab "
                f"to review.</p><img src='data:image/png;base64,{img}'/></div>")


def review_run(run_dir, annotator: str = "", log: str = "", headless: bool | None = None, overlay="auto",
               n_static: int = 16):
    """The review widget of an annotated run (resumes its log); a static summary when headless."""
    from .annotate import open_review, review_inputs
    headless = _progress.headless() if headless is None else headless
    if headless:
        return StaticReview(review_inputs(run_dir), n=n_static, log=Path(log) if log else None)
    inputs = open_review(run_dir, annotator=annotator, log=log)
    if overlay == "auto":
        overlay = gradcam_overlay(run_dir)
    return ReviewWidget(inputs, overlay=overlay)

"""Pure plot functions → ``matplotlib.figure.Figure`` (no pyplot state, nothing shown implicitly).

Any number of classes (2 to 100 and more) and multi-label tasks. Figure sizes are bounded whatever K
(``MAX_W`` × ``MAX_H`` inches); past the thresholds below a figure shows less and says so in its title:

* category axes name at most ``MAX_TICK_LABELS`` classes (every n-th beyond);
* a confusion matrix writes its counts in the cells up to ``MAX_CELL_TEXT`` classes;
* ROC / PR curves have a legend entry per class up to ``MAX_LEGEND`` classes; beyond, the micro and
  macro averages and the best and worst ``N_EXTREMES`` classes by area are drawn in colour (the rest
  in grey);
* per-class image grids show fewer images per class, at most ``MAX_GRID_IMAGES`` in all; a
  correct/wrong gallery at most ``MAX_CLASS_ROWS`` classes; a forest plot at most ``MAX_FOREST_ROWS`` rows.

Multi-label labels are (N, L) arrays of 0/1 (``is_multilabel``): per-label figures then take "label
c present" for "class c" (``label_prevalence`` replaces ``class_balance``; ``roc_curves`` and
``pr_curves`` draw one curve per label).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm



class Markdown(str):
    """A string that notebooks (and so the HTML reports) render as Markdown."""

    def _repr_markdown_(self) -> str:
        return str(self)


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _register_ipython_display() -> None:
    """Show a returned Figure as an inline PNG in Jupyter (and so in papermill/HTML reports) without
    pyplot's global state or its auto-display of every figure created."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(Figure, to_png)


_register_ipython_display()


MAX_W, MAX_H = 16.0, 20.0   # inches: no figure here is larger, whatever the class count
MAX_TICK_LABELS = 40
MAX_CELL_TEXT = 25
MAX_LEGEND = 10
N_EXTREMES = 3
MAX_GRID_IMAGES = 120
MAX_CLASS_ROWS = 16
MAX_FOREST_ROWS = 60


def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(min(w, MAX_W), min(h, MAX_H)), layout="constrained")


def _short(name: str, n: int = 18) -> str:
    name = str(name)
    return name if len(name) <= n else name[: n - 1] + "…"


def is_multilabel(labels) -> bool:
    """True for multi-label labels: a 2-D (N, L) array with L > 1 (single-label labels are (N,) or (N, 1))."""
    a = np.asarray(labels)
    return a.ndim == 2 and a.shape[1] > 1


def _flat(labels) -> np.ndarray:
    a = np.asarray(labels)
    return a.reshape(-1) if a.ndim == 2 and a.shape[1] == 1 else a


def _tick_step(k: int, max_labels: int = MAX_TICK_LABELS) -> int:
    return max(1, int(np.ceil(k / max_labels)))


def _category_axis(ax, names: list[str], axis: str = "x", offset: float = 0.0, width: int = 12,
                   max_labels: int = MAX_TICK_LABELS) -> int:
    """Name the categories 0..k-1 on ``axis``, every n-th when there are more than ``max_labels``
    (numbered from 1 so the thinned ones can be found); returns n."""
    k = len(names)
    step = _tick_step(k, max_labels)
    pos = np.arange(0, k, step)
    labels = [_short(names[i], width) if step == 1 else f"{i + 1} {_short(names[i], width)}" for i in pos]
    size = 7 if k <= MAX_CELL_TEXT else 6
    if axis == "x":
        ax.set_xticks(pos + offset, labels, rotation=45 if k > 6 else 30, ha="right", fontsize=size)
    else:
        ax.set_yticks(pos + offset, labels, fontsize=size)
    return step


def _thinned(step: int) -> str:
    return "" if step == 1 else f" (one name in {step} shown)"


def class_balance(counts: dict[str, list[int]], class_names: list[str]) -> Figure:
    """Images per class and split (bars); any number of classes (names thinned past 40)."""
    k = len(class_names)
    fig = _fig(max(8, 0.16 * k * max(len(counts), 1)), 3.2 if k <= 30 else 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(counts), 1)
    for j, (split, c) in enumerate(counts.items()):
        ax.bar(np.arange(k) + j * width, c, width, label=f"{split} ({sum(c)})")
    step = _category_axis(ax, class_names, "x", offset=width * (len(counts) - 1) / 2)
    ax.set_xlim(-0.6, k - 0.2)
    ax.set_ylabel("images")
    ax.set_title(f"Class balance per split ({k} classes){_thinned(step)}")
    ax.legend(fontsize=7)
    return fig


def label_prevalence(labels: dict[str, np.ndarray], class_names: list[str]) -> Figure:
    """Multi-label support: per label and split, the share of images in which it is present (bars; the
    count in the legend), and how many labels each image has (an image may have none)."""
    k = len(class_names)
    fig = _fig(max(10, 0.16 * k * max(len(labels), 1) + 3), 3.6)
    gs = fig.add_gridspec(1, 4)
    ax, ax2 = fig.add_subplot(gs[0, :3]), fig.add_subplot(gs[0, 3])
    width = 0.8 / max(len(labels), 1)
    top = 1
    for j, (split, y) in enumerate(labels.items()):
        y = np.asarray(y).reshape(len(y), -1)
        prev = y.mean(0) if len(y) else np.zeros(k)
        ax.bar(np.arange(k) + j * width, prev, width, label=f"{split} ({len(y)} images, {int(y.sum())} labels)")
        per_image = y.sum(1).astype(int)
        top = max(top, int(per_image.max(initial=0)))
        ax2.plot(np.bincount(per_image, minlength=top + 1)[: top + 1] / max(len(y), 1), "o-", ms=3, label=split)
    step = _category_axis(ax, class_names, "x", offset=width * (len(labels) - 1) / 2)
    ax.set_xlim(-0.6, k - 0.2)
    ax.set_ylabel("share of images with the label")
    ax.set_title(f"Label prevalence per split ({k} labels){_thinned(step)}")
    ax.legend(fontsize=7)
    ax2.set_xlabel("labels per image")
    ax2.set_ylabel("share of images")
    ax2.set_title("labels per image", fontsize=9)
    ax2.legend(fontsize=7)
    return fig


def image_grid(images: np.ndarray, captions: list[str] | None = None, ncols: int = 8, title: str = "",
               cell: float = 1.3, caption_colors: list[str] | None = None,
               max_images: int = 2 * MAX_GRID_IMAGES) -> Figure:
    """Images in a grid with optional captions; at most ``max_images`` (the first; the title says so)."""
    n_all = len(images)
    n = min(n_all, max_images)
    if n < n_all:
        title = f"{title} (first {n} of {n_all})".strip()
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    cell = min(cell, MAX_W / ncols, (MAX_H - 0.4) / (nrows * (1.2 if captions else 1.0)))
    if n >= MOSAIC_FROM:
        return _mosaic(images[:n], captions, ncols, nrows, title, cell, caption_colors)
    fig = _fig(cell * ncols, cell * nrows + (0.4 if title else 0) + (0.25 * nrows if captions else 0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest")
        if captions:
            ax.set_title(captions[i], fontsize=7, color=(caption_colors[i] if caption_colors else "black"))
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "(none)", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


MOSAIC_FROM = 49   # grids of this many images or more: one axes for all (a subplot each takes seconds at 100+)


def _mosaic(images: np.ndarray, captions, ncols: int, nrows: int, title: str, cell: float,
            caption_colors) -> Figure:
    """``image_grid`` drawn in a single axes: each image placed by its extent, captions as text. Looks like
    the subplot grid; builds and renders in a fraction of the time for large grids."""
    n = len(images)
    h, w = images.shape[1:3]
    lines = max((str(c).count("\n") + 1 for c in captions[:n]), default=0) if captions else 0
    band = 0.14 * lines / cell          # caption height in cell units (7 pt ≈ 0.12 in per line)
    ih = 0.92 * h / max(w, 1)           # image height in cell units (width 0.92)
    rh = ih + band + 0.06
    title_h = 0.45 if title else 0.05
    fig_w, ax_h = cell * ncols, cell * rh * nrows
    fig = Figure(figsize=(fig_w, ax_h + title_h))
    ax = fig.add_axes((0, 0, 1, ax_h / (ax_h + title_h)))
    gray = images.shape[-1] == 1
    for i in range(n):
        r, c = divmod(i, ncols)
        y0 = r * rh + band + 0.03
        ax.imshow(images[i][..., 0] if gray else images[i], cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest", extent=(c + 0.04, c + 0.96, y0 + ih, y0), aspect="auto")
        if captions:
            ax.text(c + 0.5, y0 - 0.01, captions[i], ha="center", va="bottom", fontsize=7,
                    color=caption_colors[i] if caption_colors else "black")
    ax.set_xlim(0, ncols)
    ax.set_ylim(nrows * rh, 0)
    ax.axis("off")
    if title:
        fig.suptitle(title, y=1 - 0.08 / (ax_h + title_h), va="top")
    return fig


def samples_per_class(images: np.ndarray, labels: np.ndarray, class_names: list[str], per_class: int = 6,
                      seed: int = 0, max_images: int = MAX_GRID_IMAGES) -> Figure:
    """A seeded sample of each class's images (multi-label: of the images where the label is present).

    Up to 12 classes: one row per class, ``per_class`` images. More: fewer per class (at least one) in
    rows of 12, at most ``max_images`` images in all (past that, the first classes; the title says so)."""
    rng = np.random.default_rng(seed)
    k = len(class_names)
    ml = is_multilabel(labels)
    y = np.asarray(labels) if ml else _flat(labels)
    if k <= 12:
        per, ncols = per_class, per_class
    else:
        per, ncols = max(1, min(per_class, max_images // k)), 12
    n_classes = min(k, max(1, max_images // per))
    picks, caps = [], []
    for c in range(n_classes):
        idx = np.flatnonzero(y[:, c] == 1) if ml else np.flatnonzero(y == c)
        chosen = rng.choice(idx, size=min(per, len(idx)), replace=False) if len(idx) else []
        picks.extend(chosen)
        caps.extend([_short(class_names[c], 14) if k <= 12 else f"{c + 1} {_short(class_names[c], 11)}"] * len(chosen))
    what, whats = ("label", "labels") if ml else ("class", "classes")
    title = f"Samples per {what} (train)"
    if k > 12:
        title += f": {per} per {what}, " + (f"the first {n_classes} of {k} {whats}" if n_classes < k else f"{k} {whats}")
    return image_grid(images[np.array(picks, dtype=int)], caps, ncols=ncols, title=title, max_images=max_images)


def training_curves(hist) -> Figure:
    fig = _fig(10, 3.2)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    epochs = np.arange(1, len(hist) + 1)
    ax1.plot(epochs, hist["loss"], label="train")
    ax1.plot(epochs, hist["val_loss"], label="val")
    ax1.set_title("loss")
    ax2.plot(epochs, hist["acc"], label="train")
    ax2.plot(epochs, hist["val_acc"], label="val")
    ax2.set_title("accuracy")
    best = int(np.argmin(hist["val_loss"]))
    for ax in (ax1, ax2):
        ax.axvline(best + 1, color="grey", ls="--", lw=0.8, label=f"best epoch {best + 1}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    if "learning_rate" in hist:
        ax3.plot(epochs, hist["learning_rate"])
    ax3.set_title("learning rate (end of epoch)")
    ax3.set_xlabel("epoch")
    return fig


def confusion_matrix(cm: np.ndarray, class_names: list[str], title: str = "Confusion matrix (row-normalised)") -> Figure:
    """Row-normalised colours with the counts written in the cells (up to 25 classes; beyond, colours
    only and every n-th class named); the figure's size is capped."""
    k = len(class_names)
    fig = _fig(min(1.2 + 0.6 * k, 13.0), min(1.0 + 0.55 * k, 12.0))
    ax = fig.add_subplot()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if k <= MAX_CELL_TEXT:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=7 if k <= 12 else 5,
                        color="white" if norm[i, j] > 0.5 else "black")
    step = _category_axis(ax, class_names, "x")
    _category_axis(ax, class_names, "y")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k > MAX_CELL_TEXT:
        title += f"\n{k} classes: counts not written{_thinned(step)}"
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _one_vs_rest(y_true: np.ndarray, class_names: list[str]):
    """(class index, name, positives mask) for every class (multi-label: label) with both positives and
    negatives."""
    ml = is_multilabel(y_true)
    y = np.asarray(y_true) if ml else _flat(y_true)
    for c, name in enumerate(class_names):
        pos = (y[:, c] == 1) if ml else (y == c)
        if pos.any() and not pos.all():
            yield c, name, pos


def _indicator(y_true: np.ndarray, k: int) -> np.ndarray:
    """(N, K) 0/1: one-hot of single-label labels, multi-label labels as they are."""
    if is_multilabel(y_true):
        return np.asarray(y_true).astype(np.int8)
    return (_flat(y_true)[:, None] == np.arange(k)[None, :]).astype(np.int8)


def _extremes(scores: list[float], n: int = N_EXTREMES) -> tuple[list[int], list[int]]:
    """Positions of the ``n`` best and ``n`` worst scores (best first; worst: lowest first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    best = order[:n].tolist()
    worst = [i for i in order[::-1][:n].tolist() if i not in best]
    return best, worst


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    """One-vs-rest ROC curves (multi-label: one per label). Up to 10 classes, each with its AUC in the
    legend; more: the micro and macro averages and the 3 best and 3 worst classes by AUC in colour, the
    others in grey (the title says so)."""
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    ml = is_multilabel(y_true)
    probs = np.asarray(probs)
    curves = []
    for c, name, pos in _one_vs_rest(y_true, class_names):
        fpr, tpr, _ = skm.roc_curve(pos, probs[:, c])
        curves.append((c, name, fpr, tpr, skm.auc(fpr, tpr)))
    kind = "per label" if ml else "one-vs-rest"
    if len(curves) <= MAX_LEGEND:
        for c, name, fpr, tpr, auc in curves:
            ax.plot(fpr, tpr, lw=1, label=f"{_short(name)} (AUC {auc:.3f})")
        title = f"ROC, {kind}"
    else:
        grid = np.linspace(0, 1, 201)
        for _, _, fpr, tpr, _ in curves:
            ax.plot(fpr, tpr, lw=0.4, color="lightgrey")
        macro = np.mean([np.interp(grid, fpr, tpr) for _, _, fpr, tpr, _ in curves], axis=0)
        ax.plot(grid, macro, lw=2, color="black",
                label=f"macro average (AUC {np.mean([a for *_, a in curves]):.3f})")
        ind = _indicator(y_true, probs.shape[1])
        fpr, tpr, _ = skm.roc_curve(ind.ravel(), probs.ravel())
        ax.plot(fpr, tpr, lw=2, color="tab:purple", ls="--", label=f"micro average (AUC {skm.auc(fpr, tpr):.3f})")
        best, worst = _extremes([a for *_, a in curves])
        for tag, picks, cmap in (("best", best, "Greens"), ("worst", worst, "Reds")):
            for j, i in enumerate(picks):
                c, name, fpr, tpr, auc = curves[i]
                ax.plot(fpr, tpr, lw=1, color=matplotlib_color(cmap, j), label=f"{tag}: {_short(name)} ({auc:.3f})")
        title = (f"ROC, {kind}: {len(curves)} {'labels' if ml else 'classes'}; macro/micro average,\n"
                 f"best and worst {N_EXTREMES} by AUC (grey: the other {len(curves) - len(best) - len(worst)})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9 if len(curves) > MAX_LEGEND else 10)
    ax.legend(fontsize=6 if len(curves) > MAX_LEGEND else 7, loc="lower right")
    return fig


def matplotlib_color(cmap: str, j: int, n: int = N_EXTREMES):
    """The j-th of n distinct colours from a sequential colormap (darkest first)."""
    import matplotlib
    return matplotlib.colormaps[cmap](0.9 - 0.4 * j / max(n - 1, 1))


def precision_coverage_curve(confidence: np.ndarray, correct: np.ndarray, threshold: float, target: float,
                             title: str = "Auto-accept operating point (val)") -> Figure:
    order = np.argsort(-confidence)
    conf_s, corr_s = confidence[order], correct[order].astype(float)
    prec = np.cumsum(corr_s) / np.arange(1, len(order) + 1)
    cov = np.arange(1, len(order) + 1) / len(order)
    fig = _fig(9, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(cov, prec)
    ax1.axhline(target, color="red", ls="--", lw=0.8, label=f"target {target}")
    ax1.set_xlabel("coverage (fraction auto-accepted)")
    ax1.set_ylabel("precision of accepted")
    ax1.legend(fontsize=7)
    ax1.set_title(title)
    ax2.hist([conf_s[corr_s == 1], conf_s[corr_s == 0]], bins=30, stacked=True, label=["correct", "wrong"])
    if np.isfinite(threshold):
        ax2.axvline(threshold, color="red", ls="--", lw=0.8, label=f"threshold {threshold:.4f}")
    ax2.set_xlabel("confidence (max probability)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    ax2.set_title("Confidence of correct and wrong predictions")
    return fig


def augmentation_preview(originals: np.ndarray, augmented: list[np.ndarray], title: str = "") -> Figure:
    """Row 0: originals; rows 1..N: augmented samples of the same images."""
    rows = [originals, *augmented]
    grid = np.concatenate(rows)
    caps = ["original"] * len(originals) + [f"sample {r}" for r in range(1, len(rows)) for _ in originals]
    return image_grid(grid, caps, ncols=len(originals), title=title or "Augmentation preview")


def preprocessing_preview(before: np.ndarray, after: np.ndarray, title: str = "") -> Figure:
    """Row 0: images as loaded; row 1: the same images after preprocessing (0-255 shown as is)."""
    grid = np.concatenate([before, after])
    caps = ["before"] * len(before) + ["after"] * len(after)
    return image_grid(grid, caps, ncols=len(before), title=title or "Preprocessing preview")


# --- evaluate stage: intervals, calibration, operating points, explanations ----------------------------------

def forest(labels: list[str], values, lows, highs, title: str = "", xlabel: str = "", refs: dict | None = None,
           xlim: tuple | None = (0, 1), max_rows: int = MAX_FOREST_ROWS) -> Figure:
    """Point estimates with their intervals, one row each (top to bottom in the order given); ``refs`` are
    vertical reference lines {label: x}. Undefined values (None/NaN) are written as "undefined". At most
    ``max_rows`` rows (the first; the title says how many are left out)."""
    n_all = len(labels)
    if n_all > max_rows:
        labels, values, lows, highs = (list(v)[:max_rows] for v in (labels, values, lows, highs))
        title = f"{title}\n(first {max_rows} of {n_all} rows; the tables list all)".strip()
    n = len(labels)
    fig = _fig(7, 0.6 + 0.32 * max(n, 1))
    ax = fig.add_subplot()
    ys = np.arange(n)[::-1]
    for y, v, lo, hi in zip(ys, values, lows, highs):
        if v is None or not np.isfinite(v):
            ax.text(0.5 if xlim else 0, y, "undefined", va="center", fontsize=7, color="grey")
            continue
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [y, y], color="C0", lw=2)
        ax.plot(v, y, "o", color="C0", ms=4)
    for j, (name, x) in enumerate((refs or {}).items()):
        ax.axvline(x, color=f"C{j + 1}", ls="--", lw=0.8, label=name)
    ax.set_yticks(ys, [_short(s, 40) for s in labels], fontsize=7)
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if refs:
        ax.legend(fontsize=6, loc="best")
    return fig


def reliability_diagram(before: dict, after: dict | None = None, ece_before: float | None = None,
                        ece_after: float | None = None, temperature: float | None = None,
                        title: str = "Reliability (test)") -> Figure:
    """Accuracy against confidence per bin (bars), before and after temperature scaling, with the diagonal
    of perfect calibration and the share of images per bin."""
    fig = _fig(9, 3.6)
    axes = fig.subplots(1, 2 if after else 1, squeeze=False)[0]
    panels = [("uncalibrated", before, ece_before)]
    if after:
        panels.append((f"temperature {temperature:.3f}" if temperature else "calibrated", after, ece_after))
    for ax, (name, rel, e) in zip(axes, panels):
        edges = np.asarray(rel["edges"])
        width = np.diff(edges)
        acc = np.nan_to_num(np.asarray(rel["accuracy"], dtype=float))
        conf = np.asarray(rel["confidence"], dtype=float)
        count = np.asarray(rel["count"], dtype=float)
        ax.bar(edges[:-1], acc, width, align="edge", edgecolor="black", lw=0.5, label="accuracy")
        gap_lo = np.where(np.isfinite(conf), np.minimum(acc, conf), 0)
        ax.bar(edges[:-1], np.where(np.isfinite(conf), np.abs(conf - acc), 0), width, bottom=gap_lo, align="edge",
               facecolor="none", edgecolor="red", hatch="///", lw=0.5, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        share = count / max(count.sum(), 1)
        ax.plot(edges[:-1] + width / 2, share, "k.-", lw=0.8, ms=3, label="share of images in the bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}" + (f": ECE {e:.4f}" if e is not None else ""), fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    return fig


def pr_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    """One-vs-rest precision-recall curves with average precision; dotted: each class's prevalence.
    Multi-label: one per label. More than 10: micro/macro averages and the 3 best and 3 worst by AP."""
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    ml = is_multilabel(y_true)
    probs = np.asarray(probs)
    curves = []
    for c, name, pos in _one_vs_rest(y_true, class_names):
        prec, rec, _ = skm.precision_recall_curve(pos, probs[:, c])
        curves.append((c, name, prec, rec, skm.average_precision_score(pos, probs[:, c]), pos.mean()))
    kind = "per label" if ml else "one-vs-rest"
    if len(curves) <= MAX_LEGEND:
        for c, name, prec, rec, ap, prevalence in curves:
            (line,) = ax.plot(rec, prec, lw=1, label=f"{_short(name)} (AP {ap:.3f})")
            ax.axhline(prevalence, color=line.get_color(), lw=0.5, ls=":")
        title = f"Precision-recall, {kind}"
    else:
        grid = np.linspace(0, 1, 201)
        interp = []
        for _, _, prec, rec, _, _ in curves:
            ax.plot(rec, prec, lw=0.4, color="lightgrey")
            best_prec = np.maximum.accumulate(prec)            # recall falls along the arrays: max over recall ≥ r
            idx = np.searchsorted(-rec, -grid, side="right") - 1
            interp.append(best_prec[np.clip(idx, 0, len(rec) - 1)])
        ax.plot(grid, np.mean(interp, axis=0), lw=2, color="black",
                label=f"macro average (mean AP {np.mean([c[4] for c in curves]):.3f})")
        ind = _indicator(y_true, probs.shape[1])
        prec, rec, _ = skm.precision_recall_curve(ind.ravel(), probs.ravel())
        ax.plot(rec, prec, lw=2, color="tab:purple", ls="--",
                label=f"micro average (AP {skm.average_precision_score(ind.ravel(), probs.ravel()):.3f})")
        best, worst = _extremes([c[4] for c in curves])
        for tag, picks, cmap in (("best", best, "Greens"), ("worst", worst, "Reds")):
            for j, i in enumerate(picks):
                c, name, prec, rec, ap, _ = curves[i]
                ax.plot(rec, prec, lw=1, color=matplotlib_color(cmap, j), label=f"{tag}: {_short(name)} ({ap:.3f})")
        title = (f"Precision-recall, {kind}: {len(curves)} {'labels' if ml else 'classes'}; macro/micro "
                 f"average,\nbest and worst {N_EXTREMES} by AP (grey: the other {len(curves) - len(best) - len(worst)})")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9 if len(curves) > MAX_LEGEND else 10)
    ax.legend(fontsize=6 if len(curves) > MAX_LEGEND else 7, loc="lower left")
    return fig


def operating_point_roc(y_val, score_val, y_test, score_test, threshold: float, target: float,
                        positive: str = "positive") -> Figure:
    """Binary task: val and test ROC curves with the threshold chosen on val marked on both."""
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    for name, y, s in (("val", y_val, score_val), ("test", y_test, score_test)):
        fpr, tpr, _ = skm.roc_curve(y, s)
        (line,) = ax.plot(fpr, tpr, lw=1, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
        pred = np.asarray(s) >= threshold
        y = np.asarray(y).astype(bool)
        ax.plot((pred & ~y).sum() / max((~y).sum(), 1), (pred & y).sum() / max(y.sum(), 1), "o",
                color=line.get_color(), label=f"{name} at threshold {threshold:.4f}")
    ax.axhline(target, color="red", ls="--", lw=0.8, label=f"target sensitivity {target}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel(f"sensitivity ({_short(positive)})")
    ax.set_title("Operating point chosen on val")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _show(ax, img, heat=None, signed: bool = False, alpha: float = 0.5):
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    if heat is not None:
        if signed:
            lim = max(float(np.abs(heat).max()), 1e-9)
            ax.imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=alpha, interpolation="bilinear")
        else:
            ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    ax.axis("off")


def cam_gallery(images: np.ndarray, heats: np.ndarray, captions: list[str], caption_colors: list[str] | None = None,
                title: str = "", ncols: int = 4, cell: float = 1.4) -> Figure:
    """Each image twice, side by side: as is and with its heat map (Grad-CAM, jet, 0-1) over it."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = _fig(cell * 2 * ncols, (cell + 0.35) * nrows + (0.4 if title else 0))
    axes = fig.subplots(nrows, 2 * ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncols)
        _show(axes[r, 2 * c], images[i])
        _show(axes[r, 2 * c + 1], images[i], heats[i])
        axes[r, 2 * c].set_title(captions[i], fontsize=6, loc="left",
                                 color=caption_colors[i] if caption_colors else "black")
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "(none)", ha="center", va="center")
    if title:
        fig.suptitle(title)
    return fig


def correct_wrong_grid(rows: list[dict], title: str = "Correct vs wrong per class (test, Grad-CAM)",
                       cell: float = 1.0, max_rows: int = MAX_CLASS_ROWS) -> Figure:
    """One row per class: its most confident correct prediction (left pair) and its most confident error
    (right pair), each shown as is and with the Grad-CAM of the predicted class. ``rows``: {class, correct,
    wrong}, where correct/wrong is None or {image, cam, caption}. At most ``max_rows`` classes: those with
    an error first, in the order given (the title says how many are shown)."""
    n_all = len(rows)
    note = ""
    if n_all > max_rows:
        keep = sorted(sorted(range(n_all), key=lambda i: rows[i].get("wrong") is None)[:max_rows])
        rows = [rows[i] for i in keep]
        note = f"; {max_rows} of {n_all} classes shown (those with an error first)"
    n = max(len(rows), 1)
    fig = _fig(cell * 4 + 1.4, (cell + 0.25) * n + 0.5)
    axes = fig.subplots(n, 4, squeeze=False)
    for r, row in enumerate(rows):
        for j, key in enumerate(("correct", "wrong")):
            a0, a1 = axes[r, 2 * j], axes[r, 2 * j + 1]
            a0.axis("off")
            a1.axis("off")
            item = row[key]
            if item is None:
                a0.text(1.0, 0.5, f"(no {key} prediction)", ha="center", va="center", fontsize=6, color="grey",
                        transform=a0.transAxes)
                continue
            _show(a0, item["image"])
            _show(a1, item["image"], item["cam"])
            a0.set_title(item["caption"], fontsize=6, loc="left", color="green" if key == "correct" else "red")
        axes[r, 0].text(-0.08, 0.5, _short(row["class"], 16), fontsize=7, ha="right", va="center",
                        transform=axes[r, 0].transAxes)
    fig.suptitle(title + f"\nleft: most confident correct; right: most confident error of the class{note}", fontsize=9)
    return fig


def explanation_rows(images: np.ndarray, cams: np.ndarray, occlusions: np.ndarray, captions: list[str],
                     title: str = "Grad-CAM and occlusion sensitivity", cell: float = 1.5) -> Figure:
    """Per image: the image, its Grad-CAM (0-1, jet) and its occlusion map (drop in probability when the
    region is hidden; red: the region supports the class, blue: it speaks against it)."""
    n = len(images)
    fig = _fig(cell * 3 + 0.5, (cell + 0.3) * max(n, 1) + 0.6)
    axes = fig.subplots(max(n, 1), 3, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        _show(axes[i, 0], images[i])
        axes[i, 0].set_title(captions[i], fontsize=6, loc="left")
        _show(axes[i, 1], images[i], cams[i])
        _show(axes[i, 2], images[i], occlusions[i], signed=True, alpha=0.6)
    axes[0, 1].set_title("Grad-CAM", fontsize=8)
    axes[0, 2].set_title("occlusion", fontsize=8)
    fig.suptitle(title)
    return fig


def baseline_comparison(baselines: dict[str, dict], ours: dict, name: str = "this run") -> Figure:
    """Published test ACC and AUC (points) against this run's point estimate and 95 % interval (band)."""
    fig = _fig(9, 0.9 + 0.3 * max(len(baselines), 1))
    axes = fig.subplots(1, 2)
    methods = list(baselines)
    ys = np.arange(len(methods))[::-1]
    for ax, key in zip(axes, ("acc", "auc")):
        lo, hi = ours.get(f"{key}_ci95") or (None, None)
        if lo is not None and hi is not None:
            ax.axvspan(lo, hi, color="C0", alpha=0.2, label=f"{name} 95 % interval")
        ax.axvline(ours[key], color="C0", lw=1, label=f"{name} {ours[key]:.4f}")
        if methods:
            ax.plot([baselines[m][key] for m in methods], ys, "s", color="C1", ms=4, label="published")
            ax.set_yticks(ys, [_short(m, 24) for m in methods], fontsize=7)
        else:
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no published baselines in the data card", transform=ax.transAxes, ha="center",
                    fontsize=7, color="grey")
        ax.set_title(f"test {key.upper()}")
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(axis="x", alpha=0.3)
    return fig


def per_class_thresholds(choice: dict, class_names: list[str], val_probs: np.ndarray | None = None,
                         val_labels: np.ndarray | None = None) -> Figure:
    """Auto-accept thresholds per predicted class and, when val is given, the share of each class's val
    predictions they accept and the precision of those (the target as a dashed line). Values are written
    on the bars up to 25 classes; class names thinned past 40.

    Multi-label (``choice["mode"]`` "per-label", or (N, L) ``val_labels``): one threshold per label on the
    confidence max(p, 1 - p) of its present/absent decision at 0.5; the share of val decisions of each
    label it accepts and their precision."""
    k = len(class_names)
    ml = choice.get("mode") == "per-label" or (val_labels is not None and is_multilabel(val_labels))
    thr = np.asarray(choice["thresholds"], dtype=np.float64)
    fig = _fig(max(10, 0.24 * k), 3.2 if k <= 30 else 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    shown = np.where(np.isfinite(thr), thr, 1.0)
    bars = ax1.bar(range(k), shown, color=["tab:blue" if np.isfinite(t) else "lightgrey" for t in thr])
    is_global = [str(r.get("source", "")).startswith("global") for r in choice["per_class"]]
    if k <= MAX_CELL_TEXT:
        for b, t, g in zip(bars, thr, is_global):
            label = "none" if not np.isfinite(t) else f"{t:.3f}" + ("*" if g else "")
            ax1.text(b.get_x() + b.get_width() / 2, 0.02, label, ha="center", va="bottom", rotation=90, fontsize=7)
    step = _category_axis(ax1, class_names, "x", max_labels=MAX_TICK_LABELS // 2)
    ax1.set_ylim(0, 1)
    g = choice.get("guarantee", 0.0)
    how = f"Learn-then-Test, guarantee {g}" if g else "val point estimate"
    if ml:
        extra = "; grey: none"
        what = "threshold per label on max(p, 1 - p)"
    else:
        extra = "; * global" if k <= MAX_CELL_TEXT else f"; {sum(is_global)} of {k} use the global one; grey: none"
        what = "threshold per predicted class"
    sep = " " if k <= MAX_CELL_TEXT else "\n"
    ax1.set_title(f"{what}{sep}({choice['mode']}, {how}{extra}){_thinned(step)}", fontsize=9)
    if val_probs is not None and val_labels is not None:
        val_probs = np.asarray(val_probs, dtype=np.float64)
        if ml:
            y = np.asarray(val_labels).astype(bool)
            decision = val_probs > 0.5
            acc = np.maximum(val_probs, 1 - val_probs) >= thr[None, :]
            cov = acc.mean(0) if len(acc) else np.zeros(k)
            prec = ((decision == y) & acc).sum(0) / np.maximum(acc.sum(0), 1)
        else:
            val_labels = _flat(val_labels)
            pred, conf = val_probs.argmax(1), val_probs.max(1)
            acc = conf >= thr[pred]
            cov = [acc[pred == c].mean() if (pred == c).any() else 0.0 for c in range(k)]
            prec = [((pred == val_labels) & acc & (pred == c)).sum() / max((acc & (pred == c)).sum(), 1)
                    for c in range(k)]
        x = np.arange(k)
        ax2.bar(x - 0.2, cov, 0.4, label="coverage")
        ax2.bar(x + 0.2, prec, 0.4, label="precision")
        ax2.axhline(choice["target_precision"], color="red", ls="--", lw=0.8, label=f"target {choice['target_precision']}")
        _category_axis(ax2, class_names, "x", max_labels=MAX_TICK_LABELS // 2)
        ax2.set_ylim(0, 1.05)
        ax2.legend(fontsize=7, loc="lower left")
        ax2.set_title("val: accepted share and precision of each label's decisions" if ml else
                      "val: accepted share and precision per predicted class", fontsize=9)
    else:
        ax2.axis("off")
    return fig

"""Pure plot functions → ``matplotlib.figure.Figure`` (no pyplot state, nothing shown implicitly)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm


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


def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def class_balance(counts: dict[str, list[int]], class_names: list[str]) -> Figure:
    fig = _fig(8, 3.2)
    ax = fig.add_subplot()
    k = len(class_names)
    width = 0.8 / max(len(counts), 1)
    for j, (split, c) in enumerate(counts.items()):
        ax.bar(np.arange(k) + j * width, c, width, label=f"{split} ({sum(c)})")
    ax.set_xticks(np.arange(k) + width * (len(counts) - 1) / 2, [_short(n) for n in class_names],
                  rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Class balance per split")
    ax.legend()
    return fig


def image_grid(images: np.ndarray, captions: list[str] | None = None, ncols: int = 8, title: str = "",
               cell: float = 1.3, caption_colors: list[str] | None = None) -> Figure:
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
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


def samples_per_class(images: np.ndarray, labels: np.ndarray, class_names: list[str], per_class: int = 6,
                      seed: int = 0) -> Figure:
    rng = np.random.default_rng(seed)
    picks, caps = [], []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        chosen = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        picks.extend(chosen)
        caps.extend([_short(name, 14)] * len(chosen))
    return image_grid(images[np.array(picks, dtype=int)], caps, ncols=per_class, title="Samples per class (train)")


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
    k = len(class_names)
    fig = _fig(1.2 + 0.6 * k, 1.0 + 0.55 * k)
    ax = fig.add_subplot()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), [_short(n, 12) for n in class_names], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), [_short(n, 12) for n in class_names], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        pos = y_true == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = skm.roc_curve(pos, probs[:, c])
        ax.plot(fpr, tpr, lw=1, label=f"{_short(name)} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one-vs-rest")
    ax.legend(fontsize=7, loc="lower right")
    return fig


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


def per_class_thresholds(choice: dict, class_names: list[str], val_probs: np.ndarray | None = None,
                         val_labels: np.ndarray | None = None) -> Figure:
    """Auto-accept thresholds per predicted class and, when val is given, the share of each class's val
    predictions they accept and the precision of those (the target as a dashed line)."""
    k = len(class_names)
    thr = np.asarray(choice["thresholds"], dtype=np.float64)
    fig = _fig(10, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    shown = np.where(np.isfinite(thr), thr, 1.0)
    bars = ax1.bar(range(k), shown, color=["tab:blue" if np.isfinite(t) else "lightgrey" for t in thr])
    for b, t, row in zip(bars, thr, choice["per_class"]):
        label = "none" if not np.isfinite(t) else f"{t:.3f}" + ("*" if row["source"] != "class" else "")
        ax1.text(b.get_x() + b.get_width() / 2, 0.02, label, ha="center", va="bottom", rotation=90, fontsize=7)
    ax1.set_xticks(range(k), [_short(n, 12) for n in class_names], rotation=45, ha="right", fontsize=7)
    ax1.set_ylim(0, 1)
    ax1.set_title(f"threshold per predicted class ({choice['mode']}; * global fallback)", fontsize=9)
    if val_probs is not None and val_labels is not None:
        pred, conf = val_probs.argmax(1), val_probs.max(1)
        acc = conf >= thr[pred]
        cov = [acc[pred == c].mean() if (pred == c).any() else 0.0 for c in range(k)]
        prec = [((pred == val_labels) & acc & (pred == c)).sum() / max((acc & (pred == c)).sum(), 1) for c in range(k)]
        x = np.arange(k)
        ax2.bar(x - 0.2, cov, 0.4, label="coverage")
        ax2.bar(x + 0.2, prec, 0.4, label="precision")
        ax2.axhline(choice["target_precision"], color="red", ls="--", lw=0.8, label=f"target {choice['target_precision']}")
        ax2.set_xticks(x, [_short(n, 12) for n in class_names], rotation=45, ha="right", fontsize=7)
        ax2.set_ylim(0, 1.05)
        ax2.legend(fontsize=7, loc="lower left")
        ax2.set_title("val: accepted share and precision per predicted class", fontsize=9)
    else:
        ax2.axis("off")
    return fig

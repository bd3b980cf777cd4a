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


def _one_vs_rest(y_true: np.ndarray, class_names: list[str]):
    """(class index, name, positives mask) for every class with both positives and negatives."""
    for c, name in enumerate(class_names):
        pos = y_true == c
        if pos.any() and not pos.all():
            yield c, name, pos


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Figure:
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    for c, name, pos in _one_vs_rest(y_true, class_names):
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


def preprocessing_preview(before: np.ndarray, after: np.ndarray, title: str = "") -> Figure:
    """Row 0: images as loaded; row 1: the same images after preprocessing (0-255 shown as is)."""
    grid = np.concatenate([before, after])
    caps = ["before"] * len(before) + ["after"] * len(after)
    return image_grid(grid, caps, ncols=len(before), title=title or "Preprocessing preview")


# --- evaluate stage: intervals, calibration, operating points, explanations ----------------------------------

def forest(labels: list[str], values, lows, highs, title: str = "", xlabel: str = "", refs: dict | None = None,
           xlim: tuple | None = (0, 1)) -> Figure:
    """Point estimates with their intervals, one row each (top to bottom in the order given); ``refs`` are
    vertical reference lines {label: x}. Undefined values (None/NaN) are written as "undefined"."""
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
    """One-vs-rest precision-recall curves with average precision; dotted: each class's prevalence."""
    fig = _fig(5.5, 4.5)
    ax = fig.add_subplot()
    for c, name, pos in _one_vs_rest(y_true, class_names):
        prec, rec, _ = skm.precision_recall_curve(pos, probs[:, c])
        ap = skm.average_precision_score(pos, probs[:, c])
        (line,) = ax.plot(rec, prec, lw=1, label=f"{_short(name)} (AP {ap:.3f})")
        ax.axhline(pos.mean(), color=line.get_color(), lw=0.5, ls=":")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall, one-vs-rest")
    ax.legend(fontsize=7, loc="lower left")
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
                       cell: float = 1.0) -> Figure:
    """One row per class: its most confident correct prediction (left pair) and its most confident error
    (right pair), each shown as is and with the Grad-CAM of the predicted class. ``rows``: {class, correct,
    wrong}, where correct/wrong is None or {image, cam, caption}."""
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
    fig.suptitle(title + "\nleft: most confident correct; right: most confident error of the class", fontsize=9)
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
    g = choice.get("guarantee", 0.0)
    how = f"Learn-then-Test, guarantee {g}" if g else "val point estimate"
    ax1.set_title(f"threshold per predicted class ({choice['mode']}, {how}; * global)", fontsize=9)
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

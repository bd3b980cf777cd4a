"""Every figure for any class count (K = 2, 30, 100) and for multi-label labels: nothing raises, the
figure's size stays bounded, and past the documented thresholds a figure shows less and says so.

Seeded synthetic arrays (noise images, made-up probabilities): these are shape and edge tests, not
results."""

import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

import workbench  # noqa: F401
from workbench import explore, viz
from workbench.data import Dataset
from workbench.errors import WorkbenchError

KS = (2, 30, 100)
MAX_W, MAX_H = 16.0, 20.0


def render(fig) -> Figure:
    """Lay out and draw the figure (where layout problems surface) and check its size."""
    assert isinstance(fig, Figure)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # e.g. "constrained_layout not applied": axes collapsed
        png = viz.to_png(fig, dpi=30)
    assert png[:4] == b"\x89PNG"
    w, h = fig.get_size_inches()
    assert 0 < w <= MAX_W and 0 < h <= MAX_H, (w, h)
    return fig


def names(k):
    return [f"class number {c:03d}" for c in range(k)]


def single(k, n=400, seed=0):
    """Labels with every class present, and probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, max(n - k, 0))])
    logits = rng.normal(0, 1, (len(y), k))
    logits[np.arange(len(y)), y] += rng.uniform(0, 4, len(y))
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def multi(k, n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(0, 1, (n, k)) < 0.2).astype(np.int64)
    y[0], y[1] = 0, 1                            # every label has positives and negatives
    p = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, y.shape), 0, 1)
    return y, p


def images(n, side=12, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, channels), dtype=np.uint8)


def dataset(k, multilabel=False, n_train=None, channels=3):
    n_train = n_train or max(3 * k, 40)
    labels, imgs = {}, {}
    for i, split in enumerate(("train", "val", "test")):
        n = n_train if split == "train" else max(k, 20)
        labels[split] = multi(k, n, i)[0] if multilabel else single(k, n, i)[0][:n]
        imgs[split] = images(len(labels[split]), channels=channels, seed=i)
    return Dataset(name=f"synthetic-{k}", images=imgs, labels=labels, class_names=names(k),
                   task="multi-label, binary-class" if multilabel else ("binary-class" if k == 2 else "multi-class"))


def tick_labels(ax, axis="x"):
    return [t for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()) if t.get_text()]


def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


# ---------------------------------------------------------------------- dataset figures
@pytest.mark.parametrize("k", KS)
def test_class_balance_and_label_prevalence(k):
    y, _ = single(k)
    fig = render(viz.class_balance({"train": np.bincount(y, minlength=k).tolist(),
                                    "val": np.bincount(y[:50], minlength=k).tolist()}, names(k)))
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * k and len(tick_labels(ax)) <= viz.MAX_TICK_LABELS
    assert ("one name in" in ax.get_title()) == (k > viz.MAX_TICK_LABELS)
    ym = {"train": multi(k, 300)[0], "test": multi(k, 80, 1)[0]}
    fig = render(viz.label_prevalence(ym, names(k)))
    bars = fig.axes[0].patches
    assert len(bars) == 2 * k
    np.testing.assert_allclose([b.get_height() for b in bars[:k]], ym["train"].mean(0))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_samples_per_class_is_capped(k, multilabel):
    y = multi(k, 500)[0] if multilabel else single(k, 500)[0]
    fig = render(viz.samples_per_class(images(len(y)), y, names(k), per_class=6))
    shown = sum(len(ax.images) for ax in fig.axes)
    if k <= 12:
        assert shown == 6 * k
    else:
        assert shown <= viz.MAX_GRID_IMAGES and shown == k * max(1, min(6, viz.MAX_GRID_IMAGES // k))
        assert ("label" if multilabel else "class") in fig._suptitle.get_text()


def test_image_grid_caps_the_number_of_images():
    fig = render(viz.image_grid(images(300), [f"c{i}" for i in range(300)], ncols=12, title="many"))
    assert sum(len(ax.images) for ax in fig.axes) == 240 and "first 240 of 300" in fig._suptitle.get_text()


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_explore_figures_for_any_class_count(k, multilabel):
    ds = dataset(k, multilabel)
    fig = render(explore.intensity_histograms(ds))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == min(k, explore.MAX_HIST_PANELS)
    if k > explore.MAX_HIST_PANELS:
        assert f"{explore.MAX_HIST_PANELS} of {k}" in fig._suptitle.get_text()
    render(explore.balance_figure(ds))
    cls = ds.class_names[k - 1]
    idx = explore.filter_indices(ds, "train", cls)
    assert len(idx) and (ds.labels["train"][idx, k - 1] == 1).all() if multilabel else \
        (ds.labels["train"][idx] == k - 1).all()
    fig = render(explore.grid_figure(ds, "train", cls, 0, per_page=16))
    caps = [ax.get_title() for ax in fig.axes if ax.images]
    assert caps and all(cls[:12] in c for c in caps)
    from workbench import augment
    fig = render(explore.augmentation_figure(ds, augment.build("light", 0, 3), n_images=4, n_samples=2))
    assert sum(1 for ax in fig.axes if ax.images) == 4 * 3
    fig = render(explore.preprocessing_figure(ds, "median", "clahe", "none", n_images=5))
    assert sum(1 for ax in fig.axes if ax.images) == 10


def test_previews_need_fewer_images_than_classes():
    ds = dataset(100, n_train=30)                        # 100 classes, 30 train images: most classes absent
    idx = explore.preview_indices(ds.labels["train"], 6, seed=1)
    assert len(idx) == 6 and len(set(ds.labels["train"][idx].tolist())) == 6   # six different classes
    assert explore.preview_indices(ds.labels["train"], 6, 1).tolist() == idx.tolist()  # seeded
    assert len(explore.preview_indices(ds.labels["train"], 99, 0)) == 30
    from workbench import augment
    render(explore.augmentation_figure(ds, augment.build("light", 0, 3), n_images=6))
    render(explore.preprocessing_figure(ds))


@pytest.mark.parametrize("k", KS)
def test_inspect_figure_shows_the_top_classes(k):
    y, p = single(k, 5)
    true = int(np.argsort(p[0])[0])                      # the least probable class: outside the top 10
    fig = render(explore.inspect_figure(images(1)[0], p[0], names(k), true, np.ones((12, 12)), "t"))
    bars = fig.axes[1].patches
    if k <= explore.TOP_BARS:
        assert len(bars) == k
    else:
        assert len(bars) == explore.TOP_BARS + 1 and "top 10 of" in fig.axes[1].get_title()
        assert bars[-1].get_facecolor()[:3] != bars[0].get_facecolor()[:3]   # the true class, in green
    ym, pm = multi(k, 5)
    row = ym[2]                                          # the labels present: a 0/1 row, or a list of indices
    n_bars = min(k, explore.TOP_BARS) + sum(
        1 for c in np.flatnonzero(row) if c not in np.argsort(-pm[2], kind="stable")[:explore.TOP_BARS])
    for true in (row, np.flatnonzero(row).tolist()):
        fig = render(explore.inspect_figure(images(1, channels=1)[0], pm[2], names(k), true))
        assert "present" in fig.axes[1].get_title() and len(fig.axes[1].patches) == n_bars
        labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
        assert all(names(k)[c][:16] in labels for c in np.flatnonzero(row))
    with pytest.raises(WorkbenchError, match="0/1 vector"):
        explore.inspect_figure(images(1)[0], pm[0], names(k), np.array([1, 0, 1] if k != 3 else [1, 0]))
    with pytest.raises(WorkbenchError, match="outside"):
        explore.inspect_figure(images(1)[0], pm[0], names(k), [k])


# ---------------------------------------------------------------------- evaluate / annotate figures
@pytest.mark.parametrize("k", KS)
def test_confusion_matrix(k):
    y, p = single(k)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, p.argmax(1)), 1)
    fig = render(viz.confusion_matrix(cm, names(k)))
    ax = fig.axes[0]
    assert len(ax.texts) == (k * k if k <= viz.MAX_CELL_TEXT else 0)
    assert len(tick_labels(ax, "x")) <= viz.MAX_TICK_LABELS and len(tick_labels(ax, "y")) <= viz.MAX_TICK_LABELS
    assert fig.get_size_inches()[0] <= 13


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_roc_and_pr_curves(k, multilabel):
    y, p = multi(k) if multilabel else single(k)
    for fn in (viz.roc_curves, viz.pr_curves):
        fig = render(fn(y, p, names(k)))
        ax = fig.axes[0]
        entries = legend_texts(ax)
        if k <= viz.MAX_LEGEND:
            assert len(entries) == k
        else:
            assert len(entries) == 2 + 2 * viz.N_EXTREMES
            assert any(e.startswith("macro") for e in entries) and any(e.startswith("micro") for e in entries)
            assert "best and worst 3" in ax.get_title()
        assert ("per label" in ax.get_title()) == multilabel


def test_many_class_roc_marks_the_right_best_and_worst():
    y, p = single(30)
    p[:, 7] = (y == 7) + 0.01 * np.arange(len(y)) / len(y)   # class 7: perfectly separated
    p[:, 11] = (y != 11).astype(float)                        # class 11: perfectly wrong
    ax = viz.roc_curves(y, p, names(30)).axes[0]
    entries = legend_texts(ax)
    best = [e for e in entries if e.startswith("best")]
    worst = [e for e in entries if e.startswith("worst")]
    assert "class number 007" in best[0] and "(1.000)" in best[0]
    assert "class number 011" in worst[0] and "(0.000)" in worst[0]


@pytest.mark.parametrize("k", KS)
def test_per_class_thresholds(k):
    from workbench.annotate import per_class_thresholds
    y, p = single(k, 600)
    choice = per_class_thresholds(p, y, 0.9, "per-class", min_class_val=5)
    fig = render(viz.per_class_thresholds(choice, names(k), p, y))
    assert len(fig.axes[0].texts) == (k if k <= viz.MAX_CELL_TEXT else 0)
    assert len(tick_labels(fig.axes[0])) <= viz.MAX_TICK_LABELS // 2


@pytest.mark.parametrize("k", KS)
def test_per_label_thresholds(k):
    from workbench.metrics import multilabel_thresholds
    y, p = multi(k, 600)
    ml = multilabel_thresholds(p, y, 0.9)
    choice = {"mode": "per-label", "target_precision": 0.9, "guarantee": 0.0, "thresholds": ml["thresholds"],
              "per_class": [{"class": r["label"], "threshold": r["threshold"], "source": "label"} for r in ml["per_label"]]}
    fig = render(viz.per_class_thresholds(choice, names(k), p, y))
    assert "per label" in fig.axes[0].get_title() and "*" not in "".join(t.get_text() for t in fig.axes[0].texts)
    cov = [b.get_height() for b in fig.axes[1].patches[:k]]
    want = [r["val_coverage"] for r in ml["per_label"]]            # the metrics module's own numbers
    np.testing.assert_allclose(cov, [0.0 if w is None or not np.isfinite(w) else w for w in want], atol=1e-9)


@pytest.mark.parametrize("k", KS)
def test_explanation_galleries(k):
    rng = np.random.default_rng(k)
    imgs = images(2 * k)
    item = lambda i: {"image": imgs[i], "cam": rng.uniform(0, 1, (12, 12)), "caption": f"#{i}"}  # noqa: E731
    rows = [{"class": n, "correct": item(2 * c), "wrong": item(2 * c + 1) if c % 3 == 0 else None}
            for c, n in enumerate(names(k))]
    fig = render(viz.correct_wrong_grid(rows))
    n_rows = min(k, viz.MAX_CLASS_ROWS)
    assert len(fig.axes) == 4 * n_rows
    if k > viz.MAX_CLASS_ROWS:
        assert f"{viz.MAX_CLASS_ROWS} of {k} classes" in fig._suptitle.get_text()
        shown = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("class")]
        with_error = sum(r["wrong"] is not None for r in rows)
        assert sum(int(s[-3:]) % 3 == 0 for s in shown) == min(with_error, viz.MAX_CLASS_ROWS)  # errors first
    render(viz.cam_gallery(imgs[:8], rng.uniform(0, 1, (8, 12, 12)), [f"{i}" for i in range(8)]))
    render(viz.explanation_rows(imgs[:4], rng.uniform(0, 1, (4, 12, 12)), rng.normal(0, 1, (4, 12, 12)),
                                ["a", "b", "c", "d"]))


@pytest.mark.parametrize("k", KS)
def test_forest_and_other_evaluate_figures(k):
    rows = 3 + 2 * k                                      # headline + sensitivity and PPV per class
    rng = np.random.default_rng(k)
    v = rng.uniform(0.3, 0.9, rows)
    fig = render(viz.forest([f"row {i}" for i in range(rows)], v, v - 0.1, v + 0.1, title="t"))
    assert len(tick_labels(fig.axes[0], "y")) == min(rows, viz.MAX_FOREST_ROWS)
    assert ("of %d rows" % rows in fig.axes[0].get_title()) == (rows > viz.MAX_FOREST_ROWS)
    y, p = single(k)
    conf, correct = p.max(1), p.argmax(1) == y
    render(viz.precision_coverage_curve(conf, correct, 0.8, 0.95))
    if k == 2:
        yv, pv = single(2, 200, 1)
        render(viz.operating_point_roc(yv, pv[:, 1], y, p[:, 1], 0.4, 0.9, positive=names(2)[1]))
    edges = np.linspace(0, 1, 16)
    rel = {"edges": edges.tolist(), "accuracy": [np.nan] + list(edges[1:-1]),
           "confidence": [np.nan] + list(edges[1:-1] + 0.02), "count": [0] + [10] * 14}
    render(viz.reliability_diagram(rel, rel, 0.02, 0.01, 1.3))
    import pandas as pd
    hist = pd.DataFrame({"loss": [2.0, 1.5], "val_loss": [2.1, 1.7], "acc": [0.3, 0.5], "val_acc": [0.3, 0.45],
                         "learning_rate": [1e-3, 5e-4]})
    render(viz.training_curves(hist))
    render(viz.augmentation_preview(images(3), [images(3, seed=1)]))
    render(viz.preprocessing_preview(images(3), images(3, seed=2)))
    fig = viz.baseline_comparison({"ResNet-18 (28)": {"acc": 0.9, "auc": 0.99}},
                                  {"acc": 0.91, "auc": 0.98, "acc_ci95": [0.9, 0.92], "auc_ci95": None})
    render(fig)                                           # returns its figure (it returned None before)

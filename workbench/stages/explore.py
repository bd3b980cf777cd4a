"""Interactive exploration (notebook 00_explore): dataset browser, augmentation preview, prediction
inspector. Pure helpers first (testable without a browser), then thin ipywidgets wiring.

Every builder returns a live widget in an interactive kernel and a static figure/HTML summary when
headless (papermill, ``WORKBENCH_HEADLESS=1``), so the shared report shows what the widget showed.

Any class count and multi-label datasets (labels (N, L) of 0/1): a "class" filter then means "label
present", class balance becomes label prevalence, and figures that draw one panel per class cap the
number of panels (``MAX_HIST_PANELS``) and say so.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..data import augment as _augment
from ..core import viz
from ..data.loaders import SPLITS, Dataset
from ..core.errors import WorkbenchError
from ..core.progress import headless

ALL = "all classes"
MAX_HIST_PANELS = 16   # intensity histograms: the classes with the most images beyond this
TOP_BARS = 10          # inspect_figure: the most probable classes beyond this


def _multilabel(ds: Dataset, split: str = "train") -> bool:
    return viz.is_multilabel(ds.labels[split])


def _class_mask(labels: np.ndarray, c: int) -> np.ndarray:
    """Images of class ``c`` (multi-label: with label ``c`` present)."""
    labels = np.asarray(labels)
    return labels[:, c] == 1 if viz.is_multilabel(labels) else labels.reshape(len(labels)) == c


def label_text(names: list[str], label, width: int = 12) -> str:
    """A label as text: the class name, or (multi-label) the present labels joined by ';' ('none')."""
    a = np.asarray(label)
    if a.ndim == 1 and a.size > 1:
        present = [names[c][:width] for c in np.flatnonzero(a == 1)]
        return ";".join(present) if present else "none"
    return names[int(a.reshape(-1)[0])][:width]


def preview_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` images (or all there are) covering as many classes as possible: one image
    of each of ``n`` seeded-random classes (multi-label: random images). Needs no more images than ``n``,
    whatever the class count."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    m = len(labels)
    if n >= m:
        return np.arange(m)
    if viz.is_multilabel(labels):
        return np.sort(rng.choice(m, size=n, replace=False))
    flat = labels.reshape(m)
    classes = rng.permutation(np.unique(flat))
    picked = [int(rng.choice(np.flatnonzero(flat == c))) for c in classes[:n]]
    if len(picked) < n:
        rest = np.setdiff1d(np.arange(m), picked)
        picked += rng.choice(rest, size=n - len(picked), replace=False).tolist()
    return np.sort(np.array(picked, dtype=int))


def balance_figure(ds: Dataset) -> Figure:
    """Class balance per split, or for a multi-label dataset label prevalence per split."""
    if _multilabel(ds):
        return viz.label_prevalence({s: ds.labels[s] for s in SPLITS if s in ds.labels}, ds.class_names)
    return viz.class_balance(ds.counts(), ds.class_names)


# ----------------------------------------------------------------------------------------- pure helpers
def filter_indices(ds: Dataset, split: str, class_name: str = ALL) -> np.ndarray:
    """Indices of ``split`` whose label is ``class_name`` (or all of them)."""
    labels = ds.labels[split]
    if class_name == ALL:
        return np.arange(len(labels))
    return np.flatnonzero(_class_mask(labels, ds.class_names.index(class_name)))


def page(indices: np.ndarray, page_no: int, per_page: int) -> np.ndarray:
    n_pages = max(1, int(np.ceil(len(indices) / per_page)))
    page_no = int(np.clip(page_no, 0, n_pages - 1))
    return indices[page_no * per_page:(page_no + 1) * per_page]


def difference_hash(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """64-bit dHash per image (grayscale, resized to (hash_size+1) x hash_size): near-identical images
    differ in few bits whatever small changes of brightness or compression they went through."""
    import cv2
    gray = images.mean(axis=-1).astype(np.float32) if images.shape[-1] == 3 else images[..., 0].astype(np.float32)
    small = np.stack([cv2.resize(g, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA) for g in gray])
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), -1)
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def near_duplicates(ds: Dataset, max_distance: int = 2, chunk: int = 2048) -> pd.DataFrame:
    """Pairs of images in different splits whose dHashes differ in at most ``max_distance`` bits
    (``exact`` marks byte-identical pixels). Leakage across splits inflates test metrics."""
    hashes = {s: difference_hash(ds.images[s]) for s in SPLITS}
    rows = []
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        hb = hashes[b]
        for start in range(0, len(hashes[a]), chunk):
            ha = hashes[a][start:start + chunk]
            dist = np.bitwise_count(ha[:, None] ^ hb[None, :])
            ia, ib = np.nonzero(dist <= max_distance)
            for i, j in zip(ia + start, ib):
                exact = bool(np.array_equal(ds.images[a][i], ds.images[b][j]))
                rows.append((a, int(i), b, int(j), int(dist[i - start, j]), exact))
    return pd.DataFrame(rows, columns=["split_a", "index_a", "split_b", "index_b", "distance", "exact"])


def intensity_histograms(ds: Dataset, split: str = "train", bins: int = 32,
                         max_panels: int = MAX_HIST_PANELS) -> Figure:
    """Per-class histograms of mean pixel intensity (per channel for RGB); multi-label: per label present.
    At most ``max_panels`` panels: with more classes, those with the most images (the title says so)."""
    x, y = ds.images[split], ds.labels[split]
    k = ds.num_classes
    means = x.reshape(len(x), -1, x.shape[-1]).mean(1)       # (N, C): one pass over the pixels
    counts = np.array([int(_class_mask(y, c).sum()) for c in range(k)])
    shown = np.arange(k) if k <= max_panels else np.sort(np.argsort(-counts, kind="stable")[:max_panels])
    ncols = min(4, len(shown))
    nrows = int(np.ceil(len(shown) / ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = ("tab:red", "tab:green", "tab:blue") if x.shape[-1] == 3 else ("black",)
    for j, ax in enumerate(axes.flat):
        if j >= len(shown):
            ax.axis("off")
            continue
        c = int(shown[j])
        sel = means[_class_mask(y, c)]
        for ch, color in enumerate(colors):
            ax.hist(sel[:, ch] if len(sel) else [], bins=bins, range=(0, 255), histtype="step", color=color)
        ax.set_title(f"{ds.class_names[c][:24]} (n={len(sel)})", fontsize=8)
        ax.tick_params(labelsize=7)
    what = "label present" if viz.is_multilabel(y) else "class"
    more = f"; the {len(shown)} of {k} {'labels' if viz.is_multilabel(y) else 'classes'} with the most images" \
        if len(shown) < k else ""
    fig.suptitle(f"Mean intensity per image, by {what} ({split}{more})")
    return fig


def grid_figure(ds: Dataset, split: str, class_name: str, page_no: int, per_page: int = 32) -> Figure:
    idx = page(filter_indices(ds, split, class_name), page_no, per_page)
    caps = [f"#{i} {label_text(ds.class_names, ds.labels[split][i])}" for i in idx]
    return viz.image_grid(ds.images[split][idx], caps, ncols=8, title=f"{split} · {class_name} · page {page_no + 1}")


def augmentation_figure(ds: Dataset, transform, n_images: int = 6, n_samples: int = 3, seed: int = 0) -> Figure:
    idx = preview_indices(ds.labels["train"], n_images, seed)
    originals = ds.images["train"][idx]
    return viz.augmentation_preview(originals, [_augment.apply(transform, originals) for _ in range(n_samples)])


def duplicates_html(dups: pd.DataFrame, limit: int = 20) -> str:
    if dups.empty:
        return "<p>No near-duplicate images across splits.</p>"
    counts = dups.groupby(["split_a", "split_b"]).size().to_dict()
    summary = ", ".join(f"{a}↔{b}: {n}" for (a, b), n in counts.items())
    table = dups.head(limit).to_html(index=False)
    return f"<p><b>{len(dups)} near-duplicate pairs across splits</b> ({html.escape(summary)}); first {limit}:</p>{table}"


# ----------------------------------------------------------------------------------------- widgets
def open_dataset(params) -> Dataset:
    """Load the dataset to explore; when ``run_dir`` is given, record params and provenance there."""
    from ..data.loaders import load_dataset
    from ..core.runs import add_provenance, open_stage
    ds = load_dataset(params.dataset, size=params.size, max_per_split=params.max_per_split, seed=params.seed)
    if params.run_dir:
        add_provenance(open_stage("explore", params), data=ds.describe())
    return ds


def _static(*objects) -> None:
    """Headless face of a widget: display each figure/HTML so the executed notebook (report) keeps it."""
    from IPython.display import display
    for o in objects:
        display(o)


def _png_widget(fig: Figure):
    import ipywidgets as W
    return W.Image(value=viz.to_png(fig), format="png")


def dataset_browser(ds: Dataset, per_page: int = 32, duplicates: bool = True):
    """Image grid filtered by split and class, class balance, intensity histograms, near-duplicates."""
    dups = near_duplicates(ds) if duplicates else pd.DataFrame()
    if headless():
        from IPython.display import HTML
        return _static(balance_figure(ds), grid_figure(ds, "train", ALL, 0, per_page),
                       intensity_histograms(ds), HTML(duplicates_html(dups)))
    import ipywidgets as W
    split = W.Dropdown(options=list(SPLITS), value="train", description="split")
    cls = W.Dropdown(options=[ALL, *ds.class_names], value=ALL, description="class")
    pg = W.IntSlider(value=0, min=0, max=0, description="page")
    image = _png_widget(grid_figure(ds, "train", ALL, 0, per_page))
    image.add_class("wb-browser-grid")
    count = W.HTML()

    def refresh(_=None):
        n = len(filter_indices(ds, split.value, cls.value))
        pg.max = max(0, int(np.ceil(n / per_page)) - 1)
        count.value = f"{n} images"
        image.value = viz.to_png(grid_figure(ds, split.value, cls.value, pg.value, per_page))

    for w in (split, cls, pg):
        w.observe(refresh, names="value")
    refresh()
    tabs = W.Tab(children=[
        W.VBox([W.HBox([split, cls, pg, count]), image]),
        _png_widget(balance_figure(ds)),
        _png_widget(intensity_histograms(ds)),
        W.HTML(duplicates_html(dups)),
    ])
    for i, t in enumerate(("images", "label prevalence" if _multilabel(ds) else "class balance", "intensity",
                           "near-duplicates")):
        tabs.set_title(i, t)
    return tabs


def augmentation_preview(ds: Dataset, preset: str = "microscopy", seed: int = 0):
    """Preset or per-parameter controls; originals beside augmented samples; seed control."""
    n_channels = ds.input_shape[-1]
    if headless():
        return _static(augmentation_figure(ds, _augment.build(preset, seed, n_channels), seed=seed))
    import ipywidgets as W
    mode = W.Dropdown(options=[*_augment.PRESETS, "custom"], value=preset, description="preset")
    seed_w = W.IntText(value=seed, description="seed")
    n_w = W.IntSlider(value=3, min=1, max=6, description="samples")
    ctl = {
        "hflip": W.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="h-flip p"),
        "vflip": W.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="v-flip p"),
        "rotate": W.FloatSlider(value=15, min=0, max=180, step=1, description="rotate °"),
        "translate": W.FloatSlider(value=0.06, min=0, max=0.3, step=0.01, description="shift"),
        "scale": W.FloatSlider(value=0.1, min=0, max=0.5, step=0.01, description="scale ±"),
        "brightness": W.FloatSlider(value=0.1, min=0, max=0.5, step=0.01, description="brightness"),
        "contrast": W.FloatSlider(value=0.1, min=0, max=0.5, step=0.01, description="contrast"),
        "blur": W.FloatSlider(value=0.0, min=0, max=1, step=0.05, description="blur p"),
    }
    image = _png_widget(augmentation_figure(ds, _augment.build(preset, seed, n_channels), seed=seed))
    image.add_class("wb-augment-preview")
    sliders = W.VBox(list(ctl.values()))

    def transform():
        if mode.value == "custom":
            return _augment.custom({k: w.value for k, w in ctl.items()}, seed_w.value, n_channels)
        return _augment.build(mode.value, seed_w.value, n_channels)

    def refresh(_=None):
        sliders.layout.display = "" if mode.value == "custom" else "none"
        image.value = viz.to_png(augmentation_figure(ds, transform(), n_samples=n_w.value, seed=seed_w.value))

    for w in (mode, seed_w, n_w, *ctl.values()):
        w.observe(refresh, names="value")
    refresh()
    return W.VBox([W.HBox([mode, seed_w, n_w]), sliders, image])


# ----------------------------------------------------------------------------------------- predictions
INSPECT_FILTERS = ("all", "wrong only", "most confident errors")


def runs_with_predictions(runs_dir: Path | None = None) -> list[Path]:
    from ..core.paths import runs_root
    root = Path(runs_dir) if runs_dir else runs_root()
    return sorted((p for p in root.glob("*/") if (p / "predictions.npz").is_file()), reverse=True) if root.is_dir() else []


def prediction_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    pred = probs.argmax(1)
    return pd.DataFrame({
        "index": np.arange(len(labels)), "true": [class_names[i] for i in labels],
        "predicted": [class_names[i] for i in pred], "confidence": probs.max(1),
        "p_true": probs[np.arange(len(labels)), labels], "correct": pred == labels,
    })


def filter_predictions(table: pd.DataFrame, mode: str) -> pd.DataFrame:
    if mode == "all":
        return table
    wrong = table[~table["correct"]]
    if mode == "wrong only":
        return wrong
    if mode == "most confident errors":
        return wrong.sort_values("confidence", ascending=False, kind="stable")
    raise ValueError(f"unknown filter {mode!r}; choose one of {', '.join(INSPECT_FILTERS)}")


def inspect_figure(image: np.ndarray, probs: np.ndarray, class_names: list[str], true,
                   heatmap: np.ndarray | None = None, title: str = "", top: int = TOP_BARS) -> Figure:
    """Image, class-probability bars (true class marked), and a Grad-CAM overlay when given.

    ``true``: the true class index, or (multi-label) the labels present: a 0/1 array (length L) or a list
    (set) of label indices; the bars are then each label's own probability (sigmoid) with the 0.5
    decision line. With more than
    ``top`` classes only the ``top`` most probable are drawn, plus the true ones (the title says so)."""
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    ml = isinstance(true, (list, tuple, set, frozenset)) or np.ndim(true) == 1
    if isinstance(true, np.ndarray) and ml:          # a row of a label matrix: 0/1 per label
        if true.size != k:
            raise WorkbenchError(f"inspect_figure: {true.size} true labels for {k} label names: a multi-label truth "
                                 "is the 0/1 vector of the labels present, or a list of their indices")
        truth = set(np.flatnonzero(true == 1).tolist())
    elif ml:                                          # a list (tuple, set) of the indices present
        truth = {int(c) for c in true}
        if any(not 0 <= c < k for c in truth):
            raise WorkbenchError(f"inspect_figure: true label indices {sorted(truth)} outside 0..{k - 1}")
    else:
        truth = {int(true)}
    order = np.argsort(-probs, kind="stable")
    shown = order[:top].tolist() if k > top else list(range(k))
    shown += [c for c in sorted(truth) if c not in shown]
    if k > top:
        shown.sort(key=lambda c: -probs[c])
    ncols = 3 if heatmap is not None else 2
    fig = Figure(figsize=(3.4 * ncols, 3.2 if len(shown) <= 12 else 3.2 + 0.12 * (len(shown) - 12)),
                 layout="constrained")
    axes = fig.subplots(1, ncols)
    show = image[..., 0] if image.shape[-1] == 1 else image
    axes[0].imshow(show, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
    axes[0].axis("off")
    axes[0].set_title(title, fontsize=8)
    colors = ["tab:green" if c in truth else "tab:blue" for c in shown]
    axes[1].barh(range(len(shown)), probs[shown], color=colors)
    axes[1].set_yticks(range(len(shown)), [str(class_names[c])[:16] for c in shown], fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set_xlim(0, 1)
    what = "label probabilities (green: present)" if ml else "class probabilities (green: true)"
    if ml:
        axes[1].axvline(0.5, color="grey", ls="--", lw=0.8)
    if k > top:
        what += f"\ntop {top} of {k}" + (" + true" if any(c not in order[:top] for c in truth) else "")
    axes[1].set_title(what, fontsize=8)
    if heatmap is not None:
        axes[2].imshow(show, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
        axes[2].imshow(heatmap, cmap="jet", alpha=0.45, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
        axes[2].axis("off")
        axes[2].set_title("Grad-CAM (predicted class)", fontsize=8)
    return fig


def _grad_cam(model, image: np.ndarray, class_index: int) -> np.ndarray | None:
    """Grad-CAM heat map (H, W) in [0, 1] by ``workbench.explain.gradcam`` (the one implementation), or None
    without a model or for one without a suitable convolutional feature map (the inspector then shows
    image and probabilities only)."""
    if model is None:
        return None
    from ..model import explain
    try:
        return explain.gradcam(model, np.asarray(image)[None], class_index=int(class_index), batch_size=1)[0]
    except WorkbenchError:
        return None


def prediction_inspector(run_dir: str | Path | None = None, split: str = "test"):
    """Browse a run's predictions: image, class probabilities, Grad-CAM; filters for errors.

    ``run_dir`` empty/None: the latest run with predictions (a note if there is none); "none": skip. The run
    is read back once (workbench.runload): the model sees the images through the run's input path, the
    person sees them as they are."""
    from IPython.display import HTML

    from ..model import runload
    from ..core.runs import require
    from ..core.tasks import is_multilabel, label_names
    if str(run_dir).lower() == "none":
        return HTML("<p>Prediction inspector skipped (predictions_run is 'none').</p>")
    if not run_dir:
        found = runs_with_predictions()
        if not found:
            return HTML("<p>No run with predictions yet: run the pipeline (<code>make demo</code>) and re-run this cell.</p>")
        run_dir = found[0]
    run_dir = Path(run_dir)
    require(run_dir, ("params/train.json", "predictions.npz"), "evaluate")
    trained = runload.load(run_dir)
    shown, seen = trained.dataset(raw=True).images[split], trained.dataset().images[split]
    names = trained.class_names
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as z:
        probs, labels = z[f"{split}_probs"], z[f"{split}_labels"]
    multilabel = is_multilabel(trained.task)
    if multilabel:  # one row per image: exact match of the label set; confidence of its least sure label
        pred = (probs > 0.5).astype(int)
        table = pd.DataFrame({"index": np.arange(len(labels)), "true": [label_names(r, names, trained.task) for r in labels],
                              "predicted": [label_names(r, names, trained.task) for r in pred],
                              "confidence": np.maximum(probs, 1 - probs).min(1),
                              "correct": (pred == labels).all(1)})
    else:
        table = prediction_table(probs, labels, names)
    model = trained.model

    def figure(i: int) -> Figure:
        if multilabel:
            cls = int(np.abs(probs[i] - labels[i]).argmax())
            title = f"#{i} true {table['true'][i][:20]} · pred {table['predicted'][i][:20]}"
            true = [int(j) for j in np.flatnonzero(labels[i])]
        else:
            cls = int(probs[i].argmax())
            title = f"#{i} true {names[labels[i]][:14]} · pred {names[cls][:14]} ({probs[i].max():.3f})"
            true = int(labels[i])
        return inspect_figure(shown[i], probs[i], names, true, _grad_cam(model, seen[i], cls), title)

    if headless():
        errs = filter_predictions(table, "most confident errors")
        return _static(HTML(f"<p>Run {html.escape(run_dir.name)}: {int((~table['correct']).sum())} errors in "
                            f"{len(table)} {split} images; the most confident errors:</p>"),
                       *[figure(int(i)) for i in errs["index"].iloc[:3]])
    import ipywidgets as W
    filt = W.Dropdown(options=list(INSPECT_FILTERS), value="all", description="show")
    pos = W.IntSlider(value=0, min=0, max=max(0, len(table) - 1), description="item")
    info = W.HTML()
    image = _png_widget(figure(0))
    image.add_class("wb-inspector")

    def refresh(_=None):
        sub = filter_predictions(table, filt.value)
        pos.max = max(0, len(sub) - 1)
        if len(sub) == 0:
            info.value = "nothing to show for this filter"
            return
        row = sub.iloc[min(pos.value, len(sub) - 1)]
        info.value = f"{len(sub)} items · run {html.escape(run_dir.name)}"
        image.value = viz.to_png(figure(int(row["index"])))

    filt.observe(refresh, names="value")
    pos.observe(refresh, names="value")
    refresh()
    return W.VBox([W.HBox([filt, pos, info]), image])


# ----------------------------------------------------------------------------------------- preprocessing
def preprocessing_figure(ds: Dataset, denoise: str = "none", contrast: str = "none", normalize: str = "none",
                         n_images: int = 8, seed: int = 0) -> Figure:
    """The same training images before and after a preprocessing spec (as the train stage applies it)."""
    from ..data import preprocess as _pre
    idx = preview_indices(ds.labels["train"], n_images, seed)
    spec = _pre.make_spec(denoise, contrast, normalize, train_images=ds.images["train"] if normalize == "dataset" else None)
    before = ds.images["train"][idx]
    return viz.preprocessing_preview(before, _pre.apply_spec(spec, before), title=f"Preprocessing: {_pre.describe(spec)}")


def dicom_values(path: str | Path) -> tuple[np.ndarray, object]:
    """First frame of a DICOM file in modality units (HU for CT) and its dataset."""
    from pydicom.pixels import apply_modality_lut
    from ..data import dicom as _dicom
    ds = _dicom.read(Path(path))
    arr = _dicom.pixel_array(ds, path)[0]
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64), ds


def window_figure(values: np.ndarray, level: float, width: float, title: str = "") -> Figure:
    """A DICOM frame under a window (level/width) beside the histogram of its values with the window marked."""
    from ..data import preprocess as _pre
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(_pre.window(values, level, width), cmap="gray", vmin=0, vmax=255)
    ax1.axis("off")
    ax1.set_title(title or f"level {level:g}, width {width:g}", fontsize=9)
    ax2.hist(values.ravel(), bins=100, color="grey")
    ax2.axvspan(level - width / 2, level + width / 2, color="tab:orange", alpha=0.3, label="window")
    ax2.set_yscale("log")
    ax2.set_xlabel("modality value (HU for CT)")
    ax2.legend(fontsize=7)
    return fig


def default_dicom_file() -> str:
    """pydicom's bundled real CT slice, for trying the window controls without your own data."""
    from pydicom.data import get_testdata_file
    return get_testdata_file("CT_small.dcm")


def preprocessing_preview(ds: Dataset, dicom_file: str = "", seed: int = 0):
    """Denoise / contrast / normalisation on the dataset, and DICOM window level/width sliders."""
    from ..data import preprocess as _pre
    path = dicom_file or default_dicom_file()
    values, dcm = dicom_values(path)
    level0, width0 = _pre.WINDOW_PRESETS["abdomen"] if str(dcm.get("Modality", "")) == "CT" else (
        float(np.median(values)), float(values.max() - values.min()) or 1.0)
    label = f"{Path(path).name} ({dcm.get('Modality', '?')})"
    if headless():
        return _static(preprocessing_figure(ds, "median", "clahe", "none", seed=seed),
                       *[window_figure(values, *_pre.WINDOW_PRESETS[p], title=f"{label}: {p} window")
                         for p in ("abdomen", "bone")] if str(dcm.get("Modality", "")) == "CT" else
                       [window_figure(values, level0, width0, title=label)])
    import ipywidgets as W
    dn = W.Dropdown(options=list(_pre.DENOISE), value="none", description="denoise")
    ct = W.Dropdown(options=list(_pre.CONTRAST), value="none", description="contrast")
    nm = W.Dropdown(options=list(_pre.NORMALIZE), value="none", description="normalise")
    pre_img = _png_widget(preprocessing_figure(ds, seed=seed))
    pre_img.add_class("wb-preprocess-preview")
    lo, hi = float(values.min()), float(values.max())
    preset = W.Dropdown(options=["custom", *_pre.WINDOW_PRESETS], value="custom", description="window")
    level = W.FloatSlider(value=level0, min=min(lo, -1024.0), max=max(hi, 3000.0), step=1, description="level")
    width = W.FloatSlider(value=width0, min=1, max=max(hi - lo, 4000.0), step=1, description="width")
    win_img = _png_widget(window_figure(values, level0, width0, label))
    win_img.add_class("wb-window-preview")

    def refresh_pre(_=None):
        pre_img.value = viz.to_png(preprocessing_figure(ds, dn.value, ct.value, nm.value, seed=seed))

    def apply_preset(_=None):
        if preset.value != "custom":
            level.value, width.value = _pre.WINDOW_PRESETS[preset.value]

    def refresh_win(_=None):
        win_img.value = viz.to_png(window_figure(values, level.value, width.value, label))

    for w in (dn, ct, nm):
        w.observe(refresh_pre, names="value")
    preset.observe(apply_preset, names="value")
    level.observe(refresh_win, names="value")
    width.observe(refresh_win, names="value")
    return W.VBox([W.HBox([dn, ct, nm]), pre_img, W.HTML(f"<b>DICOM window</b> · {html.escape(label)}"),
                   W.HBox([preset, level, width]), win_img])


def _notebook():
    from ..core import cells as C
    return C.Stage(
        stage="explore", title="00 · Explore",
        inputs="a dataset (data card name or `.npz`) and, optionally, a run with predictions",
        outputs="nothing but this report (the widgets are interactive in JupyterLab; headless runs show static "
                "figures)",
        intro="In JupyterLab (`make lab`) every section is an interactive widget.",
        cells=(
            C.code('import workbench as wb\nfrom workbench import explore\n\nP = wb.params.collect("explore", globals())\n'
                   "ds = explore.open_dataset(P)"),
            C.show("ds.describe()"),
            C.md("## Dataset browser\nImages by split and class, class balance, per-class intensity histograms and "
                 "near-duplicate images across splits (perceptual hash)."),
            C.show("explore.dataset_browser(ds)"),
            C.md("## Augmentation preview\nA preset, or your own parameters (choose *custom*); originals in the first row."),
            C.show("explore.augmentation_preview(ds, seed=P.seed)"),
            C.md("## Preprocessing preview\nDenoise, contrast and normalisation as the train stage applies them "
                 "(`-p denoise …`), and DICOM window level/width on modality values (HU for CT)."),
            C.show("explore.preprocessing_preview(ds, P.dicom_file, seed=P.seed)"),
            C.md("## Prediction inspector\nA run's test predictions: image, class probabilities and Grad-CAM; "
                 "filter to errors or to the most confident errors. The model sees the images through the run's "
                 "own input path."),
            C.show("explore.prediction_inspector(P.predictions_run)"),
            C.md("## Embedding map\nThe same run's features (the network's pooled penultimate layer) of train, val and "
                 "test in 2-D (UMAP; t-SNE for small sets), coloured by label, prediction, confidence, split or label-audit "
                 "flag. Select points (lasso, box or click) to see their images."),
            C.show("from workbench import widgets\n\nwidgets.explore_map(P.predictions_run, seed=P.seed)"),
        ),
        result=("ds",),
    )


NOTEBOOK = _notebook()

"""`python -m bench.certify` (make bench-certify): is auto-accept on new images both safe and useful?

Real models (the demo recipe, seed 0, trained through ``train.run``) on every embedded MedMNIST file, and a
second model per dataset with 3+ classes that never saw its last class (the rule is fixed: the last class
index, whatever it is). Probabilities are calibrated with a temperature fitted on val and thresholds chosen on
val exactly as the annotate stage does (``metrics.auto_accept_thresholds``: global, target 0.99, Learn-then-Test
0.9, items beyond val's 99th OOD percentile left out); the OOD score is the stage's (``neighbours.OODScorer`` on
the run's cached embeddings).

Parts (``--part``, default all):

1. ``design`` / ``evaluation`` — **false alarms of the shift check** (workbench.shift). Exchangeable pools of
   100-5,000 images drawn without replacement from val ∪ test of each dataset, and from test alone (images the
   model never saw: val chose its epoch and temperature), at every size the dataset allows, compared with the
   real val as the annotate stage compares them. The pools are split once, by their seeds,
   into a *design* set (``DESIGN_SEEDS``) and an *evaluation* set (``EVAL_SEEDS``): ``design_eval_seeds``, pinned
   by tests/test_bench_certify.py. The floors of the minimum-effect tests are chosen on the design set alone: per
   test, the smallest floor on ``FLOOR_GRIDS`` at which the test (alone, unadjusted p ≤ alpha: an upper bound of
   how often Holm lets it fire) fires on at most ``DESIGN_RATE`` of the pools of every (dataset, model, source,
   size), over the models of ``DESIGN_MODEL_SEEDS``; the model of the last seed is only evaluated. They are
   then written into ``shift.FLOORS`` by hand, and the evaluation part checks the product's check with them,
   changing nothing after looking (it refuses to run when ``shift.FLOORS`` differs from the design's choice).
   One pool per (dataset, size) of each set goes through a folder of PNG files and the stage's folder reader
   (``pools.open_pool``) instead of the arrays. The rule the check had before (plain tests, Holm, effect ≥ the
   old floors) is scored on the same pools for comparison.
2. ``ood`` — **an honest OOD benchmark**. Near-OOD: the held-out class shown to the model that never saw it;
   another dataset with its colour statistics matched to the model's training images (per channel, quantile
   mapping; grayscale models see grayscale images). Beside the feature score (Mahalanobis on the network's
   embeddings) a pixel-statistics baseline (per-channel mean, spread, percentiles, sharpness; Mahalanobis fitted on
   the train images) and the max-softmax baseline; AUROCs as measured, and on the corruption suite.
3. ``routes`` — **certification on real pools** (3 seeds): exchangeable pools (random subsets of test),
   corrupted pools (the data card's suite, workbench.corrupt, every corruption at severity 1-3), class-prior
   shifts, and unseen-class pools (the held-out class mixed into test; BreastMNIST: grayscale RetinaMNIST
   images). Per pool: the route (val's thresholds, or certification on the pool with a simulated reviewer who
   gives the true label of every queue item; an image of an unseen class counts as wrong whatever the model
   says), the labels spent, and the precision and coverage delivered on the items no person labelled.

Writes bench/results/certify.json and certify.md. Predictions, embeddings and corrupted copies are cached in
the system temp folder (keyed by the model file's md5), so a rerun only recomputes statistics.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import workbench  # noqa: E402,F401  (JAX backend first)
from workbench import calibration, certify, corrupt, metrics, shift  # noqa: E402
from workbench.runs import strict_json  # noqa: E402

OUT = ROOT / "bench" / "results"
WORK = Path(tempfile.gettempdir()) / "workbench-bench-certify"
DATASETS = ("bloodmnist", "breastmnist", "retinamnist")
TRAIN_SEED = 0
MODEL_SEEDS = (0, 1, 2)          # base models per dataset: the check must hold for models, not one model
DESIGN_MODEL_SEEDS = (0, 1)      # floors are chosen on these models' pools; seed 2's model is only evaluated
SPLITS = ("train", "val", "test")
TARGET, GUARANTEE = 0.99, 0.9
ALPHA = shift.ALPHA
SIZES = (100, 250, 500, 1000, 2500, 5000)
N_DESIGN, N_EVAL = 100, 100
DESIGN_SEEDS = tuple(range(0, N_DESIGN))
EVAL_SEEDS = tuple(range(10_000, 10_000 + N_EVAL))
DESIGN_RATE = 0.01          # per test and (dataset, size): at most this share of design pools may fire it alone
FLOOR_GRIDS = {"confidence": np.round(np.arange(0.0, 0.301, 0.005), 4),
               "predicted_classes": np.round(np.arange(0.0, 0.601, 0.01), 4),
               "accept_share": np.round(np.arange(0.0, 0.201, 0.0025), 5),
               "doc": np.round(np.arange(0.0, 0.101, 0.001), 4),
               "ood_share": np.round(np.arange(0.0, 0.201, 0.0025), 5)}
TESTS = tuple(FLOOR_GRIDS)
# the check's rule before this benchmark (plain tests, Holm at 0.01, effect ≥ these floors)
OLD_FLOORS = {"confidence": 0.10, "predicted_classes": 0.25, "accept_share": 0.06, "doc": 0.01}
ROUTE_SEEDS = (0, 1, 2)
EXCHANGEABLE_SIZE = 2000     # exchangeable certification pools: random subsets of test (or all of a smaller test)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def design_eval_seeds() -> dict:
    """The split of the exchangeable pools into the design set (floors chosen here) and the evaluation set
    (reported): pinned by tests/test_bench_certify.py, never changed after looking."""
    return {"design": list(DESIGN_SEEDS), "evaluation": list(EVAL_SEEDS)}


def pool_indices(n_union: int, size: int, seed: int) -> np.ndarray:
    """A pool: ``size`` items of val ∪ test drawn without replacement (seeded)."""
    return np.sort(np.random.default_rng([seed, size]).choice(n_union, size=size, replace=False))


def sizes_for(n_union: int) -> list[int]:
    """Every size of ``SIZES`` the dataset allows (at least one: the largest pool it can give)."""
    s = [x for x in SIZES if x <= n_union]
    return s or [n_union]


# ---------------------------------------------------------------------- models
def held_out_class(name: str) -> int | None:
    """The class a second model never sees (unseen-class pools): the last class index, a rule fixed before any
    result (no choice among classes). None for a binary task: one class would be left (BreastMNIST's unseen
    images come from another dataset instead)."""
    from workbench.cards import load_card
    card = load_card(name)
    return None if card.num_classes <= 2 else card.num_classes - 1


def without_class(name: str, c: int, out: Path) -> Path:
    """The dataset without class ``c`` (its train/val/test images removed; labels above it shifted down), as a
    MedMNIST-format .npz; the held-out images stay in the original file."""
    from workbench.data import _read_npz
    from workbench.paths import DATA_DIR
    arrays = _read_npz(DATA_DIR / f"{name}.npz")
    doc = {}
    for s in SPLITS:
        y = arrays[f"{s}_labels"].reshape(-1)
        keep = y != c
        doc[f"{s}_images"] = arrays[f"{s}_images"][keep]
        doc[f"{s}_labels"] = (y[keep] - (y[keep] > c)).astype(np.uint8).reshape(-1, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **doc)
    return out


def model_key(name: str, seed: int) -> str:
    return name if seed == TRAIN_SEED else f"{name}@seed{seed}"


def model_runs() -> dict[str, dict]:
    """What is trained: the demo recipe per dataset and model seed, and per dataset with 3+ classes the same
    without its last class (seed 0; orientation and TTA passed explicitly: the reduced file has no card)."""
    from workbench.cards import load_card
    runs = {}
    for name in DATASETS:
        for seed in MODEL_SEEDS:
            runs[model_key(name, seed)] = {"dataset": name, "params": {}, "seed": seed}
        c = held_out_class(name)
        if c is not None:
            o = load_card(name).orientation or {}
            free = bool(o.get("flips")) and bool(o.get("quarter_turns"))
            runs[f"{name}-without-{c}"] = {"dataset": name, "held_out": c, "seed": TRAIN_SEED,
                                           "params": {"augment": "dihedral" if free else "fixed",
                                                      "tta": "yes" if free else "no"}}
    return runs


def ensure_models(log=log) -> dict[str, Path]:
    from workbench import params, train
    out = {}
    for key, spec in model_runs().items():
        run = WORK / f"run-{key.split('@')[0]}-seed{spec['seed']}"
        out[key] = run
        if (run / "model.keras").is_file():
            continue
        dataset = spec["dataset"]
        if "held_out" in spec:
            dataset = str(without_class(spec["dataset"], spec["held_out"], WORK / f"{key}.npz"))
        t0 = time.perf_counter()
        log(f"training the demo recipe on {key} (seed {spec['seed']}) into {run}")
        train.run(params.make("train", {"run_dir": str(run), "seed": spec["seed"], "dataset": dataset,
                                        **spec["params"]}))
        log(f"trained {key} in {time.perf_counter() - t0:.0f} s")
    return out


# ---------------------------------------------------------------------- one model's view of the data
@dataclass
class Model:
    key: str
    dataset: str
    trained: object
    task: str
    names: list
    val_y: np.ndarray
    test_y: np.ndarray
    temperature: object
    val_p: np.ndarray            # calibrated
    test_p: np.ndarray
    scorer: object               # features.OODScorer on the train embeddings
    ood_threshold: float
    val_ood: np.ndarray
    test_ood: np.ndarray
    choice: dict                 # val's thresholds (the annotate stage's default rule)
    cache: dict = field(default_factory=dict)

    @property
    def val_gate(self) -> np.ndarray:
        return self.val_ood > self.ood_threshold

    def view(self, images: np.ndarray, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probabilities, OOD scores) of images already through the run's input path (cached by tag)."""
        if tag in self.cache:
            return self.cache[tag]
        from workbench import embeddings
        from workbench.predict import predict
        disk = WORK / "views" / f"{self.key}-{self.trained.model_hash[:12]}-{tag}.npz"
        if disk.is_file():                      # computed by an earlier run of the benchmark (same model file)
            with np.load(disk, allow_pickle=False) as z:
                raw, emb = z["raw"], z["emb"]
        else:
            raw = predict(self.trained.model, images, 512, desc=f"{self.key}: {tag}", progress=False)
            emb, _ = embeddings.embed_images(self.trained.model, images, progress=False)
            disk.parent.mkdir(parents=True, exist_ok=True)
            np.savez(disk, raw=raw.astype(np.float32), emb=emb.astype(np.float32))
        out = (calibration.apply_temperature(np.asarray(raw, np.float64), self.temperature, self.task),
               self.scorer.scores(emb))
        self.cache[tag] = out
        return out


def load_model(key: str, run: Path) -> Model:
    from workbench import embeddings, neighbours, runload
    from workbench.predict import predict
    trained = runload.load(run)
    ds = trained.dataset()
    raw = {s: predict(trained.model, ds.images[s], 512, desc=f"{key}: {s}", progress=False) for s in ("val", "test")}
    t = calibration.fit_temperature(raw["val"], ds.labels["val"], trained.task)["temperature"]
    val_p = calibration.apply_temperature(raw["val"], t, trained.task)
    test_p = calibration.apply_temperature(raw["test"], t, trained.task)
    tr, va, te = (embeddings.split_features(trained, s) for s in SPLITS)
    scorer = neighbours.OODScorer(tr.embeddings, ds.labels["train"], trained.task)
    val_ood, test_ood = scorer.scores(va.embeddings), scorer.scores(te.embeddings)
    thr = float(np.quantile(val_ood, neighbours.OOD_QUANTILE))
    choice = metrics.auto_accept_thresholds(val_p, ds.labels["val"], trained.task, TARGET, "global", 20, GUARANTEE,
                                            exclude=val_ood > thr)
    return Model(key=key, dataset=key.split("-")[0], trained=trained, task=trained.task,
                 names=list(trained.class_names), val_y=ds.labels["val"].reshape(-1), test_y=ds.labels["test"].reshape(-1),
                 temperature=t, val_p=val_p, test_p=test_p, scorer=scorer, ood_threshold=thr, val_ood=val_ood,
                 test_ood=test_ood, choice=choice)


def run_check(m: Model, pool_p: np.ndarray, pool_ood: np.ndarray, floors=None) -> dict:
    return shift.check(m.val_p, m.val_y, pool_p, thresholds=m.choice["thresholds"], task=m.task, alpha=ALPHA,
                       floors=floors, class_names=m.names, val_ood=m.val_gate, pool_ood=pool_ood > m.ood_threshold)


# ---------------------------------------------------------------------- part 1: false alarms
def _old_rule_fired(res: dict) -> bool:
    """The check's rule before this benchmark: plain tests (no difference), Holm at 0.01, effect ≥ old floors."""
    tests = [t for t in res["tests"] if t["computed"] and t["name"].split("[")[0] in OLD_FLOORS]
    adj = shift.holm([t["p_no_difference"] for t in tests])
    return any(a <= 0.01 and t["effect"] >= OLD_FLOORS[t["name"].split("[")[0]] for t, a in zip(tests, adj))


def folder_view(m: Model, images_raw: np.ndarray, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """The pool written as nested PNG files and read back by the stage's folder reader (pools.open_pool) through
    the run's input path: probabilities and OOD scores as the annotate stage computes them."""
    from PIL import Image

    from workbench import embeddings, pools
    from workbench.predict import predict_stream
    folder = WORK / "folders" / f"{m.key}-{tag}"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".part")
        for i, im in enumerate(images_raw):
            d = tmp / f"batch{i // 250:03d}" / f"sub{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(d / f"img{i:05d}.png")
        tmp.rename(folder)
    pool = pools.open_pool(str(folder), class_names=m.names)
    spec = m.trained.input
    pool.scan(spec)
    raw = predict_stream(m.trained.model, pool.batches(spec, 512), len(pool), 512, desc=tag)
    emb, _ = embeddings.embed_stream(m.trained.model, pool.batches(spec, 512), len(pool), progress=False)
    order = np.argsort([int(Path(i).stem[3:]) for i in pool.ids])       # back to the array order
    p = calibration.apply_temperature(raw[order], m.temperature, m.task)
    return p, m.scorer.scores(emb[order])


SOURCES = ("val ∪ test", "test")   # where exchangeable pools are drawn from (test: new images the model never saw)


def exchangeable_part(models: dict[str, Model], which: str, floors: dict, log=log) -> list[dict]:
    """The check on exchangeable pools: drawn from val ∪ test (the issue's definition) and from test alone (images
    the model never saw, as a user's new images are: val was used for early stopping and the temperature, so
    test is slightly harder than val, and the floors must tolerate that)."""
    rows = []
    seeds = design_eval_seeds()[which]
    model_seeds = DESIGN_MODEL_SEEDS if which == "design" else MODEL_SEEDS
    for name, mseed in ((n, ms) for n in DATASETS for ms in model_seeds):
        m = models[model_key(name, mseed)]
        raw = m.trained.dataset(raw=True).images
        for source in SOURCES:
            if source == "test":
                raw_u, p_u, o_u = raw["test"], m.test_p, m.test_ood
            else:
                raw_u = np.concatenate([raw["val"], raw["test"]])
                p_u, o_u = np.concatenate([m.val_p, m.test_p]), np.concatenate([m.val_ood, m.test_ood])
            for size in sizes_for(len(p_u)):
                for k, seed in enumerate(seeds):
                    idx = pool_indices(len(p_u), size, seed)
                    kind, gap = "arrays", None
                    if k == 0:   # one pool per (dataset, source, size) of each set through a folder of PNG files
                        pp, po = folder_view(m, raw_u[idx], f"{which}-{'union' if source != 'test' else 'test'}-{size}-{seed}")
                        kind = "png folder"
                        gap = float(np.abs(pp - p_u[idx]).max())
                    else:
                        pp, po = p_u[idx], o_u[idx]
                    res = run_check(m, pp, po, floors={t: 0.0 for t in TESTS})   # raw statistics; floors below
                    row = {"dataset": name, "model_seed": mseed, "source": source, "size": size, "seed": seed, "kind": kind,
                           "folder_max_prob_gap": gap,
                           "tests": {t["name"]: {k2: t.get(k2) for k2 in ("computed", "statistic", "effect", "df", "se",
                                                                          "n_val", "n_pool", "p_no_difference", "name")}
                                     for t in res["tests"]},
                           "fired_old_rule": _old_rule_fired(res)}
                    real = run_check(m, pp, po, floors=floors)
                    row.update(fired=real["fired"], differs=real["differs"])
                    rows.append(row)
                rate = np.mean([r["fired"] for r in rows
                                if (r["dataset"], r["model_seed"], r["source"], r["size"]) == (name, mseed, source, size)])
                log(f"{which}: {name} (model seed {mseed}) from {source}, size {size}: fired {rate:.3f}")
    return rows


def choose_floors(rows: list[dict]) -> dict:
    """Per test, the smallest floor of its grid at which it fires alone (p ≤ alpha) on at most DESIGN_RATE of the
    design pools of every (dataset, size)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r.get("model_seed"), r.get("source"), r["size"]), []).append(r)
    chosen, detail = {}, {}
    for test in TESTS:
        for f in FLOOR_GRIDS[test]:
            worst = 0.0
            for rs in groups.values():
                fired = [shift.p_at_floor(r["tests"][test], float(f)) <= ALPHA for r in rs if test in r["tests"]]
                worst = max(worst, float(np.mean(fired)) if fired else 0.0)
            if worst <= DESIGN_RATE:
                chosen[test] = float(f)
                detail[test] = {"floor": float(f), "worst_group_rate": worst}
                break
        else:
            chosen[test] = float(FLOOR_GRIDS[test][-1])
            detail[test] = {"floor": chosen[test], "worst_group_rate": None, "note": "grid exhausted"}
    return {"floors": chosen, "detail": detail}


def summarise_exchangeable(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["dataset"], r.get("model_seed", 0), r.get("source"), r["size"]) for r in rows},
                  key=lambda k: (DATASETS.index(k[0]), k[1], SOURCES.index(k[2]) if k[2] in SOURCES else 0, k[3]))
    for name, mseed, source, size in keys:
        rs = [r for r in rows if (r["dataset"], r.get("model_seed", 0), r.get("source"), r["size"]) == (name, mseed, source, size)]
        out.append({"dataset": name, "model_seed": mseed, "source": source, "size": size, "n_pools": len(rs),
                    "fired_rate": float(np.mean([r["fired"] for r in rs])),
                    "fired_old_rule_rate": float(np.mean([r["fired_old_rule"] for r in rs])),
                    "by_test": {t: float(np.mean([t in r["differs"] for r in rs])) for t in TESTS},
                    "folder_pools": sum(r["kind"] == "png folder" for r in rs),
                    "folder_fired": int(sum(r["fired"] for r in rs if r["kind"] == "png folder")),
                    "folder_max_prob_gap": max([r["folder_max_prob_gap"] or 0.0 for r in rs])})
    return out


# ---------------------------------------------------------------------- part 2: OOD
def pixel_stats(images: np.ndarray) -> np.ndarray:
    """A label-free pixel-statistics description of each image: per channel mean, standard deviation, 5th, 50th,
    95th percentile; the mean absolute Laplacian (sharpness); for RGB the mean channel spread (max - min)."""
    import cv2
    x = images.astype(np.float32)
    n, c = len(x), x.shape[-1]
    flat = x.reshape(n, -1, c)
    feats = [flat.mean(1), flat.std(1), *np.percentile(flat, [5, 50, 95], axis=1)]
    gray = x.mean(-1)
    lap = np.stack([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in gray])[:, None]
    feats.append(lap)
    if c == 3:
        feats.append((x.max(-1) - x.min(-1)).mean(axis=(1, 2))[:, None])
    return np.concatenate(feats, axis=1).astype(np.float64)


class PixelBaseline:
    """Mahalanobis distance of the pixel statistics to the train images' (one Gaussian)."""

    def __init__(self, train_images: np.ndarray):
        f = pixel_stats(train_images)
        self.mean = f.mean(0)
        cov = np.cov(f, rowvar=False) + 1e-6 * np.eye(f.shape[1])
        self.prec = np.linalg.inv(cov)

    def scores(self, images: np.ndarray) -> np.ndarray:
        d = pixel_stats(images) - self.mean
        return np.einsum("ij,jk,ik->i", d, self.prec, d)


def match_colour(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per channel quantile mapping of a set of images onto a reference set's intensity distribution (the other
    dataset's colour statistics made those of the training images)."""
    out = np.empty_like(images)
    qs = np.linspace(0, 100, 257)
    for ch in range(images.shape[-1]):
        src = np.percentile(images[..., ch], qs)
        ref = np.percentile(reference[..., ch], qs)
        src_u, keep = np.unique(src, return_index=True)
        out[..., ch] = np.clip(np.rint(np.interp(images[..., ch], src_u, ref[keep])), 0, 255).astype(np.uint8)
    return out


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    return float(roc_auc_score(y, np.r_[id_scores, ood_scores]))


def ood_part(models: dict[str, Model], log=log) -> list[dict]:
    from workbench.data import _read_npz
    from workbench.paths import DATA_DIR
    rows = []
    for key, m in models.items():
        if "@" in key:            # the other seeds' models serve the false-alarm part only
            continue
        ds_raw = m.trained.dataset(raw=True)
        prepared = m.trained.dataset()
        pixel = PixelBaseline(prepared.images["train"])
        id_images = prepared.images["test"]
        id_feat, id_pix, id_msp = m.test_ood, pixel.scores(id_images), 1 - m.test_p.max(1)

        def score(name, kind, images, tag):
            p, o = m.view(images, tag)
            rows.append({"model": key, "ood": name, "kind": kind, "n_id": len(id_images), "n_ood": len(images),
                         "auroc_features": auroc(id_feat, o), "auroc_pixel_stats": auroc(id_pix, pixel.scores(images)),
                         "auroc_max_softmax": auroc(id_msp, 1 - p.max(1)),
                         "share_flagged": float(np.mean(o > m.ood_threshold))})
            log(f"ood {key} {name}: features {rows[-1]['auroc_features']:.3f}, pixels {rows[-1]['auroc_pixel_stats']:.3f}")

        spec = model_runs()[key]
        if "held_out" in spec:
            arrays = _read_npz(DATA_DIR / f"{spec['dataset']}.npz")
            y = arrays["test_labels"].reshape(-1)
            score(f"held-out class {spec['held_out']} of {spec['dataset']}", "near-OOD: unseen class, same modality",
                  m.trained.prepare(arrays["test_images"][y == spec["held_out"]]), "heldout")
            continue
        for other in DATASETS:
            if other == m.dataset:
                continue
            imgs = m.trained.prepare(_read_npz(DATA_DIR / f"{other}.npz")["test_images"])
            score(f"{other} test, colour statistics matched", "other dataset, colour matched",
                  match_colour(imgs, prepared.images["train"]), f"match-{other}")
        for cname, sev in corrupt.suite(m.trained.dataset().card):
            if sev != 2:
                continue
            imgs = m.trained.prepare(corrupt.apply(ds_raw.images["test"], cname, sev, seed=0))
            score(f"{corrupt.label(cname, sev)}", "corrupted test images (severity 2)", imgs, f"c-{cname}-{sev}-0")
    return rows


# ---------------------------------------------------------------------- part 3: certification routes
def route(m: Model, pool_p, pool_y, pool_ood, seed: int, floors=None, unseen=None) -> dict:
    """What the annotate stage does with a pool (certify auto): val's thresholds when the check is quiet, else the
    pool's certification sample labelled by a simulated reviewer (the truth; unseen-class items count as wrong)."""
    res = run_check(m, pool_p, pool_ood, floors=floors)
    gate = pool_ood > m.ood_threshold
    unseen = np.zeros(len(pool_y), bool) if unseen is None else unseen
    right = (pool_p.argmax(1) == pool_y) & ~unseen
    out = {"fired": res["fired"], "differs": res["differs"], "n": int(len(pool_y)),
           "pool_accuracy": float(right.mean()),
           "val_route_coverage": None, "val_route_precision": None}
    thr = np.asarray(m.choice["thresholds"])
    acc_val = (pool_p.max(1) >= thr[pool_p.argmax(1)]) & ~gate
    out["val_route_coverage"] = float(acc_val.mean())
    out["val_route_precision"] = float(right[acc_val].mean()) if acc_val.any() else None
    if not res["fired"]:
        out.update(route="val", labels=0, coverage=out["val_route_coverage"], precision=out["val_route_precision"],
                   certified=True)
        return out
    ids = [str(i) for i in range(len(pool_y))]
    in_region = certify.region(pool_p, m.choice["thresholds"], m.task, gate)
    size = certify.queue_size(TARGET, GUARANTEE, int(in_region.sum()))
    queue = certify.sample(f"bench-{m.key}", in_region, size["size"], seed)
    wrong = (pool_p.argmax(1) + 1) % pool_p.shape[1]
    labels = {ids[j]: int(wrong[j] if unseen[j] else pool_y[j]) for j in queue}
    ch = certify.certify_pool(pool_p, labels, ids, queue, m.task, TARGET, GUARANTEE, exclude=gate, in_region=in_region)
    c = ch["certification"]
    t = np.asarray(ch["thresholds"])
    rest = np.ones(len(pool_y), bool)
    rest[queue] = False
    acc = (pool_p.max(1) >= t[pool_p.argmax(1)]) & ~gate & rest & in_region
    out.update(route="pool", labels=int(len(queue)), certified=bool(c["reached"]), region=int(in_region.sum()),
               coverage=float(acc[rest].mean()) if rest.any() else 0.0,
               precision=float(right[acc].mean()) if acc.any() else None,
               sample_errors_accepted=c["n_errors_accepted_in_sample"], n_accepted_in_sample=c["n_accepted_in_sample"])
    return out


PRIOR_SHIFTS = {
    "prior_uniform": "classes made equally frequent",
    "prior_hard": "the 2 classes hardest on val made half the pool",
    "prior_easy": "the class easiest on val made half the pool",
}


def prior_proportions(shift_id: str, val_probs: np.ndarray, val_labels: np.ndarray, k: int) -> np.ndarray:
    """Target class proportions of a prior shift, chosen from val (recall per class) only."""
    base = np.bincount(val_labels, minlength=k) / len(val_labels)
    recall = np.array([(val_probs.argmax(1)[val_labels == c] == c).mean() if (val_labels == c).any() else 1.0
                       for c in range(k)])
    if shift_id == "prior_uniform":
        return np.full(k, 1.0 / k)
    if shift_id == "prior_hard":
        hard = np.argsort(recall, kind="stable")[:2]
        rest = np.setdiff1d(np.arange(k), hard)
        p = np.zeros(k)
        p[hard] = 0.25
        p[rest] = 0.5 * base[rest] / base[rest].sum()
        return p
    easy = int(np.argmax(recall))
    p = 0.5 * base / (base.sum() - base[easy])
    p[easy] = 0.5
    return p


def resample(labels: np.ndarray, proportions: np.ndarray, seed: int) -> np.ndarray:
    """Indices (without replacement) whose class shares follow ``proportions``: the largest such subset."""
    rng = np.random.default_rng(seed)
    k = len(proportions)
    avail = np.bincount(labels, minlength=k)
    with np.errstate(divide="ignore"):
        n = int(np.min(np.where(proportions > 0, avail / np.where(proportions > 0, proportions, 1), np.inf)))
    idx = [rng.choice(np.flatnonzero(labels == c), size=int(np.floor(n * proportions[c])), replace=False)
           for c in range(k) if proportions[c] > 0]
    return np.sort(np.concatenate(idx))


def prior_pool(m: Model, kind: str, seed: int) -> np.ndarray:
    k = m.val_p.shape[1]
    return resample(m.test_y, prior_proportions(kind, m.val_p, m.val_y, k), seed)


def routes_part(models: dict[str, Model], log=log) -> list[dict]:
    from workbench.data import _read_npz
    from workbench.paths import DATA_DIR
    rows = []

    def add(m, family, name, p, y, o, seed, unseen=None):
        r = route(m, p, y, o, seed, unseen=unseen)
        rows.append({"model": m.key, "dataset": m.dataset, "family": family, "pool": name, "seed": seed, **r})

    for name in DATASETS:
        m = models[name]
        raw_test = m.trained.dataset(raw=True).images["test"]
        for seed in ROUTE_SEEDS:
            n = min(EXCHANGEABLE_SIZE, len(m.test_y))
            idx = np.sort(np.random.default_rng([seed, 7]).choice(len(m.test_y), n, replace=False))
            add(m, "exchangeable", f"{n} test images", m.test_p[idx], m.test_y[idx], m.test_ood[idx], seed)
            if m.task != "binary-class":
                for kind, text in PRIOR_SHIFTS.items():
                    idx = prior_pool(m, kind, seed)
                    add(m, "class-prior shift", text, m.test_p[idx], m.test_y[idx], m.test_ood[idx], seed)
            for cname, sev in corrupt.suite(m.trained.dataset().card):
                cseed = seed if cname in corrupt.RANDOM else 0
                p, o = m.view(m.trained.prepare(corrupt.apply(raw_test, cname, sev, seed=cseed)), f"c-{cname}-{sev}-{cseed}")
                add(m, "corrupted", corrupt.label(cname, sev), p, m.test_y, o, seed)
            log(f"routes: {name} seed {seed} done ({len(rows)} pools)")
        # unseen classes
        spec_key = next((k for k in models if k.startswith(f"{name}-without-")), None)
        for seed in ROUTE_SEEDS:
            if spec_key:
                mu = models[spec_key]
                c = model_runs()[spec_key]["held_out"]
                arrays = _read_npz(DATA_DIR / f"{name}.npz")
                y_all = arrays["test_labels"].reshape(-1)
                p_new, o_new = mu.view(mu.trained.prepare(arrays["test_images"][y_all == c]), "heldout")
                p = np.concatenate([mu.test_p, p_new])
                o = np.concatenate([mu.test_ood, o_new])
                y = np.concatenate([mu.test_y, np.zeros(len(p_new), int)])
                unseen = np.r_[np.zeros(len(mu.test_y), bool), np.ones(len(p_new), bool)]
                add(mu, "unseen class", f"test + held-out class {c} ({len(p_new)} images)", p, y, o, seed, unseen)
            else:
                other = "retinamnist"
                imgs = m.trained.prepare(_read_npz(DATA_DIR / f"{other}.npz")["test_images"])
                k = len(m.test_y) // 5
                pick = np.random.default_rng([seed, 11]).choice(len(imgs), k, replace=False)
                p_new, o_new = m.view(imgs[pick], f"unseen-{other}-{seed}")
                p = np.concatenate([m.test_p, p_new])
                o = np.concatenate([m.test_ood, o_new])
                y = np.concatenate([m.test_y, np.zeros(k, int)])
                unseen = np.r_[np.zeros(len(m.test_y), bool), np.ones(k, bool)]
                add(m, "unseen class", f"test + {k} grayscale {other} images", p, y, o, seed, unseen)
    return rows


def summarise_routes(rows: list[dict]) -> dict:
    prec = [r["precision"] for r in rows if r["precision"] is not None]
    worst = min(rows, key=lambda r: r["precision"] if r["precision"] is not None else 2.0)
    ex = [r for r in rows if r["family"] == "exchangeable"]
    shifted_ok = [r for r in rows if r["family"] != "exchangeable" and r["pool_accuracy"] >= 0.9 and r["route"] == "pool"]
    return {
        "n_pools": len(rows), "min_precision": min(prec) if prec else None,
        "worst_pool": {k: worst[k] for k in ("model", "family", "pool", "seed", "route", "precision", "coverage")},
        "pools_below_0.985": sum(p < 0.985 for p in prec),
        "exchangeable_coverage_gap_max": max((r["val_route_coverage"] - r["coverage"]) for r in ex) if ex else None,
        "shifted_90_pool_route": len(shifted_ok),
        "shifted_90_coverage_at_least_0.5": sum(r["coverage"] >= 0.5 for r in shifted_ok),
        "shifted_90_labels_max": max((r["labels"] for r in shifted_ok), default=None),
    }


# ---------------------------------------------------------------------- report
def _f(x, d=3):
    return "–" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def markdown(doc: dict) -> str:
    lines = ["# Certifying auto-accept on new images (`python -m bench.certify`)", ""]
    models = doc.get("models", {})
    if models:
        lines += ["Models (demo recipe, seed 0): " + "; ".join(
            f"{k} (val ACC {v['val_acc']:.3f}, test ACC {v['test_acc']:.3f})" for k, v in models.items()) + ".",
            f"Thresholds: global, target {TARGET}, Learn-then-Test guarantee {GUARANTEE}, on val with the OOD gate; "
            f"check: minimum-effect tests, Holm at alpha {ALPHA}.", ""]
    d = doc.get("design")
    if d:
        lines += ["## 1. Floors chosen on the design pools", "",
                  f"Design pools: seeds {DESIGN_SEEDS[0]}-{DESIGN_SEEDS[-1]} per (dataset, model seed {DESIGN_MODEL_SEEDS}, "
                  f"source, size); a test's floor is the smallest on its grid at which it fires alone (p ≤ {ALPHA}) on at "
                  f"most {DESIGN_RATE:.0%} of the pools of every (dataset, model, source, size). The model of seed "
                  f"{MODEL_SEEDS[-1]} is kept for the evaluation.", "", "| test | floor | worst (dataset, size) rate at it |", "| --- | --- | --- |"]
        for t, v in d["choice"]["detail"].items():
            lines.append(f"| {t} | {v['floor']} | {_f(v.get('worst_group_rate'))} |")
        lines += ["", "| dataset | model seed | drawn from | size | pools | fired (these floors) | fired, rule before | PNG-folder pools (fired) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in d["summary"]:
            lines.append(f"| {r['dataset']} | {r['model_seed']} | {r['source']} | {r['size']} | {r['n_pools']} | {r['fired_rate']:.3f} | "
                         f"{r['fired_old_rule_rate']:.3f} | {r['folder_pools']} ({r['folder_fired']}) |")
        lines.append("")
    e = doc.get("evaluation")
    if e:
        lines += ["## 2. False alarms on the evaluation pools (reported once, floors unchanged)", "",
                  f"Evaluation pools: seeds {EVAL_SEEDS[0]}-{EVAL_SEEDS[-1]}, models of seeds {MODEL_SEEDS} (seed {MODEL_SEEDS[-1]} "
                  f"never seen by the design); floors {e['floors']}. Goal: at most 5 % at every size.",
                  "", "| dataset | model seed | drawn from | size | pools | fired | " + " | ".join(TESTS) + " | fired, rule before | PNG-folder pools (fired; max prob. difference) |",
                  "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in TESTS) + " | --- | --- |"]
        for r in e["summary"]:
            lines.append(f"| {r['dataset']} | {r['model_seed']} | {r['source']} | {r['size']} | {r['n_pools']} | **{r['fired_rate']:.3f}** | "
                         + " | ".join(f"{r['by_test'][t]:.3f}" for t in TESTS)
                         + f" | {r['fired_old_rule_rate']:.3f} | {r['folder_pools']} ({r['folder_fired']}; {r['folder_max_prob_gap']:.1e}) |")
        lines += ["", f"Worst evaluation rate: {e['worst_rate']:.3f} ({'met' if e['worst_rate'] <= 0.05 else 'NOT met'})", ""]
    o = doc.get("ood")
    if o:
        lines += ["## 3. OOD detection (AUROC; 0.5 = chance)", "",
                  "| model | out-of-distribution images | kind | n ID / OOD | features (Mahalanobis) | pixel statistics | max softmax | flagged at val's 99th pct |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in o:
            lines.append(f"| {r['model']} | {r['ood']} | {r['kind']} | {r['n_id']} / {r['n_ood']} | {r['auroc_features']:.3f} | "
                         f"{r['auroc_pixel_stats']:.3f} | {r['auroc_max_softmax']:.3f} | {r['share_flagged']:.3f} |")
        lines.append("")
    rt = doc.get("routes")
    if rt:
        s = rt["summary"]
        lines += ["## 4. Routes on real pools (certify auto; simulated reviewer gives the true label)", "",
                  f"Pools: {s['n_pools']} ({len(ROUTE_SEEDS)} seeds). Lowest precision of the machine's labels: "
                  f"{_f(s['min_precision'], 4)} ({s['worst_pool']['model']}, {s['worst_pool']['pool']}, route "
                  f"{s['worst_pool']['route']}); pools below 0.985: {s['pools_below_0.985']}. Exchangeable pools: "
                  f"largest coverage lost against val's thresholds {_f(s['exchangeable_coverage_gap_max'])}. Shifted pools "
                  f"where the model is still ≥ 90 % accurate and the pool route was taken: {s['shifted_90_pool_route']}, "
                  f"of which {s['shifted_90_coverage_at_least_0.5']} reached coverage ≥ 0.5 (labels ≤ {_f(s['shifted_90_labels_max'])}).",
                  "", "| model | pool family | pool | n | model ACC on pool | route (seeds) | labels | precision (min over seeds) | coverage (mean) | val thresholds: precision / coverage |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups = {}
        for r in rt["rows"]:
            groups.setdefault((r["model"], r["family"], r["pool"]), []).append(r)
        for (model, fam, pool), rs in groups.items():
            precs = [r["precision"] for r in rs if r["precision"] is not None]
            vprec = [r["val_route_precision"] for r in rs if r["val_route_precision"] is not None]
            lines.append(f"| {model} | {fam} | {pool} | {rs[0]['n']} | {np.mean([r['pool_accuracy'] for r in rs]):.3f} | "
                         + ", ".join(r["route"] for r in rs) + f" | {max(r['labels'] for r in rs)} | "
                         + (f"{min(precs):.4f}" if precs else "nothing accepted")
                         + f" | {np.mean([r['coverage'] for r in rs]):.3f} | "
                         + (f"{min(vprec):.4f}" if vprec else "–") + f" / {np.mean([r['val_route_coverage'] for r in rs]):.3f} |")
        lines.append("")
    lines += [f"Elapsed: {doc.get('elapsed_s', 0):.0f} s ({platform.machine()}, {platform.python_version()})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all", choices=("all", "design", "evaluation", "ood", "routes"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "certify.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    runs = ensure_models()
    log("loading models, predictions and embeddings")
    models = {k: load_model(k, r) for k, r in runs.items()}
    doc["models"] = {k: {"val_acc": float((m.val_p.argmax(1) == m.val_y).mean()),
                         "test_acc": float((m.test_p.argmax(1) == m.test_y).mean()), "run": str(runs[k]),
                         "val_threshold": m.choice["thresholds"][0], "val_coverage": m.choice["val_coverage"]}
                     for k, m in models.items()}
    parts = ("design", "evaluation", "ood", "routes") if args.part == "all" else (args.part,)
    if "design" in parts:
        rows = exchangeable_part(models, "design", dict(shift.FLOORS))
        choice = choose_floors(rows)
        doc["design"] = {"choice": choice, "summary": summarise_exchangeable(rows), "seeds": [DESIGN_SEEDS[0], DESIGN_SEEDS[-1]]}
        log(f"floors chosen on the design pools: {choice['floors']}")
        if choice["floors"] != shift.FLOORS:
            log("shift.FLOORS differs from the design's choice: write these into workbench/stats/shift.py, then run "
                "--part evaluation")
    if "evaluation" in parts:
        chosen = (doc.get("design") or {}).get("choice", {}).get("floors")
        if chosen != shift.FLOORS:
            sys.exit(f"error: shift.FLOORS {shift.FLOORS} is not the design's choice {chosen}: run --part design and "
                     "write its floors into workbench/stats/shift.py first (the evaluation never changes them)")
        rows = exchangeable_part(models, "evaluation", dict(shift.FLOORS))
        summ = summarise_exchangeable(rows)
        doc["evaluation"] = {"floors": dict(shift.FLOORS), "summary": summ,
                             "worst_rate": max(r["fired_rate"] for r in summ)}
    if "ood" in parts:
        doc["ood"] = ood_part(models)
    if "routes" in parts:
        rows = routes_part(models)
        doc["routes"] = {"rows": rows, "summary": summarise_routes(rows), "floors": dict(shift.FLOORS)}
    doc["elapsed_s"] = time.perf_counter() - t0
    doc["settings"] = {"target": TARGET, "guarantee": GUARANTEE, "alpha": ALPHA, "sizes": list(SIZES),
                       "design_rate": DESIGN_RATE, "seeds": design_eval_seeds(), "route_seeds": list(ROUTE_SEEDS)}
    path.write_text(json.dumps(strict_json(doc), indent=1, allow_nan=False) + "\n")
    md = markdown(doc)
    (out / "certify.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""workbench.features on tiny real data: embeddings (shapes, determinism, cache keyed by model and source),
kNN on a planted set, the OOD score ranking foreign images (BreastMNIST) above BloodMNIST ones, the map's
static face and its widget, local features, and the evaluate/annotate integration through the stages'
in-process ``run()``."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, TINY

BREAST = FIXTURES / "breastmnist_tiny.npz"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A narrow CNN trained 3 epochs on the real BloodMNIST fixture (the demo recipe otherwise)."""
    import workbench  # noqa: F401
    from workbench import params, train
    run = tmp_path_factory.mktemp("features") / "run"
    train.run(params.make("train", {"run_dir": str(run), "dataset": str(TINY), "epochs": 3, "width": 8,
                                    "batch_size": 64}))
    return run


@pytest.fixture(scope="module")
def trained(tiny_run):
    from workbench import runload
    return runload.load(tiny_run)


def test_embeddings_shape_determinism_and_cache(trained):
    from workbench import features as F
    ds = trained.dataset()
    a = F.split_features(trained, "train")
    assert a.embeddings.shape == (len(ds.labels["train"]), 4 * 8)       # gap of a width-8 CNN: 4w channels
    assert a.probs.shape == (len(ds.labels["train"]), 8) and np.allclose(a.probs.sum(1), 1, atol=1e-3)
    assert a.layer == "gap" and not a.cached and a.path.is_file()
    assert a.path.parent == trained.path / "features" and a.path.name == f"train-{a.key}.npz"
    with np.load(a.path, allow_pickle=False) as z:
        assert z["embeddings"].dtype == np.float16 and str(z["model_hash"]) == trained.model_hash
    mtime = a.path.stat().st_mtime_ns
    b = F.split_features(trained, "train")
    assert b.cached and b.path == a.path and np.array_equal(a.embeddings, b.embeddings)
    assert a.path.stat().st_mtime_ns == mtime                            # read, never rewritten
    # bit-identity is what the cache promises, so the code keeps it: whatever batch size the caller asks for
    # and however a pool's files arrive, the network always runs on the same fixed chunks (EMBED_CHUNK)
    x = ds.images["train"][:300]
    e1, p1 = F.embed_images(trained.model, x, batch_size=16, progress=False)
    e2, p2 = F.embed_images(trained.model, x, batch_size=32, progress=False)
    assert np.array_equal(e1, e2) and np.array_equal(p1, p2)
    cuts = [0, 7, 100, 101, 250, 300]          # a stream in uneven batches, as a folder pool delivers them
    e3, p3 = F.embed_stream(trained.model, ((np.arange(s, t), x[s:t]) for s, t in zip(cuts, cuts[1:])), len(x),
                            progress=False)
    assert np.array_equal(e1, e3) and np.array_equal(p1, p3)
    assert np.allclose(e1, a.embeddings[:300], atol=2e-3 * max(1.0, np.abs(e1).max()))   # the cache is float16
    # the embedding is the backbone's gap output on the image as given; another batch shape is another XLA
    # program, equal up to rounding (a tolerance: the last bits depend on the CPU's kernels)
    import keras
    from workbench.models import backbone
    net = backbone(trained.model)
    gap = keras.Model(net.inputs, net.get_layer("gap").output)
    direct = np.asarray(gap.predict_on_batch(x[:40].astype("float32")))
    assert np.allclose(direct, e1[:40], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(e1).max()))
    assert not np.allclose(direct, F.embed_images(trained.model, x[40:80], progress=False)[0], atol=1e-2)  # sensitive
    other = F.split_features(trained, "test")
    assert other.key != a.key and other.path != a.path


def test_a_changed_model_gets_another_cache_file(trained, tiny_run, tmp_path):
    from workbench import features as F
    from workbench import models, runload
    first = F.split_features(trained, "val")
    copy = tmp_path / "run2"
    shutil.copytree(tiny_run, copy)                                        # with the first model's cache
    m = models.load(copy / "model.keras")
    dense = m.get_layer("tta").backbone.get_layer("probs") if "tta" in [x.name for x in m.layers] else m.get_layer("probs")
    w = dense.get_weights()
    dense.set_weights([w[0] * 1.5, w[1]])
    (copy / "model.keras").unlink()
    m.save(copy / "model.keras")
    other = runload.load(copy)
    assert other.model_hash != trained.model_hash
    second = F.split_features(other, "val")
    assert second.key != first.key and not second.cached
    assert len(list((copy / "features").glob("val-*.npz"))) == 2          # the copied stale file stays, unused
    assert not np.allclose(second.probs, first.probs)


def test_pool_features_are_keyed_by_the_pool(trained, tmp_path):
    from workbench import features as F
    from workbench.pools import open_pool
    p1 = open_pool(f"{BREAST}:test")
    f1 = F.pool_features(trained, p1)
    assert f1.embeddings.shape == (30, 32) and f1.ids == list(p1.ids) and f1.path.name.startswith("pool_")
    assert F.pool_features(trained, open_pool(f"{BREAST}:test")).cached
    f2 = F.pool_features(trained, open_pool(f"{BREAST}:val"))
    assert f2.key != f1.key and not np.array_equal(f2.embeddings, f1.embeddings)


def test_knn_on_a_planted_separable_set():
    from workbench import features as F
    rng = np.random.default_rng(0)   # synthetic control: three well separated clusters, not image data
    centres = rng.normal(size=(3, 16)) * 5
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(size=(120, 16))
    q_y = np.repeat(np.arange(3), 10)
    q = centres[q_y] + rng.normal(size=(30, 16))
    index = F.Index(x, y)
    probs, lab = F.knn_predict(index, q, 3, k=11)
    assert np.array_equal(lab, q_y) and probs.shape == (30, 3) and np.allclose(probs.sum(1), 1)
    sims, idx = index.search(x[:5], k=1, exclude_self=True)
    assert not np.any(idx[:, 0] == np.arange(5))                          # never its own neighbour
    wrong = (y + 1) % 3                                                    # all labels shifted: kNN follows them
    assert np.array_equal(F.knn_predict(F.Index(x, wrong), q, 3)[1], (q_y + 1) % 3)
    # ties: 2 votes each, the class with the higher summed similarity wins
    probs, lab = F.knn_vote(np.array([0, 0, 1, 1]), np.array([[2, 0, 3, 1]]), np.array([[0.9, 0.5, 0.8, 0.1]]), 2)
    assert lab[0] == 1 and np.allclose(probs, [[0.5, 0.5]])


def test_ood_score_ranks_foreign_images_above_bloodmnist(trained):
    from sklearn.metrics import roc_auc_score

    from workbench import features as F
    from workbench.pools import open_pool
    ds = trained.dataset()
    train = F.split_features(trained, "train")
    scorer = F.OODScorer(train.embeddings, ds.labels["train"])
    inside = scorer.scores(F.split_features(trained, "test").embeddings)
    foreign = scorer.scores(F.pool_features(trained, open_pool(f"{BREAST}:test")).embeddings)  # grayscale → RGB
    auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(foreign))], np.r_[inside, foreign])
    assert auroc > 0.95, auroc
    assert np.median(foreign) > np.quantile(inside, 0.9)


def test_near_duplicates_find_copies_of_train_images(trained):
    from workbench import features as F
    ds = trained.dataset()
    train = F.split_features(trained, "train")
    index = F.Index(train.embeddings)
    test = F.split_features(trained, "test").embeddings
    queries = np.concatenate([train.embeddings[[3, 17]], test])
    sims, idx = index.search(queries, 1)
    rows, cols, s = F.near_duplicate_pairs(sims, idx)
    assert {(0, 3), (1, 17)} <= set(zip(rows.tolist(), cols.tolist()))
    exact = {i for i, t in enumerate(ds.images["test"]) if any(np.array_equal(t, u) for u in ds.images["train"])}
    assert set(rows.tolist()) - {0, 1} >= {i + 2 for i in exact}


def test_static_map_has_every_point_and_the_widget_shows_selections(trained):
    from workbench import features as F
    data = F.run_map(trained.path, method="pca")
    n = sum(len(trained.dataset().labels[s]) for s in ("train", "val", "test"))
    assert len(data) == n and data.xy.shape == (n, 2)
    assert set(data.colourings) >= {"label", "prediction", "confidence", "split"}
    fig = F.map_figure(data, ("label", "split"))
    assert len(fig.axes) >= 2
    for ax in fig.axes[:2]:
        assert sum(len(c.get_offsets()) for c in ax.collections) == n
    m = F.EmbeddingMap(data, max_thumbnails=8)
    assert len(m.figure.data[0].x) == n                                    # every point, one WebGL trace
    assert m.figure.data[0].type == "scattergl"
    m.select(np.arange(20))
    assert len(m.selected) == 20 and len(m.shown) == 8 and m.thumbs.value[:4] == b"\x89PNG"
    assert "20 selected" in m.info.value
    m.recolour("confidence")
    assert m.figure.data[0].marker.showscale and len(m.figure.data) == 1
    m.recolour("split")
    assert [t.name for t in m.figure.data[1:]] == ["test", "train", "val"]


def test_projection_methods(trained):
    from workbench import features as F
    x = F.split_features(trained, "val").embeddings
    xy, used = F.project(x, "tsne", seed=0)
    assert used == "t-SNE" and xy.shape == (len(x), 2) and np.isfinite(xy).all()
    assert np.array_equal(F.project(x, "tsne", seed=0)[0], xy)
    with pytest.raises(F.WorkbenchError, match="projection method"):
        F.project(x, "mds")


def test_local_features_upsampled_for_overlays(trained):
    from workbench import features as F
    images = trained.dataset().images["test"][:3]
    maps = F.local_features(trained.model, images)
    assert maps.ndim == 4 and maps.shape[0] == 3 and maps.shape[1] >= 7
    rgb, norm = F.overlay(maps, 28, "pca"), F.overlay(maps, 28, "norm")
    assert rgb.shape == (3, 28, 28, 3) and norm.shape == (3, 28, 28)
    assert 0 <= rgb.min() and rgb.max() <= 1 and norm.max() == pytest.approx(1.0)
    with pytest.raises(F.WorkbenchError, match="cam_layer|feature map"):
        F.local_features(trained.model, images, layer="probs")


def test_evaluate_and_annotate_record_the_features(tiny_run):
    from workbench import annotate, evaluate, params
    r = evaluate.run(params.make("evaluate", {"run_dir": str(tiny_run), "n_resamples": 100, "gallery_size": 2}))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    fb = metrics["feature_baselines"]
    assert fb == r["feature_baselines"] and fb["k"] == 11 and fb["dim"] == 32
    for name in ("knn", "linear_probe"):
        assert 0 <= fb[name]["acc"] <= 1 and fb[name]["acc_ci95"][0] <= fb[name]["acc"] <= fb[name]["acc_ci95"][1]
    assert fb["linear_probe"]["C"] in (0.01, 0.1, 1.0, 10.0)
    out = annotate.run(params.make("annotate", {"run_dir": str(tiny_run), "pool": "test", "audit_folds": 2,
                                                "audit_epochs": 1, "bootstrap": 100}))
    pool_dir = tiny_run / "annotate" / "test"
    table = pd.read_csv(pool_dir / "annotations.csv")
    assert list(table.columns) == [*annotate.ANNOTATION_COLUMNS, "knn_label", "knn_agree", "ood_score"]
    summary = json.loads((pool_dir / "annotation_summary.json").read_text())
    assert summary["ood"]["n_flagged"] == int((table["ood_score"] > summary["ood"]["threshold"]).sum())
    assert summary["knn"]["agreement"] == pytest.approx(
        (table["knn_label"] == table["predicted_label"]).mean())
    ach = summary["knn"]["achieved"]
    assert ach["model_and_knn_agree"]["n_accepted"] <= ach["model"]["n_accepted"] == out["n_auto_accepted"]
    near = pd.read_csv(pool_dir / "train_near_duplicates.csv")
    assert summary["train_near_duplicates"]["n_pairs"] == len(near)
    assert list(near.columns) == ["id", "index", "train_index", "train_id", "train_label", "similarity"]
    # what belongs to the run is computed once: a second pool reads the audit, val's predictions and the map
    cache = tiny_run / "cache"
    made = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert {n.split("-")[0] for n in made} == {"val", "audit"}     # (the map is drawn by the notebook only)
    assert json.loads((pool_dir / "label_audit.json").read_text())["computed"].startswith("computed now")
    annotate.run(params.make("annotate", {"run_dir": str(tiny_run), "pool": "val", "audit_folds": 2,
                                          "audit_epochs": 1, "bootstrap": 100}))
    second = tiny_run / "annotate" / "val"
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == made          # read, never rewritten
    assert json.loads((second / "label_audit.json").read_text())["computed"] == "read from the run's cache"
    assert (second / "label_issues.csv").read_bytes() == (pool_dir / "label_issues.csv").read_bytes()



def test_the_runs_map_is_fitted_once_and_new_points_are_placed_on_it(trained):
    from workbench import features as F
    tr, va = F.split_features(trained, "train"), F.split_features(trained, "val")
    first = F.run_projection(trained, tr, va, method="pca")
    again = F.run_projection(trained, tr, va, method="pca")
    assert not first["cached"] and again["cached"] and first["path"] == again["path"]
    assert np.array_equal(first["train_xy"], again["train_xy"]) and first["train_xy"].shape == (len(tr), 2)
    assert first["method"] == "pca" and again["val_xy"].shape == (len(va), 2)
    # a point is placed at the similarity-weighted mean of its neighbours' positions
    anchors = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    xy = F.place(anchors, np.array([[0, 1], [1, 2]]), np.array([[1.0, 1.0], [0.75, 0.25]]))
    assert np.allclose(xy, [[5.0, 0.0], [7.5, 2.5]])
    index = F.Index(tr.embeddings, trained.dataset().labels["train"])
    sims, idx = index.search(tr.embeddings[:5], 3)
    placed = F.place(first["train_xy"], idx, sims)      # a train image lands next to itself on the map
    assert np.linalg.norm(placed - first["train_xy"][:5], axis=1).max() < np.ptp(first["train_xy"], axis=0).max() / 2


def test_bench_compares_the_agreement_rule_at_equal_coverage():
    from bench.features import equal_coverage
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.50])
    agree = np.array([True, False, True, True, True])
    correct = np.array([True, False, True, True, False])
    r = equal_coverage(conf, agree, correct, conf >= 0.97)             # the plain rule: 3 items, 1 wrong
    assert r["reachable"] and r["n_accepted"] == 3
    assert r["plain_precision"] == pytest.approx(2 / 3) and r["errors_plain"] == 1
    assert r["agreement_precision"] == 1.0 and r["agreement_threshold"] == 0.96 and r["errors_agreement"] == 0
    short = equal_coverage(conf, np.array([True, False, False, False, False]), correct, conf >= 0.97)
    assert not short["reachable"] and short["agreement_max_coverage"] == pytest.approx(0.2)

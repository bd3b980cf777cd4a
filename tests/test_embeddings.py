"""workbench.embeddings on a tiny real run: shapes, bit-identical chunking, the cache keyed by model and source."""

import shutil

import numpy as np

from conftest import FIXTURES

BREAST = FIXTURES / "breastmnist_tiny.npz"


def test_embeddings_shape_determinism_and_cache(tiny_run, tmp_path):
    from workbench import embeddings as E, runload
    # a copy without the feature cache that other tests of the session may have filled: the first call computes
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("features"))
    trained = runload.load(run)
    ds = trained.dataset()
    a = E.split_features(trained, "train")
    assert a.embeddings.shape == (len(ds.labels["train"]), 4 * 8)       # gap of a width-8 CNN: 4w channels
    assert a.probs.shape == (len(ds.labels["train"]), 8) and np.allclose(a.probs.sum(1), 1, atol=1e-3)
    assert a.layer == "gap" and not a.cached and a.path.is_file()
    assert a.path.parent == trained.path / "features" and a.path.name == f"train-{a.key}.npz"
    with np.load(a.path, allow_pickle=False) as z:
        assert z["embeddings"].dtype == np.float16 and str(z["model_hash"]) == trained.model_hash
    mtime = a.path.stat().st_mtime_ns
    b = E.split_features(trained, "train")
    assert b.cached and b.path == a.path and np.array_equal(a.embeddings, b.embeddings)
    assert a.path.stat().st_mtime_ns == mtime                            # read, never rewritten
    # bit-identity is what the cache promises, so the code keeps it: whatever batch size the caller asks for
    # and however a pool's files arrive, the network always runs on the same fixed chunks (EMBED_CHUNK)
    x = ds.images["train"][:300]
    e1, p1 = E.embed_images(trained.model, x, batch_size=16, progress=False)
    e2, p2 = E.embed_images(trained.model, x, batch_size=32, progress=False)
    assert np.array_equal(e1, e2) and np.array_equal(p1, p2)
    cuts = [0, 7, 100, 101, 250, 300]          # a stream in uneven batches, as a folder pool delivers them
    e3, p3 = E.embed_stream(trained.model, ((np.arange(s, t), x[s:t]) for s, t in zip(cuts, cuts[1:])), len(x),
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
    assert not np.allclose(direct, E.embed_images(trained.model, x[40:80], progress=False)[0], atol=1e-2)  # sensitive
    other = E.split_features(trained, "test")
    assert other.key != a.key and other.path != a.path

def test_a_changed_model_gets_another_cache_file(trained, tiny_run, tmp_path):
    from workbench import embeddings as E
    from workbench import models, runload
    first = E.split_features(trained, "val")
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
    second = E.split_features(other, "val")
    assert second.key != first.key and not second.cached
    assert len(list((copy / "features").glob("val-*.npz"))) == 2          # the copied stale file stays, unused
    assert not np.allclose(second.probs, first.probs)

def test_pool_features_are_keyed_by_the_pool(trained, tmp_path):
    from workbench import embeddings as E
    from workbench.pools import open_pool
    p1 = open_pool(f"{BREAST}:test")
    f1 = E.pool_features(trained, p1)
    assert f1.embeddings.shape == (30, 32) and f1.ids == list(p1.ids) and f1.path.name.startswith("pool_")
    assert E.pool_features(trained, open_pool(f"{BREAST}:test")).cached
    f2 = E.pool_features(trained, open_pool(f"{BREAST}:val"))
    assert f2.key != f1.key and not np.array_equal(f2.embeddings, f1.embeddings)

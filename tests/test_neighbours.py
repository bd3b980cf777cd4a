"""workbench.neighbours: kNN on a planted set, the OOD score ranking foreign images (BreastMNIST) above
BloodMNIST ones, near-duplicates of train images."""


import numpy as np

from conftest import FIXTURES

BREAST = FIXTURES / "breastmnist_tiny.npz"


def test_knn_on_a_planted_separable_set():
    from workbench import neighbours as N
    rng = np.random.default_rng(0)   # synthetic control: three well separated clusters, not image data
    centres = rng.normal(size=(3, 16)) * 5
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(size=(120, 16))
    q_y = np.repeat(np.arange(3), 10)
    q = centres[q_y] + rng.normal(size=(30, 16))
    index = N.Index(x, y)
    probs, lab = N.knn_predict(index, q, 3, k=11)
    assert np.array_equal(lab, q_y) and probs.shape == (30, 3) and np.allclose(probs.sum(1), 1)
    sims, idx = index.search(x[:5], k=1, exclude_self=True)
    assert not np.any(idx[:, 0] == np.arange(5))                          # never its own neighbour
    wrong = (y + 1) % 3                                                    # all labels shifted: kNN follows them
    assert np.array_equal(N.knn_predict(N.Index(x, wrong), q, 3)[1], (q_y + 1) % 3)
    # ties: 2 votes each, the class with the higher summed similarity wins
    probs, lab = N.knn_vote(np.array([0, 0, 1, 1]), np.array([[2, 0, 3, 1]]), np.array([[0.9, 0.5, 0.8, 0.1]]), 2)
    assert lab[0] == 1 and np.allclose(probs, [[0.5, 0.5]])

def test_ood_score_ranks_foreign_images_above_bloodmnist(trained):
    from sklearn.metrics import roc_auc_score

    from workbench import embeddings as E, neighbours as N
    from workbench.pools import open_pool
    ds = trained.dataset()
    train = E.split_features(trained, "train")
    scorer = N.OODScorer(train.embeddings, ds.labels["train"])
    inside = scorer.scores(E.split_features(trained, "test").embeddings)
    foreign = scorer.scores(E.pool_features(trained, open_pool(f"{BREAST}:test")).embeddings)  # grayscale → RGB
    auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(foreign))], np.r_[inside, foreign])
    assert auroc > 0.95, auroc
    assert np.median(foreign) > np.quantile(inside, 0.9)

def test_near_duplicates_find_copies_of_train_images(trained):
    from workbench import embeddings as E, neighbours as N
    ds = trained.dataset()
    train = E.split_features(trained, "train")
    index = N.Index(train.embeddings)
    test = E.split_features(trained, "test").embeddings
    queries = np.concatenate([train.embeddings[[3, 17]], test])
    sims, idx = index.search(queries, 1)
    rows, cols, s = N.near_duplicate_pairs(sims, idx)
    assert {(0, 3), (1, 17)} <= set(zip(rows.tolist(), cols.tolist()))
    exact = {i for i, t in enumerate(ds.images["test"]) if any(np.array_equal(t, u) for u in ds.images["train"])}
    assert set(rows.tolist()) - {0, 1} >= {i + 2 for i in exact}

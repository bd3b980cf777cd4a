"""workbench.maps and the map widget: every point on the static face, selections in the widget, projections,
the run's map fitted once and new points placed on it."""


import numpy as np
import pytest

from workbench.errors import WorkbenchError



def test_static_map_has_every_point_and_the_widget_shows_selections(trained):
    from workbench import maps as M, widgets
    data = M.run_map(trained.path, method="pca")
    n = sum(len(trained.dataset().labels[s]) for s in ("train", "val", "test"))
    assert len(data) == n and data.xy.shape == (n, 2)
    assert set(data.colourings) >= {"label", "prediction", "confidence", "split"}
    fig = M.map_figure(data, ("label", "split"))
    assert len(fig.axes) >= 2
    for ax in fig.axes[:2]:
        assert sum(len(c.get_offsets()) for c in ax.collections) == n
    m = widgets.EmbeddingMap(data, max_thumbnails=8)
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
    from workbench import embeddings as E, maps as M
    x = E.split_features(trained, "val").embeddings
    xy, used = M.project(x, "tsne", seed=0)
    assert used == "t-SNE" and xy.shape == (len(x), 2) and np.isfinite(xy).all()
    assert np.array_equal(M.project(x, "tsne", seed=0)[0], xy)
    with pytest.raises(WorkbenchError, match="projection method"):
        M.project(x, "mds")

def test_the_runs_map_is_fitted_once_and_new_points_are_placed_on_it(trained):
    from workbench import embeddings as E, maps as M, neighbours as N
    tr, va = E.split_features(trained, "train"), E.split_features(trained, "val")
    first = M.run_projection(trained, tr, va, method="pca")
    again = M.run_projection(trained, tr, va, method="pca")
    assert not first["cached"] and again["cached"] and first["path"] == again["path"]
    assert np.array_equal(first["train_xy"], again["train_xy"]) and first["train_xy"].shape == (len(tr), 2)
    assert first["method"] == "pca" and again["val_xy"].shape == (len(va), 2)
    # a point is placed at the similarity-weighted mean of its neighbours' positions
    anchors = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    xy = M.place(anchors, np.array([[0, 1], [1, 2]]), np.array([[1.0, 1.0], [0.75, 0.25]]))
    assert np.allclose(xy, [[5.0, 0.0], [7.5, 2.5]])
    index = N.Index(tr.embeddings, trained.dataset().labels["train"])
    sims, idx = index.search(tr.embeddings[:5], 3)
    placed = M.place(first["train_xy"], idx, sims)      # a train image lands next to itself on the map
    assert np.linalg.norm(placed - first["train_xy"][:5], axis=1).max() < np.ptp(first["train_xy"], axis=0).max() / 2

"""bench/annotate_cost.py: a pool's wall time is itemised from the executed notebook's cell times."""

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from bench import annotate_cost as bench


def test_cells_are_grouped_by_what_they_do_and_the_rest_is_the_kernel_and_export(tmp_path):
    cells = [new_code_cell("run, trained, pool = annotate.open_stage(P)"),
             new_code_cell("pool_probs = annotate.predict_pool(run, trained, pool, P, temperature)"),
             new_code_cell("fx = annotate.features_of(run, trained, pool, P, pool_probs)"),
             new_code_cell("issues = annotate.audit_labels(run, trained, P)"),
             new_code_cell("widgets.show_map(maps.annotate_map(fx, trained, pool, table, issues, P), \"label\", P.seed)"),
             new_code_cell("annotate.gallery(table, pool, trained, P, annotate.AUTO)")]
    for c, d in zip(cells, (2.0, 3.0, 1.5, 0.5, 4.0, 1.0)):
        c.metadata["papermill"] = {"duration": d}
    nbformat.write(new_notebook(cells=cells), tmp_path / "30_annotate.ipynb")
    got = bench.itemise(tmp_path, wall=20.0)
    items = got["items"]
    assert got["cells_s"] == 12.0 and items["model load (open the run and the pool)"] == 2.0
    assert items["embedding map"] == 4.0 and items["label audit"] == 0.5 and items["pool predictions"] == 3.0
    assert items["report figures, galleries, review summary"] == 1.0
    assert items["Python and kernel start, HTML export, PHI check (the rest of the wall time)"] == 8.0
    md = bench.markdown({"n_pool": 1000, "run": "r", "goal_s": 30.0, "machine": "x", "python": "3.11", "cpus": 2,
                         "pools": {"first": {**got, "loadavg_before": [0, 0, 0]},
                                   "new": {**got, "loadavg_before": [0, 0, 0]}}})
    assert "| embedding map | 4.0 | 4.0 |" in md and "met in this measurement" in md

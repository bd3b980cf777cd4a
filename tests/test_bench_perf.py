"""bench/perf.py's direct stage calls follow the product's API (they once fell behind it and the
benchmark silently reported no annotate speed), and a failed direct call yields no overhead figure."""

import json

import pytest

from bench import perf
from conftest import TINY


@pytest.mark.slow
def test_direct_stage_calls_run_the_stages(tmp_path):
    run_dir = tmp_path / "direct"
    train_p = {"dataset": str(TINY), "epochs": 1, "width": 8, "batch_size": 64, "tta": "no", "seed": 0}
    tr = perf.child_stage({"stage": "train", "params": train_p, "run_dir": str(run_dir)})
    assert tr["summary"]["epochs_run"] == 1 and (run_dir / "model.keras").is_file()
    ann = perf.child_stage({"stage": "annotate", "params": {"gallery_size": 8}, "run_dir": str(run_dir)})
    summary = json.loads((run_dir / "annotation_summary.json").read_text())
    assert ann["summary"]["pool_size"] == summary["pool_size"] > 0
    assert ann["summary"]["annotate_img_s"] > 0


def test_failed_direct_call_is_reported_not_turned_into_an_overhead():
    doc = {"time_utc": "t", "machine": {"cpu": "c", "cores": 2, "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0]},
           "settings": {"batch": 128, "infer_batch": 512}, "models": {}, "ratios": {},
           "stages": {"params": {"train": {"max_per_split": 10}}, "annotate_papermill": {"wall_s": 20.0},
                      "annotate_direct": {"error": ["AttributeError: no such function"], "wall_s": 3.0}}}
    md = perf.markdown(doc)
    assert "annotate direct failed**: AttributeError: no such function" in md
    assert "| annotate | 20.0 | 3.0 | — |" in md

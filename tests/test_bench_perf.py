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
    summary = json.loads((run_dir / "annotate" / "test" / "annotation_summary.json").read_text())
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


def test_conv_specs_read_from_the_models():
    specs = perf.conv_specs(["cnn", "cnn_ref"])
    cnn = [c for c in specs if "cnn" in c["uses"]]
    # the registry cnn (width 16): 6 distinct 3×3 convolutions, the first on the RGB image
    assert [(c["h"], c["cin"], c["cout"]) for c in cnn] == [(28, 3, 16), (28, 16, 16), (14, 16, 32), (14, 32, 32),
                                                             (7, 32, 64), (7, 64, 64)]
    assert all(c["k"] == 3 and c["stride"] == 1 and c["uses"]["cnn"] == 1 for c in cnn)
    # training needs no gradient of the image: only the first convolution lacks an input-gradient use
    assert [c["dx_uses"].get("cnn", 0) for c in cnn] == [0, 1, 1, 1, 1, 1]
    assert sum(sum(c["uses"].values()) for c in specs) == 10  # + cnn_ref's 4


def test_conv_totals_count_each_use_and_skip_the_image_gradient():
    specs = [{"uses": {"a": 1, "b": 2}, "dx_uses": {"b": 2}}, {"uses": {"a": 3}, "dx_uses": {"a": 3}}]
    timings = [{"fwd_ms": 1.0, "dx_ms": 10.0, "dw_ms": 100.0}, {"fwd_ms": 2.0, "dx_ms": 20.0, "dw_ms": 200.0}]
    assert perf.conv_totals(specs, timings) == {"a": 101.0 + 3 * 222.0, "b": 2 * 111.0}


def test_jax_kernel_timings_are_measured_and_tabulated():
    res = perf.child_kernels_jax({"models": ["cnn"]})
    assert len(res["kernels"]) == len(res["specs"]) == 6
    assert all(t[k] > 0 for t in res["kernels"] for k in ("fwd_ms", "dx_ms", "dw_ms"))
    res["step_conv_ms"] = perf.conv_totals(res["specs"], res["kernels"])
    kern = {"specs": res.pop("specs"), "jax": res, "torch": {"error": ["ModuleNotFoundError: torch"]}}
    md = "\n".join(perf.kernels_markdown(kern, {"cnn": {"keras/fast": {"train_img_s": 1280.0}}}))
    assert "**PyTorch kernels failed**: ModuleNotFoundError: torch" in md
    assert "| 28×28×3 → 16 (3×3 /1) | cnn×1 |" in md
    # the per-model line: conv ms of this run, no PyTorch figure, step time 128 / 1280 img/s = 100 ms
    assert f"| cnn | {res['step_conv_ms']['cnn']:,.1f} | — | 100.0 | — |" in md

"""Model card of the end-to-end run and the `workbench report` index of runs."""

import json
import re
import shutil

import pytest

from conftest import read_json, run_cli
from workbench.report import MODEL_CARD_HEADINGS, MORE, NOT_CLINICAL

pytestmark = pytest.mark.slow


def test_model_card_headings_and_numbers_match_metrics(pipeline_run):
    d = pipeline_run["dir"]
    card = (d / "model_card.md").read_text()
    m = read_json(d / "metrics.json")
    t = m["test"]
    headings = re.findall(r"^## +(.+?)\s*$", card, flags=re.M)
    assert headings == list(MODEL_CARD_HEADINGS)
    assert NOT_CLINICAL in card and MORE in card
    for key in ("acc", "auc", "balanced_acc", "ece", "ece_after_temperature"):
        assert f"{t[key]:.4f}" in card, key
    for key in ("acc_ci95", "auc_ci95", "balanced_acc_ci95"):
        lo, hi = t[key]
        assert f"[{lo:.4f}, {hi:.4f}]" in card, key
    for name, r in t["per_class_ci95"].items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {name} | "))
        assert f"| {r['support']} |" in row
        lo, hi = r["sensitivity_ci95"]
        assert f"{r['sensitivity']:.4f} [{lo:.4f}, {hi:.4f}]" in row
    temperature = read_json(d / "calibration.json")["temperature"]
    assert f"temperature {temperature:.4f}" in card
    params = read_json(d / "params/train.json")
    assert f"`{params['model']}`" in card and f"base width {params['width']}" in card
    assert f"{t['n']} images" in card


def _copy_run(src, dst, metrics_patch=None):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.keras", "*.ipynb", "predictions.npz"))
    if metrics_patch:
        m = json.loads((dst / "metrics.json").read_text())
        m["test"].update(metrics_patch)
        (dst / "metrics.json").write_text(json.dumps(m))


def test_report_index_lists_every_run_sorted(pipeline_run, tmp_path):
    src = pipeline_run["dir"]
    runs = tmp_path / "runs"
    runs.mkdir()
    _copy_run(src, runs / "20260101-000000_low", {"acc": 0.1, "acc_ci95": [0.05, 0.15]})
    _copy_run(src, runs / "20260102-000000_high", {"acc": 0.9, "acc_ci95": [0.85, 0.95]})
    train_only = runs / "20260103-000000_train-only"
    (train_only / "params").mkdir(parents=True)
    shutil.copy(src / "params/train.json", train_only / "params/train.json")
    (runs / "not-a-run").mkdir()  # no params, provenance or notebooks: not listed
    proc = run_cli("report", str(runs), "--sort", "test_acc")
    assert proc.returncode == 0, proc.stderr
    index = runs / "index.html"
    assert proc.stdout.strip().splitlines()[-1] == str(index)
    assert "3 run(s) compared" in proc.stdout
    page = index.read_text()
    names = ["20260102-000000_high", "20260101-000000_low", "20260103-000000_train-only"]
    positions = [page.index(f"<b>{n}</b>") for n in names]
    assert positions == sorted(positions)  # sorted by test ACC, descending; runs without metrics last
    assert "not-a-run" not in page
    assert "[0.8500, 0.9500]" in page and "[0.0500, 0.1500]" in page  # intervals beside the values
    for n in names[:2]:
        for f in ("10_train.html", "20_evaluate.html", "annotate/test/30_annotate.html", "model_card.md"):
            assert f'href="{n}/{f}"' in page and (runs / n / f).is_file()
    assert "function sortBy" in page and "onclick=\"sortBy(" in page  # sortable in the page itself
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no external assets
    assert NOT_CLINICAL in page
    # another order, written elsewhere: links stay relative to where the page is
    out = tmp_path / "elsewhere.html"
    proc = run_cli("report", str(runs), "--sort", "name", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert 'href="runs/20260101-000000_low/20_evaluate.html"' in out.read_text()


def test_report_errors(tmp_path):
    proc = run_cli("report", str(tmp_path / "none"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: runs directory")
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "no run directories" in proc.stderr


def test_one_vocabulary_of_run_metrics_for_index_sweep_and_cli(tmp_path):
    """The run index, the sweep and the command line read the same number under the same name: the auto-accept
    coverage is annotation_summary.json's coverage (auto-accepted / pool) everywhere."""
    import inspect
    import json

    from workbench import cli, report, sweep
    run = tmp_path / "run"
    pool = run / "annotate" / "test"
    (pool / "params").mkdir(parents=True)
    (pool / "params" / "annotate.json").write_text("{}")
    (run / "metrics.json").write_text(json.dumps({"test": {"acc": 0.9, "auc": None}}))
    (pool / "annotation_summary.json").write_text(json.dumps({
        "coverage": 0.25, "n_auto_accepted": 5, "pool_size": 20, "achieved": {"precision": 1.0, "coverage": 0.5}}))
    r = report.run_results(run)
    assert report.metric_value(r, "auto_accept_coverage") == 0.25                     # not achieved.coverage
    assert report.metric_value(r, "test_auc") is None and report.fmt(None) == "n/a"
    got = {k: get(r) for k, _, get in sweep._metrics()}
    assert got["auto_accept_coverage"] == 0.25 and got["test_acc"] == 0.9
    assert {k for k, _, _ in sweep._metrics()} <= set(report.METRIC)
    headers = {m.header for m in report.RUN_METRICS}
    assert "auto-accept coverage" in headers and "auto-accepted" not in headers and "auto-label coverage" not in headers
    assert "_AGG_JS" not in inspect.getsource(sweep) and "sort_script" in inspect.getsource(sweep.write_report)
    assert cli._num(None) == "n/a" and cli._num(0.5) == "0.5000"

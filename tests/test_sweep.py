"""workbench sweep: the grid, checks before anything starts, the stage cache, CPU budgets, the report, and real
sweeps of tiny runs on Dask (an embedded 2-worker LocalCluster; an external `dask scheduler` with two
`dask worker` processes on 127.0.0.1, one of them killed mid-run)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, TINY, TINY_TRAIN, WORKBENCH, read_json, run_cli

from workbench import cache, sweep
from workbench.errors import WorkbenchError

TINY_EVAL = ["-p", "audit_folds", "0", "-p", "n_resamples", "100", "-p", "bootstrap", "100", "-p", "gallery_size", "4",
             "-p", "robustness", "0"]   # what a sweep does with the stages is tested, not their reports


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])


# --- the spec -------------------------------------------------------------------------------------------

def test_grid_is_every_combination_of_the_comma_lists():
    sw = sweep.build([("learning_rate", "0.001,0.003"), ("seed", "0,1,2"), ("epochs", "2")], stages="train")
    assert len(sw.settings) == 6 and sw.swept == ["learning_rate", "seed"] and sw.stages == ("train",)
    assert {(s.overrides["learning_rate"], s.overrides["seed"]) for s in sw.settings} == {
        (lr, seed) for lr in ("0.001", "0.003") for seed in ("0", "1", "2")}
    assert all(s.overrides["epochs"] == "2" for s in sw.settings)
    assert sw.settings[0].label == "learning_rate=0.001, seed=0"
    assert sw.name.startswith("sweep-")  # the same spec gets the same folder: rerunning it resumes
    assert sweep.build([("learning_rate", "0.001,0.003"), ("seed", "0,1,2"), ("epochs", "2")],
                       stages="train").name == sw.name


def test_yaml_file_gives_explicit_settings_crossed_with_the_grid(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("name: widths\nstages: [train, evaluate]\nepochs: 1\nseed: [0, 1]\n"
                 "settings:\n  - {model: cnn, width: 8}\n  - {model: cnn, width: 16}\n")
    sw = sweep.build(config=str(f))
    assert sw.name == "widths" and sw.stages == ("train", "evaluate")
    assert len(sw.settings) == 4 and set(sw.swept) == {"seed", "width"}
    assert sorted((s.overrides["width"], s.overrides["seed"]) for s in sw.settings) == [(8, 0), (8, 1), (16, 0), (16, 1)]
    # the command line wins over the file for the same parameter
    assert len(sweep.build([("seed", "5")], config=str(f)).settings) == 2
    f.write_text("seed: [0, 1]\nsettings:\n  - {seed: 3}\n")
    with pytest.raises(WorkbenchError, match="both swept"):
        sweep.build(config=str(f))
    f.write_text("seed: [0,\n")
    with pytest.raises(WorkbenchError, match="not valid YAML"):
        sweep.build(config=str(f))
    with pytest.raises(WorkbenchError, match="empty value"):
        sweep.build([("seed", "0,,1")])
    with pytest.raises(WorkbenchError, match="must include train"):
        sweep.build([("seed", "0")], stages="evaluate,annotate")


def test_every_setting_is_checked_before_anything_starts(tmp_path):
    sw = sweep.build([("dataset", str(TINY)), ("learning_rate", "0.001,0.5,7")], stages="train")
    with pytest.raises(WorkbenchError) as e:
        sweep.check(sw)
    assert str(e.value).startswith("setting 3 of 3 (learning_rate=7): parameter 'learning_rate' = 7.0 is out of range")
    with pytest.raises(WorkbenchError, match="belong to a stage this sweep does not run"):
        sweep.check(sweep.build([("dataset", str(TINY)), ("target_precision", "0.9")], stages="train"))
    with pytest.raises(WorkbenchError, match="not found"):
        sweep.check(sweep.build([("dataset", str(tmp_path / "none.npz"))], stages="train"))
    # the same run twice (an explicit default) runs once
    sw = sweep.check(sweep.build([("dataset", str(TINY)), ("seed", "0,00")], stages="train"))
    assert len(sw.settings) == 1 and "run once" in sw.notes[0]


def test_bad_sweep_spec_is_one_line_and_nothing_runs(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli("sweep", "-p", "dataset", str(TINY), "-p", "epochs", "1,two", "-p", "seed", "0,1",
                   env={"WORKBENCH_RUNS_DIR": str(runs)})
    _one_line_error(proc, "setting 3 of 4 (epochs=two, seed=0)", "parameter 'epochs' must be int")
    assert not runs.exists()  # no sweep folder, no run directory, no cluster
    proc = run_cli("sweep", "-p", "epoch", "1,2", env={"WORKBENCH_RUNS_DIR": str(runs)})
    _one_line_error(proc, "unknown parameter 'epoch'", "epochs")
    _one_line_error(run_cli("sweep", "--workers", "0", "-p", "seed", "0,1", env={"WORKBENCH_RUNS_DIR": str(runs)}),
                    "--workers must be at least 1")
    assert not runs.exists()


# --- CPU budgets ----------------------------------------------------------------------------------------------

def test_cpu_plan_gives_workers_on_one_machine_disjoint_cpus():
    w = {"tcp://a:1": {"host": "a", "cpus": [0, 1, 2, 3], "nthreads": 1},
         "tcp://a:2": {"host": "a", "cpus": [0, 1, 2, 3], "nthreads": 1},
         "tcp://b:1": {"host": "b", "cpus": [0, 1, 2, 3, 4, 5, 6, 7], "nthreads": 1},
         "tcp://c:1": {"host": "c", "cpus": [0, 1, 2, 3], "nthreads": 2}}
    plan = {a: (p["cpus"], p["threads"]) for a, p in sweep.cpu_plan(w).items()}
    assert plan["tcp://a:1"] == ([0, 1], 2) and plan["tcp://a:2"] == ([2, 3], 2)
    assert plan["tcp://b:1"] == (list(range(8)), 8)
    assert plan["tcp://c:1"] == (None, 2)  # two tasks share a process: a budget, no pinning
    # more workers than cores: one core each, wrapping around
    many = {f"tcp://a:{i}": {"host": "a", "cpus": [0, 1], "nthreads": 1} for i in range(3)}
    assert [p["cpus"] for p in sweep.cpu_plan(many).values()] == [[0], [1], [0]]
    # a restarted worker (new address) takes the slice of the one that is gone
    full = sweep.cpu_plan(w)
    me = {"host": "a", "cpus": [0, 1, 2, 3], "nthreads": 1}
    assert sweep.budget_for("tcp://a:9", me, full, alive={"tcp://a:1", "tcp://a:9"})["cpus"] == [2, 3]
    assert sweep.budget_for("tcp://a:9", me, full, alive=None) == {**me_share(me), "cpus": None, "threads": 1}
    assert sweep.default_workers(4, cpus=2, memory=64 << 30) == 2
    assert sweep.default_workers(1, cpus=16, memory=64 << 30) == 1
    assert sweep.default_workers(40, cpus=16, memory=12 << 30) == 4  # memory-bound


def me_share(info):
    return {"host": info["host"], "cpuset": info["cpus"]}


def test_budget_env_limits_xla_omp_and_blas_and_keeps_other_xla_flags():
    env = sweep.budget_env(1, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot intra_op_parallelism_threads=8"})
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_multi_thread_eigen=false"
    four = sweep.budget_env(4, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})
    assert four["XLA_FLAGS"] == "" and four["OMP_NUM_THREADS"] == "4"  # XLA follows the affinity


@pytest.mark.parametrize("threads", [1, 2])
def test_budget_env_is_accepted_by_xla(threads):
    """XLA aborts on a malformed XLA_FLAGS (a value not starting with -- is read as a file name)."""
    env = {**os.environ, **sweep.budget_env(threads, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"})}
    proc = subprocess.run([sys.executable, "-c", "import jax.numpy as j; print(float((j.ones((64, 64)) @ j.ones((64, 64))).sum()))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "262144.0", proc.stderr[-2000:]


# --- the cache, on hand-made run directories ------------------------------------------------------------------

def _fake_stage(run_dir: Path, stage: str, key: str, files: dict, html: bool = True):
    run_dir.mkdir(parents=True, exist_ok=True)
    before = cache.snapshot(run_dir)
    stem = {"train": "10_train", "evaluate": "20_evaluate", "annotate": "30_annotate"}[stage]
    (run_dir / f"{stem}.ipynb").write_text("{}")
    if html:
        (run_dir / f"{stem}.html").write_text("<html></html>")
    for name, text in files.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)
    prov = run_dir / "provenance.json"
    doc = json.loads(prov.read_text()) if prov.exists() else {}
    doc[stage] = {"seed": 0, "stage": stage}
    prov.write_text(json.dumps(doc))
    return cache.write_marker(run_dir, stage, key, before, run_dir / f"{stem}.html", seconds=1.0)


def test_only_complete_stages_count_and_reuse_copies_them(tmp_path):
    keys = {"train": "k-train", "evaluate": "k-eval"}
    a = tmp_path / "20260101-000000_a"
    _fake_stage(a, "train", "k-train", {"model.keras": "weights", "params/train.json": "{}"})
    _fake_stage(a, "evaluate", "k-eval", {"metrics.json": '{"test": {"acc": 0.5}}'})
    m = cache.read_marker(a, "train")
    assert set(m["files"]) == {"10_train.ipynb", "10_train.html", "model.keras", "params/train.json", "provenance.json"}
    assert "metrics.json" in cache.read_marker(a, "evaluate")["files"]
    # a run killed half-way: its notebook exists, no report, no marker → never found
    b = tmp_path / "20260102-000000_b"
    with pytest.raises(WorkbenchError, match="no executed notebook and HTML report"):
        _fake_stage(b, "train", "k-train", {"model.keras": "half"}, html=False)
    assert not cache.marker_path(b, "train").exists()
    # another run that finished only train: the longest finished prefix wins
    c = tmp_path / "20260103-000000_c"
    _fake_stage(c, "train", "k-train", {"model.keras": "other weights"})
    assert cache.find_finished(keys, ["train", "evaluate"], root=tmp_path) == (a.resolve(), 2)
    assert cache.find_finished({"train": "k-train", "evaluate": "other"}, ["train", "evaluate"],
                               root=tmp_path)[1] == 1
    assert cache.find_finished({"train": "nope", "evaluate": "k-eval"}, ["train", "evaluate"], root=tmp_path) == (None, 0)
    # reuse: the files, the provenance entries (marked) and a marker of its own in the new run directory
    d = tmp_path / "20260104-000000_d"
    d.mkdir()
    cache.reuse(a, d, ["train", "evaluate"], keys)
    assert (d / "model.keras").read_text() == "weights" and (d / "metrics.json").is_file()
    prov = read_json(d / "provenance.json")
    assert set(prov) == {"train", "evaluate"} and prov["train"]["reused_from"] == str(a.resolve())
    assert cache.read_marker(d, "evaluate", "k-eval")["reused_from"] == str(a.resolve())
    # a finished stage whose files changed afterwards no longer counts
    (a / "model.keras").write_text("weights, then edited")
    assert cache.read_marker(a, "train", "k-train") is None
    with pytest.raises(WorkbenchError, match="already"):
        cache.write_marker(d, "train", "k-train", {}, d / "10_train.html")  # markers are write-once


def test_a_stage_is_not_marked_when_the_code_changed_while_it_ran(tmp_path, monkeypatch):
    import workbench.execute as ex

    def fake_run_stage(stage, run_dir, values, progress=False, kernel=None):
        for name in ("10_train.ipynb", "10_train.html", "model.keras"):
            (run_dir / name).write_text(name)
        return run_dir / "10_train.html"

    monkeypatch.setattr(ex, "run_stage", fake_run_stage)
    same, changed = tmp_path / "same", tmp_path / "changed"
    same.mkdir()
    changed.mkdir()
    cache.run_stage_marked("train", same, {}, "k", code_digest=cache.code_identity(fresh=True)["digest"])
    assert set(cache.read_marker(same, "train", "k")["files"]) == {"10_train.ipynb", "10_train.html", "model.keras"}
    notes = []
    cache.run_stage_marked("train", changed, {}, "k", code_digest="0" * 64, log=notes.append)
    assert not cache.marker_path(changed, "train").exists() and "changed while stage train ran" in notes[0]


def test_keys_follow_parameters_data_code_and_upstream(tmp_path, monkeypatch):
    from workbench.execute import split_pipeline_overrides
    stages = ("train", "evaluate", "annotate")

    def keys(**over):
        return cache.stage_keys(split_pipeline_overrides({"dataset": str(TINY), **over}), stages)

    base = keys()
    assert keys() == base and len(set(base.values())) == 3
    assert keys(epochs="15", seed="0")["train"] == keys(epochs=15)["train"]  # values, not spellings
    other = keys(epochs="2")
    assert all(other[s] != base[s] for s in stages)  # upstream change reaches every later stage
    ev = keys(n_resamples="200")
    assert ev["train"] == base["train"] and ev["evaluate"] != base["evaluate"] and ev["annotate"] != base["annotate"]
    an = keys(strategy="entropy")
    assert an["evaluate"] == base["evaluate"] and an["annotate"] != base["annotate"]
    # other bytes under the same path are other data (and so is a card put beside the file)
    data = tmp_path / "data.npz"
    shutil.copy(TINY, data)
    first = keys(dataset=str(data))
    assert keys(dataset=str(data)) == first
    time.sleep(0.01)
    shutil.copy(FIXTURES / "breastmnist_tiny.npz", data)
    assert keys(dataset=str(data))["train"] != first["train"]
    shutil.copy(FIXTURES / "breastmnist_tiny.md", tmp_path / "data.md")
    assert keys(dataset=str(data))["train"] not in (first["train"], base["train"])
    # the code: any change of its content is another key
    ident = dict(cache.code_identity())
    monkeypatch.setitem(cache._code_memo, "id", {**ident, "digest": "0" * 64})
    assert keys()["train"] != base["train"]


# --- the report -------------------------------------------------------------------------------------------

def test_aggregate_mean_sd_and_t_interval_across_seeds():
    from scipy import stats
    accs = {("0.001", "0"): 0.70, ("0.001", "1"): 0.74, ("0.001", "2"): 0.75, ("0.01", "0"): 0.60}
    rows = [{"overrides": {"learning_rate": lr, "seed": s}, "status": "done",
             "metrics": {k: None for k in sweep.SWEEP_METRICS} | {"test_acc": acc}} for (lr, s), acc in accs.items()]
    rows.append({"overrides": {"learning_rate": "0.01", "seed": "1"}, "status": "failed",
                 "metrics": {k: None for k in sweep.SWEEP_METRICS}})
    agg = {a["params"]["learning_rate"]: a for a in sweep.aggregate(rows, ["learning_rate", "seed"])}
    three = agg["0.001"]["test_acc"]
    v = np.array([0.70, 0.74, 0.75])
    lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=v.std(ddof=1) / np.sqrt(3))
    assert agg["0.001"]["n_runs"] == 3 and three["mean"] == pytest.approx(v.mean())
    assert three["sd"] == pytest.approx(v.std(ddof=1)) and three["ci95"] == pytest.approx([lo, hi])
    one = agg["0.01"]  # the failed run does not count; one run has no spread
    assert one["n_runs"] == 1 and one["test_acc"]["mean"] == 0.60 and one["test_acc"]["sd"] is None
    assert agg["0.001"]["test_auc"]["mean"] is None


def test_bench_counts_scheduling_latency_not_waiting_for_a_free_worker():
    from bench.sweep import scheduling_latency
    st = [{"index": 0, "submitted": 100.0, "attempts": [{"worker": "w1", "started": 100.5, "ended": 200.0}]},
          {"index": 1, "submitted": 100.0, "attempts": [{"worker": "w2", "started": 101.0, "ended": 150.0}]},
          # waited for a free worker until 150, started 0.25 s later: 0.25 s of latency, not 50
          {"index": 2, "submitted": 100.0, "attempts": [{"worker": "w2", "started": 150.25, "ended": 300.0}]}]
    assert scheduling_latency(st) == {0: 0.5, 1: 1.0, 2: 0.25}


# --- real sweeps ------------------------------------------------------------------------------------------

def _sweep_args(name, *extra):
    return ["sweep", "--name", name, *TINY_TRAIN, *extra]


def _code_digest() -> str:
    cache._code_memo.pop("id", None)
    return cache.code_identity()["digest"]


def _same_code_or_skip(since: str) -> None:
    """Reuse needs the same code: when workbench/, notebooks/ or data_cards/ were edited while these tests
    ran (a shared working tree), recomputing is the right answer and this test cannot say more."""
    if _code_digest() != since:
        pytest.skip("the code changed while the test ran: every key changed, so nothing is reused (correctly)")


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Two tiny pipelines (seeds 0 and 1) on an embedded 2-worker LocalCluster."""
    runs = tmp_path_factory.mktemp("sweep_runs")
    args = _sweep_args("tiny", "--workers", "2", "-p", "seed", "0,1", *TINY_EVAL)
    digest = _code_digest()
    proc = run_cli(*args, env={"WORKBENCH_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"runs": runs, "dir": Path(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout, "args": args,
            "code": digest}


@pytest.mark.slow
def test_local_cluster_sweep_runs_every_setting_with_a_cpu_budget(local_sweep):
    _same_code_or_skip(local_sweep["code"])  # an edit while the stages ran leaves them unmarked
    d = local_sweep["dir"]
    assert d == local_sweep["runs"] / "tiny"
    state = read_json(d / "sweep_state.json")
    assert [s["status"] for s in state["settings"]] == ["done", "done"]
    assert "dask scheduler tcp://127.0.0.1" in local_sweep["stdout"] and "2 worker(s)" in local_sweep["stdout"]
    attempts = []
    for s in state["settings"]:
        run = Path(s["run_dir"])
        assert run.parent == d
        for stage in ("train", "evaluate", "annotate"):
            m = cache.read_marker(run, stage, s["keys"][stage])
            assert m is not None and m["reused_from"] is None, stage
        assert read_json(run / "params" / "train.json")["seed"] == int(s["overrides"]["seed"])
        attempts.append(read_json(run / "sweep_attempt.json"))
        # the budget reached the notebook kernel: its recorded environment limits XLA to one thread
        assert "--xla_cpu_multi_thread_eigen=false" in read_json(run / "provenance.json")["train"]["env"]["XLA_FLAGS"]
        assert (run / "sweep.log").is_file()  # the kernels' own output went to the run's log, not the terminal
    assert attempts[0]["worker"] != attempts[1]["worker"] and attempts[0]["threads"] == 1
    if len(os.sched_getaffinity(0)) >= 2:
        assert set(attempts[0]["cpus"]).isdisjoint(attempts[1]["cpus"])


@pytest.mark.slow
def test_sweep_report_aggregates_and_plots(local_sweep):
    import csv
    d = local_sweep["dir"]
    state = read_json(d / "sweep_state.json")
    accs = [read_json(Path(s["run_dir"]) / "metrics.json")["test"]["acc"] for s in state["settings"]]
    with open(d / "sweep_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["n_runs"] == "2" and rows[0]["seeds"] == "0 1"
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(np.mean(accs))
    assert float(rows[0]["test_acc_sd"]) == pytest.approx(np.std(accs, ddof=1))
    for k in ("test_auc_mean", "test_ece_mean", "auto_accept_coverage_mean", "train_seconds_mean"):
        assert rows[0][k] != "", k
    page = (d / "index.html").read_text()
    assert "Per setting across seeds" in page and page.count("data:image/png;base64") == 1
    assert all(Path(s["run_dir"]).name in page for s in state["settings"])
    assert "<script src=" not in page and "sortTable" in page
    with open(d / "sweep_runs.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done", "done"]


@pytest.mark.slow
def test_cached_repeat_trains_nothing(local_sweep):
    d = local_sweep["dir"]
    before = sorted(p.name for p in d.iterdir() if p.is_dir())
    _same_code_or_skip(local_sweep["code"])
    t0 = time.perf_counter()
    proc = run_cli(*local_sweep["args"], env={"WORKBENCH_RUNS_DIR": str(local_sweep["runs"])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_code_or_skip(local_sweep["code"])
    assert "0 done, 2 cached, 0 failed" in proc.stdout
    assert "dask scheduler" not in proc.stdout  # nothing to run: no cluster is started
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == before  # no new run directory
    assert proc.stdout.strip().splitlines()[-1] == str(d)
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_pipeline_reuses_stages_finished_in_a_sweep(local_sweep):
    state = read_json(local_sweep["dir"] / "sweep_state.json")
    source = Path(state["settings"][1]["run_dir"])  # seed 1
    _same_code_or_skip(local_sweep["code"])
    proc = run_cli("pipeline", "-q", *TINY_TRAIN, *TINY_EVAL, "-p", "seed", "1",
                   env={"WORKBENCH_RUNS_DIR": str(local_sweep["runs"])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_code_or_skip(local_sweep["code"])
    out = proc.stdout.strip().splitlines()
    assert f"== train, evaluate, annotate: reused from {source}" in proc.stdout
    assert "== train\n" not in proc.stdout + "\n"
    run = Path(out[-1])
    assert run != source and read_json(run / "metrics.json") == read_json(source / "metrics.json")
    assert read_json(run / "provenance.json")["train"]["reused_from"] == str(source)
    for stage in ("train", "evaluate", "annotate"):
        assert cache.read_marker(run, stage)["reused_from"] == str(source)
    # --no-cache trains again (not run here: it costs a full pipeline); the flag exists
    assert "--no-cache" in run_cli("pipeline", "--help").stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_external_scheduler_a_killed_worker_and_a_failing_run(tmp_path):
    """`dask scheduler` + two `dask worker` processes started from the command line (127.0.0.1 only), the
    sweep from a YAML file. The worker running the first setting is killed while it trains: the run is
    retried in a new directory and the half-written one never counts. The third setting fails in its
    notebook (a subset too small for the data's classes): it is retried, listed with its error, and the
    others finish."""
    dask = str(Path(sys.executable).parent / "dask")
    runs = tmp_path / "runs"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "dask.log", "w")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              cwd=tmp_path, stdout=logs, stderr=logs)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard", "--name", f"w{i}"], cwd=ROOT, stdout=logs, stderr=logs))
        env = {**os.environ, "WORKBENCH_RUNS_DIR": str(runs)}
        spec = tmp_path / "sweep.yaml"
        spec.write_text("stages: [train]\nretries: 1\nsettings:\n  - {seed: 3}\n  - {seed: 4}\n"
                        "  - {seed: 5, max_per_split: 3}\n")
        cmd = [*WORKBENCH, *_sweep_args("ext", "--scheduler", address, "-f", str(spec))]
        sw = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait until the first setting's train notebook is being executed, then kill its worker
        deadline, killed = time.monotonic() + 300, None
        while killed is None and time.monotonic() < deadline and sw.poll() is None:
            for att in (runs / "ext").glob("*/sweep_attempt.json"):
                a = json.loads(att.read_text())
                if a["setting"] == 0 and (att.parent / "10_train.ipynb").exists():
                    os.kill(a["pid"], signal.SIGKILL)
                    killed = att.parent
                    break
            time.sleep(0.2)
        assert killed is not None, "the first setting never started training"
        stdout, stderr = sw.communicate(timeout=600)
        assert sw.returncode == 1, stdout[-3000:] + stderr[-3000:]  # 1: some setting failed
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
    d = runs / "ext"
    assert stdout.strip().splitlines()[-1] == str(d)
    assert f"dask scheduler {address}" in stdout and "(embedded)" not in stdout
    state = read_json(d / "sweep_state.json")
    first, second, bad = state["settings"]
    assert first["status"] == second["status"] == "done"
    # the failing run: two attempts in two directories, each with the error, the others unaffected
    assert bad["status"] == "failed" and len(bad["attempts"]) == 2
    assert all("cannot hold all 8 classes" in a["error"] for a in bad["attempts"])
    assert len({a["run_dir"] for a in bad["attempts"]}) == 2
    assert not any(cache.marker_path(Path(a["run_dir"]), "train").exists() for a in bad["attempts"])
    assert "failed: seed=5, max_per_split=3: " in stdout and "cannot hold all 8 classes" in stdout
    assert "cannot hold all 8 classes" in (d / "index.html").read_text()
    assert len(first["attempts"]) == 2 and "lost" in first["attempts"][0]["error"]
    assert first["attempts"][0]["run_dir"] == str(killed) and first["run_dir"] != str(killed)
    assert not cache.marker_path(killed, "train").exists()  # the partial directory never counts …
    found, n = cache.find_finished(first["keys"], ["train"], root=runs)
    assert n == 1 and found != killed.resolve()  # … and is never what the cache finds
    assert cache.read_marker(Path(first["run_dir"]), "train", first["keys"]["train"]) is not None
    assert read_json(Path(second["run_dir"]) / "params" / "train.json")["seed"] == 4

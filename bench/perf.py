"""`make bench`: training and inference throughput of the product's Keras-on-JAX path beside the same
networks in PyTorch, on this machine, in one run; papermill stage overhead; annotate inference speed.

Every measurement runs in a fresh child process (its own peak RSS, its own backend settings):

* keras/fast  — the product's default training path (``conv_impl=fast``: workbench.layers' pooling,
  Eigen convolutions, the allocator settings the stage runner gives the kernel);
* keras/stock — the same models with plain Keras layers on the backend's defaults (``conv_impl=stock``);
* torch       — the PyTorch twins (bench/torch_models.py), default settings, all cores;
* torch+alloc — PyTorch with the same allocator settings as keras/fast (so that the ratio is not
  flattered by a setting PyTorch could use too);
* torch/1thr  — PyTorch on one thread: on a loaded machine its OpenMP threads spin and lose more than
  half their speed, which would flatter the ratio; the ratio uses the best PyTorch row.

Convolution kernels: every convolution of the benchmarked models (read from the Keras models) timed
alone, forward, input gradient and weight gradient, on the fast path's backend and in PyTorch, and per
model the convolutions' milliseconds per training step: where the remaining gap comes from.

Training: batch 128, AdamW, cross-entropy, steady state (after warm-up steps, compile excluded), real
BloodMNIST images (no augmentation: this isolates the network's step); Keras trains through
``model.fit``, as the product does. Inference: batch 512, eval mode. Each timing is the best of 3.
The ratio is keras/fast ÷ the better of the two PyTorch rows. Results: bench/results/perf.json and
perf.md (also printed). Nothing here is copied: every number is measured by this run.

    python -m bench.perf                  # everything (≈ 13 min on 2 quiet cores)
    python -m bench.perf --no-kernels     # without the convolution-kernel comparison (≈ 2 min less)
    python -m bench.perf --models cnn     # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH, INFER_BATCH = 128, 512
# (warm-up steps, timed steps) per model: enough for a steady state within the 10-minute budget
STEPS = {"cnn": (3, 40), "cnn_ref": (3, 25), "resnet18": (2, 4)}
INFER_IMAGES = {"cnn": 4096, "cnn_ref": 4096, "resnet18": 1024}
REPEATS = 3  # each timed segment runs this many times; the fastest counts (_best_seconds)
TORCH_ROWS = ("torch", "torch+alloc", "torch/1thr")
MODEL_NOTES = {
    "cnn": "registry `cnn` as trained by the demo recipe (width 16, 6 conv, 73 k params)",
    "cnn_ref": "the issue's reference compact CNN (4 conv 32-64-128-256 + BN, 0.39 M params)",
    "resnet18": "registry `resnet18` (MedMNIST style, width 64, 11.2 M params)",
}


# ------------------------------------------------------------------------------------------ children

def _best_seconds(run, repeats: int = REPEATS) -> float:
    """Shortest of ``repeats`` timings of ``run()`` (as timeit does: the others only add other
    processes' interference, which on 2 shared cores moved single timings by ±15 %)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _images(n: int):
    import numpy as np
    with np.load(ROOT / "data" / "bloodmnist.npz", allow_pickle=False) as z:
        x, y = z["train_images"][:n], z["train_labels"][:n].reshape(-1)
    return x, y.astype("int64")


def _keras_model(name: str, conv_impl: str):
    import keras
    from keras import layers
    from workbench import models
    if name != "cnn_ref":
        kw = {"width": 16, "dropout": 0.2} if name == "cnn" else {}
        return models.build(name, (28, 28, 3), 8, conv_impl=conv_impl, **kw)
    inputs = keras.Input((28, 28, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    for k, f in enumerate((32, 64, 128, 256)):
        x = models._conv_bn_relu(x, f, name=f"c{k}", conv_impl=conv_impl)
        if k < 3:
            x = models._pool_cls(conv_impl)()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(8, activation="softmax", dtype="float32")(x), name="cnn_ref")


def child_keras(spec: dict) -> dict:
    from workbench.runtime import configure_backend
    backend = configure_backend(spec["conv_impl"])
    import keras
    import numpy as np
    warm, steps = STEPS[spec["model"]]
    x, y = _images(max(BATCH * (warm + steps), INFER_IMAGES[spec["model"]]))
    x = x.astype("float32")
    keras.utils.set_random_seed(0)
    model = _keras_model(spec["model"], spec["conv_impl"])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    # model.fit, as the product trains (train.py); a train_on_batch loop measured the same within noise,
    # but compiling both steps in one process doubled ResNet-18's peak RSS
    xs, ys = x[:BATCH * (warm + steps)], y[:BATCH * (warm + steps)]
    fit = {"batch_size": BATCH, "epochs": 1, "shuffle": False, "verbose": 0}
    model.fit(xs[:BATCH * warm], ys[:BATCH * warm], **fit)  # compiles the train step
    last = {}
    train_s = _best_seconds(lambda: last.update(model.fit(xs[BATCH * warm:], ys[BATCH * warm:], **fit).history))
    loss = last["loss"][-1]
    n_inf = INFER_IMAGES[spec["model"]]
    model.predict_on_batch(x[:INFER_BATCH])
    infer_s = _best_seconds(lambda: [np.asarray(model.predict_on_batch(x[i:i + INFER_BATCH]))
                                     for i in range(0, n_inf, INFER_BATCH)])
    return {"train_img_s": steps * BATCH / train_s, "infer_img_s": n_inf / infer_s, "params": model.count_params(),
            "final_loss": float(loss),
            "backend": backend}


def child_torch(spec: dict) -> dict:
    import numpy as np
    import torch
    sys.path.insert(0, str(ROOT))
    from bench.torch_models import MODELS
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    warm, steps = STEPS[spec["model"]]
    x, y = _images(max(BATCH * (warm + steps), INFER_IMAGES[spec["model"]]))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
    yt = torch.from_numpy(y)
    model = MODELS[spec["model"]]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()

    def step(i):
        xb, yb = xt[i * BATCH:(i + 1) * BATCH], yt[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    model.train()
    for i in range(warm):
        step(i)
    last = []
    train_s = _best_seconds(lambda: last.extend(step(i) for i in range(warm, warm + steps)))
    loss = last[-1]
    model.eval()
    n_inf = INFER_IMAGES[spec["model"]]
    with torch.inference_mode():
        model(xt[:INFER_BATCH])
        infer_s = _best_seconds(lambda: [torch.softmax(model(xt[i:i + INFER_BATCH]), 1).numpy()
                                         for i in range(0, n_inf, INFER_BATCH)])
    return {"train_img_s": steps * BATCH / train_s, "infer_img_s": n_inf / infer_s,
            "params": sum(p.numel() for p in model.parameters()), "final_loss": float(loss),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def child_stage(spec: dict) -> dict:
    """One stage called directly (no notebook): wall time of the call, from a fresh process."""
    from workbench import params, train
    t0 = time.perf_counter()
    if spec["stage"] == "train":
        out = train.run(params.make("train", {**spec["params"], "run_dir": spec["run_dir"]}))
    else:
        out = _annotate_direct(spec)
    return {"call_s": time.perf_counter() - t0, "summary": {k: v for k, v in out.items() if k != "run_dir"}}


def _annotate_direct(spec: dict) -> dict:
    """The annotate notebook's code cells (workbench.cells: the one definition of the stage), timed one by one;
    img/s from the cell that predicts the pool (streamed through the run's input path)."""
    from workbench import annotate, cells, params
    p = params.make("annotate", {**spec["params"], "run_dir": spec["run_dir"]})
    timings: list = []
    out = cells.run_cells(annotate.NOTEBOOK, p, timings)
    pool_s = sum(sec for src, sec in timings if "predict_pool" in src)
    n = out["summary"]["pool_size"]
    return {"pool_size": n, "label_pool_s": pool_s, "annotate_img_s": n / pool_s,
            "pool_dir": str(out["run"].path)}


# convolution kernels alone: what of the step's time the convolutions take in each framework

KERNEL_MIN_S = 0.05  # each timed segment repeats one kernel call at least this long


def conv_specs(names: list[str]) -> list[dict]:
    """Every distinct convolution of the Keras models ``names`` (input size, channels, kernel, stride),
    how often each model uses it, and whether training needs its input gradient (not for a model's
    first convolution, whose input is the image): read from the models themselves."""
    import workbench  # noqa: F401  (selects the JAX backend before keras is imported)
    import keras
    specs: dict[tuple, dict] = {}
    for name in names:
        first = True
        for layer in _keras_model(name, "fast").layers:
            if not isinstance(layer, keras.layers.Conv2D):
                continue
            _, h, w, cin = layer.input.shape
            key = (h, w, cin, layer.filters, layer.kernel_size[0], layer.strides[0])
            spec = specs.setdefault(key, {"h": h, "w": w, "cin": cin, "cout": layer.filters, "k": layer.kernel_size[0],
                                          "stride": layer.strides[0], "uses": {}, "dx_uses": {}})
            spec["uses"][name] = spec["uses"].get(name, 0) + 1
            if not first:
                spec["dx_uses"][name] = spec["dx_uses"].get(name, 0) + 1
            first = False
    return list(specs.values())


def _kernel_ms(call) -> float:
    """Best-of-3 milliseconds of one ``call()`` (which must block until its result exists)."""
    call()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < KERNEL_MIN_S:
        call()
        n += 1
    return _best_seconds(lambda: [call() for _ in range(n)]) / n * 1000


def child_kernels_jax(spec: dict) -> dict:
    """Forward, input-gradient and weight-gradient time of each convolution on the product's fast path
    (the ``lax`` convolution that ``keras.ops.conv`` lowers to, on the backend the fast path configures)."""
    from workbench.runtime import configure_backend
    backend = configure_backend("fast")
    import jax
    import numpy as np
    from jax import lax
    rng = np.random.default_rng(0)
    specs = conv_specs(spec["models"])
    out = []
    for c in specs:
        s = c["stride"]

        def conv(x, k, s=s):
            return lax.conv_general_dilated(x, k, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.numpy.asarray(rng.normal(size=(BATCH, c["h"], c["w"], c["cin"])).astype("float32"))
        k = jax.numpy.asarray(rng.normal(size=(c["k"], c["k"], c["cin"], c["cout"])).astype("float32"))
        g = jax.numpy.asarray(rng.normal(size=jax.eval_shape(conv, x, k).shape).astype("float32"))
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
        dw = jax.jit(lambda x, k, g, conv=conv: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])
        out.append({"fwd_ms": _kernel_ms(lambda: fwd(x, k).block_until_ready()),
                    "dx_ms": _kernel_ms(lambda: dx(x, k, g).block_until_ready()),
                    "dw_ms": _kernel_ms(lambda: dw(x, k, g).block_until_ready())})
    return {"specs": specs, "kernels": out, "backend": backend}


def child_kernels_torch(spec: dict) -> dict:
    """The same convolutions in PyTorch (NCHW, as its models run): forward and ``convolution_backward``
    for the input and the weight gradient separately."""
    import torch
    torch.manual_seed(0)
    conv_bwd = torch.ops.aten.convolution_backward
    out = []
    with torch.no_grad():
        for c in spec["specs"]:
            s, p = c["stride"], c["k"] // 2
            x = torch.randn(BATCH, c["cin"], c["h"], c["w"])
            w = torch.randn(c["cout"], c["cin"], c["k"], c["k"])
            y = torch.nn.functional.conv2d(x, w, stride=s, padding=p)
            g = torch.randn_like(y)

            def bwd(mask, x=x, w=w, g=g, s=s, p=p):
                return conv_bwd(g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)
            out.append({"fwd_ms": _kernel_ms(lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p)),
                        "dx_ms": _kernel_ms(lambda: bwd([True, False, False])),
                        "dw_ms": _kernel_ms(lambda: bwd([False, True, False]))})
    return {"kernels": out, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)}


def conv_totals(specs: list[dict], timings: list[dict]) -> dict:
    """Per model: milliseconds per training step spent in convolutions (forward + weight gradient for
    every use, input gradient where training needs it)."""
    totals: dict[str, float] = {}
    for c, t in zip(specs, timings):
        for name, n in c["uses"].items():
            totals[name] = totals.get(name, 0.0) + n * (t["fwd_ms"] + t["dw_ms"]) + c["dx_uses"].get(name, 0) * t["dx_ms"]
    return totals


def measure_kernels(models: list[str], have_torch: bool, log) -> dict:
    from workbench.runtime import ALLOCATOR_ENV, kernel_env
    log("convolution kernels: Keras-on-JAX (fast path) …")
    out = {"jax": run_child({"kind": "kernels_jax", "models": models}, kernel_env("fast"))}
    specs = out["specs"] = out["jax"].pop("specs", [])
    if have_torch and specs:
        log("convolution kernels: PyTorch …")
        out["torch"] = run_child({"kind": "kernels_torch", "specs": specs}, dict(ALLOCATOR_ENV))
    for fw in ("jax", "torch"):
        if "kernels" in out.get(fw, {}):
            out[fw]["step_conv_ms"] = conv_totals(specs, out[fw]["kernels"])
    return out


def run_child(spec: dict, env_extra: dict | None = None, timeout: int = 600) -> dict:
    env = {**os.environ, **(env_extra or {})}
    env.setdefault("KERAS_BACKEND", "jax")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.perf", "--child", json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"], "wall_s": wall}
    return {**json.loads(line[-1][7:]), "wall_s": wall}


def child_main(spec: dict) -> None:
    fn = {"keras": child_keras, "torch": child_torch, "stage": child_stage,
          "kernels_jax": child_kernels_jax, "kernels_torch": child_kernels_torch}[spec["kind"]]
    out = fn(spec)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out, default=str), flush=True)


# ------------------------------------------------------------------------------------------ parent

def _fmt(v, nd=1):
    return "—" if v is None else f"{v:,.{nd}f}"


def _have_torch() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def measure_models(models: list[str], have_torch: bool, log) -> dict:
    from workbench.runtime import ALLOCATOR_ENV, kernel_env
    rows = {}
    for name in models:
        rows[name] = {}
        configs = [("keras/fast", {"kind": "keras", "model": name, "conv_impl": "fast"}, kernel_env("fast")),
                   ("keras/stock", {"kind": "keras", "model": name, "conv_impl": "stock"}, {})]
        if have_torch:
            configs += [("torch", {"kind": "torch", "model": name}, {}),
                        ("torch+alloc", {"kind": "torch", "model": name}, dict(ALLOCATOR_ENV)),
                        ("torch/1thr", {"kind": "torch", "model": name, "threads": 1}, {})]
        for label, spec, env in configs:
            log(f"{name:9s} {label:12s} …")
            rows[name][label] = res = run_child(spec, env)
            log(f"  train {_fmt(res.get('train_img_s'))} img/s, infer {_fmt(res.get('infer_img_s'))} img/s, "
                f"peak RSS {_fmt(res.get('peak_rss_mb'), 0)} MB {res.get('error', '')}")
        if not have_torch:
            rows[name]["torch"] = {"error": ["PyTorch not installed: pip install -e '.[bench]'"]}
    return rows


def measure_stages(log) -> dict:
    """Train and annotate on a small real subset: via papermill (the CLI) vs the same call made directly."""
    import tempfile
    from workbench.runtime import kernel_env
    train_p = {"dataset": "bloodmnist", "max_per_split": 1500, "epochs": 2, "tta": "no", "seed": 0}
    ann_p = {"gallery_size": 24}
    out = {"params": {"train": train_p, "annotate": ann_p}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the CLI: new kernel, papermill, HTML report
        args = [x for k, v in train_p.items() for x in ("-p", k, str(v))]
        env = {**os.environ, "WORKBENCH_RUNS_DIR": str(tmp / "runs")}
        for stage, extra in (("train", args), ("annotate", ["-p", "gallery_size", "24"])):
            log(f"stage {stage} via papermill …")
            cmd = [sys.executable, "-m", "workbench", "run", stage, "-q", *extra]
            if stage == "annotate":
                cmd += ["--run", str(out["cli_run_dir"])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                out[f"{stage}_papermill"] = {"error": proc.stderr.strip().splitlines()[-1:]}
                return out
            out.setdefault("cli_run_dir", proc.stdout.strip().splitlines()[-1])
            out[f"{stage}_papermill"] = {"wall_s": wall}
        summary = json.loads((Path(out["cli_run_dir"]) / "train_summary.json").read_text())
        out["train_papermill"]["train_s"] = summary["train_seconds"]
        ann = json.loads((Path(out["cli_run_dir"]) / "annotation_summary.json").read_text())
        out["annotate_papermill"]["pool_size"] = ann["pool_size"]
        # the same calls made directly, each in a fresh process with the kernel's environment
        log("stage train directly …")
        direct = tmp / "direct"
        out["train_direct"] = run_child({"kind": "stage", "stage": "train", "params": train_p,
                                         "run_dir": str(direct)}, kernel_env("fast"), timeout=900)
        log("stage annotate directly …")
        out["annotate_direct"] = run_child({"kind": "stage", "stage": "annotate", "params": ann_p,
                                            "run_dir": str(direct)}, timeout=900)
    for stage in ("train", "annotate"):
        pm, d = out.get(f"{stage}_papermill", {}), out.get(f"{stage}_direct", {})
        if "wall_s" in pm and "wall_s" in d and "error" not in d:  # a failed direct call has no overhead
            out[f"{stage}_overhead_s"] = pm["wall_s"] - d["wall_s"]
    out.pop("cli_run_dir", None)
    return out


def _torch_best(r: dict, key: str) -> float:
    """The best PyTorch row's ``key`` (train_img_s or infer_img_s) for one model; 0 if none measured it."""
    return max((r[k].get(key) or 0 for k in TORCH_ROWS if k in r), default=0)


def ratio(rows: dict) -> dict:
    out = {}
    for name, r in rows.items():
        torch_best, torch_inf = _torch_best(r, "train_img_s"), _torch_best(r, "infer_img_s")
        fast, stock = r["keras/fast"].get("train_img_s"), r["keras/stock"].get("train_img_s")
        out[name] = {
            "train_fast_vs_torch": fast / torch_best if fast and torch_best else None,
            "train_stock_vs_torch": stock / torch_best if stock and torch_best else None,
            "train_fast_vs_stock": fast / stock if fast and stock else None,
            "infer_fast_vs_torch": (r["keras/fast"].get("infer_img_s") or 0) / torch_inf if torch_inf else None,
        }
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Benchmark ({doc['time_utc']}, {doc['machine']['cpu']}, {doc['machine']['cores']} cores, "
             f"load average before {doc['machine']['loadavg_before']}, after {doc['machine']['loadavg_after']})", "",
             "Training: batch 128, AdamW, steady state (Keras through `model.fit`, as the product trains), "
             "best of 3; inference: batch 512. img/s (higher is better).", "",
             "| model | path | train img/s | infer img/s | peak RSS MB | params |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, r in doc["models"].items():
        for label, res in r.items():
            if "error" in res:
                lines.append(f"| {name} | {label} | error: {' '.join(res['error'])} | | | |")
                continue
            lines.append(f"| {name} | {label} | {_fmt(res['train_img_s'])} | {_fmt(res['infer_img_s'])} | "
                         f"{_fmt(res['peak_rss_mb'], 0)} | {res['params']:,} |")
    lines += ["", "| model | keras/fast ÷ PyTorch (train) | keras/stock ÷ PyTorch (train) | fast ÷ stock (train) | "
              "keras/fast ÷ PyTorch (infer) |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in doc["ratios"].items():
        lines.append(f"| {name} | {_fmt(r['train_fast_vs_torch'], 2)}× | {_fmt(r['train_stock_vs_torch'], 2)}× | "
                     f"{_fmt(r['train_fast_vs_stock'], 2)}× | {_fmt(r['infer_fast_vs_torch'], 2)}× |")
    lines += ["", "Models: " + "; ".join(f"`{k}` = {v}" for k, v in MODEL_NOTES.items() if k in doc["models"]) + "."]
    if doc.get("kernels"):
        lines += kernels_markdown(doc["kernels"], doc["models"])
    st = doc.get("stages")
    if st:
        lines += ["", "| stage (small real subset) | via papermill s | direct call s | overhead s |", "| --- | ---: | ---: | ---: |"]
        for stage in ("train", "annotate"):
            pm, d = st.get(f"{stage}_papermill", {}), st.get(f"{stage}_direct", {})
            lines.append(f"| {stage} | {_fmt(pm.get('wall_s'))} | {_fmt(d.get('wall_s'))} | "
                         f"{_fmt(st.get(f'{stage}_overhead_s'))} |")
        for stage in ("train", "annotate"):
            for how in ("papermill", "direct"):
                if "error" in (st.get(f"{stage}_{how}") or {}):
                    lines.append(f"\n**{stage} {how} failed**: {' '.join(st[f'{stage}_{how}']['error'])}")
        ad = (st.get("annotate_direct") or {}).get("summary") or {}
        if "annotate_img_s" in ad:
            lines.append(f"\nAnnotate inference (label the pool, {ad['pool_size']} images, trained cnn): "
                         f"{ad['annotate_img_s']:,.0f} img/s.")
        td = (st.get("train_direct") or {}).get("summary") or {}
        if "train_images_per_second" in td:
            lines.append(f"Train stage on that subset, direct call (2 epochs of {st['params']['train']['max_per_split']} "
                         f"images: compilation, augmentation and validation included): "
                         f"{td['train_images_per_second']:,.0f} img/s.")
    lines += ["", "Direct-call times include starting Python and importing the stack; papermill times include "
              "starting the kernel and writing the executed notebook and HTML report."]
    return "\n".join(lines) + "\n"


def kernels_markdown(kern: dict, models: dict) -> list[str]:
    """The convolution-kernel tables: each distinct convolution in both frameworks, then per model the
    convolutions' share of a training step beside the measured step time."""
    jx, tc = kern.get("jax", {}), kern.get("torch", {})
    lines = ["", "### Convolutions alone (batch 128, ms per call, best of 3)", ""]
    for fw, res in (("Keras-on-JAX", jx), ("PyTorch", tc)):
        if "error" in res:
            lines.append(f"**{fw} kernels failed**: {' '.join(res['error'])}")
    if "kernels" not in jx:
        return lines
    tk = tc.get("kernels") or [{}] * len(jx["kernels"])
    lines += ["| input → output (k×k /stride) | used by | XLA fwd | PyTorch fwd | XLA dX | PyTorch dX | XLA dW | PyTorch dW |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c, a, b in zip(kern["specs"], jx["kernels"], tk):
        uses = ", ".join(f"{m}×{n}" for m, n in c["uses"].items())
        lines.append(f"| {c['h']}×{c['w']}×{c['cin']} → {c['cout']} ({c['k']}×{c['k']} /{c['stride']}) | {uses} | "
                     + " | ".join(f"{_fmt(a[f'{p}_ms'], 2)} | {_fmt(b.get(f'{p}_ms'), 2)}" for p in ("fwd", "dx", "dw")) + " |")
    lines += ["", "| model | conv ms/step XLA | conv ms/step PyTorch | train step ms keras/fast | train step ms PyTorch (best row) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, ms in jx.get("step_conv_ms", {}).items():
        r = models.get(name, {})
        fast = (r.get("keras/fast") or {}).get("train_img_s")
        torch_best = _torch_best(r, "train_img_s")
        lines.append(f"| {name} | {_fmt(ms)} | {_fmt(tc.get('step_conv_ms', {}).get(name))} | "
                     f"{_fmt(BATCH * 1000 / fast if fast else None)} | {_fmt(BATCH * 1000 / torch_best if torch_best else None)} |")
    lines += ["", "XLA = the `lax` convolution `keras.ops.conv` lowers to, on the fast path's backend settings; "
              "dX = input gradient, dW = weight gradient. A step's conv time counts forward and dW of every "
              "convolution and dX of all but a model's first (training needs no gradient of the image). "
              "Kernels are timed alone (each call with fresh output buffers); inside a compiled step XLA may "
              "overlap them with other work, so the two columns are comparable with each other, not summable "
              "with the step time."]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="cnn,cnn_ref,resnet18", help="comma-separated: cnn, cnn_ref, resnet18")
    ap.add_argument("--no-stages", action="store_true", help="skip the papermill overhead / annotate measurement")
    ap.add_argument("--no-kernels", action="store_true", help="skip the convolution-kernel comparison")
    ap.add_argument("--out", default=str(RESULTS), help="results folder (perf.json, perf.md)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite perf.md from the measured perf.json")
    args = ap.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.markdown_only:
        md = markdown(json.loads((Path(args.out) / "perf.json").read_text()))
        (Path(args.out) / "perf.md").write_text(md)
        print(md)
        return 0
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in STEPS]
    if bad:
        print(f"error: unknown model(s) {bad}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    doc = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                       "platform": platform.platform(), "python": platform.python_version()},
           "settings": {"batch": BATCH, "infer_batch": INFER_BATCH, "steps": {m: STEPS[m] for m in models}},
           "gpu": "none on this machine; not measured"}
    have_torch = _have_torch()
    doc["models"] = measure_models(models, have_torch, log)
    doc["ratios"] = ratio(doc["models"])
    if not args.no_kernels:
        doc["kernels"] = measure_kernels(models, have_torch, log)
    if not args.no_stages:
        doc["stages"] = measure_stages(log)
    doc["machine"]["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    doc["total_s"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (out / "perf.md").write_text(md)
    print(md)
    print(f"wrote {out / 'perf.json'} and {out / 'perf.md'} in {doc['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

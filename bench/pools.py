"""`python -m bench.pools`: streaming a folder pool (workbench.pools) — files/s and peak memory vs N.

For each N (``--sizes``, default 10,000 and 100,000) it writes N real 28 px BloodMNIST PNGs (the
train images of data/bloodmnist.npz, cycled, 1,000 files per sub-folder) to a temporary folder under
/tmp, then streams them in a fresh child process through a folder pool with a 28x28x3 InputSpec in
batches of ``--batch-size`` (512): list + hash + decode + ``inputs.prepare``, no model. It measures

* files/s of the first pass (the scan: listing, md5 of each file, decoding, preparing) and of a
  second pass (re-uses the scan: no listing, no hashing);
* the peak resident memory above the baseline of the child (libraries imported and warmed up),
  from Linux's VmHWM (reset before each pass through /proc/self/clear_refs), and how much of it the
  pool's index keeps after the pass (ids, md5s, file table: the only part that grows with N);
* beside it, what holding all images in RAM would take (N x 28 x 28 x 3 bytes).

Every pass is checked: N items, batches of at most the batch size, the first images equal to the
source pixels. The PNG folders are deleted afterwards (``--keep`` keeps them).

    python -m bench.pools                        # 10,000 and 100,000 files
    python -m bench.pools --sizes 2000           # a quick look

Results: bench/results/pools.json and pools.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "bloodmnist.npz"
RESULTS = ROOT / "bench" / "results"
PER_FOLDER = 1000


def write_pngs(root: Path, n: int, source: Path = DATA) -> float:
    """N real BloodMNIST train images as PNG (cycled), ``d0000/img_0000000.png`` …; seconds taken."""
    from PIL import Image
    with np.load(source, allow_pickle=False) as z:
        x = z["train_images"]
    t = time.perf_counter()
    for i in range(n):
        d = root / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i % len(x)]).save(d / f"img_{i:07d}.png")
    return time.perf_counter() - t


def _mem_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


def child(folder: Path, batch_size: int, source: Path = DATA) -> dict:
    """Runs in a fresh process: stream the folder twice, measure, check."""
    from workbench import inputs, pools
    with np.load(source, allow_pickle=False) as z:
        x = z["train_images"]
    spec = inputs.InputSpec(size=28, channels=3)
    # warm-up on a few files of the same folder: imports (PIL plugins, OpenCV, tqdm, keras through
    # workbench.progress) and first-call allocations are part of the baseline, not of the pool
    warm = Path(tempfile.mkdtemp(prefix="pools-warm-"))
    try:
        for p in sorted((folder / "d0000").iterdir())[:64]:
            shutil.copy(p, warm / p.name)
        for _ in pools.open_pool(str(warm)).batches(spec, batch_size):
            pass
    finally:
        shutil.rmtree(warm)
    del z
    out = {}
    base = _mem_kib("VmRSS")
    _reset_peak()
    pool = pools.open_pool(str(folder))
    for name in ("first_pass", "second_pass"):
        if name == "second_pass":
            _reset_peak()
        t = time.perf_counter()
        n, max_batch, head = 0, 0, None
        for pos, batch in pool.batches(spec, batch_size):
            n += len(batch)
            max_batch = max(max_batch, len(batch))
            if head is None:
                head = (pos[:8].copy(), batch[:8].copy())
        dt = time.perf_counter() - t
        peak = _mem_kib("VmHWM")
        ids = pool.ids
        src = np.stack([x[int(ids[p].split("img_")[1][:7]) % len(x)] for p in head[0]])
        assert n == len(ids) and max_batch <= batch_size and np.array_equal(head[1], src), "pool output is wrong"
        out[name] = {"seconds": round(dt, 2), "files_per_s": round(n / dt, 1),
                     "peak_rss_increase_mib": round((peak - base) / 1024, 1), "max_batch": max_batch}
    out["index_rss_mib"] = round((_mem_kib("VmRSS") - base) / 1024, 1)   # what the scanned pool keeps
    out["items"], out["rejected"] = len(pool.ids), len(pool.rejected)
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Streaming a folder pool ({doc['date']}, {doc['machine']['cpus']} cores)", "",
             f"N real 28 px BloodMNIST PNGs (train images of data/bloodmnist.npz, cycled; {PER_FOLDER} files per "
             f"sub-folder) streamed through `workbench.pools` with a 28x28x3 InputSpec in batches of "
             f"{doc['batch_size']}: decode + `inputs.prepare`, no model. First pass = the scan (listing, md5 of "
             "every file, decoding); second pass re-uses it. Peak RSS increase: Linux VmHWM above the child "
             "process's baseline after imports and a warm-up, reset before each pass. Index: RSS the scanned "
             "pool keeps (ids, md5s, file table).", "",
             "| files | first pass files/s | second pass files/s | peak RSS increase, first / second pass (MiB) | "
             "index kept (MiB; bytes per file) | peak minus index: the batches (MiB) | all images in RAM would be (MiB) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        peak = max(r["first_pass"]["peak_rss_increase_mib"], r["second_pass"]["peak_rss_increase_mib"])
        lines.append(f"| {r['n']:,} | {r['first_pass']['files_per_s']:,.0f} | {r['second_pass']['files_per_s']:,.0f} | "
                     f"{r['first_pass']['peak_rss_increase_mib']:.1f} / {r['second_pass']['peak_rss_increase_mib']:.1f} | "
                     f"{r['index_rss_mib']:.1f}; {r['index_rss_mib'] * 2**20 / r['n']:,.0f} | "
                     f"{peak - r['index_rss_mib']:.1f} | {r['images_in_ram_mib']:.1f} |")
    if doc.get("conclusion"):
        lines += ["", doc["conclusion"]]
    return "\n".join(lines) + "\n"


def conclusion(rows: list[dict]) -> str:
    if len(rows) < 2:
        return ""
    a, b = rows[0], rows[-1]
    peak = {k: max(r["first_pass"]["peak_rss_increase_mib"], r["second_pass"]["peak_rss_increase_mib"])
            for k, r in (("a", a), ("b", b))}
    work = {k: peak[k] - r["index_rss_mib"] for k, r in (("a", a), ("b", b))}
    return (f"From {a['n']:,} to {b['n']:,} files ({b['n'] / a['n']:.0f}x) the memory used by the batches (peak "
            f"minus index) went from {work['a']:.1f} to {work['b']:.1f} MiB: it does not grow with N. What grows is "
            f"the pool's index (ids, md5s, file table: {a['index_rss_mib']:.1f} → {b['index_rss_mib']:.1f} MiB, about "
            f"{b['index_rss_mib'] * 2**20 / b['n']:,.0f} bytes per file), while the images themselves would need "
            f"{a['images_in_ram_mib']:.0f} and {b['images_in_ram_mib']:.0f} MiB at 28 px (a 224 px pool: 64x more).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated numbers of files")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the PNG folders under /tmp")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.batch_size)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        ap.error("--sizes must be positive integers")
    rows = []
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"workbench-bench-pools-{n}-", dir="/tmp"))
        try:
            write_s = write_pngs(folder, n)
            print(f"wrote {n:,} PNGs in {write_s:.1f} s to {folder}", flush=True)
            env = {**os.environ, "WORKBENCH_HEADLESS": "1"}
            proc = subprocess.run([sys.executable, "-m", "bench.pools", "--child", str(folder),
                                   "--batch-size", str(args.batch_size)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"child failed for n={n}", file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        r.update(n=n, write_seconds=round(write_s, 1), images_in_ram_mib=round(n * 28 * 28 * 3 / 2**20, 1))
        print(json.dumps(r), flush=True)
        rows.append(r)
    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batch_size": args.batch_size,
           "spec": "28x28x3, resize none, no preprocessing",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "rows": rows}
    doc["conclusion"] = conclusion(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pools.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "pools.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    del pool
    # the same two passes on a fresh pool under tracemalloc (untimed: it slows allocation down), which
    # counts Python and numpy allocations exactly, without the allocator's and the page cache's noise
    import tracemalloc
    tracemalloc.start()
    pool = pools.open_pool(str(folder))
    pool.progress = False
    start = tracemalloc.get_traced_memory()[0]
    for _ in pool.batches(spec, batch_size):
        pass
    index, peak1 = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for _ in pool.batches(spec, batch_size):
        pass
    now, peak2 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["traced"] = {"index_mib": round((index - start) / 2**20, 2),
                     "index_bytes_per_file": round((index - start) / len(pool.ids)),
                     "first_pass_peak_mib": round((peak1 - start) / 2**20, 2),
                     "second_pass_working_mib": round((peak2 - index) / 2**20, 2)}
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Streaming a folder pool ({doc['date']}, {doc['machine']['cpus']} cores)", "",
             f"N real 28 px BloodMNIST PNGs (train images of data/bloodmnist.npz, cycled; {PER_FOLDER} files per "
             f"sub-folder) streamed through `workbench.pools` with a 28x28x3 InputSpec in batches of "
             f"{doc['batch_size']}: decode + `inputs.prepare`, no model. First pass = the scan (listing, md5 of "
             "every file, decoding, preparing); the second pass re-uses it.", "",
             "- *peak RSS increase*: Linux VmHWM above the child process's baseline (after imports and a warm-up), "
             "reset before each pass;",
             "- *index*: what the scanned pool keeps (ids, md5s, file table), traced by tracemalloc in a separate, "
             "untimed run of the same two passes; *batches*: the second pass's tracemalloc peak above the index "
             "(the images in flight: decoded, conformed, prepared);",
             "- *all images in RAM*: N x 28 x 28 x 3 bytes, what a pool held as one array needs;",
             "- *load*: the machine's 1-minute load average before and after (the cores are shared: files/s "
             "drop when others run).", "",
             "| files | files/s, first / second pass | peak RSS increase, first / second pass (MiB) | "
             "index (MiB; bytes per file) | batches (MiB) | all images in RAM (MiB) | load |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        t = r["traced"]
        lines.append(f"| {r['n']:,} | {r['first_pass']['files_per_s']:,.0f} / {r['second_pass']['files_per_s']:,.0f} | "
                     f"{r['first_pass']['peak_rss_increase_mib']:.1f} / "
                     f"{r['second_pass']['peak_rss_increase_mib']:.1f} | "
                     f"{t['index_mib']:.1f}; {t['index_bytes_per_file']:,} | {t['second_pass_working_mib']:.1f} | "
                     f"{r['images_in_ram_mib']:.1f} | {' → '.join(map(str, r.get('load_avg_1min', [])))} |")
    if doc.get("conclusion"):
        lines += ["", doc["conclusion"]]
    return "\n".join(lines) + "\n"


def doc_batch(rows: list[dict]) -> int:
    return max(r["first_pass"]["max_batch"] for r in rows)


def conclusion(rows: list[dict]) -> str:
    if len(rows) < 2:
        return ""
    a, b = rows[0], rows[-1]
    ta, tb = a["traced"], b["traced"]
    return (f"From {a['n']:,} to {b['n']:,} files ({b['n'] / a['n']:.0f}x) the memory of the batches in flight was "
            f"{ta['second_pass_working_mib']:.1f} and {tb['second_pass_working_mib']:.1f} MiB (a few batches of "
            f"{doc_batch(rows)} images): it does not grow with N. What grows is the pool's index (ids, md5s, "
            f"file table: {ta['index_mib']:.1f} → {tb['index_mib']:.1f} "
            f"MiB, about {tb['index_bytes_per_file']:,} bytes per file, the same for any image size), which is most "
            f"of the peak RSS increase ({a['first_pass']['peak_rss_increase_mib']:.1f} → "
            f"{b['first_pass']['peak_rss_increase_mib']:.1f} MiB); the images as one array would need "
            f"{a['images_in_ram_mib']:.0f} → {b['images_in_ram_mib']:.0f} MiB at 28 px, 64x that at 224 px.")


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
            load_before = os.getloadavg()[0]
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
        r.update(n=n, write_seconds=round(write_s, 1), images_in_ram_mib=round(n * 28 * 28 * 3 / 2**20, 1),
                 load_avg_1min=[round(load_before, 1), round(os.getloadavg()[0], 1)])
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

"""Write tests/durations.md from a pytest log run with ``--durations=0`` (``make test-durations``).

    python tools/test_durations.py LOG [--out tests/durations.md]

The table gives each test's setup + call + teardown, slowest first, and each file's total, with the
machine, its load average, the number of pytest-xdist workers and the suite's wall time, so that a slower
suite shows where the time went.

The file totals are also the schedule: tests/conftest.py runs the files slowest first (``slowest_first``), so
that the xdist workers, which take whole files (``--dist loadfile``), end together instead of one of them
finishing a long file alone at the end (longest-processing-time-first scheduling).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

LINE = re.compile(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S+)\s*$")
FILE_ROW = re.compile(r"^\| (tests/\S+\.py) \| ([0-9.]+) \|")
SUMMARY = re.compile(r"=* ?(.*?(passed|failed).*?) in ([0-9.]+)s")


def parse(text: str) -> tuple[dict[str, dict[str, float]], str, float]:
    """{test id: {phase: seconds}}, the summary line ('859 passed, 25 warnings') and the wall seconds."""
    per: dict[str, dict[str, float]] = defaultdict(dict)
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            per[m.group(3)][m.group(2)] = float(m.group(1))
    found = SUMMARY.findall(text)
    if not per or not found:
        raise SystemExit("no --durations=0 table and summary line in the log: run pytest with --durations=0")
    summary, _, wall = found[-1]
    return dict(per), summary.strip("= "), float(wall)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_seconds(text: str) -> dict[str, float]:
    """Each file's seconds from the "By file" table of a durations file written by ``markdown``."""
    return {m.group(1): float(m.group(2)) for m in map(FILE_ROW.match, text.splitlines()) if m}


def slowest_first(paths: list[str], seconds: dict[str, float]) -> list[str]:
    """The files in the order to run them: slowest first by ``seconds``; a file not measured yet (a new one)
    goes before all of them, since nothing says it is quick; ties keep the given order."""
    return sorted(paths, key=lambda f: -seconds.get(f, float("inf")))


def markdown(per: dict[str, dict[str, float]], summary: str, wall: float, load: str = "", workers: int = 0) -> str:
    total = {t: sum(p.values()) for t, p in per.items()}
    files: dict[str, float] = defaultdict(float)
    for t, s in total.items():
        files[t.split("::")[0]] += s
    summed = sum(total.values()) or 1.0
    how = (f"{workers} pytest-xdist workers: the tests' own times add up to {summed:.0f} s" if workers
           else "one process")
    lines = ["# Test suite durations (`make test-durations`)", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by tools/test_durations.py from one "
             f"`pytest --durations=0` run: **{summary} in {wall:.0f} s ({wall / 60:.1f} min)** wall time on "
             f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {how}"
             + (f"; load average before the run {load}" if load else "") + ".", "",
             "## By file", "", "Seconds are the tests' own (setup + call + teardown), summed over the file; the "
             "share is of all tests' seconds. tests/conftest.py runs the files in this order.", "",
             "| file | seconds | share |", "| --- | ---: | ---: |"]
    for f, s in sorted(files.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {f} | {s:.1f} | {s / summed:.1%} |")
    lines += ["", "## Tests over one second (setup + call + teardown; a session fixture's setup is charged to the "
              "first test that uses it)", "", "| test | setup | call | total |", "| --- | ---: | ---: | ---: |"]
    for t, s in sorted(total.items(), key=lambda kv: -kv[1]):
        if s < 1.0:
            break
        p = per[t]
        lines.append(f"| {t} | {p.get('setup', 0):.1f} | {p.get('call', 0):.1f} | {s:.1f} |")
    n_fast = sum(1 for s in total.values() if s < 1.0)
    lines += ["", f"{n_fast} more tests take under one second each ({sum(s for s in total.values() if s < 1.0):.0f} "
              "s together).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "durations.md"))
    ap.add_argument("--load", default="", help="the load average before the run (recorded as given)")
    ap.add_argument("--workers", type=int, default=0, help="pytest-xdist workers of the run (0: none)")
    a = ap.parse_args(argv)
    per, summary, wall = parse(Path(a.log).read_text(errors="replace"))
    Path(a.out).write_text(markdown(per, summary, wall, a.load, a.workers))
    print(f"{a.out}: {summary} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

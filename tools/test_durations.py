"""Write tests/durations.md from a pytest log run with ``--durations=0`` (``make test-durations``).

    python tools/test_durations.py LOG [--out tests/durations.md]

The table gives each test's setup + call + teardown, slowest first, and each file's total, with the
machine, its load average and the suite's wall time, so that a slower suite shows where the time went.
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


def markdown(per: dict[str, dict[str, float]], summary: str, wall: float, load: str = "") -> str:
    total = {t: sum(p.values()) for t, p in per.items()}
    files: dict[str, float] = defaultdict(float)
    for t, s in total.items():
        files[t.split("::")[0]] += s
    lines = ["# Test suite durations (`make test-durations`)", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by tools/test_durations.py from one "
             f"`pytest --durations=0` run: **{summary} in {wall:.0f} s ({wall / 60:.1f} min)** on {cpu_model()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}"
             + (f"; load average before the run {load}" if load else "") + ".", "",
             "## By file", "", "| file | seconds | share |", "| --- | ---: | ---: |"]
    for f, s in sorted(files.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {f} | {s:.1f} | {s / wall:.1%} |")
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
    a = ap.parse_args(argv)
    per, summary, wall = parse(Path(a.log).read_text(errors="replace"))
    Path(a.out).write_text(markdown(per, summary, wall, a.load))
    print(f"{a.out}: {summary} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

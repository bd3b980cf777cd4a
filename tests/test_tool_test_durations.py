"""tools/test_durations.py: the durations file is written from pytest's --durations=0 table."""

import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("test_durations_tool", ROOT / "tools" / "test_durations.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

LOG = """....
============================= slowest durations ==============================
12.50s setup    tests/test_a.py::test_one
3.00s call     tests/test_a.py::test_one
2.00s call     tests/test_b.py::test_two[x]
0.01s teardown tests/test_a.py::test_one
0.20s call     tests/test_b.py::test_three
=================== 3 passed, 1 warning in 20.00s (0:00:20) ===================
"""


def test_totals_per_test_and_file_and_the_summary(tmp_path):
    per, summary, wall = tool.parse(LOG)
    assert per["tests/test_a.py::test_one"] == {"setup": 12.5, "call": 3.0, "teardown": 0.01}
    assert summary == "3 passed, 1 warning" and wall == 20.0
    md = tool.markdown(per, summary, wall, "0.10 0.20 0.30")
    assert "| tests/test_a.py | 15.5 | 77.5% |" in md and "| tests/test_b.py | 2.2 | 11.0% |" in md
    assert "| tests/test_a.py::test_one | 12.5 | 3.0 | 15.5 |" in md and "test_three" not in md
    assert "1 more tests take under one second" in md and "load average before the run 0.10 0.20 0.30" in md
    out = tmp_path / "d.md"
    assert tool.main([_write(tmp_path, LOG), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Test suite durations")


def test_a_log_without_the_table_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--durations=0"):
        tool.parse("....\n3 passed in 2.00s\n")


def _write(tmp_path, text):
    p = tmp_path / "log"
    p.write_text(text)
    return str(p)

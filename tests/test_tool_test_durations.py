"""tools/test_durations.py: the durations file is written from pytest's --durations=0 table, and its file
totals order the suite (slowest file first, tests/conftest.py)."""

import pytest

from conftest import ROOT, _durations_tool

tool = _durations_tool()

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
    # shares of the tests' summed seconds (17.71), which exceed the wall time when workers run in parallel
    assert "| tests/test_a.py | 15.5 | 87.6% |" in md and "| tests/test_b.py | 2.2 | 12.4% |" in md
    assert "one process" in md
    assert "2 pytest-xdist workers: the tests' own times add up to 18 s" in tool.markdown(per, summary, wall, "", 2)
    assert "| tests/test_a.py::test_one | 12.5 | 3.0 | 15.5 |" in md and "test_three" not in md
    assert "1 more tests take under one second" in md and "load average before the run 0.10 0.20 0.30" in md
    out = tmp_path / "d.md"
    assert tool.main([_write(tmp_path, LOG), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Test suite durations")


def test_file_totals_round_trip_and_order_the_files_slowest_first():
    per, summary, wall = tool.parse(LOG)
    seconds = tool.file_seconds(tool.markdown(per, summary, wall))
    assert seconds == {"tests/test_a.py": 15.5, "tests/test_b.py": 2.2}
    # a file with no measurement yet goes first; ties and the rest keep their order
    assert tool.slowest_first(["tests/test_b.py", "tests/test_new.py", "tests/test_a.py"], seconds) == [
        "tests/test_new.py", "tests/test_a.py", "tests/test_b.py"]


def test_the_suite_is_collected_in_the_committed_durations_order(request):
    seconds = tool.file_seconds((ROOT / "tests" / "durations.md").read_text())
    assert len(seconds) > 40
    files = list(dict.fromkeys(item.nodeid.split("::")[0] for item in request.session.items))
    if len(files) < 2:
        pytest.skip("only this file was collected: run it with the suite to see the order")
    assert files == tool.slowest_first(sorted(files), seconds)


def test_a_log_without_the_table_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--durations=0"):
        tool.parse("....\n3 passed in 2.00s\n")


def _write(tmp_path, text):
    p = tmp_path / "log"
    p.write_text(text)
    return str(p)

"""`benchmarks.plain_vs_vidur` measures the README's command as a user types it, not a variant."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmarks.sim_vs_vidur import TRACE

from benchmarks import plain_vs_vidur as plain

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_measured_command_is_the_readmes():
    text = " ".join(README.read_text().split())
    typed = re.search(r"`(shunter simulate --trace \S*splitwise_conv\.csv[^`]*)`", text)
    assert typed is not None, "the README quotes Vidur's scenario as a user types it"
    words = typed.group(1).split()
    measured = plain.plain_command(100_000, "out.json")
    assert Path(measured[0]).name == "shunter"
    assert measured[-3:] == ["--quiet", "--json", "out.json"]  # no bar in a log; its figures
    assert measured[1:-3] == [str(TRACE) if w.endswith("splitwise_conv.csv") else w
                              for w in words[1:]]


@pytest.mark.skipif(not TRACE.exists(), reason="needs ../shared/vidur-profiling")
def test_the_plain_command_is_measured_as_a_child_process():
    row = plain.measure_plain(300, "python")
    assert 250 < row["num_completed"] <= 300
    assert row["wall_s"] >= row["sim_wall_s"] > 0
    assert row["peak_rss_bytes"] > 20 * 2**20 and row["cpu_s"] > 0

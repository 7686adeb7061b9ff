"""The SkipPredict reproduction, small: --quick with the server-time cost only (a few s)."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import repro_skippredict


def test_quick_run_prints_each_policy_with_ratios_against_its_anchors(monkeypatch, capsys):
    if not repro_skippredict.SHARED.is_dir():
        pytest.skip("the shared traces are absent")
    monkeypatch.setattr(repro_skippredict, "COSTS", {"server": repro_skippredict.COSTS["server"]})
    monkeypatch.setattr(sys, "argv", ["repro_skippredict.py", "--quick"])
    assert repro_skippredict.main() == 0
    out = capsys.readouterr().out
    for what in ("fcfs", "always-predict (SPRPT)", "skippredict", "server 0.5/5 ms",
                 "oracle", "learned"):
        assert what in out, what
    ratios = re.findall(r"│ (\d+\.\d\d)x", out)
    assert len(ratios) >= 1 + 2 * 3 + 2  # FCFS/policy per row, always/skip per skip row


def test_without_the_traces_it_says_so_and_succeeds(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(repro_skippredict, "SHARED", tmp_path / "absent")
    monkeypatch.setattr(sys, "argv", ["repro_skippredict.py", "--quick"])
    assert repro_skippredict.main() == 0
    assert "skipped" in capsys.readouterr().out

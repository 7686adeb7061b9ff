from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._external._proc import run_measured, tail


def test_peak_rss_is_of_this_child_tree(tmp_path: Path) -> None:
    grab_64_mib = "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok')"
    result = run_measured([sys.executable, "-c", grab_64_mib], timeout_s=30.0,
                          log_path=tmp_path / "log.txt")
    assert result.returncode == 0 and not result.is_timed_out
    assert result.peak_rss_bytes >= 64 * 2**20
    assert (tmp_path / "log.txt").read_text().strip() == "ok"
    # a later, smaller child must not inherit the earlier peak (RUSAGE_CHILDREN would)
    small = run_measured([sys.executable, "-c", "pass"], timeout_s=30.0)
    assert small.peak_rss_bytes < result.peak_rss_bytes


def test_timeout_kills_the_child(tmp_path: Path) -> None:
    result = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    assert result.is_timed_out
    assert result.returncode != 0
    assert result.wall_s < 5.0


def test_tail_drops_pip_mirror_noise(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    log.write_text("WARNING: Location 'file:///opt/pypi/simple/x/' is ignored\nERROR: real\n")
    assert tail(log) == "ERROR: real"

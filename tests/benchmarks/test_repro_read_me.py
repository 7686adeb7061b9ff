"""The Read-ME reproduction, --quick (about 3 s): it runs, prints the paper's claim beside
ours, and read_me is FCFS exactly on requests without expert profiles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "repro_read_me.py"


def test_quick_reproduction_runs_and_prints_both_claims():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("skipped"):
        pytest.skip(out.stdout.strip())
    assert "paper: up to 6.1% lower mean E2E" in out.stdout
    assert "read_me identical to fcfs: True" in out.stdout
    ratios = [float(x) for x in re.findall(r"│ (\d+\.\d+)x +│", out.stdout)]
    assert len(ratios) == 2 and all(0.9 < r < 2.0 for r in ratios), out.stdout

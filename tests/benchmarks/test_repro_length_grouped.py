"""The length-grouped reproduction, --quick (about 5 s): it runs, and the paper's direction
holds in it: grouping by the true length beats vanilla batching on every trace."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "repro_length_grouped.py"


def test_quick_reproduction_shows_grouping_beating_vanilla_batching():
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("skipped"):
        pytest.skip(out.stdout.strip())
    oracle = [float(x) for x in re.findall(r"│ oracle +│ 100% +│ grouped \+ VBS \+ FCR .*? │ "
                                            r"(\d+\.\d+)x", out.stdout)]
    assert len(oracle) == 2 and all(x > 1.2 for x in oracle), out.stdout
    vanilla = re.findall(r"vanilla: 16 per batch, FIFO .*? (\d+\.\d+)x", out.stdout)
    assert vanilla == ["1.00", "1.00"], out.stdout

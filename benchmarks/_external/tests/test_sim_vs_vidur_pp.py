"""sim_vs_vidur's `--pp N`: both simulators get N pipeline stages (small, no Vidur install)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks._external.vidur import _vidur_command

from benchmarks import sim_vs_vidur


def _compare_calls(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(num_requests: int, pp: int, seed: int, **kwargs: Any) -> dict[str, Any]:
        calls.append({"num_requests": num_requests, "pp": pp, **kwargs})
        return {}

    monkeypatch.setattr(sim_vs_vidur, "compare", fake)
    assert sim_vs_vidur.main(argv) == 0
    return calls


def test_pp_goes_to_both_simulators(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--num-requests", "100", "--no-scaling", "--fidelity-requests", "0",
            "--build", "python"]
    (call,) = _compare_calls(monkeypatch, [*base, "--pp", "2"])
    assert (call["pp"], call["shunter_pp"]) == (2, 2)
    (call,) = _compare_calls(monkeypatch, base)  # as before: Vidur's default 2, Shunter 1
    assert (call["pp"], call["shunter_pp"]) == (2, 1)
    with pytest.raises(SystemExit):
        sim_vs_vidur.main([*base, "--pp", "0"])


def test_vidur_command_carries_the_stages() -> None:
    cmd = _vidur_command(Path("python"), num_requests=10, qps=3.0, num_replicas=4, tp=2, pp=2,
                         seed=0, trace_file=Path("t.csv"), output_dir=Path("out"))
    i = cmd.index("--replica_config_num_pipeline_stages")
    assert cmd[i + 1] == "2"


def test_shunter_child_runs_pipelined() -> None:
    assert sim_vs_vidur.shunter_config(4, 2).pp == 2
    rows = {pp: sim_vs_vidur.run_shunter_child({"num_requests": 300, "num_replicas": 4,
                                                "seed": 0, "pp": pp})
            for pp in (1, 2)}
    assert rows[1]["num_completed"] == rows[2]["num_completed"] == 300
    # twice the GPUs a replica (more KV, two batches in flight): requests wait less
    assert rows[2]["e2e_p50_s"] != rows[1]["e2e_p50_s"]

"""`ShunterScheduler` driven in-process by hand-written model outputs (no model runs), in the
vLLM venv: `vllm_harness.py` plays each scenario and reports what it saw; these tests read that
report like a trace. One child process (~20 s: importing vLLM) serves every test here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.external]

HARNESS = Path(__file__).resolve().parent / "vllm_harness.py"
_MARKER = "HARNESS-RESULT "
_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    vllm_cpu = pytest.importorskip("benchmarks._external.vllm_cpu")
    python = vllm_cpu.ensure_vllm()
    model_dir = vllm_cpu.ensure_smollm2_hf_dir()  # vLLM's config reads its config.json
    env = {**vllm_cpu.vllm_env(), **vllm_cpu.shunter_scheduler_env("fcfs")}
    done = subprocess.run([str(python), str(HARNESS), str(model_dir)], env=env,
                          capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    assert done.returncode == 0 and lines, f"harness failed:\n{done.stdout[-3000:]}\n" \
                                           f"{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len(_MARKER):])
    errors = {name: r["error"] for name, r in result.items() if "error" in r}
    assert not errors, errors
    return result


def test_fcfs_admits_in_arrival_order(report: dict[str, Any]) -> None:
    assert report["fcfs_two_tenants"]["order"] == ["a0", "a1", "a2", "a3", "b0", "b1"]


def test_vtc_orders_the_waiting_queue_by_tenant_service(report: dict[str, Any]) -> None:
    """One seat: b's requests come after a's four but are admitted as soon as b is the
    least-served tenant; every token is charged (prompt 20 x 1 + 4 outputs x 2 per request)."""
    for name in ("vtc_two_tenants", "vtc_two_tenants_async"):
        assert report[name]["order"] == ["a0", "b0", "a1", "b1", "a2", "a3"], name
        assert report[name]["counters"] == {"a": 4 * 28.0, "b": 2 * 28.0}, name
    assert report["vtc_two_tenants"]["class"] == "ShunterScheduler"
    assert report["vtc_two_tenants_async"]["class"] == "ShunterAsyncScheduler"


def test_service_is_charged_as_scheduled_and_released_once(report: dict[str, Any]) -> None:
    run = report["vtc_charges_once"]
    assert run["finished"] == {"done": 1, "cut": 1, "queued": 1, "later": 1}
    # x: done (20 + 2 x 4) and later (10 + 2 x 3); y: cut (30 + 2 x 3 tokens before its abort),
    # queued (aborted while waiting) nothing
    assert run["counters"] == {"x": 28.0 + 16.0, "y": 36.0}
    assert run["meter_left"] == run["mirrors_left"] == run["waiting_left"] == 0


def test_plas_charges_programs_and_serves_the_least_served_first(
        report: dict[str, Any]) -> None:
    run = report["plas_programs"]
    assert run["order"] == ["short-1", "long-2"]  # though long-2 arrived first
    assert report["fcfs_programs"]["order"] == ["long-2", "short-1"]
    # long: two calls of 20 prompt tokens, 40 + 4 outputs x 2; short: 20 + 4 x 2
    assert run["service"] == {"long": 20 + 80 + 20 + 8.0, "short": 28.0}
    assert run["live_programs"] == run["meter_left"] == 0


def test_a_request_vllm_skips_for_a_step_is_not_charged_for_it(report: dict[str, Any]) -> None:
    run = report["skipped_head_is_not_charged"]
    assert run["skipped"] == {"scheduled": [], "counter": 0.0, "waiting": 1}
    assert run["admitted"] == ["head"] and run["counter"] == 22.0  # 20 prompt + 1 output x 2


def test_priority_preempts_a_running_request_for_a_better_one(report: dict[str, Any]) -> None:
    run = report["priority_preempts"]
    assert run["before"] == [["low"]] * 3
    assert run["after"] == {"scheduled": ["high"], "preempted": ["low"],
                            "low_status": "PREEMPTED"}
    assert run["low_outputs"] == 10 and run["num_preemptions"] == 1  # resumed to its end
    assert report["fcfs_no_priority_preemption"]["order"] == ["low", "high"]


def test_sarathis_budget_is_fitted_to_step_times(report: dict[str, Any]) -> None:
    """Steps "take" 2 ms + 0.1 ms per token; a 20 ms target allows 180 tokens, 160 aligned."""
    run = report["sarathi_budget"]
    a, b, _ = run["coefficients"]
    assert a == pytest.approx(0.002) and b == pytest.approx(0.0001)
    assert run["budget"] == 160
    assert run["budgets_seen"] == [160, 512]  # vLLM's own until calibrated


def test_every_policy_serves_a_mixed_load_to_the_end(report: dict[str, Any]) -> None:
    """Two tenants, three programs, two priorities, predictions, and a KV cache of 12 blocks:
    every request of every policy finishes with all its tokens, each released once."""
    runs = report["every_policy_runs"]
    assert sorted(runs) == ["aios_rr", "dlpm", "fastswitch", "fcfs", "lpm", "ltr", "mlfq",
                            "parrot", "plas", "priority", "read_me", "sarathi", "sjf",
                            "skippredict", "vtc"]
    for name, run in runs.items():
        assert run["finished"] == [f"r{i}" for i in range(6)], name
        assert run["outputs"] == [12], name
        assert run["mirrors"] == run["waiting"] == run["running"] == 0, name
    assert any(run["preemptions"] for run in runs.values())  # memory pressure was reached


def test_another_vllm_series_is_refused(report: dict[str, Any]) -> None:
    message = report["other_vllm_is_refused"]["message"]
    assert message is not None and "tested with vLLM 0.32.x only and this is vLLM 0.33.0" in message


def test_the_harness_is_not_collected() -> None:
    assert not HARNESS.name.startswith("test_") and os.path.exists(HARNESS)


def test_sjf_with_an_oracle_prediction_admits_short_jobs_first(report: dict[str, Any]) -> None:
    """Issue 18: sjf with the true lengths as predictions (`vllm_xargs`
    predicted_output_tokens) serves the short jobs first; fcfs keeps arrival order."""
    assert report["sjf_short_jobs_first"]["order"] == ["S0", "S1", "L0", "L1"]
    assert report["fcfs_short_jobs_in_turn"]["order"] == ["L0", "L1", "S0", "S1"]


@pytest.mark.parametrize("policy", ["vtc", "priority"])
def test_skipping_the_running_sort_changes_no_step(report: dict[str, Any], policy: str) -> None:
    """Where a step cannot depend on the running list's order (all needs fit the budget and the
    free KV blocks) the sort is skipped: every step schedules and preempts exactly what the
    always-sorting scheduler does, and the load has steps of both kinds."""
    runs = report[f"{policy}_running_order_skip"]
    sorted_run, skipping = runs["sorted"], runs["skipping"]
    assert sorted_run["skipped"] == 0
    assert 0 < skipping["skipped"] < len(skipping["steps"])
    assert any(preempted for _, preempted in sorted_run["steps"])  # memory pressure was met
    assert skipping["steps"] == sorted_run["steps"]
    assert skipping["counters"] == sorted_run["counters"]

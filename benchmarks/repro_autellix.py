"""Autellix reproduction: program-level latency of `plas` against FCFS on agent programs.

Paper (Luo et al., "Autellix: An Efficient Serving Engine for LLM Agents as General Programs",
2025): scheduling each LLM call by its program's attained service (PLAS) removes program-level
head-of-line blocking; 4-15x program throughput at the same latency as vLLM (FCFS), across
chatbot (ShareGPT), function-calling and multi-threaded agent (tree search, map-reduce)
workloads.

Our setup, and where it differs:
- Multi-threaded programs (`shunter.workload.staged_program`, the main table): structure
  synthetic and seeded, lengths real. A program has S stages of W parallel calls, S and W drawn
  per program from a discrete Pareto law P(n >= k) = k^-1.2, capped at S <= 16, W <= 32 (median
  program 3 calls, mean ~9, the largest hundreds: heavy-tailed, as the paper's mix of chat and
  tree-search programs is); stage k + 1 is issued when all calls of stage k finish (a
  barrier); every call's instruction and answer lengths are a random ShareGPT V3 turn
  (../shared/traces/sharegpt_v3_turn_lengths_mistral_tok.csv), after the program's history
  (a ShareGPT first-turn task, then the main thread's turns: a prefix-cache hit when resident).
  The paper ran real agents (LATS on HotpotQA, BFCL, ...); their traces are not available.
- Single-threaded programs (second table, kept for honesty): multi-turn ShareGPT
  conversations, one call per turn (`shunter.workload.program.agent_programs`). Call-level FCFS
  already serves such programs round robin (a program's next call joins the back of the queue),
  so PLAS changes little there: the gains need programs that flood the queue.
- Engine: the simulator, Llama-3.1-8B on one A100-80GB, at most 16 running calls, so that
  calls queue at rates the simulator runs in seconds (the paper saturated vLLM's memory with
  many more programs). Program starts are Poisson; no think/tool time between stages.
- PLAS (`plas` defaults): service in w-tokens (computed prompt tokens + 2 x outputs) rather
  than GPU seconds, summed over all of a program's calls, parallel ones included (the paper's
  ATLAS, for multi-threaded programs, ranks by the critical path instead); geometric queues
  from 2048, preemptive; aging of one level per 120 s waited instead of the paper's
  wait/service ratio rule.
- Throughput: a finite run of N programs has no steady state above capacity (latency then
  grows with N, and a policy that defers big programs past the last arrival looks better than
  it is), so throughput is what was served, N / (last finish - first arrival), not the
  offered rate; both are shown. The same N programs at every rate, only their starts scale.
- Reported: mean, P50 and P99 program latency (first call's arrival to last call's finish) per
  rate, FCFS / PLAS ratios, and the paper's headline, program throughput at equal latency: the
  most programs/s served with a mean program latency within a target (linear between the rates
  run), for targets of 1.5x, 2x and 3x the unloaded mean (FCFS with programs ~never
  overlapping). ">=" where every rate run met the target.

What we find (README table): the paper's direction, smaller. On multi-threaded programs PLAS
cuts mean, P50 and P99 program latency once calls queue (a wide stage no longer holds up the
small programs behind it), and serves more programs/s at equal latency; the offered-rate
reading (the paper's axis) is larger than the served one, because above capacity it credits
the finite run. FCFS stays within 1.5x of its unloaded latency up to ~0.55 of capacity (a stage is at
most 2x the engine's 16 seats), which bounds the served gain well below 4-15x. On
single-threaded conversations PLAS is ~1.0x, as explained above.

Paper setup (`--setup paper`): the paper's engine size, several engines and deep programs.
- Engines: vLLM's defaults (256 running calls, chunked prefill, prefix caching, recompute
  preemption), Llama-3.1-8B on A100-80GB, `PAPER_REPLICAS` engines behind a router.
- Baseline: vLLM (FCFS) behind a least-load balancer. Autellix: PLAS behind the `session`
  router with every call's session = its program (a program's calls stay on the engine that
  holds its history unless that engine is overloaded, then least-load), the closest Shunter
  has to Autellix's locality-aware balancer; a third arm, FCFS behind the same router,
  separates the router's share from the scheduler's. Each engine's PLAS counts only the
  service it gave (Autellix keeps one global table); pinning makes the two nearly equal.
- Programs: deep tree-search-like ones, stages ~ Pareto 1.0 capped at 64 (many sequential
  steps), fan-out ~ Pareto 1.2 capped at 8 (LATS expands a handful of children per step),
  ShareGPT lengths, the history growing with depth; Poisson starts.
- Reported as the paper does: offered programs/s at equal mean program latency (1.5-3x the
  unloaded mean), Autellix over vLLM.
- Not matched: the real LATS/BFCL traces, ATLAS (critical-path service) for multi-threaded
  programs, swap-based preemption and the paper's GPU-seconds service accounting.
- What it shows: PLAS matches FCFS on the same router within ~1% at every rate: with 256
  seats per engine calls hardly wait (the "call wait" column: tens of ms), so latency grows
  by slower batched steps (processor sharing), not by a queue PLAS could reorder; the
  program router's prefix locality gives ~1.1x. PLAS's gain needs a queue (the 16-seat table).

Run: python benchmarks/repro_autellix.py [--quick] [--setup {ours,paper}]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
from _cluster_repro import program_latencies
from rich.console import Console
from rich.table import Table

from shunter.core.types import RequestId, RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.program import FollowUp, ProgramWorkload, agent_programs
from shunter.workload.staged_program import ProgramShape, TurnPool, staged_programs

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
TRACE = "sharegpt_v3_turn_lengths_mistral_tok.csv"
PAPER_CLAIM = "4-15x program throughput at equal latency"
ENGINE = dict(model="llama-3.1-8b", gpu="a100-80gb", scheduler={"max_num_seqs": 16})
POLICIES = ("fcfs", "plas")
RATES = (0.05, 0.15, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.2)  # programs/s offered
RATES_QUICK = (0.05, 0.3, 0.6, 0.9, 1.5)
UNLOADED_RATE = 0.002  # programs/s: the reference latency, programs ~never overlap
CHAT_RATES = (0.6, 1.2)  # single-threaded: ~1.2 programs/s is this engine's capacity
TARGET_FACTORS = (1.5, 2.0, 3.0)  # latency targets: x the unloaded mean
# --setup paper (module docstring): vLLM-default engines, several of them, deep programs
PAPER_ENGINE = dict(model="llama-3.1-8b", gpu="a100-80gb")
PAPER_REPLICAS = 2
PAPER_SHAPE = ProgramShape(stage_alpha=1.0, max_stages=64, fan_out_alpha=1.2, max_fan_out=8)
# (label, policy, router): the baseline first, Autellix last
PAPER_ARMS = (("vLLM (fcfs, least_load)", "fcfs", "least_load"),
              ("fcfs, program router", "fcfs", "session"),
              ("Autellix (plas, program router)", "plas", "session"))
PAPER_RATES = (1.0, 2.0, 4.0, 8.0, 16.0)  # programs/s offered
PAPER_RATES_QUICK = (2.0, 8.0)


def run(policy: str, workload: ProgramWorkload) -> list[RequestRecord]:
    return simulate(SimConfig(policy=policy, **ENGINE), workload.first_calls,
                    follow_ups=workload.follow_ups).records


@dataclass(frozen=True, slots=True)
class RunStats:
    mean_s: float
    p50_s: float
    p99_s: float
    served_per_s: float  # programs / (last finish - first arrival)


def run_stats(records: list[RequestRecord]) -> RunStats:
    lat = program_latencies(records)
    span_s = max(r.finish_s for r in records) - min(r.arrival_s for r in records)
    return RunStats(float(lat.mean()), *map(float, np.percentile(lat, [50, 99])), len(lat) / span_s)


def compare(workload: ProgramWorkload) -> dict[str, RunStats]:
    return {policy: run_stats(run(policy, workload)) for policy in POLICIES}


def rate_at_latency(rates: Sequence[float], means_s: Sequence[float], target_s: float,
                    ) -> tuple[float, bool] | None:
    """The rate at which the mean latency reaches target_s, linear between the runs (in the
    order run): None if even the first misses it; (the highest rate, True) if every run meets
    it."""
    if means_s[0] > target_s:
        return None
    for i in range(1, len(rates)):
        if means_s[i] > target_s:
            fraction = (target_s - means_s[i - 1]) / (means_s[i] - means_s[i - 1])
            return rates[i - 1] + fraction * (rates[i] - rates[i - 1]), False
    return max(rates), True


def ratio_row(stats: dict[str, RunStats]) -> list[str]:
    f, p = (astuple(stats[policy])[:3] for policy in POLICIES)
    return [" / ".join(f"{x:.1f}" for x in f), " / ".join(f"{x:.1f}" for x in p),
            *(f"{a / b:.2f}x" for a, b in zip(f, p, strict=True))]


def latency_table(title: str, first: str) -> Table:
    table = Table(title=title)
    for col in (first, "calls", "FCFS mean/P50/P99 s", "PLAS mean/P50/P99 s",
                "mean FCFS/PLAS", "P50 FCFS/PLAS", "P99 FCFS/PLAS"):
        table.add_column(col, justify="right")
    return table


def throughput_table(offered: Sequence[float], runs: dict[str, list[RunStats]],
                     unloaded_s: float, arms: Sequence[str] = POLICIES) -> Table:
    table = Table(title="Program throughput at equal mean program latency: offered rate (the "
                        "paper's axis) and served programs/s"
                        + ("" if tuple(arms) == POLICIES else f" ({arms[0]} / {arms[-1]})"))
    for col in ("target mean latency", "offered FCFS / PLAS", "PLAS/FCFS offered",
                "served FCFS / PLAS", "PLAS/FCFS served", "paper"):
        table.add_column(col, justify="right")
    for factor in TARGET_FACTORS:
        target_s = factor * unloaded_s
        cells = [f"{target_s:.1f} s ({factor:g}x unloaded)"]
        for axis in ("offered", "served"):
            readings = [rate_at_latency(offered if axis == "offered" else
                                        [r.served_per_s for r in runs[policy]],
                                        [r.mean_s for r in runs[policy]], target_s)
                        for policy in (arms[0], arms[-1])]
            cells.append(" / ".join("n/a" if r is None else f"{'>= ' if r[1] else ''}{r[0]:.3f}"
                                    for r in readings))
            fcfs, plas = readings
            cells.append("n/a" if fcfs is None or plas is None else
                         f"{'>= ' if plas[1] and not fcfs[1] else ''}{plas[0] / fcfs[0]:.2f}x")
        table.add_row(*cells, PAPER_CLAIM)
    return table


def by_program(workload: ProgramWorkload) -> ProgramWorkload:
    """Every call's session = its program, for the session router (barriers stay shared)."""
    def spec(s: RequestSpec) -> RequestSpec:
        return dataclasses.replace(s, session_id=s.program_id)

    done: dict[int, FollowUp | tuple[FollowUp, ...]] = {}
    follow_ups: dict[RequestId, FollowUp | tuple[FollowUp, ...]] = {}
    for call_id, entry in workload.follow_ups.items():
        if id(entry) not in done:
            done[id(entry)] = (dataclasses.replace(entry, spec=spec(entry.spec))
                               if isinstance(entry, FollowUp) else
                               tuple(dataclasses.replace(f, spec=spec(f.spec)) for f in entry))
        follow_ups[call_id] = done[id(entry)]
    return ProgramWorkload([spec(s) for s in workload.first_calls], follow_ups)


def paper_run(policy: str, router: str, workload: ProgramWorkload) -> tuple[RunStats, float]:
    """The run's program statistics and its calls' mean wait before first scheduled (s)."""
    config = SimConfig(policy=policy, router=router, num_replicas=PAPER_REPLICAS,
                       **PAPER_ENGINE)
    records = simulate(config, workload.first_calls, follow_ups=workload.follow_ups).records
    waits = [r.first_scheduled_s - r.arrival_s for r in records if r.first_scheduled_s is not None]
    return run_stats(records), float(np.mean(waits))


def paper_main(pool: TurnPool, quick: bool, console: Console) -> int:
    """Deep programs on several vLLM-default engines: vLLM + least-load vs Autellix."""
    num_programs, rates = (120, PAPER_RATES_QUICK) if quick else (400, PAPER_RATES)
    started = time.perf_counter()

    def programs(rate: float) -> ProgramWorkload:
        return by_program(staged_programs(pool, num_programs=num_programs, rate=rate,
                                          shape=PAPER_SHAPE, seed=0))

    base = PAPER_ARMS[0]
    unloaded_s = paper_run(base[1], base[2], programs(UNLOADED_RATE))[0].mean_s
    labels = [arm[0] for arm in PAPER_ARMS]
    table = Table(title=f"Paper setup: {num_programs} deep programs (stages ~ Pareto 1.0 <= 64, "
                        f"fan-out ~ Pareto 1.2 <= 8, ShareGPT lengths), {PAPER_REPLICAS}x "
                        "Llama-3.1-8B on A100-80GB, vLLM defaults (256 seats)")
    for col in ("programs/s offered", "arm", "mean / P50 / P99 s", "served programs/s",
                "call wait s", "vLLM/arm: mean", "P50", "P99"):
        table.add_column(col, justify="right")
    runs: dict[str, list[RunStats]] = {label: [] for label in labels}
    calls = 0
    for rate in rates:
        workload = programs(rate)
        calls = workload.num_calls
        for label, policy, router in PAPER_ARMS:
            stats, wait_s = paper_run(policy, router, workload)
            runs[label].append(stats)
            f, a = astuple(runs[labels[0]][-1])[:3], astuple(stats)
            table.add_row(f"{rate:g}", label, " / ".join(f"{x:.1f}" for x in a[:3]),
                          f"{a[3]:.3f}", f"{wait_s:.2f}",
                          *(f"{x / y:.2f}x" for x, y in zip(f, a[:3], strict=True)))
        console.print(f"  paper setup {rate:g} programs/s done "
                      f"({time.perf_counter() - started:.0f} s)")
    console.print(table)
    console.print(f"unloaded mean program latency ({labels[0]} at {UNLOADED_RATE:g} programs/s): "
                  f"{unloaded_s:.1f} s; {calls} calls in {num_programs} programs")
    console.print(throughput_table(rates, runs, unloaded_s, arms=labels))
    console.print(f"paper: {PAPER_CLAIM} (vs vLLM); total {time.perf_counter() - started:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer programs and rates")
    parser.add_argument("--setup", choices=("ours", "paper"), default="ours",
                        help="ours: one 16-seat engine (default); paper: several "
                             "vLLM-default engines, deep programs, a program-aware router")
    args = parser.parse_args()
    if not (SHARED / TRACE).exists():
        print(f"skipped: {SHARED / TRACE} not found (../shared/traces is needed)")
        return 0
    num_staged, num_chat = (150, 100) if args.quick else (300, 200)
    rates = RATES_QUICK if args.quick else RATES
    console = Console(width=150)
    started = time.perf_counter()
    pool = TurnPool.from_sharegpt(SHARED / TRACE)
    if args.setup == "paper":
        return paper_main(pool, args.quick, console)

    def programs(rate: float) -> ProgramWorkload:
        return staged_programs(pool, num_programs=num_staged, rate=rate, seed=0)

    unloaded_s = run_stats(run("fcfs", programs(UNLOADED_RATE))).mean_s
    staged = latency_table(f"Autellix PLAS vs FCFS: {num_staged} multi-threaded programs "
                           "(stages x fan-out ~ Pareto 1.2, ShareGPT lengths), Llama-3.1-8B, "
                           "1x A100, 16 seats", "programs/s offered (served FCFS/PLAS)")
    runs: dict[str, list[RunStats]] = {p: [] for p in POLICIES}
    calls = 0
    for rate in rates:
        workload = programs(rate)
        stats = compare(workload)
        for policy in POLICIES:
            runs[policy].append(stats[policy])
        served = "/".join(f"{stats[p].served_per_s:.3f}" for p in POLICIES)
        staged.add_row(f"{rate:g} ({served})", str(workload.num_calls), *ratio_row(stats))
        calls = workload.num_calls
        console.print(f"  multi-threaded {rate:g} programs/s done "
                      f"({time.perf_counter() - started:.0f} s)")
    chat = latency_table(f"Single-threaded: {num_chat} ShareGPT conversations as programs "
                         "(closed loop), same engine", "programs/s")
    for rate in CHAT_RATES:
        workload = agent_programs(SHARED / TRACE, num_programs=num_chat, rate=rate, seed=0)
        chat.add_row(f"{rate:g}", str(workload.num_calls), *ratio_row(compare(workload)))
    console.print(staged)
    console.print(f"unloaded mean program latency (FCFS at {UNLOADED_RATE:g} programs/s): "
                  f"{unloaded_s:.1f} s; {calls} calls in {num_staged} programs")
    console.print(throughput_table(rates, runs, unloaded_s))
    console.print(chat)
    console.print(f"paper: {PAPER_CLAIM} (vs vLLM); total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

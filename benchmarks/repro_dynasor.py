"""Dynasor reproduction: certainty-driven early exit and gang scheduling of reasoning programs,
against running every branch to its end.

Paper (Fu et al., "Efficiently Serving LLM Reasoning Programs with Certaindex", arXiv
2412.20993): reasoning programs (self-consistency, MCTS, Rebase, CoT) are probed for how
settled their answers are (Certaindex); Dynasor stops settled programs, deprioritizes hopeless
ones, gang-schedules a program's requests and orders programs approximately shortest first.
Batch: up to 50% less compute at the same accuracy (self-consistency 9-52%, Fig. 7); online:
1.6-3.3x the program rate at the same P90 deadline attainment as SGLang (1.6-3.2x Parrot), or
1.3-4.7x tighter SLOs (1.7-3.3x vs Parrot), Fig. 8.

Our setup, and where it differs:
- Workload: self-consistency programs from `shunter.workload.reasoning` (its docstring has the
  model and where each number comes from): 8 branches per program sharing one prompt (median
  256 tokens), branch lengths lognormal around a per-program median of 384 tokens (capped at
  2,048), and a Certaindex trajectory per program from when its branches' probed answers
  settle: half the programs settle early, 30% late, 20% never (assumed, tuned to the paper's
  aggregates; the script prints the model's own correlation of early Certaindex with the
  compute still needed beside the paper's). The paper ran real problems (MATH, GSM8K, ...) on
  real models; their per-problem traces are not available.
- Probes every 32 tokens per branch, read from the trace; the probe's own cost (a few decoded
  tokens per branch per probe, ~1% in the paper) is not charged.
- Threshold: calibrated as the paper's profiler does (§D.2.2): the lowest Certaindex threshold
  at which no program's answer (plurality of its branches' probed answers) differs from full
  compute's, on a separate calibration set (seed 100); the sweep is printed (the paper's Fig. 9).
  Under the model's assumption that a settled answer is final, equal answers mean equal
  accuracy; the accuracy column counts answers equal to the correct one.
- Engine: the simulator, Llama-3.1-8B on one A100-80GB with vLLM's defaults (256 seats,
  chunked prefill, prefix caching: a program's branches compute their prompt once). The paper
  modified SGLang (its online setups, Table 2, used several models and datasets).
- Dynasor: `dynasor` (gang rounds, least attained service on programs, early exit at the
  threshold). The hard-program verdict (Certaindex still below 0.25 at 256 tokens per branch:
  deprioritized, or capped with `stop_hard`) and program order are ablated on a 32-seat engine,
  where programs queue. The baseline runs every branch to its natural end in program-agnostic request FCFS (the
  paper's SGLang baseline, without its longest-prefix-match batching). The paper's other
  baseline, Parrot's App-FIFO gang order (`parrot`), admits exactly as FCFS does here: a
  program's branches arrive together, so request order is program order (checked: identical
  latencies), and it is not run separately.
- Batch: N programs at t = 0; compute = generated tokens to answer all of them.
- Online: Poisson program arrivals; a program's deadline is the SLO scale times its latency
  alone on the idle engine with every branch run to the end (the same deadline for every
  policy). Reported: the highest rate at which 90% of programs meet the deadline (geometric
  bisection to 5%), and, at a fixed rate, the tightest SLO scale 90% of programs meet (the P90
  of latency / alone). A finite run of N programs, so rates above capacity are credited by it.

What we find (README table): the paper's direction and size. Batch: ~45% fewer generated
tokens at the calibrated threshold with answers kept (1 of 1,000 changed on programs the
threshold was not calibrated on), and the same work done ~1.5x sooner. Online: ~2x the program
rate at 90% deadline attainment and ~2.4x tighter SLOs, within the paper's ranges. All of it
comes from early exit: with programs' branches arriving together and nothing preempted, least
attained gang rounds admit in arrival order (the FCFS-order ablation is identical), and with
256 seats programs hardly queue. Where they queue (32 seats), deprioritizing hard programs
lifts mean attainment but hurts the tail (hard programs wait), and capping them saves much
more time at a real accuracy cost: in this model a scattered program's plurality at its end
is often still right.

Run: python benchmarks/repro_dynasor.py [--quick]
--quick: 150 batch and 120 online programs, one SLO scale, bisection to 25% (~15 s); the full
run (1,000 and 400 programs, SLO scales 2 and 4, bisection to 5%) takes ~4 minutes.
No `--setup paper`: the paper's online setups (Table 2) pair algorithms, models and datasets
whose per-problem traces are not published; this setup is the model above on one A100.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from _cluster_repro import Timer, max_rate, print_table

from shunter.core.types import FinishReason
from shunter.metrics.record import RequestRecord
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.reasoning import ReasoningProgram, ReasoningWorkload, reasoning_programs

ENGINE = SimConfig(model="llama-3.1-8b", gpu="a100-80gb")
PROBE_TOKENS = 32
DYNASOR = {"probe_tokens": PROBE_TOKENS}
HARD = {"budget_tokens": 256, "low_certainty": 0.25}  # the hard-program verdict's ablations
# label -> (policy, its parameters beyond DYNASOR's): the baseline first, then Dynasor
ARMS: dict[str, tuple[str, dict[str, object]]] = {
    "FCFS": ("fcfs", {}),
    "Dynasor": ("dynasor", {}),
    "Dynasor, FCFS program order": ("dynasor", {"order": "fcfs"}),
    "Dynasor + hard programs deprioritized": ("dynasor", HARD),
    "Dynasor + hard programs capped": ("dynasor", {**HARD, "stop_hard": True}),
}
ABLATION_SEATS = 32  # a memory-bound engine, where programs queue (as on the paper's)
ABLATION_RATE = 1.2  # programs/s: past FCFS's capacity on it, within Dynasor's
THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))
CALIBRATION_SEED = 100
PAPER_BATCH = "up to 50% less compute at equal accuracy (self-consistency 9-52%)"
PAPER_RATE = "1.6-3.3x vs SGLang (1.6-3.2x vs Parrot)"
PAPER_SLO = "1.3-4.7x vs SGLang (1.7-3.3x vs Parrot)"
ATTAINMENT = 0.9


def calibrate(work: ReasoningWorkload) -> tuple[float, list[list[str]]]:
    """The lowest threshold changing no program's answer, and the sweep's rows."""
    rows, chosen = [], None
    for threshold in THRESHOLDS:
        rounds = [p.first_round_reaching(threshold) for p in work.programs]
        used = sum(p.tokens_until(k) for p, k in zip(work.programs, rounds, strict=True))
        changed = sum(p.answer_at(k) != p.final_answer
                      for p, k in zip(work.programs, rounds, strict=True))
        if changed == 0 and chosen is None:
            chosen = threshold
        rows.append([f"{threshold:g}", f"{1 - used / work.num_output_tokens:.1%}",
                     f"{changed}", "<- chosen" if threshold == chosen else ""])
    assert chosen is not None, "no threshold keeps every answer"
    return chosen, rows


def correlation(work: ReasoningWorkload, round_k: int = 4) -> float:
    """Pearson r of Certaindex at round k with the tokens per branch still needed until the
    program's answer is final for good (the paper's Fig. 12 pairing)."""
    early, needed = [], []
    for p in work.programs:
        k = len(p.majority)
        while k > 1 and p.majority[k - 2] == p.final_answer:
            k -= 1
        early.append(p.certainty[min(round_k, len(p.certainty)) - 1])
        needed.append(k * p.probe_tokens)
    return float(np.corrcoef(early, needed)[0, 1])


def answers(work: ReasoningWorkload, records: Sequence[RequestRecord]) -> list[int | None]:
    """Each program's answer in a run: at the gang round it was stopped at (its stopped
    branches' fewest tokens, the round the policy decided on), else with every branch done."""
    stopped: dict[str | None, int] = {}
    for r in records:
        if r.finish_reason == FinishReason.EARLY_STOP:
            stopped[r.program_id] = min(stopped.get(r.program_id, 1 << 60), r.num_output_tokens)
    return [p.answer_at(stopped[p.program_id] // PROBE_TOKENS if p.program_id in stopped
                        else None) for p in work.programs]


def simulate_arm(arm: str, work: ReasoningWorkload, threshold: float,
                 engine: SimConfig = ENGINE) -> list[RequestRecord]:
    policy, params = ARMS[arm]
    if policy == "dynasor":
        params = {**DYNASOR, "threshold": threshold, **params}
    run = simulate(replace(engine, policy=policy, policy_params=params), work.specs)
    assert len(run.records) == len(work.specs)
    return run.records


def latencies(work: ReasoningWorkload, records: Sequence[RequestRecord]) -> np.ndarray:
    """Each program's latency (arrival to its last branch's end), in the workload's order."""
    end: dict[str | None, float] = {}
    for r in records:
        assert r.finish_s is not None
        end[r.program_id] = max(end.get(r.program_id, 0.0), r.finish_s)
    return np.array([end[p.program_id] - p.arrival_s for p in work.programs])


def batch(num_programs: int, threshold: float) -> list[list[str]]:
    work = reasoning_programs(num_programs, rate=None, seed=1)
    oracle = sum(p.tokens_until(p.first_round_reaching(threshold)) for p in work.programs)
    rows = []
    base_tokens = base_span = 0.0
    for label, arm in [("all branches to the end (FCFS)", "FCFS"), ("Dynasor", "Dynasor")]:
        records = simulate_arm(arm, work, threshold)
        tokens = sum(r.num_output_tokens for r in records)
        span = max(r.finish_s for r in records)
        got = answers(work, records)
        correct = sum(a == 0 for a in got) / len(got)
        same = sum(a == p.final_answer for a, p in zip(got, work.programs, strict=True))
        if arm == "FCFS":
            base_tokens, base_span = tokens, span
        rows.append([label, f"{tokens / 1e6:.2f}M", f"{1 - tokens / base_tokens:.1%}",
                     f"{correct:.1%}", f"{same}/{len(got)}", f"{span:.0f} s",
                     f"{base_span / span:.2f}x"])
    rows.append(["(oracle: each program stopped at its first round >= threshold)",
                 f"{oracle / 1e6:.2f}M", f"{1 - oracle / work.num_output_tokens:.1%}",
                 "", "", "", ""])
    return rows


def alone_latencies(work: ReasoningWorkload, engine: SimConfig = ENGINE) -> np.ndarray:
    """Each program's latency on the idle engine, every branch to its end: one run with the
    programs 10,000 s apart (they never overlap)."""
    spread = ReasoningWorkload(tuple(_shifted(p, 1e4 * i) for i, p in enumerate(work.programs)))
    return latencies(spread, simulate_arm("FCFS", spread, 1.0, engine))


def _shifted(program: ReasoningProgram, arrival_s: float) -> ReasoningProgram:
    return replace(program, branches=tuple(replace(b, arrival_s=arrival_s)
                                           for b in program.branches))


def online(num_programs: int, scales: Sequence[float], fixed_rate: float, threshold: float,
           precision: float) -> list[list[str]]:
    rows = []
    arms = ("FCFS", "Dynasor")
    alone: dict[float, np.ndarray] = {}
    cache: dict[tuple[str, float], np.ndarray] = {}

    def stretch(arm: str, rate: float) -> np.ndarray:
        """latency / alone of every program, `arm` serving them at `rate` programs/s."""
        if (arm, rate) not in cache:
            work = reasoning_programs(num_programs, rate=rate, seed=2)
            if rate not in alone:
                alone[rate] = alone_latencies(work)
            cache[(arm, rate)] = latencies(work, simulate_arm(arm, work, threshold)) / alone[rate]
        return cache[(arm, rate)]

    def attains(arm: str, scale: float) -> Callable[[float], bool]:
        return lambda rate: bool(np.mean(stretch(arm, rate) <= scale) >= ATTAINMENT)

    for scale in scales:
        best = {arm: max_rate(attains(arm, scale), 0.1, 20.0, precision) for arm in arms}
        rows.append([f"programs/s at P90 attainment, SLO {scale:g}x alone",
                     f"{best['FCFS']:.2f} / {best['Dynasor']:.2f}",
                     _ratio(best["Dynasor"], best["FCFS"]), PAPER_RATE])
    tight = {arm: float(np.percentile(stretch(arm, fixed_rate), 100 * ATTAINMENT))
             for arm in arms}
    rows.append([f"tightest SLO scale met by 90%, {fixed_rate:g} programs/s",
                 f"{tight['FCFS']:.2f} / {tight['Dynasor']:.2f}",
                 _ratio(tight["FCFS"], tight["Dynasor"]), PAPER_SLO])
    return rows


def ablation(num_programs: int, rate: float, threshold: float) -> list[list[str]]:
    """Each arm on an engine of ABLATION_SEATS seats at one rate: where the gain comes from."""
    engine = replace(ENGINE, scheduler={"max_num_seqs": ABLATION_SEATS})
    work = reasoning_programs(num_programs, rate=rate, seed=2)
    alone = alone_latencies(work, engine)
    rows = []
    for arm in ARMS:
        records = simulate_arm(arm, work, threshold, engine)
        stretch = latencies(work, records) / alone
        got = answers(work, records)
        changed = sum(a != p.final_answer for a, p in zip(got, work.programs, strict=True))
        rows.append([arm, f"{np.mean(stretch):.2f} / {np.percentile(stretch, 90):.2f}",
                     f"{np.mean(stretch <= 4.0):.0%}",
                     f"{sum(r.num_output_tokens for r in records) / 1e6:.2f}M",
                     f"{sum(a == 0 for a in got) / len(got):.1%}", f"{changed}"])
    return rows


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="150 batch / 120 online programs, one SLO scale (~15 s)")
    args = parser.parse_args(argv)
    timer = Timer()
    calibration = reasoning_programs(500, rate=None, seed=CALIBRATION_SEED)
    threshold, sweep = calibrate(calibration)
    print_table(f"Calibration ({len(calibration.programs)} programs, seed {CALIBRATION_SEED}): "
                "threshold vs tokens saved at each program's first round >= it",
                ["threshold", "tokens saved", "answers changed", ""], sweep,
                [f"model check: Pearson r of Certaindex at {4 * PROBE_TOKENS} tokens with the "
                 f"tokens still needed = {correlation(calibration):.2f} (paper, Fig. 12: "
                 "|r| 0.17-0.75, mean 0.52)"])
    num_batch = 150 if args.quick else 1000
    print_table(f"Batch: {num_batch} self-consistency programs x 8 branches at t=0, "
                f"Llama-3.1-8B / A100, threshold {threshold:g}",
                ["arm", "generated tokens", "saved", "accuracy", "answers = full",
                 "makespan", "speed-up"], batch(num_batch, threshold), [f"paper: {PAPER_BATCH}"])
    quick = args.quick
    rows = online(120 if quick else 400, (3.0,) if quick else (2.0, 4.0),
                  1.5 if quick else 2.0, threshold, 0.25 if quick else 0.05)
    print_table("Online: Poisson programs, deadline = SLO scale x the program's latency alone "
                "(P90 attainment: 90% of programs within it), 256 seats",
                ["measure", "FCFS / Dynasor", "Dynasor gain", "paper"], rows)
    num_ablation = 120 if quick else 400
    print_table(f"Ablation: {num_ablation} programs at {ABLATION_RATE:g} programs/s on "
                f"{ABLATION_SEATS} seats (programs queue); hard = Certaindex < "
                f"{HARD['low_certainty']} at {HARD['budget_tokens']} tokens per branch",
                ["arm", "latency / alone mean / P90", "within 4x alone", "generated tokens",
                 "accuracy", "answers changed"],
                ablation(num_ablation, ABLATION_RATE, threshold), [f"wall time {timer}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

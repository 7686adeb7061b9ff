"""Read-ME reproduction: expert-aware batching on a mixture-of-experts model, against
expert-blind (FCFS) batching.

Paper (Cai et al., "Read-ME: Refactorizing LLMs as Router-Decoupled Mixture of Experts with
System Co-Design", NeurIPS 2024, arXiv 2410.19123; code github VITA-Group/READ-ME): a dense
LLM is refactored into a small MoE whose router is decoupled from the backbone (one pre-gating
router run before the model), so the serving system knows each request's experts ahead of
time and batches by expert with lookahead, and prefetches/caches experts. Claim (abstract):
mean end-to-end latency up to 6.1% lower; tail latency about 10% lower (as summaries of the
paper give it; we could not read the paper's evaluation section here). Not verified from its
text: the workload (to our knowledge Azure-trace arrivals with Chatbot Arena prompts), the
model size and GPU of the latency experiment, and the baselines' exact definitions. The
repository holds the MoE-fication and training code only, no serving system.

Our setup, and where it differs:
- Model: Mixtral-8x7B (8 experts, top-2: the paper's model class, a top-k MoE) on 2x
  A100-80GB (TP2, every expert sliced over both GPUs: vLLM's default), the simulator's
  roofline cost model. Decode reads the weights of every expert a step hits
  (`shunter.sim.cost.moe`); a step's experts follow its requests' expert profiles.
- Workload: the Azure LLM inference trace 2023 (conversation) lengths, Poisson arrivals at
  each rate; each request's expert profile from `shunter.workload.experts` (4 topics, each a
  Dirichlet(0.3) preference over the 8 experts, requests Dirichlet(20 x topic) around theirs:
  an assumption, not measured; its docstring says what studies report).
- Expert-aware batching: `read_me` (admission order by cosine similarity of a request's profile
  to the running batch's, over the 128 oldest waiting requests, none passed over more than
  128 times). The paper composes each step's batch per token; here the order of admission into
  a continuously batched engine is what moves (running requests all decode every step).
  Expert prefetching and caching are not modelled (all experts stay in GPU memory).
- Engines: vLLM's default 256 seats, and 32 seats (a latency-oriented, resource-constrained
  deployment, where requests queue and admission order can shape the batch).
- Metrics: mean and P99 end-to-end latency, mean time of decode-only steps.

Run: python benchmarks/repro_read_me.py [--quick]
--quick: 400 requests, one rate per engine (~5 s); the full run (3,000 requests, four rates
per engine) takes ~1 minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

from _cluster_repro import SHARED, Timer, print_table

from shunter.core.types import RequestSpec
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload import load_workload
from shunter.workload.experts import ExpertRouting, with_expert_profiles
from shunter.workload.loaders import retime

TRACE = SHARED / "azure2023_conv.csv"
ENGINE = {"model": "mixtral-8x7b", "gpu": "a100-80gb", "tp": 2}
ROUTING = ExpertRouting(num_experts=8)  # the generator's defaults (4 topics)
SEATS_RATES = {256: (2.0, 4.0, 6.0, 8.0), 32: (2.0, 2.5, 3.0, 3.5)}  # requests/s
QUICK_RATES = {256: (6.0,), 32: (3.0,)}
PAPER_MEAN = "up to 6.1% lower mean E2E (abstract)"
PAPER_TAIL = "~10% lower tail latency (summaries)"


def measure(specs: Sequence[RequestSpec], policy: str, seats: int) -> tuple[float, float, float]:
    """(mean E2E s, P99 E2E s, mean decode-only step ms) of one run."""
    run = simulate(SimConfig(**ENGINE, policy=policy, record_steps=True,  # type: ignore[arg-type]
                             scheduler={"max_num_seqs": seats}), specs)
    e2e = sorted(r.finish_s - r.arrival_s for r in run.records)
    decode = [end - start for _, start, end, prefill, decodes, _ in run.step_log
              if prefill == 0 and decodes]
    return (statistics.fmean(e2e), e2e[min(len(e2e) - 1, int(0.99 * len(e2e)))],
            1e3 * statistics.fmean(decode))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="400 requests, one rate per engine (default: the full run)")
    args = parser.parse_args()
    if not TRACE.is_file():
        print(f"skipped: {TRACE} is missing (the shared traces folder)")
        return 0
    timer = Timer()
    num_requests = 400 if args.quick else 3000
    base = load_workload(TRACE, num_requests=num_requests, sort=True)
    profiled = with_expert_profiles(base, ROUTING, seed=0)
    rows, gains = [], []
    for seats, rates in (QUICK_RATES if args.quick else SEATS_RATES).items():
        for rate in rates:
            specs = list(retime(profiled, rate))
            fcfs, read_me = measure(specs, "fcfs", seats), measure(specs, "read_me", seats)
            gains.append((1 - read_me[0] / fcfs[0], 1 - read_me[1] / fcfs[1]))
            rows.append([f"{seats}", f"{rate:g}",
                         f"{fcfs[0]:.2f} / {read_me[0]:.2f}", f"{1 - read_me[0] / fcfs[0]:+.1%}",
                         f"{fcfs[1]:.1f} / {read_me[1]:.1f}", f"{1 - read_me[1] / fcfs[1]:+.1%}",
                         f"{fcfs[2]:.1f} / {read_me[2]:.1f}", f"{fcfs[0] / read_me[0]:.2f}x"])
    # without profiles (uniform routing) read_me must be FCFS exactly: the policy's no-op
    seats, rate = 32, (QUICK_RATES if args.quick else SEATS_RATES)[32][-1]
    blind = list(retime(base, rate))
    same = measure(blind, "fcfs", seats) == measure(blind, "read_me", seats)
    print_table(
        "Read-ME expert-aware batching (read_me) vs expert-blind FCFS, Mixtral-8x7B on 2x "
        f"A100-80GB, Azure conversation lengths, {num_requests} requests",
        ["seats", "req/s", "mean E2E s fcfs / read_me", "mean lower", "P99 E2E s fcfs / read_me",
         "P99 lower", "decode step ms fcfs / read_me", "mean ratio"], rows,
        notes=[f"paper: {PAPER_MEAN}; {PAPER_TAIL}",
               f"ours: mean E2E {max(g[0] for g in gains):+.1%} at best "
               f"({min(g[0] for g in gains):+.1%} at worst), P99 "
               f"{max(g[1] for g in gains):+.1%} at best ({min(g[1] for g in gains):+.1%} at worst)",
               f"requests without expert profiles: read_me identical to fcfs: {same}",
               f"({timer})"])
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

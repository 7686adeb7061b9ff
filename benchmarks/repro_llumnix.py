"""Llumnix reproduction: dispatch on freeness plus live migration, against round robin and
least-load, at high load on 8-16 replicas.

Paper (Sun et al., "Llumnix: Dynamic Scheduling for Large Language Model Serving", OSDI'24):
on 16 LLaMA-7B instances, against INFaaS++ (load-balancing dispatch, no migration), Llumnix
cuts P99 first-token latency by up to 15x (de-fragmentation: queued requests get memory that
migration frees) and P99 decode latency by up to 2x, and with priorities makes high-priority
requests up to 1.5x faster end to end.

Our setup, and where it differs:
- The simulator with the roofline cost model, LLaMA-2-7B on A40 (48 GB) replicas, where the
  paper used A10 (24 GB): KV memory is the scarce resource either way (`--replicas`, default 8).
- Requests: ShareGPT-8k lengths (Sarathi/Vidur file) with Poisson arrivals at a rate that
  keeps the cluster near saturation; 10% are high priority (priority 0, the rest 1), and every
  replica runs the `priority` queue policy, so the comparison isolates cluster scheduling.
- Baselines: round robin and least-load (queued + running tokens) dispatch.
- Llumnix: the `llumnix` freeness router plus migration (`shunter.sim.migration`): checks
  every 100 ms, multi-stage KV copy over a 25 GB/s link; `llumnix+prio` adds the
  high-priority headroom (priority isolation), judged on high-priority latency.
Ratios are baseline / Llumnix, measured in the same run.

Paper setup (`--setup paper`), from the paper's section 6 and its artifact
(alibaba/llm-scheduling-artifact, `artifact/63_serving_performance`, whose Figure 11 runs give
the "14.8x for P99" prefill claim):
- matched: 16 LLaMA-7B instances on A10 (24 GB; the cost model leaves 727 KV blocks, ~11.6k
  tokens, per instance), one GPU each; vLLM-0.1.7-like engines: no chunked prefill, prefill-
  first steps, max_num_batched_tokens 12800, FCFS, recompute preemption; the artifact's
  "L-L" power-law lengths (its zipf sampler: ranks 1..1023 with weight k^-1.15, scaled to a
  mean of 512, capped at 6144; both prompt and output); Poisson arrivals (Figure 11, the
  source of the 15x, uses Poisson; `--cv` other than 1 gives the paper's bursty Gamma
  arrivals); the baseline INFaaS++ = the artifact's `load` dispatch without migration = our
  `llumnix` router (the same freeness: free blocks minus all queued prompts' blocks, per
  running + queued request) with migration off; Llumnix = the same plus migration with the
  artifact's L-L thresholds (out = in = 3 blocks per request, queued prompts counted: its
  "defrag" mode);
  KV copies over 8 GB/s (the testbed's 64 Gb/s network); metric: P99 TTFT (its "prefill
  latency", queueing included), ratio INFaaS++ / Llumnix, "up to" over the request rates.
- rates: the artifact's L-L grid (2.6-3.2 req/s) and the same grid continued to 3.8 req/s:
  with roofline step times (not vLLM 0.1.7's measured ones) our cluster's knee lies 10-20%
  above the paper's rates, and the paper's "up to" is the largest gap near its knee.
- not matched: the other traces (S-S, M-M, S-L, L-S, ShareGPT, BurstGPT) and LLaMA-30B (TP4);
  10,000 requests per point and the paper's averaging over repeated runs (we average 2 seeds
  of 5,000: P99 near the knee swings by several x between seeds); the 4-step migration cadence
  (we check every 100 ms); and Llumnix's handshake, which aborts a migration whose destination
  cannot pre-allocate the blocks (the request stays on the source), where our migrator
  recomputes it on the destination.

Run: python benchmarks/repro_llumnix.py [--quick] [--replicas N] [--setup {ours,paper}] [--cv CV]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
from _cluster_repro import SHARED, Timer, print_table, run

from shunter.core.types import RequestSpec
from shunter.metrics.summary import Summary
from shunter.sim.config import SimConfig
from shunter.workload import RequestClass, SyntheticWorkload, generate

MODEL, GPU = "llama-2-7b", "a40"
TRACE = "lengths_sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
PAPER = {"p99_ttft": "up to 15x (vs INFaaS++)", "high_e2e": "up to 1.5x"}
# KV of an A10 (24 GB) after LLaMA-7B's 13.5 GB of weights at 0.9 utilization: ~7.5 GB, 16k
# tokens; the A40's compute, the paper's memory pressure
KV_BLOCKS = 1000
RATE_PER_REPLICA = 0.6  # req/s per replica: near saturation for these lengths
# load balancing and de-fragmentation: move a request off a replica with < 10 free blocks per
# request (queue demand counted) onto one with > 100
MIGRATION = {"interval_s": 0.1, "out_threshold": 10.0, "in_threshold": 100.0}
# priority isolation on top: each running high-priority request reserves 300 blocks (~4.8k
# tokens) of virtual usage, so its replica takes fewer requests and sheds normal ones
MIGRATION_PRIORITY = {"interval_s": 0.1, "out_threshold": 0.0, "in_threshold": 40.0,
                      "high_priority": 0, "priority_headroom_blocks": 300}


def configs(num_replicas: int) -> dict[str, SimConfig]:
    base = dict(model=MODEL, gpu=GPU, num_replicas=num_replicas, policy="priority",
                num_blocks=KV_BLOCKS, scheduler={"max_model_len": 4096})
    return {
        "round_robin": SimConfig(router="round_robin", **base),
        "least_load": SimConfig(router="least_load", **base),
        "llumnix": SimConfig(router="llumnix", migration=MIGRATION, **base),
        "llumnix+prio": SimConfig(router="llumnix", migration=MIGRATION_PRIORITY, **base),
    }


def run_ours(args: argparse.Namespace) -> int:
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    timer = Timer()
    num_requests = (1200 if args.quick else 4000) * args.replicas // 8
    specs = generate(SyntheticWorkload(
        num_requests=num_requests, rate=RATE_PER_REPLICA * args.replicas,
        length_file=str(SHARED / TRACE), max_output_tokens=2048,
        classes=(RequestClass(weight=0.1, priority=0), RequestClass(weight=0.9, priority=1))),
        seed=7)
    specs = [s for s in specs if s.num_prompt_tokens + s.num_output_tokens < 4096]
    results = {}
    for name, config in configs(args.replicas).items():
        summary, sim = run(config, specs)
        high = [r for r in sim.records if r.priority == 0 and r.is_completed]
        high_e2e = sorted(r.e2e_s for r in high)
        results[name] = (summary, sum(high_e2e) / len(high_e2e), high_e2e[int(0.99 * len(high_e2e))],
                         sim.topology_stats)
        print(f"  {name}: P99 TTFT {summary.ttft_s.p99:.2f} s, P99 TPOT {summary.tpot_s.p99 * 1e3:.0f} ms,"
              f" high-priority mean E2E {results[name][1]:.2f} s {sim.topology_stats}")
    ours, prio = results["llumnix"], results["llumnix+prio"]
    rows = []
    for base in ("round_robin", "least_load"):
        b = results[base]
        rows.append((base, f"{b[0].ttft_s.p99:.2f} / {ours[0].ttft_s.p99:.2f}",
                     f"{b[0].ttft_s.p99 / ours[0].ttft_s.p99:.2f}x", PAPER["p99_ttft"],
                     f"{b[0].tpot_s.p99 * 1e3:.0f} / {ours[0].tpot_s.p99 * 1e3:.0f}",
                     f"{b[1]:.2f} / {prio[1]:.2f}", f"{b[1] / prio[1]:.2f}x", PAPER["high_e2e"]))
    notes = [f"llumnix+prio: P99 TTFT {prio[0].ttft_s.p99:.2f} s over all requests (the "
             "headroom is paid for by normal requests, as in the paper)"]
    for name in ("llumnix", "llumnix+prio"):
        st = results[name][3]
        notes.append(f"{name} migrations: {st['migrations_completed']:.0f} completed, "
                     f"{st['migrations_aborted']:.0f} aborted, {st['migrations_requeued']:.0f} "
                     f"requeued; downtime mean {st['migration_downtime_mean_s'] * 1e3:.1f} ms, max "
                     f"{st['migration_downtime_max_s'] * 1e3:.1f} ms")
    print_table(
        f"Llumnix vs baselines, {args.replicas}x {MODEL} on {GPU} ({KV_BLOCKS} KV blocks), "
        f"{len(specs)} ShareGPT requests at {RATE_PER_REPLICA * args.replicas:.1f} req/s "
        "(10% high priority)",
        ["baseline", "P99 TTFT s (base / llumnix)", "ours", "paper", "P99 TPOT ms",
         "high-prio mean E2E s (base / llumnix+prio)", "ours", "paper"], rows,
        [*notes, str(timer)])
    return 0


# --setup paper: the paper's section 6.3 (see the module docstring)
PAPER_MODEL, PAPER_GPU, PAPER_REPLICAS = "llama-7b", "a10", 16
PAPER_CLAIM = {"p99_ttft": "up to 14.8x", "mean_ttft": "up to 7.7x", "p99_tpot": "up to 2.0x"}
PAPER_RATES = (2.6, 2.9, 3.2)  # the artifact's L-L grid (2.6-3.2 req/s)
KNEE_RATES = (3.5, 3.8)  # the grid continued: our cluster's knee lies above the paper's rates
ZIPF_ALPHA = {128: 2.0, 256: 1.5, 512: 1.15}  # the artifact's power law per mean length
ZIPF_MEAN, ZIPF_CAP = 512, 6144  # "L-L": prompts and outputs with mean 512, at most 6144
PAPER_MAX_TOKENS = 11_000  # prompt + output must fit an instance's ~11.6k KV tokens
PAPER_MIGRATION = {"interval_s": 0.1, "out_threshold": 3.0, "in_threshold": 3.0}
PAPER_SCHEDULER = {"enable_chunked_prefill": False, "max_num_batched_tokens": 12800,
                   "max_model_len": 2 * ZIPF_CAP}
PAPER_LINK_BYTES_S = 8e9  # 64 Gb/s between the testbed's nodes


def zipf_lengths(rng: np.random.Generator, mean: int, n: int) -> list[int]:
    """The artifact's "zipf" lengths: rank k in [1, 2 mean) with weight k^-alpha, scaled so
    the sample mean is `mean`, rounded up, capped at ZIPF_CAP (a power law, heavy tail)."""
    ranks = np.arange(1, 2 * mean, dtype=np.float64)
    weights = ranks ** -ZIPF_ALPHA[mean]
    picks = rng.choice(ranks, size=n, p=weights / weights.sum())
    return np.minimum(np.ceil(picks * (mean / picks.mean())), ZIPF_CAP).astype(int).tolist()


def paper_specs(num_requests: int, rate: float, cv: float, seed: int) -> list[RequestSpec]:
    arrival = "poisson" if cv == 1.0 else "gamma"
    specs = generate(SyntheticWorkload(num_requests=num_requests, rate=rate, arrival=arrival,
                                       cv=cv), seed=seed)
    rng = np.random.default_rng([99, seed])  # same lengths at every rate
    prompts = zipf_lengths(rng, ZIPF_MEAN, num_requests)
    outputs = zipf_lengths(rng, ZIPF_MEAN, num_requests)
    return [replace(s, num_prompt_tokens=p, num_output_tokens=o)
            for s, p, o in zip(specs, prompts, outputs, strict=True) if p + o <= PAPER_MAX_TOKENS]


def paper_configs() -> dict[str, SimConfig]:
    base = dict(model=PAPER_MODEL, gpu=PAPER_GPU, num_replicas=PAPER_REPLICAS, policy="fcfs",
                scheduler=PAPER_SCHEDULER, kv_link_bytes_s=PAPER_LINK_BYTES_S)
    return {"INFaaS++": SimConfig(router="llumnix", **base),  # same dispatch, no migration
            "Llumnix": SimConfig(router="llumnix", migration=PAPER_MIGRATION, **base)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def run_paper(args: argparse.Namespace) -> int:
    timer = Timer()
    num_requests, seeds = (2000, (1,)) if args.quick else (5000, (1, 2))
    rates = (PAPER_RATES[-1], KNEE_RATES[-1]) if args.quick else PAPER_RATES + KNEE_RATES
    rows, best = [], (0.0, 0.0)
    for rate in rates:
        stats: dict[str, list[tuple[Summary, int, float]]] = {}
        for seed in seeds:
            specs = paper_specs(num_requests, rate, args.cv, seed)
            for name, config in paper_configs().items():
                summary, sim = run(config, specs)
                num_preempted = sum(r.num_preemptions for r in sim.records)
                downtime = sim.topology_stats.get("migration_downtime_mean_s", 0.0)
                stats.setdefault(name, []).append((summary, num_preempted, downtime))
        base, ours = stats["INFaaS++"], stats["Llumnix"]
        p99 = [_mean([x[0].ttft_s.p99 for x in arm]) for arm in (base, ours)]
        mean = [_mean([x[0].ttft_s.mean for x in arm]) for arm in (base, ours)]
        tpot = [_mean([x[0].tpot_s.p99 for x in arm]) for arm in (base, ours)]
        best = max(best, (p99[0] / p99[1], rate))
        per_seed = [b[0].ttft_s.p99 / o[0].ttft_s.p99 for b, o in zip(base, ours, strict=True)]
        rows.append((f"{rate:.1f}" + ("" if rate in PAPER_RATES else " (knee)"),
                     f"{p99[0]:.2f} / {p99[1]:.2f}", f"{p99[0] / p99[1]:.2f}x",
                     ", ".join(f"{r:.1f}x" for r in per_seed),
                     f"{mean[0]:.2f} / {mean[1]:.2f}", f"{mean[0] / mean[1]:.2f}x",
                     f"{tpot[0] * 1e3:.0f} / {tpot[1] * 1e3:.0f}", f"{tpot[0] / tpot[1]:.2f}x",
                     f"{_mean([x[1] for x in base]):.0f} / {_mean([x[1] for x in ours]):.0f}",
                     f"{_mean([x[2] for x in ours]) * 1e3:.0f}"))
        print(f"  {rate:.1f} req/s: P99 TTFT {p99[0]:.2f} / {p99[1]:.2f} s", flush=True)
    arrivals = "Poisson" if args.cv == 1.0 else f"Gamma CV {args.cv:g}"
    print_table(
        f"Paper setup: INFaaS++ / Llumnix, {PAPER_REPLICAS}x {PAPER_MODEL} on {PAPER_GPU}, "
        f"L-L power-law lengths (mean {ZIPF_MEAN}/{ZIPF_MEAN}, cap {ZIPF_CAP}), {arrivals}, "
        f"{num_requests} requests x {len(seeds)} seed(s) per rate",
        ["req/s", "P99 TTFT s", "ratio", "per seed", "mean TTFT s", "ratio", "P99 TPOT ms", "ratio",
         "preemptions", "downtime ms"], rows,
        [f"ours: P99 TTFT up to {best[0]:.2f}x lower than INFaaS++ (at {best[1]:.1f} req/s); "
         f"paper: {PAPER_CLAIM['p99_ttft']} (mean TTFT {PAPER_CLAIM['mean_ttft']}, P99 TPOT "
         f"{PAPER_CLAIM['p99_tpot']})", str(timer)])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (and rates)")
    parser.add_argument("--replicas", type=int, default=8, help="replicas of --setup ours")
    parser.add_argument("--setup", choices=("ours", "paper"), default="ours")
    parser.add_argument("--cv", type=float, default=1.0,
                        help="--setup paper: inter-arrival CV (1 = Poisson, else Gamma)")
    args = parser.parse_args()
    return run_paper(args) if args.setup == "paper" else run_ours(args)


if __name__ == "__main__":
    sys.exit(main())

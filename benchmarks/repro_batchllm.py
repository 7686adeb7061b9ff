"""BatchLLM reproduction: a large offline batch in BatchLLM's order (global prefix sharing,
decode-heavy groups first) against the same batch in file order on a vLLM-like engine with
its LRU prefix cache.

Paper (Zheng et al., "BatchLLM: Optimizing Large Batched LLM Inference with Global Prefix
Sharing and Throughput-oriented Token Batching", 2024): identifying the prefixes shared across
the whole batch ahead of time, grouping their requests and scheduling group by group (plus
memory-centric token batching and a fused prefix-sharing attention kernel) gives 1.3x to 10.8x
the throughput of vLLM and SGLang on microbenchmarks and an industry workload.

Our setup, and where it differs:
- The simulator, Llama-3.1-8B on one A100-80GB, vLLM-like engine (chunked prefill, prefix
  cache with LRU eviction). Every request of the batch is submitted at t = 0
  (`shunter.workload.prefix_order.batch_job`); the engine admits them in submission order.
- Orders: "file" (as the batch was written) and "batchllm" (sorted by prefix blocks, cut into
  groups sharing >= 1 block, groups with the largest decode-to-prefill ratio first, read from
  each request's output cap: 256 tokens where the trace has none, never the true length).
  `shunter batch FILE` sends a live batch in the same order (prompts as text).
- Workloads: (1) the Mooncake conversation trace (../shared/traces/mooncake_fast25_
  conversation.jsonl, its real 512-token prefix-block ids: turns of a session share their
  history), the first 1,000 requests; (2) BatchLLM-style microbenchmarks: prompts of 2,048
  shared tokens, each shared by requests with their own 256-token suffix and 128 output tokens,
  shuffled (seeded) in the file: 32 prefixes x 32 requests (the cache holds every prefix at
  once) and 512 x 4 (the prefixes alone are ~2x the A100's ~450k tokens of KV).
- Not modelled: the memory-centric token batching and the fused attention kernel (the engine
  here is vLLM-like in both arms), so the figure is the order's share of the paper's gain.
- Reported: throughput (requests and output tokens per second of makespan), prefix-cache hit
  rate (prompt tokens served from the cache), batchllm / file.

What we find (README table): the order alone gives the paper's range where the batch's
prefixes outgrow the cache (1.88x, hit rate 0.22 -> 0.89, the ideal) and nothing where the
cache holds them all (1.01x: LRU already keeps every prefix); on the real conversation trace
1.14x (hit rate 0.04 -> 0.13 of an ideal 0.21: turns of a session share a growing history, so
a group's common prefix is its first turn's). Grouping without the warm-up made the
microbenchmark worse (0.86x): sharers admitted in one step all compute the prefix.

Run: python benchmarks/repro_batchllm.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _cluster_repro import SHARED, Timer, print_table

from shunter.core.types import RequestSpec
from shunter.metrics import summarize
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.loaders import load_workload
from shunter.workload.prefix_order import batch_job

TRACE = "mooncake_fast25_conversation.jsonl"
PAPER = "1.3x-10.8x throughput vs vLLM / SGLang"
ENGINE = dict(model="llama-3.1-8b", gpu="a100-80gb")
BLOCK = 16  # tokens per prefix block in the microbenchmark


def microbenchmark(num_prefixes: int, per_prefix: int, seed: int = 0) -> list[RequestSpec]:
    prefix_blocks, suffix_blocks = 2048 // BLOCK, 256 // BLOCK
    specs = []
    next_id = num_prefixes * prefix_blocks
    for g in range(num_prefixes):
        prefix = tuple(range(g * prefix_blocks, (g + 1) * prefix_blocks))
        for k in range(per_prefix):
            suffix = tuple(range(next_id, next_id + suffix_blocks))
            next_id += suffix_blocks
            specs.append(RequestSpec(request_id=f"g{g}r{k}", arrival_s=0.0,
                                     num_prompt_tokens=2048 + 256, num_output_tokens=128,
                                     hash_ids=prefix + suffix, hash_block_size=BLOCK))
    order = np.random.default_rng(seed).permutation(len(specs))
    return [specs[i] for i in order]


def run(specs: list[RequestSpec], order: str) -> tuple[float, float, float]:
    job = batch_job(specs, order)
    records = simulate(SimConfig(**ENGINE), job.first_calls, follow_ups=job.follow_ups).records
    if len(records) != job.num_calls:
        raise SystemExit(f"{order}: {job.num_calls - len(records)} requests did not finish")
    # warm-up requests count in the makespan and the cache's work, not as served requests
    records = [r for r in records if not r.request_id.startswith("warmup:")]
    span = max(r.finish_s for r in records)
    tokens = sum(r.num_output_tokens for r in records)
    return len(records) / span, tokens / span, summarize(records).prefix_hit_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="200 Mooncake requests, 8 x 16 microbenchmark requests")
    args = parser.parse_args(argv)
    if not (SHARED / TRACE).exists():
        print(f"needs {SHARED / TRACE} (../shared/traces)", file=sys.stderr)
        return 2
    timer = Timer()
    workloads = {
        "Mooncake conversation": load_workload(SHARED / TRACE,
                                               num_requests=200 if args.quick else 1000),
        "micro: 32 prefixes x 32 (cache holds all)": (microbenchmark(8, 16) if args.quick
                                                       else microbenchmark(32, 32)),
        "micro: 512 prefixes x 4 (2x the cache)": (microbenchmark(64, 4) if args.quick
                                                   else microbenchmark(512, 4)),
    }
    rows = []
    for name, specs in workloads.items():
        file_order, batchllm = run(specs, "file"), run(specs, "batchllm")
        for label, (req_s, tok_s, hit) in (("file", file_order), ("batchllm", batchllm)):
            rows.append([name, str(len(specs)), label, f"{req_s:.2f}", f"{tok_s:.0f}",
                         f"{hit:.3f}", "—" if label == "file" else f"{req_s / file_order[0]:.2f}x"])
    print_table("BatchLLM: one offline batch, Llama-3.1-8B / A100-80GB",
                ["workload", "requests", "order", "req/s", "output tok/s", "prefix hit rate",
                 "batchllm / file"], rows, [f"paper: {PAPER}", f"wall time {timer}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

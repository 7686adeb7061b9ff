"""The `cost` router against every other router on real traces: Mooncake conversation (heavy
prefix sharing) and Azure conversation (no prefix information, load balance only).

Claim (ours, issue 6): one cost in seconds per replica (uncached prefill + queue + decode
pressure + the delay it imposes on the replica's other requests + a KV penalty) beats the
threshold rules (SGLang-style prefix affinity, least-load, ...) without tuning a threshold.
There is no paper figure; the reference points are the other routers in the same run.

Setup: the simulator with the roofline cost model, LLaMA-3.1-8B on A100-80GB replicas, the
trace's own arrival times (first `--requests` requests); Mooncake on 16 replicas (its prompts
average 12k tokens, 512-token prefix blocks), Azure on 2 replicas (chosen so that both run
near saturation, where routing matters). Every router with its defaults; FCFS replicas.

Run: python benchmarks/repro_cost_router.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

from _cluster_repro import SHARED, Timer, print_table, run

from shunter.router.registry import ROUTERS
from shunter.sim.config import SimConfig
from shunter.workload import load_workload

TRACES = {  # name -> (file, replicas)
    "Mooncake conversation": ("mooncake_fast25_conversation.jsonl", 16),
    "Azure conversation": ("azure2023_conv.csv", 2),
}
BASE = dict(model="llama-3.1-8b", gpu="a100-80gb", policy="fcfs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--requests", type=int, default=None)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    timer = Timer()
    num_requests = args.requests or (1000 if args.quick else 4000)
    for trace, (filename, num_replicas) in TRACES.items():
        specs = load_workload(SHARED / filename, num_requests=num_requests, sort=True)
        results = {}
        for router in sorted(ROUTERS):
            s, _ = run(SimConfig(router=router, num_replicas=num_replicas, **BASE), specs)
            results[router] = s
            print(f"  {trace}, {router}: mean TTFT {s.ttft_s.mean:.2f} s, P99 TTFT "
                  f"{s.ttft_s.p99:.2f} s, mean E2E {s.e2e_s.mean:.2f} s, hit rate "
                  f"{s.prefix_hit_rate:.2f}", flush=True)
        ours = results["cost"]
        ranked = sorted(results, key=lambda r: results[r].ttft_s.mean)
        rows = [(router, f"{s.ttft_s.mean:.2f}", f"{s.ttft_s.p99:.2f}", f"{s.e2e_s.mean:.2f}",
                 f"{s.e2e_s.p99:.2f}", f"{s.prefix_hit_rate:.2f}",
                 f"{s.ttft_s.mean / ours.ttft_s.mean:.2f}x", f"{s.e2e_s.mean / ours.e2e_s.mean:.2f}x")
                for router, s in ((r, results[r]) for r in ranked)]
        print_table(
            f"Routers on the {trace} trace: {len(specs)} requests, {num_replicas}x "
            f"{BASE['model']} on {BASE['gpu']}, trace arrival times",
            ["router", "mean TTFT s", "P99 TTFT s", "mean E2E s", "P99 E2E s", "prefix hit rate",
             "mean TTFT / cost's", "mean E2E / cost's"], rows)
    print(f"{timer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

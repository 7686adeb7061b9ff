"""D2LPM reproduction: per-tenant latency and prefix-cache hit rate, against prefix affinity.

Paper (Cao et al., "Locality-aware Fair Scheduling in LLM Serving", arXiv 2501.14312): D2LPM
(a dispatcher with a deficit per client and replica, in front of DLPM replica queues) keeps
most of the prefix locality of a cache-aware router while sharing the cluster fairly: up to
7.18x lower per-client latency than the state-of-the-art distributed serving system (SGLang's
cache-aware router), at a high cache hit rate.

Our setup, and where it differs:
- The simulator with the roofline cost model, LLaMA-3.1-8B on 4 A100-80GB replicas with
  4000 KV blocks each (64k tokens: every tenant's prompts do not fit on one replica).
- Requests: a heavy tenant sends half of all requests, all on one hot system prompt of 2048
  tokens; 7 light tenants share the other half, each with 4 system prompts (popularity ~
  1/rank); each request adds a question and an answer with lengths from the LMSYS
  multi-tenant trace (VTC's); Poisson arrivals near the cluster's capacity. A cache-aware
  router piles the hot prompt onto one replica, and whoever shares it waits.
- Baseline: `prefix_affinity` (SGLang's cache-aware rule, launcher defaults) with FCFS
  replica queues (SGLang's LPM queue order is not modelled); also least-load for reference.
- D2LPM: the `d2lpm` router with `dlpm` replica queues (quantum 4096 tokens each).
Per-tenant latency is each tenant's mean end-to-end latency; the table shows the worst tenant
and the mean over the light (victim) tenants; ratios are baseline / D2LPM, same run.

Run: python benchmarks/repro_d2lpm.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

from _cluster_repro import SHARED, Timer, print_table, run

from shunter.sim.config import SimConfig
from shunter.workload import (
    LengthDistribution,
    SharedPrefix,
    SyntheticWorkload,
    generate,
    merge_workloads,
)

TRACE = "vtc_lmsys_arena_multitenant.csv"
BASE = dict(model="llama-3.1-8b", gpu="a100-80gb", num_replicas=4, num_blocks=4000)
HEAVY, NUM_LIGHT = "heavy", 7
HEAVY_SHARE = 0.5  # of all requests, all on one hot system prompt
RATE = 30.0  # req/s over the cluster (at 40 the cluster saturates and d2lpm's spread costs more than it saves)
PAPER = "up to 7.18x lower per-client latency (vs SGLang router)"


def configs() -> dict[str, SimConfig]:
    return {
        "prefix_affinity": SimConfig(router="prefix_affinity", policy="fcfs", **BASE),
        "least_load": SimConfig(router="least_load", policy="fcfs", **BASE),
        "d2lpm": SimConfig(router="d2lpm", router_params={"quantum_tokens": 16384.0},
                           policy="dlpm", policy_params={"quantum": 4096.0}, **BASE),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    timer = Timer()
    num_requests = 1500 if args.quick else 5000
    specs = merge_workloads(*(generate(SyntheticWorkload(
        num_requests=int(num_requests * share), rate=RATE * share, tenants=tenants,
        length_file=str(SHARED / TRACE),
        shared_prefix=SharedPrefix(num_prefixes_per_tenant=num_prompts,
                                   prefix_tokens=LengthDistribution(kind="fixed",
                                                                    mean_tokens=2048))), seed=seed)
        for seed, (share, tenants, num_prompts) in enumerate((
            (HEAVY_SHARE, {HEAVY: 1.0}, 1),
            (1 - HEAVY_SHARE, {f"light{i}": 1.0 for i in range(NUM_LIGHT)}, 4)))))
    results = {}
    for name, config in configs().items():
        s, _ = run(config, specs)
        e2e = {t: ts.e2e_s.mean for t, ts in s.tenants.items()}
        light = [v for t, v in e2e.items() if t != HEAVY]
        results[name] = (max(e2e.values()), sum(light) / len(light), e2e[HEAVY],
                         s.prefix_hit_rate, s.ttft_s.p99)
        print(f"  {name}: worst tenant {results[name][0]:.2f} s, light tenants {results[name][1]:.2f} s,"
              f" heavy {e2e[HEAVY]:.2f} s, hit rate {s.prefix_hit_rate:.2f}, P99 TTFT {s.ttft_s.p99:.2f} s",
              flush=True)
    ours = results["d2lpm"]
    rows = [(base, f"{b[0]:.2f} / {ours[0]:.2f}", f"{b[0] / ours[0]:.2f}x",
             f"{b[1]:.2f} / {ours[1]:.2f}", f"{b[1] / ours[1]:.2f}x",
             f"{b[3]:.2f} / {ours[3]:.2f}", PAPER if base == "prefix_affinity" else "")
            for base, b in results.items() if base != "d2lpm"]
    print_table(
        f"D2LPM vs cache-aware routing: 4x llama-3.1-8b on A100, {len(specs)} requests at "
        f"{RATE:g} req/s, 1 heavy + {NUM_LIGHT} light tenants with shared prompts",
        ["baseline", "worst-tenant mean E2E s (base / d2lpm)", "ours",
         "light tenants mean E2E s", "ours", "prefix hit rate", "paper"], rows, [str(timer)])
    return 0


if __name__ == "__main__":
    sys.exit(main())

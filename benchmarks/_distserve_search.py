"""DistServe's paper setup for `repro_distserve.py --setup paper`: its ShareGPT sampling, its
workloads and SLOs, and its placement search (without pipeline parallelism).

Placement (DistServe §4.1, "high node-affinity": KV over NVLink within one node): the goodput
of one prefill instance (TTFT SLO only) and of one decode instance (TPOT SLO only) is found by
simulation for each TP degree; a plan of n_p prefill instances of TP t_p and n_d decode
instances of TP t_d is then estimated to serve min(n_p G_p(t_p), n_d G_d(t_d)) within the GPU
budget, and the best few plans per GPU are verified end to end (both SLOs, 90% jointly), as the
paper verifies its chosen plan in its simulator. Pipeline parallelism is not modelled in the
simulator, so the search covers TP degrees and replica counts only.

The workload follows the artifact's `0-prepare-dataset.py`: a ShareGPT conversation with at
least 3 messages gives one request whose prompt is its first k messages joined by newlines (k
uniform in 1..messages-1) and whose output is message k; pairs with prompt + output >= 2048
(OPT's context) are dropped. Arrivals are Poisson, as the artifact's client sends them.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _cluster_repro import max_rate, run

from shunter.core.types import RequestSpec
from shunter.sim.config import ReplicaGroup, SimConfig

__all__ = ["WORKLOADS", "Plan", "Search", "Workload", "colocated", "disaggregated",
           "sharegpt_pairs"]

SHAREGPT_TURNS = "sharegpt_v3_turn_lengths_mistral_tok.csv"
MAX_CONTEXT_TOKENS = 2048  # OPT's learned position embeddings
GPU = "a100-80gb"
GPUS_PER_NODE = 8
NVLINK_BYTES_S = 300e9  # A100 SXM NVLink, one direction (600 GB/s both ways)
ATTAINMENT = 0.9
# The artifact's servers (2-start-api-server.py): vLLM --max-num-batched-tokens 16384
# --max-num-seqs 1024; DistServe context batches of <= 8192 tokens, decode batches of <= 1024.
VLLM_SCHEDULER = {"enable_chunked_prefill": False, "max_num_batched_tokens": 16384,
                  "max_num_seqs": 1024}
CHUNKED_SCHEDULER = {"max_num_batched_tokens": 512, "max_num_seqs": 1024}
DISTSERVE_SCHEDULER = {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192,
                       "max_num_seqs": 1024}
PHASE_MAX_RATE = 128.0  # req/s, one instance
FEEDER_TP = 8  # the prefill instance that feeds a decode instance when its goodput is measured


@dataclass(frozen=True, slots=True)
class Workload:
    """One of the paper's chatbot rows: model, SLOs, and the artifact's parallelism."""

    name: str
    model: str
    ttft_slo_s: float
    tpot_slo_s: float
    vllm_tp: int  # the artifact's vLLM baseline (one instance)
    artifact_plan: tuple[int, int]  # the artifact's DistServe (prefill TP, decode TP), 1 + 1
    tps: tuple[int, ...]  # TP degrees searched per phase
    paper: str


# SLOs: the artifact's plotting script (ae-scripts/e2e/_plot.py, Figure 8), ShareGPT chatbot.
WORKLOADS = {
    "opt-13b": Workload("chatbot OPT-13B", "opt-13b", 0.25, 0.1, 1, (2, 1), (1, 2, 4),
                        "2.0-4.6x over the chatbot rows"),
    "opt-66b": Workload("chatbot OPT-66B", "opt-66b", 0.4, 0.1, 4, (4, 4), (2, 4, 8),
                        "2.0-4.6x over the chatbot rows"),
}


@dataclass(frozen=True, slots=True)
class Plan:
    """n_p prefill instances of TP t_p, n_d decode instances of TP t_d."""

    prefill_tp: int
    num_prefill: int
    decode_tp: int
    num_decode: int

    @property
    def num_gpus(self) -> int:
        return self.prefill_tp * self.num_prefill + self.decode_tp * self.num_decode

    def __str__(self) -> str:
        return (f"{self.num_prefill}P(tp{self.prefill_tp})+{self.num_decode}D(tp{self.decode_tp})")


def sharegpt_pairs(path: Path, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt, output) token counts sampled from ShareGPT as DistServe's artifact does."""
    turns: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            turns[row["conv_idx"]].append(
                (int(row["turn"]), int(row["user_tokens"]), int(row["assistant_tokens"])))
    rng = random.Random(seed)
    pairs = []
    for conv in turns.values():
        messages = [n for _, user, assistant in sorted(conv) for n in (user, assistant)]
        if len(messages) < 3:
            continue
        k = rng.randint(1, len(messages) - 1)
        prompt, output = sum(messages[:k]) + k - 1, messages[k]  # k - 1 joining newlines
        if (prompt < 4 and output < 4) or prompt + output >= MAX_CONTEXT_TOKENS:
            continue
        pairs.append((max(1, prompt), max(1, output)))
    return pairs


def poisson(pairs: list[tuple[int, int]], num_requests: int, rate: float, seed: int,
            output_tokens: int | None = None) -> list[RequestSpec]:
    rng = random.Random(seed)
    now, specs = 0.0, []
    for i, (prompt, output) in enumerate(rng.choices(pairs, k=num_requests)):
        now += rng.expovariate(rate)
        specs.append(RequestSpec(request_id=str(i), arrival_s=now, num_prompt_tokens=prompt,
                                 num_output_tokens=output_tokens or output))
    return specs


def colocated(model: str, tp: int, scheduler: dict[str, object]) -> SimConfig:
    return SimConfig(model=model, gpu=GPU, tp=tp, scheduler=scheduler)


def disaggregated(model: str, plan: Plan) -> SimConfig:
    return SimConfig(
        model=model, disaggregation=True, router="least_load", kv_link_bytes_s=NVLINK_BYTES_S,
        scheduler=DISTSERVE_SCHEDULER,
        groups=(ReplicaGroup(gpu=GPU, tp=plan.prefill_tp, count=plan.num_prefill, role="prefill"),
                ReplicaGroup(gpu=GPU, tp=plan.decode_tp, count=plan.num_decode, role="decode")))


@dataclass(slots=True)
class Search:
    """Goodput probes for one workload, bisection to `precision`. A probe at rate r sends
    r x `duration_s` requests (within [`min_requests`, `max_requests`]): a fixed count would
    leave a fast cluster's run a warm-up transient that never fills its decode batches."""

    workload: Workload
    pairs: list[tuple[int, int]]
    precision: float
    duration_s: float
    min_requests: int
    max_requests: int
    seed: int = 3

    def num_requests(self, rate: float) -> int:
        return min(self.max_requests, max(self.min_requests, round(rate * self.duration_s)))

    def goodput(self, config: SimConfig, *, ttft: bool = True, tpot: bool = True,
                output_tokens: int | None = None, hi: float = 64.0) -> float:
        """Highest rate (req/s, whole config) with >= 90% of requests within the SLOs."""
        w = self.workload

        def meets(rate: float) -> bool:
            specs = poisson(self.pairs, self.num_requests(rate), rate, self.seed, output_tokens)
            summary, _ = run(config, specs, ttft_slo_s=w.ttft_slo_s if ttft else None,
                             tpot_slo_s=w.tpot_slo_s if tpot else None)
            return (summary.slo_attainment or 0.0) >= ATTAINMENT

        return max_rate(meets, 0.02, hi, self.precision)

    def phase_goodputs(self) -> tuple[dict[int, float], dict[int, float]]:
        """Per-instance goodput of each TP degree: prefill (TTFT) and decode (TPOT)."""
        model = self.workload.model
        prefill = {tp: self.goodput(colocated(model, tp, DISTSERVE_SCHEDULER), tpot=False,
                                    output_tokens=1, hi=PHASE_MAX_RATE) for tp in self.workload.tps}
        decode = {tp: self.goodput(disaggregated(model, Plan(FEEDER_TP, 1, tp, 1)), ttft=False,
                                   hi=PHASE_MAX_RATE) for tp in self.workload.tps}
        return prefill, decode

    def best_plans(self, prefill: dict[int, float], decode: dict[int, float],
                   max_gpus: int = GPUS_PER_NODE, top: int = 3) -> list[tuple[Plan, float]]:
        """The `top` plans by estimated goodput per GPU, with that estimate."""
        estimates = [(plan, min(plan.num_prefill * prefill[plan.prefill_tp],
                                plan.num_decode * decode[plan.decode_tp]) / plan.num_gpus)
                     for plan in plans(self.workload.tps, max_gpus)]
        estimates.sort(key=lambda pe: (-pe[1], pe[0].num_gpus))
        return estimates[:top]


def plans(tps: tuple[int, ...], max_gpus: int) -> Iterator[Plan]:
    for tp_p in tps:
        for tp_d in tps:
            for n_p in range(1, max_gpus // tp_p + 1):
                for n_d in range(1, (max_gpus - n_p * tp_p) // tp_d + 1):
                    yield Plan(tp_p, n_p, tp_d, n_d)



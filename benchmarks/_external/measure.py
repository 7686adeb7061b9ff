"""Reproduce the anchor figures: ``python -m benchmarks._external.measure vidur|vllm|all``.

Prints one JSON object per measurement on stdout (progress goes to stderr) and, with
``--out FILE``, also writes them as a JSON list. Heavy: run one at a time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks._external._proc import BENCH_DIR
from benchmarks._external.vidur import run_vidur
from benchmarks._external.vllm_cpu import (
    ensure_smollm2_hf_dir,
    ensure_vllm,
    random_prompts,
    run_vllm_throughput,
    vllm_server,
)

__all__ = ["main", "measure_vidur", "measure_vllm"]

VIDUR_SIZES = (1_000, 10_000)
VLLM_CONCURRENCIES = (1, 4, 16)
PROMPT_LEN_TOKENS = 128
OUTPUT_LEN_TOKENS = 128
_MIN_PROMPTS = 4
_NUM_WAVES = 2


def measure_vidur(sizes: tuple[int, ...] = VIDUR_SIZES) -> list[dict[str, object]]:
    results = []
    for num_requests in sizes:
        result = run_vidur(num_requests=num_requests,
                           workdir=BENCH_DIR / "runs" / f"vidur-{num_requests}")
        results.append({"tool": "vidur", **result})
        print(json.dumps(results[-1]), flush=True)
    return results


def measure_vllm(concurrencies: tuple[int, ...] = VLLM_CONCURRENCIES) -> list[dict[str, object]]:
    start_s = time.perf_counter()
    ensure_vllm()
    model_dir = ensure_smollm2_hf_dir()
    results: list[dict[str, object]] = [
        {"tool": "vllm-setup", "ensure_wall_s": time.perf_counter() - start_s}]
    for concurrency in concurrencies:
        num_prompts = max(_MIN_PROMPTS, _NUM_WAVES * concurrency)
        result = run_vllm_throughput(
            model_dir=model_dir, output_len=OUTPUT_LEN_TOKENS, concurrency=concurrency,
            prompts=random_prompts(num_prompts=num_prompts, prompt_len=PROMPT_LEN_TOKENS))
        result.pop("first_output_ids", None)
        results.append({"tool": "vllm-throughput", **result})
        print(json.dumps(results[-1]), flush=True)
    with vllm_server(model_dir, served_model_name="smollm2") as server:
        body = json.dumps({"model": server.model, "prompt": "The capital of France is",
                           "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(f"{server.base_url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            text = json.loads(response.read())["choices"][0]["text"]
        results.append({"tool": "vllm-server", "startup_s": server.startup_s,
                        "completion_text": text})
    print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=("vidur", "vllm", "all"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results: list[dict[str, object]] = []
    if args.what in ("vidur", "all"):
        results += measure_vidur()
    if args.what in ("vllm", "all"):
        results += measure_vllm()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

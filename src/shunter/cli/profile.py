"""`shunter profile URL|--engine`: measure a backend's step times and fit the simulator's
`profile` cost model to them (`shunter.sim.cost.profile`), saved as a profile file.

Two ways to measure:
- URL: through the OpenAI API (`shunter.bench.probe`): TTFT of lone prompts, token gaps of
  concurrent streams. Works for any server (the gateway, vLLM, llama-server); timings include
  what a client sees (HTTP, tokenization, streaming).
- --engine: the reference engine in this process. Every step is timed whole (schedule, model,
  sampling, detokenization: the step loop's period) with its exact StepShape, for prompts of
  each length alone and for batches of concurrent decodes.

Use it: `cost_model = "profile"` and `gpu = "<the file>"` in a scenario's [cluster] table.
The engine and the HTTP client are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import time
from typing import Any

from shunter.cli.common import (
    console,
    import_bench,
    output_file,
    positive_int,
    progress_bar,
    stdout_console,
)
from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import get_model
from shunter.sim.cost.profile import fit_profile, save_profile

__all__ = ["add_model_fact_flags", "add_profile_parser", "engine_samples", "model_facts",
           "run_profile"]

StepSample = tuple[StepShape, float]
_NUM_WARMUP_STEPS = 3
_FIRST_ORDINARY_TOKEN_ID = 100  # below: special and byte tokens in most vocabularies


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter profile` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "profile", help="measure a backend's step times and fit the simulator's cost model",
        description="Measure prefill time vs prompt length and decode step time vs batch size "
                    "and context of a live backend (an OpenAI-compatible URL, or the reference "
                    "engine in-process with --engine), fit the simulator's `profile` cost model "
                    "and save it. Simulate with it: cost_model = \"profile\", gpu = FILE.")
    p.add_argument("url", nargs="?", metavar="URL", help="endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--engine", action="store_true", help="profile the reference engine in-process")
    p.add_argument("--model", metavar="NAME",
                   help="model (default: the endpoint's; engine: smollm2-135m)")
    p.add_argument("--api-key", metavar="KEY", help="API key of the endpoint (default: none)")
    p.add_argument("--out", type=output_file, default="profile.json", metavar="FILE",
                   help="profile file to write")
    p.add_argument("--prefill-tokens", type=_ints, default=(16, 32, 64, 128, 256, 512),
                   metavar="N,...", help="prompt lengths to time alone (keep within one step)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 2, 4, 8, 16), metavar="N,...",
                   help="decode batch sizes")
    p.add_argument("--contexts", type=_ints, default=(32, 256), metavar="N,...",
                   help="prompt lengths of the decode batches")
    p.add_argument("--decode-tokens", type=positive_int, default=16, metavar="N",
                   help="tokens each decode request generates")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                   help="times each prompt length is measured")
    add_model_fact_flags(p)
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="engine: torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_profile)
    return p


def add_model_fact_flags(group: Any) -> None:
    """--max-model-len, --kv-capacity-tokens, --kv-bytes-per-token (read by `model_facts`;
    profile and calibrate)."""
    group.add_argument("--max-model-len", type=positive_int, metavar="N",
                       help="context limit (default: reported by the endpoint, else the model's)")
    group.add_argument("--kv-capacity-tokens", type=positive_int, metavar="N",
                       help="KV tokens the backend holds (default: reported by vLLM / the "
                            "engine)")
    group.add_argument("--kv-bytes-per-token", type=positive_int, metavar="N",
                       help="KV bytes per token (default: from the model catalog)")


def _plan(args: argparse.Namespace) -> Any:
    probe = importlib.import_module("shunter.bench.probe")
    return probe.ProbePlan(prefill_tokens=args.prefill_tokens,
                           decode_batch_sizes=args.batch_sizes,
                           decode_context_tokens=args.contexts,
                           num_decode_tokens=args.decode_tokens, num_repeats=args.repeats)


class _ShapeRecorder:
    """Wraps the engine's executor to see each step's shape (everything else passes through)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.last_shape: StepShape | None = None

    def execute(self, output: Any) -> Any:
        self.last_shape = output.shape
        return self.executor.execute(output)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)


def _run_timed(engine: Any, recorder: _ShapeRecorder, samples: list[StepSample]) -> None:
    while engine.has_unfinished_requests:
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        if recorder.last_shape is not None and recorder.last_shape.num_tokens:
            samples.append((recorder.last_shape, elapsed))


def engine_samples(engine: Any, plan: Any, *, seed: int = 0,
                   on_progress: Any = None) -> list[StepSample]:
    """Time every step of the plan's experiments on an LLMEngine (module docstring)."""
    params_mod = importlib.import_module("shunter.engine.sampler")
    recorder = _ShapeRecorder(engine.executor)
    engine.executor = recorder
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size

    def prompt(n: int) -> list[int]:
        return [rng.randrange(_FIRST_ORDINARY_TOKEN_ID, vocab) for _ in range(n)]

    def params(k: int) -> Any:
        return params_mod.SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True)

    warmup: list[StepSample] = []
    engine.add_request(prompt(32), params(_NUM_WARMUP_STEPS))
    _run_timed(engine, recorder, warmup)
    samples: list[StepSample] = []
    done = 0
    for n in plan.prefill_tokens:
        for _ in range(plan.num_repeats):
            engine.add_request(prompt(n), params(1))
            _run_timed(engine, recorder, samples)
            done += 1
            if on_progress:
                on_progress(done)
    for context in plan.decode_context_tokens:
        for batch in plan.decode_batch_sizes:
            for _ in range(batch):
                engine.add_request(prompt(context), params(plan.num_decode_tokens))
            _run_timed(engine, recorder, samples)
            done += 1
            if on_progress:
                on_progress(done)
    return samples


def _measure_engine(args: argparse.Namespace, plan: Any) -> tuple[list[StepSample], dict[str, Any]]:
    try:
        engine_mod = importlib.import_module("shunter.engine")
    except ImportError as exc:
        raise ConfigError(f"--engine needs the engine extra ({exc.name} is missing): "
                          "pip install 'shunter[engine]'") from None
    model = args.model or "smollm2-135m"
    engine = engine_mod.LLMEngine(engine_mod.EngineConfig(model=model, num_threads=args.threads))
    with progress_bar(plan.num_experiments, "profiling engine", quiet=args.quiet) as on_progress:
        samples = engine_samples(engine, plan, on_progress=on_progress)
    config = engine.config
    facts = {"model": model, "source": f"engine:{model}", "max_model_len": engine.max_model_len,
             "kv_capacity_tokens": config.num_blocks * config.block_size}
    return samples, facts


def _measure_url(args: argparse.Namespace, plan: Any) -> tuple[list[StepSample], dict[str, Any]]:
    bench = import_bench("profiling a URL")
    model = args.model or asyncio.run(bench.endpoint_model(args.url, args.api_key))
    endpoint = bench.EndpointConfig(url=args.url, model=model, api_key=args.api_key)
    max_len, capacity = asyncio.run(bench.endpoint_limits(endpoint))
    label = f"profiling {args.url}"
    with progress_bar(plan.num_experiments, label, quiet=args.quiet) as on_progress:
        nonce = f"{time.time_ns():x}"  # fresh prompts: no prefix-cache hits from an earlier probe
        samples = asyncio.run(bench.probe_endpoint(endpoint, plan, nonce=nonce,
                                                   on_progress=on_progress))
    facts = {"model": model, "source": bench.api_root(args.url), "max_model_len": max_len,
             "kv_capacity_tokens": capacity}
    return samples, facts


def model_facts(name: str, args: argparse.Namespace, facts: dict[str, Any]) -> tuple[int, int]:
    """(max_model_len, kv_bytes_per_token): flags, then the backend's word, then the catalog."""
    try:
        spec = get_model(name)
    except ConfigError:
        spec = None
    max_len = args.max_model_len or facts.get("max_model_len") or (spec and spec.max_model_len)
    kv_bytes = args.kv_bytes_per_token or (spec and spec.kv_bytes_per_token)
    if not max_len or not kv_bytes:
        raise ConfigError(f"model {name!r} is not in the catalog: give --max-model-len and "
                          "--kv-bytes-per-token")
    return int(max_len), int(kv_bytes)


def run_profile(args: argparse.Namespace) -> int:
    if bool(args.url) == bool(args.engine):
        raise ConfigError("give either an endpoint URL or --engine")
    plan = _plan(args)
    samples, facts = (_measure_engine if args.engine else _measure_url)(args, plan)
    max_len, kv_bytes = model_facts(facts["model"], args, facts)
    capacity = args.kv_capacity_tokens or facts.get("kv_capacity_tokens")
    profile = fit_profile(samples, model=facts["model"], source=facts["source"],
                          max_model_len=max_len, kv_bytes_per_token=kv_bytes,
                          kv_capacity_tokens=capacity)
    path = save_profile(profile, args.out)
    out = stdout_console()
    errors = profile.errors()
    out.print(f"profile of {profile.source}: {len(profile.samples)} step samples, fit error "
              f"mean {errors.get('mean_rel_error', 0):.1%}, "
              f"max {errors.get('max_rel_error', 0):.1%}")
    out.print(f"fixed {profile.fixed_s * 1e3:.2f} ms/step, "
              f"per prompt {profile.s_per_prefill_chunk * 1e3:.2f} ms, "
              f"per KV token read {profile.s_per_decode_kv_token * 1e6:.3f} us; token-count curve "
              f"at {', '.join(str(k) for k in profile.knots_tokens)} tokens")
    if capacity is None:
        console.print("the backend did not report its KV capacity: set num_blocks in scenarios "
                      "that use this profile (or pass --kv-capacity-tokens)", style="yellow")
    out.print(f"wrote {path}")
    return 0

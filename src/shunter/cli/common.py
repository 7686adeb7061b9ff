"""Pieces shared by subcommands: the scenario flags, workload loading, progress, errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shunter.config import Scenario, builtin_scenario, load_scenario, resolve_trace
from shunter.core.predict import PREDICTORS
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.types import RequestSpec, check_number
from shunter.router.registry import ROUTERS
from shunter.sim.cost.registry import COST_MODELS
from shunter.workload.loaders import TRACE_FORMATS, load_workload

__all__ = ["add_scenario_flags", "console", "fail", "finite_float", "json_object", "load_specs",
           "positive_float", "positive_int", "progress_bar", "scenario_from_args", "stdout_console"]

console = Console(stderr=True)
ENGINE_ONLY = frozenset(n for n in POLICIES if make_policy(n).requires_engine is not None)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _float_flag(text: str, **bounds: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    try:
        return check_number("", value, **bounds)
    except ValueError as exc:  # "nan", "inf", "1e999"
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def positive_float(text: str) -> float:
    """A flag's finite number > 0 (an argparse type)."""
    return _float_flag(text, gt=0)


def finite_float(text: str) -> float:
    """A flag's finite number (an argparse type)."""
    return _float_flag(text)


def add_scenario_flags(parser: argparse.ArgumentParser, *, single: bool = True) -> None:
    """The flags of `simulate` (and, with single=False, `compare`, which lists policies itself)."""
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO_FILE",
                        help="TOML or YAML scenario file (default: the built-in Azure 2023 sample)")
    w = parser.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE", help="workload trace file")
    w.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of --trace (default: detected from the file)")
    w.add_argument("--num-requests", type=positive_int, metavar="N",
                   help="use the first N requests (length files: sample N with replacement)")
    w.add_argument("--rate", type=positive_float, metavar="REQ_PER_S",
                   help="re-time requests with Poisson arrivals at this rate (length files without "
                        "times otherwise all arrive at t=0)")
    w.add_argument("--zero-tokens", choices=("error", "clamp"),
                   help="rows with 0 prompt or output tokens: reject the file (default) or load them "
                        "as 1 token, counted and warned about")
    w.add_argument("--seed", type=int, metavar="N", help="seed for sampling and arrivals (default 0)")
    c = parser.add_argument_group("cluster")
    c.add_argument("--model", help="model name, e.g. llama-3.1-8b, llama-3.1-70b, qwen2.5-7b")
    c.add_argument("--gpu", help="GPU name, e.g. a100-80gb, h100, h200, l40s")
    c.add_argument("--tp", type=positive_int, metavar="N", help="tensor-parallel degree")
    c.add_argument("--replicas", type=positive_int, metavar="N", help="number of replicas")
    if single:
        c.add_argument("--router", help=f"cluster router: {', '.join(sorted(ROUTERS))}")
        c.add_argument("--policy", help=f"scheduling policy: {', '.join(sorted(POLICIES))}")
    g = parser.add_argument_group(
        "gateway tier", "Model `shunter serve` in front of the replicas: requests wait at the "
        "gateway in a policy's order and go to a replica holding fewer than N of them (the "
        "scenario's [gateway] table). Either flag turns it on.")
    if single:
        g.add_argument("--gateway-policy", metavar="NAME",
                       help="policy of the gateway's queue (default vtc): "
                            + ", ".join(sorted(n for n in POLICIES if n not in ENGINE_ONLY)))
    g.add_argument("--gateway-params", type=json_object, metavar="JSON",
                   help="its parameters, e.g. '{\"tenant_weights\": {\"a\": 2}}'")
    g.add_argument("--gateway-max-inflight", type=positive_int, metavar="N",
                   help="requests the gateway keeps in flight per replica (default 256)")
    c.add_argument("--cost-model", choices=sorted(COST_MODELS),
                   help="step-time model: roofline (default) or profile (then --gpu names the "
                        "profile file written by `shunter profile`)")
    c.add_argument("--predictor", choices=sorted(PREDICTORS),
                   help="output-length predictor for sjf/ltr (oracle sees the trace's truth)")
    c.add_argument("--predictor-params", type=json_object, metavar="JSON",
                   help='predictor parameters, e.g. \'{"kendall_tau": 0.5}\' or \'{"model_path": "m.json"}\'')
    s = parser.add_argument_group("SLOs and output")
    s.add_argument("--ttft-slo", type=positive_float, metavar="S", help="TTFT SLO in seconds")
    s.add_argument("--tpot-slo", type=positive_float, metavar="S", help="TPOT SLO in seconds")
    s.add_argument("--json", metavar="FILE", help="write results as JSON")
    s.add_argument("--csv", metavar="FILE", help="write results as CSV")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="processes for one run when its replicas never interact (router "
                        "round_robin or random; no migration, disaggregation or predictor); "
                        "same results (default 1)")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario) if args.scenario else builtin_scenario()
    flags: dict[str, Any] = {
        "trace": args.trace, "format": args.trace_format, "num_requests": args.num_requests,
        "rate": args.rate, "seed": args.seed, "zero_tokens": args.zero_tokens, "model": args.model, "gpu": args.gpu, "tp": args.tp,
        "num_replicas": args.replicas, "router": getattr(args, "router", None),
        "policy": getattr(args, "policy", None), "ttft_slo_s": args.ttft_slo,
        "predictor": args.predictor, "predictor_params": args.predictor_params,
        "cost_model": args.cost_model,
        "tpot_slo_s": args.tpot_slo,
        "gateway_policy": getattr(args, "gateway_policy", None),
        "gateway_params": args.gateway_params,
        "gateway_max_inflight": args.gateway_max_inflight,
    }
    changes = {k: v for k, v in flags.items() if v is not None}
    if args.trace is not None:
        changes.setdefault("format", None)  # a new trace's format is detected unless given
        scenario = replace(scenario, name=args.trace, base_dir=None)  # a flag's path is cwd's
    return scenario.with_overrides(**changes)


def load_specs(scenario: Scenario) -> list[RequestSpec]:
    wl = scenario.workload
    if wl.trace is None:
        raise ValueError("the scenario names no workload: give --trace FILE or [workload] trace")
    path = resolve_trace(wl.trace, scenario.base_dir)
    return load_workload(path, wl.format, num_requests=wl.num_requests, rate=wl.rate, seed=wl.seed,
                         zero_tokens=wl.zero_tokens)


@contextmanager
def progress_bar(total: int, label: str, *, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A callback that moves a bar to `done` of `total`; a no-op when quiet or not a terminal."""
    if quiet or not console.is_terminal:
        yield lambda done: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)


def fail(message: str) -> int:
    """Print `error: message` on stderr as one line (no wrapping: a path stays whole for a
    grep or a test to find) and return the exit code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,  # "[table]" is text
                  soft_wrap=True)
    return 2


def stdout_console() -> Console:
    return Console(file=sys.stdout)

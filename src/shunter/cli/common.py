"""Pieces shared by subcommands: the scenario flags, workload loading, progress, errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from shunter.cli.args import (
    finite_float,
    float_flag,
    json_object,
    nonnegative_float,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    workers_arg,
)
from shunter.config import Scenario, builtin_scenario, load_scenario, resolve_trace
from shunter.core.predict import PREDICTORS
from shunter.core.sched.registry import POLICIES, make_policy
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.router.autoscale import DEFAULT_LOADS, AutoscaleConfig
from shunter.router.registry import ROUTERS
from shunter.sim.cost.catalog import GPUS, MODELS
from shunter.sim.cost.lora import LoraConfig
from shunter.sim.cost.registry import COST_MODELS
from shunter.sim.cost.speculative import METHODS, SpeculativeConfig
from shunter.workload.loaders import TRACE_FORMATS, load_requests
from shunter.workload.lora import assign_loras

__all__ = ["AUTO_STREAM_MIN_REQUESTS", "AUTO_WORKERS_MIN_REQUESTS", "DefaultsFormatter", "add_scenario_flags", "console",
           "fail", "finite_float", "import_bench",
           "json_object", "load_specs", "output_dir", "output_file", "positive_float",
           "positive_int", "progress_bar", "scenario_default", "scenario_from_args",
           "stdout_console", "workers_arg"]

# markup off: what we print is text (a config error's "[workload]", a path, a URL, a scenario
# name), never rich markup; styles come from style= and Text
console = Console(stderr=True, markup=False)
# `--workers auto` splits runs of at least this many requests (a worker process costs ~0.3 s)
AUTO_WORKERS_MIN_REQUESTS = 20_000
# runs of at least this many requests keep columns of their records, not the records
AUTO_STREAM_MIN_REQUESTS = 20_000
ENGINE_ONLY = frozenset(n for n in POLICIES if make_policy(n).requires_engine is not None)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every flag's default: "(default: X)" after its help, unless the help
    already names it (a flag whose default comes from the scenario says so in its own words)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None
                or default is False or default is argparse.SUPPRESS or text == argparse.SUPPRESS):
            return action.help
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def scenario_default(builtin: Any, fallback: Any) -> str:
    """The help's words for a flag the scenario sets: its value in the built-in scenario and
    in a scenario file that leaves it out."""
    if builtin == fallback:
        return f"(default: the scenario's, else {fallback})"
    return (f"(default: the scenario's: {builtin} in the built-in one, {fallback} in a file "
            "without it)")


def add_scenario_flags(parser: argparse.ArgumentParser, *, single: bool = True) -> None:
    """The flags of `simulate` (and, with single=False, `compare`, which lists policies itself)."""
    builtin, plain = builtin_scenario(), Scenario()
    sim, none = plain.sim, "none"
    parser.add_argument("scenario", nargs="?", metavar="SCENARIO_FILE",
                        help="TOML or YAML scenario file (default: the built-in Azure 2023 sample)")
    w = parser.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE",
                   help="workload trace file (default: the scenario's; the built-in one: a "
                        "sample of the Azure 2023 conversation trace)")
    w.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of --trace (default: detected from the file)")
    w.add_argument("--num-requests", type=positive_int, metavar="N",
                   help="use the first N requests (length files: sample N with replacement) "
                        "(default: the scenario's, else all)")
    w.add_argument("--rate", type=positive_float, metavar="REQ_PER_S",
                   help="re-time requests with Poisson arrivals at this rate (length files without "
                        "times otherwise all arrive at t=0) (default: the scenario's, else the "
                        "trace's own times)")
    w.add_argument("--zero-tokens", choices=("error", "clamp"),
                   help="rows with 0 prompt or output tokens: reject the file (default) or load them "
                        "as 1 token, counted and warned about")
    w.add_argument("--seed", type=int, metavar="N", help="seed for sampling and arrivals (default 0)")
    c = parser.add_argument_group("cluster")
    c.add_argument("--model", help=f"model: {', '.join(sorted(MODELS))} "
                                   + scenario_default(builtin.sim.model, sim.model))
    c.add_argument("--gpu", help=f"GPU: {', '.join(sorted(GPUS))}; with --cost-model profile, a "
                                 "profile file " + scenario_default(builtin.sim.gpu, sim.gpu))
    c.add_argument("--tp", type=positive_int, metavar="N", help="tensor-parallel degree "
                   + scenario_default(builtin.sim.tp, sim.tp))
    c.add_argument("--pp", type=positive_int, metavar="N",
                   help="pipeline-parallel degree: each replica is N stages of --tp GPUs, the "
                        "layers split as vLLM splits them, up to N batches in flight (dense "
                        "models, roofline cost model) " + scenario_default(builtin.sim.pp, sim.pp))
    c.add_argument("--ep", type=positive_int, metavar="N",
                   help="expert-parallel degree of a mixture-of-experts model: its routed "
                        "experts split over N of the replica's tp GPUs (N divides tp and the "
                        "expert count; the scenario's [cluster] expert_imbalance stretches the "
                        "busiest GPU) " + scenario_default(builtin.sim.ep, sim.ep))
    c.add_argument("--kv-offloading-size", type=positive_float, metavar="GIB",
                   help="a host-memory KV tier of GIB per replica (vLLM's --kv-offloading-size, "
                        "LMCache's CPU tier): every finished request's full blocks are stored "
                        "there, overlapped with the next step, and a prompt whose prefix left "
                        "the GPU copies it back at the PCIe cost instead of recomputing it "
                        "(default: off, the scenario's [scheduler] host_kv_offload)")
    c.add_argument("--replicas", type=positive_int, metavar="N", help="number of replicas "
                   + scenario_default(builtin.sim.num_replicas, sim.num_replicas))
    if single:
        c.add_argument("--router", help=f"cluster router: {', '.join(sorted(ROUTERS))} "
                                        + scenario_default(builtin.sim.router, sim.router))
        c.add_argument("--router-params", type=json_object, metavar="JSON",
                       help="router parameters, replacing the scenario's, e.g. "
                            "'{\"seed\": 3}' for random (a key the router does not take is "
                            "an error) (default: the scenario's, else none)")
        c.add_argument("--policy", help=f"scheduling policy: {', '.join(sorted(POLICIES))} "
                                        + scenario_default(builtin.sim.policy, sim.policy))
    c.add_argument("--policy-params", type=json_object, metavar="JSON",
                   help="scheduling policy parameters, replacing the scenario's, e.g. "
                        "'{\"aging_s\": 30}'; each policy run gets the keys it takes (one no "
                        "policy run takes is an error), or nest them under a policy's name: "
                        "'{\"priority\": {\"aging_s\": 30}}'")
    g = parser.add_argument_group(
        "gateway tier", "Model `shunter serve` in front of the replicas: requests wait at the "
        "gateway in a policy's order and go to a replica holding fewer than N of them (the "
        "scenario's [gateway] table). Either flag turns it on.")
    if single:
        g.add_argument("--gateway-policy", metavar="NAME",
                       help="policy of the gateway's queue (default vtc): "
                            + ", ".join(sorted(n for n in POLICIES if n not in ENGINE_ONLY)))
    g.add_argument("--gateway-params", type=json_object, metavar="JSON",
                   help="its parameters, e.g. '{\"tenant_weights\": {\"a\": 2}}' "
                        "(default: the scenario's, else none)")
    g.add_argument("--gateway-max-inflight", type=positive_int, metavar="N",
                   help="requests the gateway keeps in flight per replica (default 256)")
    _add_autoscale_flags(parser)
    _add_lora_flags(parser)
    _add_speculative_flags(parser)
    c.add_argument("--cost-model", choices=sorted(COST_MODELS),
                   help="step-time model: roofline (default) or profile (then --gpu names the "
                        "profile file written by `shunter profile`)")
    c.add_argument("--predictor", choices=sorted(PREDICTORS),
                   help=f"output-length predictor for sjf/ltr: {', '.join(sorted(PREDICTORS))} "
                        "(oracle sees the trace's truth) (default: the scenario's, else none)")
    c.add_argument("--predictor-params", type=json_object, metavar="JSON",
                   help='predictor parameters, e.g. \'{"kendall_tau": 0.5}\' or '
                        '\'{"model_path": "m.json"}\' (default: the scenario\'s, else none)')
    s = parser.add_argument_group("SLOs and output")
    s.add_argument("--ttft-slo", type=positive_float, metavar="S", help="TTFT SLO in seconds "
                   + scenario_default(builtin.ttft_slo_s or none, plain.ttft_slo_s or none))
    s.add_argument("--tpot-slo", type=positive_float, metavar="S", help="TPOT SLO in seconds "
                   + scenario_default(builtin.tpot_slo_s or none, plain.tpot_slo_s or none))
    s.add_argument("--json", type=output_file, metavar="FILE",
                   help="write results as JSON (default: not written)")
    s.add_argument("--csv", type=output_file, metavar="FILE",
                   help="write results as CSV (default: not written)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--workers", type=workers_arg, default=None, metavar="N|auto",
                   help="processes for one run when its replicas never interact (router "
                        "round_robin or random; no migration, autoscaling, disaggregation or "
                        "predictor); "
                        "same results. auto: one per core, at most one per replica, for runs "
                        f"of {AUTO_WORKERS_MIN_REQUESTS:,} requests or more (default auto)")


def _add_autoscale_flags(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument_group(
        "autoscaling", "Add replicas under load and drain the least loaded when load is low "
        "(Llumnix's instance scaling: shunter.router.autoscale, the scenario's [autoscale] "
        "table); --replicas is the starting count. Prints the scale events and the cost in "
        "replica-seconds.")
    a.add_argument("--autoscale", action=argparse.BooleanOptionalAction,
                   help="autoscale with the scenario's [autoscale] table, else the defaults; "
                        "--no-autoscale: a fixed cluster (default: on when the scenario has "
                        "an [autoscale] table)")
    default = AutoscaleConfig()
    keys = ", ".join(f"{f.name} {getattr(default, f.name)}"
                     for f in dataclasses.fields(AutoscaleConfig))
    up, down = DEFAULT_LOADS["freeness"]
    a.add_argument("--autoscale-params", type=json_object, metavar="JSON",
                   help="autoscaling settings, replacing the scenario's [autoscale] table and "
                        "turning it on, e.g. '{\"max_replicas\": 8, \"provision_s\": 60, "
                        f"\"drain\": \"wait\"}}'; keys and defaults: {keys} (metric "
                        f"freeness, Llumnix's: loads {up:g} and {down:g}); drain: migrate or "
                        "wait (README: Autoscaling)")


_LORA_FLAGS = ("max_loras", "max_lora_rank", "max_cpu_loras", "num_adapters", "zipf")


def _add_lora_flags(parser: argparse.ArgumentParser) -> None:
    d = LoraConfig()
    a = parser.add_argument_group(
        "LoRA adapters", "Serve requests with LoRA adapters (the scenario's [lora] table, "
        "shunter.sim.cost.lora): adapter slots take KV memory, each step pays the LoRA kernels, "
        "a batch holds at most --max-loras adapters and a missing one is loaded first. Any "
        "flag here turns it on; route with --router lora_affinity.")
    a.add_argument("--max-loras", type=positive_int, metavar="N",
                   help=f"adapters in one batch, vLLM's max_loras (default {d.max_loras})")
    a.add_argument("--max-lora-rank", type=positive_int, metavar="R",
                   help=f"adapter rank, vLLM's max_lora_rank (default {d.max_lora_rank})")
    a.add_argument("--max-cpu-loras", type=positive_int, metavar="N",
                   help="adapters cached in host memory, vLLM's max_cpu_loras (default: max-loras)")
    a.add_argument("--num-adapters", type=positive_int, metavar="N",
                   help="give each request one of N adapters with Zipf popularity (default: "
                        "the adapters the trace names, JSONL lora_id)")
    a.add_argument("--adapter-zipf", dest="zipf", type=nonnegative_float, metavar="A",
                   help=f"popularity of adapter k ~ 1/(k+1)^A; 0 uniform (default {d.zipf:g})")


_SPEC_FLAGS = {"spec_method": "method", "spec_tokens": "num_speculative_tokens",
               "spec_acceptance": "acceptance_rate", "spec_draft_model": "model"}


def _add_speculative_flags(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument_group(
        "speculative decoding", "Each decode verifies K draft tokens, each accepted with "
        "probability A, and emits the accepted ones plus one (the scenario's [speculative] "
        "table, shunter.sim.cost.speculative); the drafter's passes and memory are priced by "
        "the roofline. Any flag here turns it on (with the table's other settings).")
    a.add_argument("--spec-method", choices=METHODS,
                   help="drafter, as vLLM's speculative_config method (default draft_model "
                        "with --spec-draft-model, else required)")
    a.add_argument("--spec-tokens", type=positive_int, metavar="K",
                   help="draft tokens per decode, vLLM's num_speculative_tokens (default: the "
                        "scenario's; required to turn it on)")
    a.add_argument("--spec-acceptance", type=_acceptance_flag, metavar="A",
                   help="probability in [0, 1) that the target accepts a draft token (default: "
                        "the scenario's; required to turn it on)")
    a.add_argument("--spec-draft-model", metavar="NAME",
                   help="draft model (method draft_model), a --model name with the target's "
                        "vocabulary, e.g. llama-3.2-1b (default: the scenario's, else none)")


def _acceptance_flag(text: str) -> float:
    return float_flag(text, ge=0, lt=1)


def _speculative_override(args: argparse.Namespace, scenario: Scenario) -> dict[str, Any]:
    """The `speculative` change the speculative flags ask for ({} for none)."""
    flags = {key: getattr(args, flag) for flag, key in _SPEC_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if not flags:
        return {}
    base = scenario.sim.speculative_config
    table = {} if base is None else dataclasses.asdict(base)
    if "model" in flags and "method" not in flags:
        table["method"] = "draft_model"
    elif flags.get("method", "draft_model") != "draft_model":
        table.pop("model", None)  # (another method takes no draft model)
    return {"speculative": SpeculativeConfig.from_table({**table, **flags}, "speculative flags")}


def _lora_override(args: argparse.Namespace, scenario: Scenario) -> dict[str, Any]:
    """The `lora` change the LoRA flags ask for ({} for none): the scenario's table, updated."""
    flags = {k: getattr(args, k) for k in _LORA_FLAGS if getattr(args, k, None) is not None}
    if not flags:
        return {}
    base = scenario.sim.lora_config
    table = {} if base is None else dataclasses.asdict(base)
    return {"lora": LoraConfig.from_table({**table, **flags}, "LoRA flags")}


def _autoscale_override(args: argparse.Namespace, scenario: Scenario) -> dict[str, Any]:
    """The `autoscale` change the autoscaling flags ask for ({} for none)."""
    on, params = getattr(args, "autoscale", None), getattr(args, "autoscale_params", None)
    if on is False:
        if params is not None:
            raise ConfigError("--no-autoscale and --autoscale-params contradict each other")
        return {"autoscale": None}
    if params is not None:
        return {"autoscale": AutoscaleConfig.from_table(params, "--autoscale-params")}
    if on and scenario.sim.autoscale is None:
        return {"autoscale": AutoscaleConfig()}
    return {}


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario) if args.scenario else builtin_scenario()
    flags: dict[str, Any] = {
        "trace": args.trace, "format": args.trace_format, "num_requests": args.num_requests,
        "rate": args.rate, "seed": args.seed, "zero_tokens": args.zero_tokens, "model": args.model, "gpu": args.gpu, "tp": args.tp,
        "ep": args.ep, "pp": args.pp, "num_replicas": args.replicas, "router": getattr(args, "router", None),
        "router_params": getattr(args, "router_params", None),
        "policy": getattr(args, "policy", None), "policy_params": args.policy_params,
        "ttft_slo_s": args.ttft_slo,
        "predictor": args.predictor, "predictor_params": args.predictor_params,
        "cost_model": args.cost_model,
        "tpot_slo_s": args.tpot_slo,
        "gateway_policy": getattr(args, "gateway_policy", None),
        "gateway_params": args.gateway_params,
        "gateway_max_inflight": args.gateway_max_inflight,
    }
    changes = {k: v for k, v in flags.items() if v is not None} | _autoscale_override(args, scenario)
    changes |= _lora_override(args, scenario)
    if getattr(args, "kv_offloading_size", None):  # the host tier: [scheduler] host_kv_* keys
        changes |= {"swap_space_gib": args.kv_offloading_size, "scheduler": {
            **scenario.sim.scheduler, "host_kv_reuse": True, "host_kv_offload": "all"}}
    changes |= _speculative_override(args, scenario)
    if args.trace is not None:
        changes.setdefault("format", None)  # a new trace's format is detected unless given
        scenario = replace(scenario, name=args.trace, base_dir=None)  # a flag's path is cwd's
    return scenario.with_overrides(**changes)


def load_specs(scenario: Scenario) -> Collection[RequestSpec]:
    """The scenario's requests: a list, or a length file's `LengthWorkload` (made again on each
    pass instead of held: 2 MB of rows for 100,000 requests, not 30 MB)."""
    wl = scenario.workload
    if wl.trace is None:
        raise ValueError("the scenario names no workload: give --trace FILE or [workload] trace")
    path = resolve_trace(wl.trace, scenario.base_dir)
    specs = load_requests(path, wl.format, num_requests=wl.num_requests, rate=wl.rate,
                          seed=wl.seed, zero_tokens=wl.zero_tokens)
    if wl.num_requests is not None and len(specs) < wl.num_requests:  # a timed trace ended
        console.print(f"note: {path.name} holds {len(specs)} requests, fewer than the "
                      f"{wl.num_requests} asked for (--num-requests): all {len(specs)} run (only a "
                      "length file samples its rows again to reach any count)", style="yellow",
                      highlight=False, soft_wrap=True)
    lora = scenario.sim.lora_config
    if lora is not None and lora.num_adapters:  # adapters drawn for the requests ([lora])
        specs = assign_loras(specs, lora.num_adapters, zipf=lora.zipf, seed=wl.seed)
    return specs


@contextmanager
def progress_bar(total: int, label: str, *, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A callback that moves a bar to `done` of `total`; a no-op when quiet or not a terminal."""
    if quiet or not console.is_terminal:
        yield lambda done: None
        return
    with Progress(TextColumn("{task.description}", style="bold", markup=False),  # a URL, a path
                  BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)


def fail(message: str) -> int:
    """Print `error: message` on stderr as one line (no wrapping: a path stays whole for a
    grep or a test to find) and return the exit code 2."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                  soft_wrap=True)
    return 2


def stdout_console() -> Console:
    """Results on stdout; like `console`, it prints text, not rich markup."""
    return Console(file=sys.stdout, markup=False)


def import_bench(what: str) -> Any:
    """`shunter.bench` (its HTTP client is aiohttp, the gateway extra), imported when a command
    runs; ConfigError saying `what` needs it when it is missing."""
    import importlib

    try:
        return importlib.import_module("shunter.bench")
    except ImportError as exc:
        raise ConfigError(f"{what} needs aiohttp ({exc.name} is missing): "
                          "pip install 'shunter[gateway]'") from None

"""`shunter sweep`: a grid of scenarios run in parallel, gathered into one table and a plot of
a metric against load per policy (the curve to read a cluster's capacity from).

    shunter sweep [SCENARIO] --policy fcfs,priority --rate 1,2,4 --seed 0,1 --replicas 2,4
                  [--workers N | --ray ADDRESS] [--metric ttft_s.p99] [--limit S]
                  [--json F] [--csv F] [--plot F.png]

The scenario gives everything else (trace, model, router, scheduler options, SLOs); each
point re-times the trace with Poisson arrivals at its rate and seed.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from rich.table import Table

from shunter.cli.common import (
    console,
    finite_float,
    json_object,
    output_file,
    positive_float,
    positive_int,
    progress_bar,
    stdout_console,
)
from shunter.config import Scenario, builtin_scenario, load_scenario, resolve_trace
from shunter.core.sched.registry import POLICIES
from shunter.errors import ConfigError
from shunter.metrics.report import format_value, write_csv, write_json
from shunter.router.registry import ROUTERS
from shunter.sim.cost.catalog import GPUS, MODELS
from shunter.sim.sweep import (
    DEFAULT_METRIC,
    CurvePoint,
    SweepGrid,
    capacity,
    check_tasks_memory,
    curves,
    local_workers,
    make_tasks,
    run_tasks,
)
from shunter.workload.loaders import TRACE_FORMATS

__all__ = ["add_sweep_parser", "plot_curves", "render_curves", "render_rows", "run_sweep"]

_TABLE_METRICS = ("throughput_tok_s", "ttft_s.p50", "tpot_s.p50", "e2e_s.p50", "slo_attainment")


def _list_of(convert: Callable[[str], Any], what: str) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(convert(part.strip()) for part in text.split(",") if part.strip())
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, "
                                             f"got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {what}")
        return values
    return parse


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `sweep` to the `shunter` command's subparsers."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of scenarios in parallel and plot a metric against load",
        description="Simulate every combination of policies, request rates, seeds and cluster "
                    "sizes (in local processes, or on Ray with --ray), then print one table and "
                    f"plot a metric against rate per policy. Policies: {', '.join(sorted(POLICIES))}.")
    p.add_argument("scenario", nargs="?", metavar="SCENARIO_FILE",
                   help="TOML or YAML scenario file (default: the built-in Azure 2023 sample)")
    g = p.add_argument_group("grid")
    g.add_argument("--policy", type=_list_of(str, "policy names"), metavar="A,B,...",
                   help="scheduling policies (default: the scenario's)")
    g.add_argument("--rate", type=_list_of(positive_float, "finite numbers > 0"), required=True,
                   metavar="R1,R2,...",
                   help="request rates offered to the whole cluster, requests/s (Poisson); "
                        "required, no default")
    g.add_argument("--policy-params", type=json_object, metavar="JSON",
                   help="policy parameters, replacing the scenario's: each policy gets the keys "
                        "it takes (one no policy of the grid takes is an error), or nest them "
                        "under a policy's name, e.g. '{\"priority\": {\"aging_s\": 30}}'")
    g.add_argument("--seed", type=_list_of(int, "whole numbers"), default=(0,), metavar="S1,...",
                   help="workload seeds; the plot shows their mean (default 0)")
    g.add_argument("--replicas", type=_list_of(int, "whole numbers"), metavar="N1,...",
                   help="cluster sizes (default: the scenario's)")
    w = p.add_argument_group("workload and cluster")
    w.add_argument("--trace", metavar="FILE",
                   help="workload trace file (default: the scenario's)")
    w.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of --trace (default: detected from the file)")
    w.add_argument("--num-requests", type=int, metavar="N",
                   help="first N requests of the trace (default: the scenario's, else all)")
    w.add_argument("--router", help=f"cluster router: {', '.join(sorted(ROUTERS))} "
                                    "(default: the scenario's)")
    w.add_argument("--model", help=f"model: {', '.join(sorted(MODELS))} (default: the scenario's)")
    w.add_argument("--gpu", help=f"GPU: {', '.join(sorted(GPUS))} (default: the scenario's)")
    w.add_argument("--tp", type=int, metavar="N",
                   help="tensor-parallel degree (default: the scenario's)")
    w.add_argument("--pp", type=positive_int, metavar="N",
                   help="pipeline-parallel degree, as `shunter simulate --pp` (default: the "
                        "scenario's)")
    w.add_argument("--ep", type=positive_int, metavar="N",
                   help="expert-parallel degree of a mixture-of-experts model, as `shunter "
                        "simulate --ep` (default: the scenario's)")
    w.add_argument("--gateway-policy", metavar="NAME",
                   help="model a gateway tier with this queue policy (as `shunter serve`) "
                        "(default: the scenario's, else no gateway tier)")
    w.add_argument("--gateway-max-inflight", type=positive_int, metavar="N",
                   help="the gateway tier's requests in flight per replica (default 256)")
    r = p.add_argument_group("running and output")
    r.add_argument("--workers", type=int, metavar="N", help="local processes (default: CPU count)")
    r.add_argument("--ray", metavar="ADDRESS",
                   help="run on the Ray cluster at ADDRESS ('auto' finds a running one, "
                        "'local' starts one on this machine); needs shunter[ray] (default: "
                        "local processes)")
    r.add_argument("--metric", default=DEFAULT_METRIC, metavar="NAME",
                   help=f"metric to plot against rate (default {DEFAULT_METRIC}); any key of the "
                        "JSON output, e.g. e2e_s.p50, tpot_s.p99, goodput_req_s, slo_attainment")
    r.add_argument("--limit", type=finite_float, metavar="VALUE",
                   help="report each policy's capacity: the highest swept rate up to which the "
                        "metric stays <= VALUE (a lower bound; sweep finer rates to narrow it) "
                        "(default: not reported)")
    r.add_argument("--json", type=output_file, metavar="FILE",
                   help="write every row as JSON (default: not written)")
    r.add_argument("--csv", type=output_file, metavar="FILE",
                   help="write every row as CSV (default: not written)")
    r.add_argument("--plot", type=output_file, metavar="FILE",
                   help="write the metric-vs-rate plot (PNG, SVG, PDF) (default: not written)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_sweep)
    return p


def _scenario(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario) if args.scenario else builtin_scenario()
    flags = {"trace": args.trace, "format": args.trace_format, "num_requests": args.num_requests,
             "router": args.router, "model": args.model, "gpu": args.gpu, "tp": args.tp,
             "pp": args.pp, "ep": args.ep,
             "gateway_policy": args.gateway_policy,
             "gateway_max_inflight": args.gateway_max_inflight}
    changes = {k: v for k, v in flags.items() if v is not None}
    if args.trace is not None:
        changes.setdefault("format", None)
        scenario = replace(scenario, name=args.trace, base_dir=None)  # a flag's path is cwd's
    return scenario.with_overrides(**changes)


def _grid(args: argparse.Namespace, scenario: Scenario) -> SweepGrid:
    policies = args.policy or (scenario.sim.policy,)
    unknown = [name for name in policies if name not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown policy {unknown[0]!r}; valid: {', '.join(sorted(POLICIES))}")
    if args.router is not None and args.router not in ROUTERS:
        raise ConfigError(f"unknown router {args.router!r}; valid: {', '.join(sorted(ROUTERS))}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    try:
        return SweepGrid(policies=policies, rates=args.rate, seeds=args.seed,
                         replicas=args.replicas or (scenario.sim.num_replicas,))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_sweep(args: argparse.Namespace) -> int:
    """Run `shunter sweep`."""
    scenario = _scenario(args)
    grid = _grid(args, scenario)
    wl = scenario.workload
    if wl.trace is None:
        raise ConfigError("the scenario names no workload: give --trace FILE or [workload] trace")
    trace = str(resolve_trace(wl.trace, scenario.base_dir).resolve())
    tasks = make_tasks(grid, scenario.sim, trace, trace_format=wl.format,
                       num_requests=wl.num_requests, zero_tokens=wl.zero_tokens,
                       ttft_slo_s=scenario.ttft_slo_s, tpot_slo_s=scenario.tpot_slo_s,
                       policy_params=args.policy_params)
    if not args.ray:  # before anything starts (a Ray cluster's nodes check their own)
        check_tasks_memory(tasks, local_workers(args.workers, len(tasks)))
    where = f"Ray at {args.ray}" if args.ray else f"{args.workers or 'all'} local workers"
    console.print(f"sweep: {len(tasks)} scenarios on {where}", style="dim")
    with progress_bar(len(tasks), "sweeping", quiet=args.quiet) as on_progress:
        done = [0]

        def on_result(row: dict[str, Any]) -> None:
            done[0] += 1
            on_progress(done[0])

        rows = run_tasks(tasks, max_workers=args.workers, ray_address=args.ray,
                         on_result=on_result)
    lines = curves(rows, args.metric)  # checks the metric name before anything is written
    out = stdout_console()
    out.print(render_rows(rows, args.metric, f"{scenario.name}: {len(rows)} scenarios"))
    out.print(render_curves(lines, args.metric, args.limit))
    if args.json:
        write_json(rows, args.json)
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot:
        plot_curves(lines, args.metric, args.plot, title=scenario.name)
        console.print(f"wrote {args.plot}", style="dim")
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_rows(rows: Sequence[dict[str, Any]], metric: str, title: str) -> Table:
    """One line per scenario: its axes, the chosen metric, a few headline metrics, wall time."""
    table = Table(title=title, title_justify="left")
    axes = ("policy", "replicas", "rate", "seed")
    columns = axes + tuple(dict.fromkeys((metric, *_TABLE_METRICS))) + ("wall_s",)
    for name in columns:
        table.add_column(name, justify="left" if name == "policy" else "right",
                         style="bold" if name == metric else None)
    for row in rows:
        table.add_row(*(format_value(row.get(name)) for name in columns))  # None: n/a
    return table


def render_curves(lines: dict[tuple[str, int], list[CurvePoint]], metric: str,
                  limit: float | None) -> Table:
    """The plotted curves as numbers: metric (mean over seeds) per rate, one line per policy."""
    rates = sorted({rate for curve in lines.values() for rate, *_ in curve})
    table = Table(title=f"{metric} against rate (mean over seeds)", title_justify="left")
    table.add_column("policy")
    table.add_column("replicas", justify="right")
    for rate in rates:
        table.add_column(f"{rate:g} req/s", justify="right")
    if limit is not None:
        table.add_column(f"capacity: highest swept rate with {metric} <= {limit:g}",
                         justify="right")
    for (policy, replicas), curve in lines.items():
        by_rate = {rate: mean for rate, mean, _, _ in curve}
        cells = [policy, str(replicas), *(_fmt(by_rate.get(rate)) for rate in rates)]
        if limit is not None:
            cells.append(_fmt(capacity(curve, limit)))
        table.add_row(*cells)
    return table


def plot_curves(lines: dict[tuple[str, int], list[CurvePoint]], metric: str, path: str, *,
                title: str) -> None:
    """Write `metric` against rate, one line per (policy, replicas), min-max band over seeds."""
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional extra: shunter[plot]
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'shunter[plot]'") from None
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    show_replicas = len({replicas for _, replicas in lines}) > 1
    for (policy, replicas), curve in lines.items():
        rates = [p[0] for p in curve]
        label = f"{policy} x{replicas}" if show_replicas else policy
        ax.plot(rates, [p[1] for p in curve], marker="o", label=label)
        ax.fill_between(rates, [p[2] for p in curve], [p[3] for p in curve], alpha=0.15)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""`shunter simulate` and `shunter compare`: run scenarios in the cluster simulator."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

from shunter.cli.common import (
    AUTO_STREAM_MIN_REQUESTS,
    AUTO_WORKERS_MIN_REQUESTS,
    load_specs,
    progress_bar,
    scenario_from_args,
    stdout_console,
)
from shunter.config import Scenario
from shunter.core.sched.registry import POLICIES, scope_policy_params
from shunter.core.types import RequestSpec
from shunter.metrics.report import (
    rejection_lines,
    render_comparison,
    render_table,
    write_csv,
    write_json,
)
from shunter.metrics.summary import Summary, summarize
from shunter.router.registry import ROUTERS
from shunter.sim.config import SimConfig
from shunter.sim.partition import partition_blocker, simulate_parallel
from shunter.sim.runner import SimRun, simulate
from shunter.sim.stream import ColumnSink
from shunter.workload.length_file import LengthWorkload

__all__ = ["autoscale_lines", "auto_workers", "run_compare", "run_simulate"]


def auto_workers(scenario: Scenario, num_requests: int) -> int:
    """`--workers auto`: one process per core (at most one per replica) when the replicas never
    interact and the run is long enough to pay for the processes; else one."""
    if num_requests < AUTO_WORKERS_MIN_REQUESTS or partition_blocker(scenario.sim) is not None:
        return 1
    return max(1, min(os.cpu_count() or 1, scenario.sim.num_replicas_total))


def _one_tenant(specs: Collection[RequestSpec]) -> bool:
    if isinstance(specs, LengthWorkload):
        return True  # a length file names no tenant (and is not read again to see it)
    tenants = (s.tenant for s in specs)
    first = next(tenants, None)
    return all(t == first for t in tenants)


def _run(scenario: Scenario, specs: Collection[RequestSpec], label: str, quiet: bool,
         workers: int | None = None) -> tuple[SimRun, Summary, float]:
    """One run and its summary. From `AUTO_STREAM_MIN_REQUESTS` requests on, finished records
    are not kept: a `ColumnSink` takes each as it finishes (the same summary to the bit, in a
    tenth of the memory; token times only where two tenants make the service gap read them)."""
    start = time.perf_counter()
    if workers is None:
        workers = auto_workers(scenario, len(specs))
    sink = None
    if len(specs) >= AUTO_STREAM_MIN_REQUESTS:
        sink = ColumnSink(keep_token_times=not _one_tenant(specs))
    blocker = partition_blocker(scenario.sim) if workers > 1 else "one worker"
    if blocker is None:
        if not quiet:
            stdout_console().print(f"{label}: {workers} worker processes", style="dim")
        run = simulate_parallel(scenario.sim, lambda: specs, workers=workers, on_record=sink)
    else:
        if workers > 1 and not quiet:
            stdout_console().print(f"{label}: one process ({blocker})", style="dim")
        with progress_bar(len(specs), label, quiet=quiet) as on_progress:
            run = simulate(scenario.sim, specs, on_progress=on_progress, on_record=sink)
    ttft_slo_s, tpot_slo_s = scenario.ttft_slo_s, scenario.tpot_slo_s
    summary = (summarize(run.records, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
               if sink is None else sink.summary(ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s))
    wall_s = time.perf_counter() - start
    return run, summary, wall_s


def _result_dict(scenario: Scenario, run: SimRun, summary: Summary, wall_s: float) -> dict[str, Any]:
    sim = scenario.sim
    gateway = {}
    if sim.has_gateway:
        name, params, max_inflight = sim.gateway_settings
        gateway = {"gateway_policy": name, "gateway_max_inflight": max_inflight}
    return {
        "scenario": scenario.name, "policy": sim.policy, "router": sim.router, "model": sim.model,
        "gpu": sim.gpu, "tp": sim.tp, **({"ep": sim.ep} if sim.ep > 1 else {}),
        **({"pp": sim.pp} if sim.pp > 1 else {}),
        **({"speculative": asdict(sim.speculative_config)}
           if sim.speculative_config is not None else {}),
        "replicas": sim.num_replicas, **gateway,
        **summary.to_dict(),
        "num_routed": run.num_routed, **_autoscale_result(sim, run), **_lora_result(run),
        "wall_s": round(wall_s, 3),
    }


_AUTOSCALE_STATS = ("scale_ups", "scale_downs", "replica_seconds", "mean_replicas",
                    "max_replicas_provisioned")


def _autoscale_result(sim: SimConfig, run: SimRun) -> dict[str, Any]:
    """The `autoscale` key of the results: settings, cost and every scale event."""
    config = sim.autoscale_config
    if config is None:
        return {}
    return {"autoscale": {**asdict(config), **{k: run.topology_stats[k] for k in _AUTOSCALE_STATS},
                          "events": [[e.time_s, e.kind, e.replica_id] for e in run.scale_events]}}


def _lora_result(run: SimRun) -> dict[str, Any]:
    """LoRA adapter loads (host -> GPU, storage -> host), if adapters were served."""
    return {k: int(v) for k, v in run.topology_stats.items() if k.startswith("lora_")}


def lora_line(label: str, run: SimRun) -> str | None:
    stats = _lora_result(run)
    if not stats:
        return None
    return (f"{label}LoRA adapter loads: {stats['lora_loads']} host -> GPU, "
            f"{stats['lora_storage_loads']} of them read from storage first")


def autoscale_lines(run: SimRun, *, max_events: int = 12) -> list[str]:
    """What `simulate` prints about autoscaling: its cost, then the scale events."""
    if "replica_seconds" not in run.topology_stats:
        return []
    st = run.topology_stats
    lines = [f"autoscaling: {st['scale_ups']:.0f} scale-ups, {st['scale_downs']:.0f} drains; "
             f"cost {st['replica_seconds']:.1f} replica-seconds = {st['mean_replicas']:.2f} "
             f"replicas on average (at most {st['max_replicas_provisioned']:.0f})"]
    events = [f"{e.time_s:.1f} s {e.kind} {e.replica_id}" for e in run.scale_events]
    if events:
        shown = events if len(events) <= max_events else [*events[:max_events], "..."]
        more = "" if len(events) <= max_events else f" (all {len(events)} in --json)"
        lines.append(f"scale events{more}: " + ", ".join(shown))
    return lines


def _title(scenario: Scenario, num_requests: int) -> str:
    sim = scenario.sim
    gateway, ep = "", f" (ep {sim.ep})" if sim.ep > 1 else ""
    if sim.pp > 1:
        ep += f" x {sim.pp} pipeline stages"
    if sim.has_gateway:
        name, _, max_inflight = sim.gateway_settings
        gateway = f", gateway {name} (<= {max_inflight} in flight per replica)"
    spec = sim.speculative_config
    if spec is not None:
        draft = f" {spec.model}" if spec.model else ""
        gateway += (f", speculative {spec.draft_method}{draft} (k {spec.num_speculative_tokens}"
                    f", acceptance {spec.acceptance_rate:g})")
    autoscale = sim.autoscale_config
    if autoscale is not None:
        gateway += (f", autoscaled {autoscale.min_replicas}-{autoscale.max_replicas} replicas "
                    f"(drain: {autoscale.drain})")
    return (f"{scenario.name}: {num_requests} requests, {sim.num_replicas} x {sim.model} on "
            f"{sim.tp} x {sim.gpu}{ep}, policy {sim.policy}, router {sim.router}{gateway}")


def run_simulate(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    specs = load_specs(scenario)
    run, summary, wall_s = _run(scenario, specs, "simulating", args.quiet, args.workers)
    out = stdout_console()
    out.print(render_table(summary, _title(scenario, len(specs))))
    for line in rejection_lines(summary):
        out.print(line, style="yellow", highlight=False, soft_wrap=True)
    for line in autoscale_lines(run):
        out.print(line, highlight=False, soft_wrap=True)
    if (line := lora_line("", run)) is not None:
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"simulated {len(specs)} requests in {wall_s:.2f} s of wall time", style="dim")
    result = _result_dict(scenario, run, summary, wall_s)
    if args.json:
        write_json(result, args.json)
    if args.csv:
        write_csv([result], args.csv)
    return 0


_COMPARED = {"policy": "--policy", "router": "--router", "gateway_policy": "--gateway-policy"}
_PARAMS = {"policy": "policy_params", "gateway_policy": "gateway_params"}  # one per compared key


def _compared(args: argparse.Namespace) -> tuple[str, list[str], dict[str, str]]:
    """(the key compared, its names, the other keys' single values) from compare's flags."""
    given = {key: [n.strip() for n in getattr(args, key).split(",") if n.strip()]
             for key in _COMPARED if getattr(args, key)}
    if not given:
        raise ValueError("compare needs --policy A,B,..., --router A,B,... or "
                         "--gateway-policy A,B,...")
    for key, names in given.items():
        if not names:
            raise ValueError(f"{_COMPARED[key]} needs at least one name")
    lists = [key for key, names in given.items() if len(names) > 1]
    if len(lists) > 1:
        raise ValueError(f"compare one thing at a time: {' and '.join(_COMPARED[k] for k in lists)} "
                         "both list several names")
    key = lists[0] if lists else next(iter(given))
    fixed = {k: names[0] for k, names in given.items() if k != key}
    return key, given[key], fixed


def run_compare(args: argparse.Namespace) -> int:
    key, names, fixed = _compared(args)
    for k, name in [*((key, n) for n in names), *fixed.items()]:
        _check_name(k, name)  # fail on a bad name before any long run
    base, scenarios = _compared_scenarios(args, key, names, fixed)
    specs = load_specs(base)
    rows, summaries, lora_lines = [], [], []
    for name, scenario in zip(names, scenarios, strict=True):
        run, summary, wall_s = _run(scenario, specs, f"{key} {name}", args.quiet, args.workers)
        summaries.append((name, summary))
        rows.append(_result_dict(scenario, run, summary, wall_s))
        lora_lines.append(lora_line(f"{name}: ", run))
    out = stdout_console()
    out.print(render_comparison(summaries, key.replace("_", " ")))
    for line in filter(None, lora_lines):
        out.print(line, highlight=False, soft_wrap=True)
    if args.json:
        write_json(rows, args.json)
    if args.csv:
        write_csv(rows, args.csv)
    return 0


def _compared_scenarios(args: argparse.Namespace, key: str, names: list[str],
                        fixed: dict[str, str]) -> tuple[Scenario, list[Scenario]]:
    """The base scenario and one per compared name. The names' parameter table (the flag's,
    else the scenario's) is split between them: each policy gets the keys it takes, and a key
    none of them takes is an error (`scope_policy_params`)."""
    # the flags below are applied together here: names come as lists, and a policy's
    # parameters are only valid beside the policy that takes them
    params_flags = {k: getattr(args, k) for k in _PARAMS.values()}
    plain = argparse.Namespace(**{**vars(args), **dict.fromkeys(_COMPARED),
                                  **dict.fromkeys(params_flags)})
    base = scenario_from_args(plain)
    table_key = _PARAMS.get(key)
    overrides: dict[str, Any] = {**fixed, **{k: v for k, v in params_flags.items()
                                             if v is not None and k != table_key}}
    base = base.with_overrides(**overrides)
    if table_key is None:
        return base, [base.with_overrides(**{key: name}) for name in names]
    table = params_flags[table_key]
    scoped = scope_policy_params(names, getattr(base.sim, table_key) if table is None else table)
    return base, [base.with_overrides(**{key: name, table_key: scoped[name]}) for name in names]


def _check_name(key: str, name: str) -> None:
    valid = ROUTERS if key == "router" else POLICIES
    if name not in valid:
        raise ValueError(f"unknown {key.replace('_', ' ')} {name!r}; valid: "
                         f"{', '.join(sorted(valid))}")

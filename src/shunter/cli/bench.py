"""`shunter bench URL`: replay a workload against any OpenAI-compatible endpoint and measure it.

The workload is a trace (`--trace`, any format the loaders read; `--rate` re-times it) or a
generated stream (`--rate`, `--num-requests`, `--arrival`, `--cv`, lengths, tenants). A
comma list in `--rate` or `--cv` sweeps every combination, one run after another. Results go
through the same `summarize` as the simulator's; `--json` writes them, `--report DIR` writes
an HTML report (plots need `shunter[plot]`). The HTTP client (aiohttp, the `gateway` extra) is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from shunter.cli.common import (
    import_bench,
    output_dir,
    output_file,
    positive_int,
    progress_bar,
    stdout_console,
)
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError, EndpointError
from shunter.metrics.report import rejection_lines, render_comparison, render_table, write_json
from shunter.metrics.summary import Summary, summarize
from shunter.workload import (
    ARRIVAL_PROCESSES,
    LENGTH_SAMPLERS,
    TRACE_FORMATS,
    LengthDistribution,
    SyntheticWorkload,
    generate,
    load_workload,
)

__all__ = ["DEFAULT_NUM_REQUESTS", "add_bench_parser", "parse_floats", "run_bench",
           "workload_specs"]

DEFAULT_NUM_REQUESTS = 100
DEFAULT_RATE = 1.0
_MAX_ERROR_KINDS = 3  # distinct errors named when nothing completed


def parse_floats(text: str) -> tuple[float, ...]:
    """'1,2.5' -> (1.0, 2.5); every value a finite number > 0."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(not 0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a number > 0, got {text!r}")
    return values


def _tenant_shares(text: str) -> dict[str, float]:
    shares = {}
    for part in text.split(","):
        name, _, share = part.strip().partition(":")
        try:
            shares[name] = float(share) if share else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME[:SHARE],..., got {text!r}") from None
    return shares


def _tenant_key(text: str) -> tuple[str, str]:
    tenant, sep, key = text.partition("=")
    if not sep or not tenant or not key:
        raise argparse.ArgumentTypeError(f"expected TENANT=KEY, got {text!r}")
    return tenant, key


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter bench` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="replay a workload against an OpenAI-compatible endpoint and measure it",
        description="Replay a trace or a generated workload, open loop, against any "
                    "OpenAI-compatible endpoint (Shunter's gateway, vLLM, llama-server) and "
                    "report the metrics the simulator reports.")
    p.add_argument("url", metavar="URL", help="the endpoint, e.g. http://127.0.0.1:8000/v1")
    w = p.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE",
                   help="replay this trace at its own times (default: a generated workload)")
    w.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of --trace (default: detected from the file)")
    w.add_argument("--num-requests", type=positive_int, metavar="N",
                   help=f"requests to send (default {DEFAULT_NUM_REQUESTS}; a trace: its first N)")
    w.add_argument("--rate", type=parse_floats, metavar="R[,R...]",
                   help=f"arrival rate, requests/s (default {DEFAULT_RATE}; a trace is re-timed); "
                        "a list sweeps")
    w.add_argument("--arrival", choices=sorted(ARRIVAL_PROCESSES), default="poisson",
                   help="arrival process of generated requests")
    w.add_argument("--cv", type=parse_floats, metavar="CV[,CV...]",
                   help="burstiness: inter-arrival coefficient of variation (gamma, weibull); "
                        "a list sweeps (default: 1)")
    w.add_argument("--prompt-tokens", type=positive_int, default=128, metavar="N",
                   help="mean prompt length of generated requests")
    w.add_argument("--output-tokens", type=positive_int, default=64, metavar="N",
                   help="mean output length of generated requests")
    w.add_argument("--length-dist", choices=sorted(LENGTH_SAMPLERS), default="fixed",
                   help="distribution of generated lengths")
    w.add_argument("--tenants", type=_tenant_shares, metavar="NAME[:SHARE],...",
                   help="tenants of generated requests and their shares of the traffic "
                        "(default: one tenant, 'default')")
    w.add_argument("--seed", type=int, default=0, metavar="N", help="workload seed")
    e = p.add_argument_group("endpoint")
    e.add_argument("--model", metavar="NAME",
                   help="model to ask for (default: the endpoint's first)")
    e.add_argument("--api-key", metavar="KEY",
                   help="API key (Authorization: Bearer) (default: none)")
    e.add_argument("--tenant-key", type=_tenant_key, action="append", default=[],
                   metavar="TENANT=KEY", help="the key of a tenant (repeat for each tenant)")
    e.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    e.add_argument("--no-ignore-eos", action="store_true",
                   help="let the model stop early (default: generate the trace's output length)")
    e.add_argument("--max-concurrency", type=positive_int, metavar="N",
                   help="cap on requests in flight (default: none, pure open loop)")
    e.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="give up on a stream silent this long")
    o = p.add_argument_group("output")
    o.add_argument("--json", type=output_file, metavar="FILE",
                   help="write results as JSON (default: not written)")
    o.add_argument("--report", type=output_dir, metavar="DIR",
                   help="write an HTML report with plots into DIR (default: not written)")
    o.add_argument("--ttft-slo", type=float, metavar="S",
                   help="TTFT SLO in seconds (default: none; SLO attainment and goodput n/a)")
    o.add_argument("--tpot-slo", type=float, metavar="S",
                   help="TPOT SLO in seconds (default: none)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_bench)
    return p


def workload_specs(args: argparse.Namespace, rate: float | None, cv: float) -> list[RequestSpec]:
    """The requests of one run: the trace (re-timed at `rate` if given) or a generated stream."""
    if args.trace:
        return load_workload(args.trace, args.trace_format, num_requests=args.num_requests,
                             rate=rate, seed=args.seed)
    def dist(mean: int) -> LengthDistribution:
        upper = 2 * mean if args.length_dist == "uniform" else None
        return LengthDistribution(kind=args.length_dist, mean_tokens=mean, max_tokens=upper)
    try:
        config = SyntheticWorkload(
            num_requests=args.num_requests or DEFAULT_NUM_REQUESTS, rate=rate or DEFAULT_RATE,
            arrival=args.arrival, cv=cv, prompt_tokens=dist(args.prompt_tokens),
            output_tokens=dist(args.output_tokens), tenants=args.tenants or {"default": 1.0})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return generate(config, args.seed)


def _endpoint(args: argparse.Namespace, bench: Any) -> Any:
    model = args.model
    if model is None:
        model = asyncio.run(bench.endpoint_model(args.url, args.api_key))
    else:  # a dead URL fails now, not after a whole workload of failed requests
        asyncio.run(bench.check_reachable(args.url, args.api_key))
    return bench.EndpointConfig(url=args.url, model=model, api_key=args.api_key,
                                tenant_keys=dict(args.tenant_key), is_chat=args.chat,
                                ignore_eos=not args.no_ignore_eos, request_timeout_s=args.timeout)


def run_bench(args: argparse.Namespace) -> int:
    bench = import_bench("`shunter bench`")
    endpoint = _endpoint(args, bench)
    rates = args.rate or ((None,) if args.trace else (DEFAULT_RATE,))
    runs: list[tuple[str, Summary, Any, list[RequestSpec]]] = []
    for rate, cv in itertools.product(rates, args.cv or (1.0,)):
        specs = workload_specs(args, rate, cv)
        label = "trace" if rate is None else f"rate={rate:g}" + (f",cv={cv:g}" if args.cv else "")
        with progress_bar(len(specs), f"bench {label}", quiet=args.quiet) as on_progress:
            run = bench.run_bench(specs, endpoint, max_concurrency=args.max_concurrency,
                                  on_progress=on_progress)
        summary = summarize(run.records, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo)
        if summary.num_completed == 0:
            raise EndpointError(_nothing_completed(run.records, endpoint.url, label))
        runs.append((label, summary, run, specs))
    _print(runs, endpoint)
    if args.json:
        rows = [_result(label, s, run, endpoint) for label, s, run, _ in runs]
        write_json(rows[0] if len(rows) == 1 else rows, args.json)
    if args.report:
        _write_reports(Path(args.report), runs, endpoint)
    return 0


def _nothing_completed(records: list[Any], url: str, label: str) -> str:
    """Why a run is worth nothing: its outcomes and errors, most common first, on one line."""
    errors = Counter(r.error or r.finish_reason.name.lower() for r in records)
    kinds = "; ".join(f"{n} x {error}" for error, n in errors.most_common(_MAX_ERROR_KINDS))
    more = len(errors) - _MAX_ERROR_KINDS
    return (f"none of the {len(records)} requests to {url} ({label}) completed: {kinds}"
            + (f"; and {more} other errors" if more > 0 else ""))


def _result(label: str, summary: Summary, run: Any, endpoint: Any) -> dict[str, Any]:
    return {"run": label, "endpoint": endpoint.url, "model": endpoint.model,
            **summary.to_dict(), "wall_s": round(run.wall_s, 3), "num_late": run.num_late}


def _print(runs: list[tuple[str, Summary, Any, list[RequestSpec]]], endpoint: Any) -> None:
    out = stdout_console()
    if len(runs) == 1:
        label, summary, run, specs = runs[0]
        out.print(render_table(summary, f"{endpoint.url} ({endpoint.model}): {len(specs)} "
                                        f"requests, {label}"))
        for line in rejection_lines(summary):
            out.print(line, style="yellow", highlight=False, soft_wrap=True)
        if run.num_late:
            out.print(f"{run.num_late} requests were sent late (the client was overloaded)",
                      style="yellow")
    else:
        out.print(render_comparison([(label, s) for label, s, _, _ in runs], "run"))


def _write_reports(directory: Path, runs: list[tuple[str, Summary, Any, list[RequestSpec]]],
                   endpoint: Any) -> None:
    report = importlib.import_module("shunter.bench.report")
    for label, summary, run, specs in runs:
        target = directory if len(runs) == 1 else directory / label.replace(",", "_")
        meta = {"endpoint": endpoint.url, "model": endpoint.model, "workload": label,
                "requests": len(specs), "wall_s": run.wall_s, "sent late": run.num_late}
        path = report.write_report(target, summary, run.records,
                                   title=f"shunter bench: {label}", meta=meta)
        stdout_console().print(f"report: {path}")

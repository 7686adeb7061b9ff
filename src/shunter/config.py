"""Scenario files (TOML or YAML) -> validated config objects, and the built-in scenario.

A scenario has seven tables, every key optional:

    name = "..."
    [workload]  trace, format, num_requests, rate, seed, zero_tokens
    [cluster]   model, gpu, tp, pp, ep, expert_imbalance (mixture-of-experts models), replicas,
                router, router_params, cost_model, num_blocks, swap_space_gib; topologies
                (`shunter.sim.config.SimConfig`): groups (a list
                of {gpu, count, model, tp, num_blocks, role} tables, heterogeneous replicas),
                disaggregation, num_prefill_replicas, decode_router, decode_router_params,
                skip_prefill_cached_fraction, topology ("tetriinfer": disaggregation with
                fixed-size prefill chunks and the tetriinfer decode router), kv_link_bytes_s,
                router_snapshot_interval_s,
                router_counts_in_flight, migration (a table of MigrationConfig keys)
    [scheduler] policy, policy_params, predictor, predictor_params, and any SchedulerConfig field (max_num_batched_tokens,
                max_num_seqs, enable_chunked_prefill, preemption_mode, admission, ...).
                policy_params may nest a table under a policy's name ({ priority = { aging_s
                = 30.0 } }), read only when that policy runs; a bare key goes to every policy
                run that takes it (`compare`, `sweep`) and is an error if none does
    [gateway]   policy, params, max_inflight_per_replica: the gateway tier (`shunter.sim.gateway`)
    [slo]       ttft_s, tpot_s
    [autoscale] min_replicas, max_replicas, metric, scale_up_load, scale_down_load, interval_s,
                scale_up_cooldown_s, scale_down_cooldown_s, provision_s, drain: autoscaling
                (`shunter.router.autoscale.AutoscaleConfig`, checked there); [cluster] replicas
                is the starting count
    [speculative] method ("draft_model", "eagle", "ngram"), num_speculative_tokens,
                acceptance_rate, model (the draft model), seed: speculative decoding
                (`shunter.sim.cost.speculative.SpeculativeConfig`, checked there)
    [lora]      max_loras, max_lora_rank, max_cpu_loras (vLLM's), num_adapters, zipf: LoRA
                adapters (`shunter.sim.cost.lora.LoraConfig`, checked there)

An unknown table or key, or a value of the wrong type, is a ConfigError naming the file, the
table and the key. A relative trace path is relative to the scenario file; `builtin:NAME`
names a file shipped in `shunter/scenarios/data/`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shunter.core.sched.config import SchedulerConfig
from shunter.core.types import check_number
from shunter.errors import ConfigError
from shunter.sim.config import SIM_DERIVED_SCHEDULER_OPTIONS, SimConfig

__all__ = ["BUILTIN_PREFIX", "Scenario", "WorkloadConfig", "builtin_scenario", "load_scenario",
           "resolve_trace"]

BUILTIN_PREFIX = "builtin:"
_DEFAULT_SCENARIO = "default.toml"

_SCHEDULER_KEYS = {f.name: f.type for f in fields(SchedulerConfig)} | {
    "policy": "str", "policy_params": "dict", "predictor": "str", "predictor_params": "dict"}
for _derived in SIM_DERIVED_SCHEDULER_OPTIONS:
    _SCHEDULER_KEYS.pop(_derived)

_SCHEMA: dict[str, dict[str, str]] = {
    "workload": {"trace": "str", "format": "str", "num_requests": "int", "rate": "float",
                 "seed": "int", "zero_tokens": "str"},
    "cluster": {"model": "str", "gpu": "str", "tp": "int", "pp": "int", "ep": "int",
                "expert_imbalance": "float", "replicas": "int", "router": "str",
                "router_params": "dict", "cost_model": "str", "num_blocks": "int",
                "swap_space_gib": "float", "groups": "list", "disaggregation": "bool",
                "num_prefill_replicas": "int", "decode_router": "str",
                "decode_router_params": "dict", "skip_prefill_cached_fraction": "float",
                "topology": "str", "kv_link_bytes_s": "float",
                "router_snapshot_interval_s": "float",
                "router_counts_in_flight": "bool", "migration": "dict"},
    "scheduler": {k: str(v) for k, v in _SCHEDULER_KEYS.items()},
    "gateway": {"policy": "str", "params": "dict", "max_inflight_per_replica": "int"},
    "slo": {"ttft_s": "float", "tpot_s": "float"},
    "autoscale": {},  # its keys and their types are AutoscaleConfig.from_table's to check
    "speculative": {},  # SpeculativeConfig.from_table's to check
    "lora": {},  # LoraConfig.from_table's to check (shunter.sim.cost.lora)
}
_GATEWAY_KEYS = {"policy": "gateway_policy", "params": "gateway_params",
                 "max_inflight_per_replica": "gateway_max_inflight"}


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    trace: str | None = None
    format: str | None = None
    num_requests: int | None = None
    rate: float | None = None
    seed: int = 0
    zero_tokens: str = "error"  # rows with 0 tokens: "error" or "clamp" (to 1, counted)

    def __post_init__(self) -> None:
        if self.zero_tokens not in ("error", "clamp"):
            raise ConfigError(f"zero_tokens must be 'error' or 'clamp', got {self.zero_tokens!r}")
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.rate is not None:
            check_number("rate", self.rate, gt=0)  # requests/s


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str = "scenario"
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    base_dir: Path | None = None  # where relative trace paths start

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "tpot_slo_s"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), gt=0)

    def with_overrides(self, **changes: Any) -> Scenario:
        """Apply CLI flags: keys are workload/sim field names or ttft_slo_s/tpot_slo_s."""
        wl = {k: v for k, v in changes.items() if k in _field_names(WorkloadConfig)}
        sim = {k: v for k, v in changes.items() if k in _field_names(SimConfig)}
        top = {k: v for k, v in changes.items() if k in ("ttft_slo_s", "tpot_slo_s", "name")}
        unknown = set(changes) - set(wl) - set(sim) - set(top)
        assert not unknown, f"unknown overrides {unknown}"
        try:
            return replace(self, workload=replace(self.workload, **wl),
                           sim=replace(self.sim, **sim), **top)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_type(where: str, key: str, value: Any, kind: str) -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "dict": isinstance(value, dict),
        "list": isinstance(value, list),
    }
    expected = next((k for k in ok if k in kind), "str")
    if expected == "int" and "float" in kind:
        expected = "float"
    if not ok[expected]:
        article = "an" if expected == "int" else "a"
        raise ConfigError(f"{where}: {key} must be {article} {expected}, got {value!r}")
    if expected != "float":
        return value
    try:  # NaN and infinities (TOML nan/inf, YAML .nan/.inf, a YAML int past a float) too
        return float(check_number(key, value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _parse_tables(data: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a scenario must be a table of tables, got {type(data).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for table, body in data.items():
        if table == "name":
            continue
        if table not in _SCHEMA:
            raise ConfigError(f"{where}: unknown table [{table}]; valid: name, {', '.join(_SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
        if table in ("autoscale", "speculative", "lora"):
            out[table] = body
            continue
        for key, value in body.items():
            if key not in _SCHEMA[table]:
                raise ConfigError(f"{where}: unknown key {key!r} in [{table}]; valid: "
                                  f"{', '.join(sorted(_SCHEMA[table]))}")
            body[key] = _check_type(f"{where} [{table}]", key, value, _SCHEMA[table][key])
        out[table] = body
    return out


def scenario_from_dict(data: Any, *, where: str = "scenario", base_dir: Path | None = None) -> Scenario:
    tables = _parse_tables(data, where)
    name = data.get("name", Path(where).stem) if isinstance(data, dict) else "scenario"
    cluster = dict(tables.get("cluster", {}))
    sched = dict(tables.get("scheduler", {}))
    slo = tables.get("slo", {})
    renames = {"replicas": "num_replicas"}
    sim_kwargs = {renames.get(k, k): v for k, v in cluster.items()}
    for key in ("policy", "policy_params", "predictor", "predictor_params"):
        if key in sched:
            sim_kwargs[key] = sched.pop(key)
    for key, value in tables.get("gateway", {}).items():
        sim_kwargs[_GATEWAY_KEYS[key]] = value
    if "autoscale" in tables:
        sim_kwargs["autoscale"] = tables["autoscale"]
    if "speculative" in tables:
        sim_kwargs["speculative"] = tables["speculative"]
    if "lora" in tables:
        sim_kwargs["lora"] = tables["lora"]
    try:
        return Scenario(name=str(name), workload=WorkloadConfig(**tables.get("workload", {})),
                        sim=SimConfig(scheduler=sched, **sim_kwargs),
                        ttft_slo_s=slo.get("ttft_s"), tpot_slo_s=slo.get("tpot_s"),
                        base_dir=base_dir)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file; the suffix picks the parser (.toml, .yaml/.yml)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: scenario files must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    return scenario_from_dict(data, where=str(path), base_dir=path.parent)


def builtin_scenario() -> Scenario:
    """The scenario shipped inside the package (a sample of a real trace)."""
    text = resources.files("shunter.scenarios").joinpath(_DEFAULT_SCENARIO).read_text()
    return scenario_from_dict(tomllib.loads(text), where=f"{BUILTIN_PREFIX}{_DEFAULT_SCENARIO}")


def resolve_trace(trace: str, base_dir: Path | None) -> Path:
    """The file a scenario's `trace` names: built-in data, or a path relative to the scenario."""
    if trace.startswith(BUILTIN_PREFIX):
        name = trace[len(BUILTIN_PREFIX):]
        data = resources.files("shunter.scenarios").joinpath("data")
        candidate = Path(str(data.joinpath(name)))
        if not candidate.is_file():
            available = sorted(p.name for p in data.iterdir() if p.name.endswith((".csv", ".jsonl")))
            raise ConfigError(f"no built-in trace {name!r}; available: {', '.join(available)}")
        return candidate
    path = Path(trace).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path

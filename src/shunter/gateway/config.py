"""Gateway config files (TOML or YAML) -> validated config objects.

    [server]      host, port, models (served names), max_body_bytes, max_prompt_chars,
                  drain_timeout_s, keepalive_s, cors_origins, max_model_len, metrics_key
    [router]      name (any of router/registry.py), params = {...}
    [scheduler]   policy, params = {...}, predictor, predictor_params = {...},
                  gateway_policy, gateway_params = {...}  (`SchedulerSettings`)
    [admission]   max_queued, max_queue_wait_s
    [pool]        max_attempts, health_interval_s, health_timeout_s, ttft_timeout_s,
                  stall_timeout_s, tokenize_timeout_s, max_tokenize_cache_tokens
    [breaker]     failure_threshold, cooldown_s, max_ejection_s, success_threshold
    [[backends]]  name, kind = "remote" | "engine" | "vllm" | "fake", max_concurrency,
                  max_num_seqs, profile, max_num_batched_tokens, block_size (any kind: see
                  BackendConfig),
                  remote: url, model, api_key, metrics_path, health_path, continuous_usage,
                          resume ("auto" | "tokens" | "text": how failover resumes a stream)
                  remote and vllm: kv_events, kv_events_replay (vLLM's KV-event PUB and
                          replay sockets to connect to, tcp://HOST:PORT: the routers then read
                          its exact prefix state, `kv_events.py`)
                  engine: replicas (how many in-process replicas of the served model),
                          kv_events_publish, kv_events_replay_publish (ZMQ addresses to bind,
                          tcp://HOST:PORT or ipc://PATH: its replicas publish their KV-cache
                          events there as vLLM does, for a gateway in front of this one;
                          replica i > 0 at PORT + i, or PATH-i), exact_prefix (true: their
                          events feed this gateway's prefix-aware router exactly; default
                          false: its dispatch-time approximation, which the simulator models),
                          topology = "tetriinfer" (TetriInfer's pools: `replicas` split into
                          num_prefill_replicas prefill replicas, default half, and decode ones,
                          which decode_router, default "tetriinfer", with decode_router_params
                          picks; the KV moves between them, `gateway/disagg.py`)
                  vllm:   model (a local HF model directory), python (of vLLM's venv; default
                          $SHUNTER_VLLM_PYTHON, else `python` on PATH), port (default: a free
                          one), dtype, max_model_len, args (more `vllm serve` flags), policy
                          and policy_params (default: [scheduler]'s engine policy),
                          startup_timeout_s, max_restarts, log_file (`supervisor.py`)
                  fake:   token_delay_s, first_token_delay_s, num_output_tokens
    [[tenants]]   name, api_keys, weight, priority_ceiling, default_priority,
                  max_requests_per_min, max_tokens_per_min
    [autoscale]   backend (the one to scale: an engine, vllm or fake backend; default: the
                  only one), and the decision's keys, as a scenario's [autoscale]
                  (`shunter.router.autoscale.AutoscaleConfig`: min_replicas, max_replicas,
                  metric, thresholds, interval_s, cooldowns; drain is "wait", the only
                  way live); the backend's `replicas` is the starting count;
                  `gateway/autoscale.py` does what it decides
    [limits]      what one client connection may cost, checked before authentication
                  (`LimitsConfig`, enforced in `protocol.py`):
                  max_header_bytes = 65536, max_headers = 128 (request line + headers;
                  past either 431, closed), header_timeout_s = 10 (the head, from connect or
                  its first byte: 408), body_timeout_s = 30 (the whole body, after it: 408),
                  idle_timeout_s = 75 (an idle keep-alive connection is closed; longer than
                  clients keep theirs, so that they close first),
                  send_timeout_s = 30 (a client that takes no byte of its answer this long
                  is cut off, its request cancelled and its backend slot freed),
                  fd_warn_fraction = 0.8, fd_refuse_fraction = 0.9 (of RLIMIT_NOFILE, which
                  `serve` raises to the hard limit: a warning, then new connections get 503)

An unknown table or key, or a value of the wrong type, is a ConfigError naming the file, the
table and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from shunter.errors import ConfigError
from shunter.gateway.admission import AdmissionConfig
from shunter.gateway.breaker import BreakerConfig
from shunter.gateway.disagg import check_topology
from shunter.gateway.kv_endpoints import check_kv_event_keys
from shunter.gateway.limits import LimitsConfig
from shunter.gateway.pool import PoolConfig
from shunter.gateway.settings import SchedulerSettings, named_policy
from shunter.gateway.tenant import TenantConfig, TenantTable
from shunter.router.autoscale import AutoscaleConfig

__all__ = ["BACKEND_KINDS", "DEFAULT_MODEL", "DEFAULT_NUM_REPLICAS", "SCALABLE_KINDS",
           "VLLM_PYTHON_ENV", "AutoscaleSettings", "BackendConfig", "GatewayConfig", "ServerConfig", "default_vllm_python", "load_config"]

BACKEND_KINDS = ("remote", "engine", "vllm", "fake")
SCALABLE_KINDS = ("engine", "vllm", "fake")  # what the gateway can start more of
VLLM_PYTHON_ENV = "SHUNTER_VLLM_PYTHON"  # the default `python` of kind = "vllm" backends
DEFAULT_MODEL = "smollm2-135m"  # what the embedded default serves
DEFAULT_NUM_REPLICAS = 2  # in-process engine replicas when the config names no backend
@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ()
    max_body_bytes: int = 4 << 20
    max_prompt_chars: int = 1 << 20
    drain_timeout_s: float = 30.0
    keepalive_s: float = 5.0  # SSE keep-alive comments while a stream waits; 0: none
    cors_origins: tuple[str, ...] = ()  # browser origins allowed, "*" for any; none: no CORS
    max_model_len: int | None = None  # what /v1/models reports (default: the engines' own)
    metrics_key: str | None = None  # /metrics needs it as a bearer key (with tenants: required)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """One backend. `profile`: a `shunter profile` file of it; the router then takes its speed
    from the file (as the simulator does with that profile) instead of measuring its traffic.
    `max_num_batched_tokens`: its token budget, at which a profile's prefill speed is priced
    (unset: the engine's default for `kind = "engine"`, else the simulator's, 8192); an engine
    runs it.
    `block_size`: its KV block size, the unit of the free and total blocks it reports (unset:
    16); an engine runs it.
    `kv_events` (remote, vllm): its vLLM's KV-event socket (`--kv-events-config` endpoint,
    connected to), with `kv_events_replay` its replay socket; the routers then see the blocks
    it really holds (`kv_events.py`); its events must have `block_size` tokens per block when
    that is set (unset: the events' size). A vllm backend is not started with events by the
    gateway: put `--enable-prefix-caching --kv-events-config {...}` in its `args`.
    `kv_events_publish` (engine): where its replicas publish their KV-cache events (bound; with
    `kv_events_replay_publish` a replay socket), for another gateway's `kv_events`
    (`kv_endpoints.replica_endpoint` gives replica i's address). `exact_prefix` (engine): its
    replicas' events feed this gateway's own prefix-aware router (off by default: the exact
    state learns a prefix once computed, the approximation at dispatch, and the simulator's
    routers read the approximation)."""

    name: str
    kind: str = "remote"
    max_concurrency: int = 256
    max_num_seqs: int | None = None
    url: str | None = None
    model: str | None = None
    api_key: str | None = None
    metrics_path: str | None = "/metrics"
    health_path: str = "/health"
    continuous_usage: bool = True
    resume: str = "auto"  # remote failover: "tokens", "text" or "auto" (tokens for vLLM)
    replicas: int = 1
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    num_output_tokens: int = 16
    profile: str | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    # kind = "vllm": a vLLM server this gateway starts and supervises (`supervisor.py`)
    python: str | None = None
    port: int | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    args: tuple[str, ...] = ()
    policy: str | None = None
    policy_params: dict[str, Any] | None = None
    startup_timeout_s: float = 600.0
    max_restarts: int = 5
    log_file: str | None = None
    kv_events: str | None = None
    kv_events_replay: str | None = None
    kv_events_publish: str | None = None
    kv_events_replay_publish: str | None = None
    exact_prefix: bool = False
    # kind = "engine": TetriInfer's prefill and decode pools (`gateway/disagg.py`)
    topology: str | None = None
    num_prefill_replicas: int | None = None
    decode_router: str | None = None
    decode_router_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ValueError(f"backend {self.name}: unknown kind {self.kind!r}; valid: "
                             f"{', '.join(BACKEND_KINDS)}")
        if self.kind == "remote" and not self.url:
            raise ValueError(f"backend {self.name}: a remote backend needs a url")
        if self.resume not in ("auto", "tokens", "text"):
            raise ValueError(f"backend {self.name}: resume must be auto, tokens or text, got "
                             f"{self.resume!r}")
        if self.max_concurrency < 1 or self.replicas < 1:
            raise ValueError(f"backend {self.name}: max_concurrency and replicas must be >= 1")
        for key in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"backend {self.name}: {key} must be >= 1")
        if self.profile == "":
            raise ValueError(f"backend {self.name}: profile must name a file")
        check_kv_event_keys(self)
        check_topology(self)
        if self.kind == "vllm":
            self._check_vllm()
        elif any(getattr(self, k) != f.default for k, f in _VLLM_ONLY.items()):
            keys = [k for k, f in _VLLM_ONLY.items() if getattr(self, k) != f.default]
            raise ValueError(f"backend {self.name}: {', '.join(keys)} only apply to "
                             'kind = "vllm"')

    def _check_vllm(self) -> None:
        if not self.model:
            raise ValueError(f"backend {self.name}: a vllm backend needs model (a local model "
                             "directory)")
        if self.url is not None:
            raise ValueError(f"backend {self.name}: a vllm backend runs on 127.0.0.1 at its "
                             "port; it takes no url")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"backend {self.name}: port must be in 1..65535")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"backend {self.name}: max_model_len must be >= 1")
        if self.startup_timeout_s <= 0 or self.max_restarts < 0:
            raise ValueError(f"backend {self.name}: startup_timeout_s must be > 0 and "
                             "max_restarts >= 0")
        if not all(isinstance(a, str) for a in self.args):
            raise ValueError(f"backend {self.name}: args must be strings")
        if self.policy is None and self.policy_params is not None:
            raise ValueError(f"backend {self.name}: policy_params are given but no policy")
        if self.policy is not None:
            named_policy(self.policy, self.policy_params or {}, f"backend {self.name}: policy")
        if "--kv-events-config" not in self.args:  # then the gateway tells vLLM where to bind
            for key in ("kv_events", "kv_events_replay"):
                value = getattr(self, key)
                if value is not None and not value.startswith("ipc://"):
                    raise ValueError(
                        f"backend {self.name}: {key} of a vllm backend the gateway starts must "
                        f"be ipc://PATH (vLLM binds TCP only as tcp://*:PORT, on every "
                        f"interface), got {value!r}; or pass your own --kv-events-config in args")

    def vllm_policy_or(self, default: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """The policy a vllm backend's scheduler runs: its own, else `default` ([scheduler]'s
        engine policy)."""
        if self.policy is not None:
            return self.policy, dict(self.policy_params or {})
        return default


def default_vllm_python() -> str:
    """The python of vLLM's venv when a vllm backend names none: $SHUNTER_VLLM_PYTHON, else
    `python` on PATH."""
    return os.environ.get(VLLM_PYTHON_ENV) or "python"


@dataclass(frozen=True, slots=True)
class AutoscaleSettings:
    """[autoscale]: which backend the gateway scales, and the decision's settings."""

    backend: str
    config: AutoscaleConfig
    where: str = "[autoscale]"  # for errors: the file and table it came from

    def check(self, backends: tuple[BackendConfig, ...]) -> None:
        """ConfigError unless the backend exists, can be scaled, and starts within limits."""
        found = next((b for b in backends if b.name == self.backend), None)
        where = self.where
        if found is None or found.kind not in SCALABLE_KINDS:
            names = [b.name for b in backends if b.kind in SCALABLE_KINDS]
            raise ConfigError(f"{where}: backend {self.backend!r} is not an engine, vllm or "
                              f"fake backend of this config; scalable: {names or 'none'}")
        config = self.config
        if config.drain == "migrate":
            raise ConfigError(f"{where}: drain = \"migrate\" is the simulator's (its replicas "
                              "hand running requests over); a live replica drains by finishing "
                              "its requests: drain = \"wait\"")
        if found.topology is not None:
            raise ConfigError(f"{where}: backend {found.name} has a topology; its prefill and "
                              "decode pools are not autoscaled")
        if found.port is not None or found.log_file or found.kv_events \
                or found.kv_events_publish or found.exact_prefix:
            raise ConfigError(f"{where}: backend {found.name} sets port, log_file, kv_events, "
                              "kv_events_publish or exact_prefix, which name one replica; a "
                              "scaled backend's replicas are alike")
        if not config.min_replicas <= found.replicas <= config.max_replicas:
            raise ConfigError(f"{where}: backend {found.name} starts with {found.replicas} "
                              f"replicas, outside min_replicas..max_replicas "
                              f"({config.min_replicas}..{config.max_replicas})")


def _autoscale(raw: dict[str, Any], path: Path,
               backends: tuple[BackendConfig, ...]) -> AutoscaleSettings | None:
    if "autoscale" not in raw:
        return None
    where = f"{path} [autoscale]"
    table = raw["autoscale"]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    table = dict(table)
    name = table.pop("backend", None)
    if name is None:
        scalable = [b.name for b in backends if b.kind in SCALABLE_KINDS]
        if len(scalable) != 1:
            raise ConfigError(f"{where}: name the backend to scale (backend = \"NAME\"); "
                              f"scalable backends: {scalable or 'none'}")
        name = scalable[0]
    if not isinstance(name, str):
        raise ConfigError(f"{where}: key 'backend' must be a string, got {name!r}")
    table.setdefault("drain", "wait")  # the only way live (see AutoscaleSettings.check)
    if "provision_s" in table:
        raise ConfigError(f"{where}: provision_s is the simulator's model of a cold start; live, "
                          "a new replica takes what it really takes to start")
    return AutoscaleSettings(name, AutoscaleConfig.from_table(table, where), where)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    router: str = "cost"
    router_params: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    backends: tuple[BackendConfig, ...] = ()
    tenants: tuple[TenantConfig, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    autoscale: AutoscaleSettings | None = None

    def __post_init__(self) -> None:
        if self.autoscale is not None:
            self.autoscale.check(self.backends)


_VLLM_ONLY = {f.name: f for f in fields(BackendConfig)
              if f.name in ("python", "port", "dtype", "max_model_len", "args", "policy",
                            "policy_params", "log_file")}

_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "str | None": (str, type(None)), "int | None": (int, type(None)),
    "float | None": (int, float, type(None)), "tuple[str, ...]": (list, tuple),
    "dict[str, Any]": (dict,), "dict[str, Any] | None": (dict, type(None)),
}


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(known)}")
    values = {}
    for key, value in table.items():
        kinds = _TYPES.get(str(known[key].type), (object,))
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{where}: key {key!r} must be {known[key].type}, got {value!r}")
        values[key] = tuple(value) if isinstance(value, list) and kinds == (list, tuple) \
            else value
    missing = [f.name for f in known.values() if f.default is MISSING
               and f.default_factory is MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read a TOML or YAML gateway config."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read gateway config: {exc}") from None
    raw = raw or {}
    tables = {"server", "router", "scheduler", "admission", "pool", "breaker", "backends",
              "tenants", "limits", "autoscale"}
    unknown = set(raw) - tables
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(sorted(tables))}")
    router = dict(raw.get("router", {}))
    router_name = router.pop("name", "cost")
    router_params = router.pop("params", {})
    if router or not isinstance(router_name, str) or not isinstance(router_params, dict):
        raise ConfigError(f"{path} [router]: keys are name (a string) and params (a table)")
    backends = tuple(_build(BackendConfig, b, f"{path} [[backends]] #{i + 1}")
                     for i, b in enumerate(_list(raw, "backends", path)))
    return GatewayConfig(
        server=_build(ServerConfig, raw.get("server", {}), f"{path} [server]"),
        router=router_name, router_params=router_params,
        scheduler=_build(SchedulerSettings, raw.get("scheduler", {}), f"{path} [scheduler]"),
        admission=_build(AdmissionConfig, raw.get("admission", {}), f"{path} [admission]"),
        pool=_build(PoolConfig, raw.get("pool", {}), f"{path} [pool]"),
        breaker=_build(BreakerConfig, raw.get("breaker", {}), f"{path} [breaker]"),
        backends=backends, tenants=_tenants(raw, path),
        limits=_build(LimitsConfig, raw.get("limits", {}), f"{path} [limits]"),
        autoscale=_autoscale(raw, path, backends))


def _tenants(raw: dict[str, Any], path: Path) -> tuple[TenantConfig, ...]:
    tenants = tuple(_build(TenantConfig, t, f"{path} [[tenants]] #{i + 1}")
                    for i, t in enumerate(_list(raw, "tenants", path)))
    try:
        TenantTable.build(list(tenants), 0.0)  # unique names and keys, every tenant with keys
    except ValueError as exc:
        raise ConfigError(f"{path} [[tenants]]: {exc}") from None
    return tenants


def _list(raw: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return value

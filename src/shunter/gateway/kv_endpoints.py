"""The KV-event addresses of a backend's config: those a gateway connects to (`kv_events`,
`kv_events_replay`: a vLLM's, or another Shunter's engines'), and those in-process engines bind
to publish their own (`kv_events_publish`, `kv_events_replay_publish`), one per replica
(`replica_endpoint`); and `exact_prefix`, whether in-process engines feed the gateway's own
router. Bad ones are a ValueError naming the backend and the key."""

from __future__ import annotations

import re
from typing import Protocol

from shunter.gateway.kv_events import check_endpoint

__all__ = ["check_bind_endpoint", "check_kv_event_keys", "replica_endpoint"]

_BIND_ENDPOINT = re.compile(r"^(tcp://(\*|[^\s:/*]+):(\d+)|ipc://\S+)$")


class _Keys(Protocol):
    name: str
    kind: str
    kv_events: str | None
    kv_events_replay: str | None
    kv_events_publish: str | None
    kv_events_replay_publish: str | None
    exact_prefix: bool


def check_bind_endpoint(endpoint: str, what: str) -> None:
    """ValueError unless `endpoint` is a ZMQ address to bind: tcp://HOST:PORT (HOST `*` for
    every interface) or ipc://PATH."""
    found = _BIND_ENDPOINT.match(endpoint)
    if found is None or (found.group(3) is not None and not 0 < int(found.group(3)) < 65536):
        raise ValueError(f"{what} must be an address to bind, tcp://HOST:PORT (tcp://*:PORT on "
                         f"every interface) or ipc://PATH, got {endpoint!r}")


def replica_endpoint(endpoint: str, index: int) -> str:
    """Where replica `index` of an engine backend binds `endpoint` (vLLM's data-parallel rule
    for tcp: PORT + index; ipc: PATH-index); replica 0 binds it as given."""
    if index == 0:
        return endpoint
    if endpoint.startswith("ipc://"):
        return f"{endpoint}-{index}"
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + index}"


def check_kv_event_keys(backend: _Keys) -> None:
    """ValueError unless the backend's KV-event keys fit its kind and are addresses."""
    name = backend.name
    for key, base in (("kv_events_replay", "kv_events"),
                      ("kv_events_replay_publish", "kv_events_publish")):
        if getattr(backend, key) is not None and getattr(backend, base) is None:
            raise ValueError(f"backend {name}: {key} is given but no {base}")
    if backend.kv_events is not None:
        if backend.kind not in ("remote", "vllm"):
            raise ValueError(f"backend {name}: kv_events only apply to vLLM backends (kind = "
                             '"remote" or "vllm"); in-process engines feed the router with '
                             "exact_prefix = true")
        check_endpoint(backend.kv_events, f"backend {name}: kv_events")
        if backend.kv_events_replay is not None:
            check_endpoint(backend.kv_events_replay, f"backend {name}: kv_events_replay")
    if backend.exact_prefix and backend.kind != "engine":
        raise ValueError(f"backend {name}: exact_prefix only applies to in-process engines "
                         '(kind = "engine"); give a vLLM backend kv_events')
    if backend.kv_events_publish is None:
        return
    if backend.kind != "engine":
        raise ValueError(f"backend {name}: kv_events_publish only applies to in-process "
                         'engines (kind = "engine"); vLLM publishes with --kv-events-config')
    for key in ("kv_events_publish", "kv_events_replay_publish"):
        if getattr(backend, key) is not None:
            check_bind_endpoint(getattr(backend, key), f"backend {name}: {key}")
    if backend.kv_events_publish == backend.kv_events_replay_publish:
        raise ValueError(f"backend {name}: kv_events_publish and kv_events_replay_publish must "
                         "be different addresses")

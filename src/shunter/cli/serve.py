"""`shunter serve`: its flags. The command itself lives in `cli.serving`, imported only when
it runs, because it loads torch, the engines and the HTTP server, which `shunter simulate`
must not pay for (and which are optional extras)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from shunter.cli.common import json_object, positive_int
from shunter.core.predict.registry import PREDICTORS
from shunter.core.sched.registry import POLICIES
from shunter.gateway.config import DEFAULT_MODEL, DEFAULT_NUM_REPLICAS
from shunter.gateway.disagg import TOPOLOGIES
from shunter.router.registry import ROUTERS

__all__ = ["add_serve_parser", "run_serve"]


def _port(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {port}")
    return port


def run_serve(args: argparse.Namespace) -> int:
    try:
        serving = importlib.import_module("shunter.cli.serving")
    except ImportError as exc:
        raise ValueError(f"`shunter serve` needs the engine and gateway extras ({exc.name} is "
                         "missing): pip install 'shunter[engine,gateway]'") from None
    return serving.run_serve(args)


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter serve` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="serve an OpenAI-compatible API in front of engines and remote servers",
        description="Serve the OpenAI-compatible gateway. Default: two in-process reference-"
                    f"engine replicas of {DEFAULT_MODEL} on CPU behind the cost router, on "
                    "127.0.0.1:8000. Routers: " + ", ".join(sorted(ROUTERS)) + ".")
    parser.add_argument("--config", metavar="FILE",
                        help="gateway config (TOML or YAML): backends, tenants, admission "
                             "(default: none, the embedded default)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port (default 8000)")
    parser.add_argument("--model", metavar="NAME",
                        help=f"model the embedded engines load and the API serves (default "
                             f"{DEFAULT_MODEL})")
    parser.add_argument("--replicas", type=positive_int, metavar="N",
                        help=f"in-process engine replicas (default {DEFAULT_NUM_REPLICAS} when "
                             "the config has no backends)")
    parser.add_argument("--router", metavar="NAME", help="cluster router (default cost)")
    parser.add_argument("--topology", choices=TOPOLOGIES,
                        help="split the engine replicas into prefill and decode pools, the KV "
                             "handed over between them (tetriinfer: 512-token prefill chunks, "
                             "the tetriinfer decode router; half the replicas prefill) "
                             "(default: none, the config's)")
    s = parser.add_argument_group(
        "scheduling (the config's [scheduler] table; flags win)",
        "The policy runs in every in-process engine and at the gateway's queue (requests waiting "
        "for a free backend slot). Default: fcfs in the engines, vtc at the gateway's queue. "
        "Policies that need an engine (mlfq, fastswitch, sarathi) run in the engines while the "
        "gateway's queue keeps arrival order; without in-process engines they are refused.")
    s.add_argument("--policy", metavar="NAME",
                   help=f"scheduling policy: {', '.join(sorted(POLICIES))} (default: the "
                        "config's, else fcfs in the engines and vtc at the gateway's queue)")
    s.add_argument("--policy-params", type=json_object, metavar="JSON",
                   help='its parameters, e.g. \'{"tenant_weights": {"gold": 2}}\' (default: the '
                        "config's, else none)")
    s.add_argument("--predictor", metavar="NAME",
                   help=f"output-length predictor for sjf/ltr: {', '.join(sorted(PREDICTORS))} "
                        "(oracles are simulator-only) (default: the config's, else none)")
    s.add_argument("--predictor-params", type=json_object, metavar="JSON",
                   help='its parameters, e.g. \'{"model_path": "model.json"}\' from '
                        "`shunter train-predictor` (default: none)")
    k = parser.add_argument_group(
        "KV-cache events (in-process engines)",
        "Publish each engine replica's KV-cache events (BlockStored, BlockRemoved, "
        "AllBlocksCleared) on ZMQ in vLLM's format, for a gateway in front of this one (its "
        "backend's kv_events); replica i > 0 binds PORT + i, or PATH-i.")
    k.add_argument("--kv-events-publish", metavar="ADDR",
                   help="address to bind, ipc://PATH or tcp://HOST:PORT (default: none, the "
                        "config's kv_events_publish)")
    k.add_argument("--kv-events-replay-publish", metavar="ADDR",
                   help="the replay socket's address (default: none, the config's)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"], help="server log level")
    parser.set_defaults(handler=run_serve)
    return parser

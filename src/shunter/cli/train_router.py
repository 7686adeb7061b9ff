"""`shunter train-router TRACE`: train the Intelligent Router's model in the simulator and save it.

    shunter train-router TRACE [--replicas N] [--model M] [--gpu G] [--speedup X]
                         [--num-requests N] [--window N] [--iterations N] [--pairs N]
                         [--seed N] [--out FILE] [--quiet]

1. The trace (first `--num-requests`, arrival times divided by `--speedup`) is split in time:
   the first `--train-fraction` to train on, the rest held out.
2. The response-length predictor is fitted on the training part
   (`router.policies.intelligent_model.fit_length_model`).
3. The policy's weights over the per-instance terms (log-weights, 0 = the heuristic) are
   learned by parameter-space policy gradient (evolution strategies): each iteration draws a
   window of `--window` consecutive training requests, simulates it under `--pairs`
   antithetic pairs of perturbed weights, and steps along the perturbations weighted by how
   much lower each made the window's mean E2E latency (the episode's return) than its twin.
4. The learned weights and the heuristic's are simulated on held-out windows; the file keeps
   the learned ones only if they lower the held-out mean E2E (the heuristic is the floor).

The file is what the `intelligent` router reads with router_params { mode = "rl", model_path =
FILE } (a scenario's [cluster] table, for `simulate`, `compare` and `serve`). It records the
model, GPU and replica count it was trained for; a router told another (router params `llm`,
`num_replicas`) refuses it at start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shunter.cli.common import positive_int, stdout_console
from shunter.cli.train import _fraction, _reserved
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.metrics import summarize
from shunter.router.policies.intelligent_model import (
    FEATURE_NAMES,
    MAX_LOG_TOKENS,
    LengthModel,
    RouterModel,
    SessionTurns,
    save_model,
)
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.loaders import TRACE_FORMATS, load_workload

__all__ = ["add_train_router_parser", "fit_length_model", "run_train_router",
           "train_router_model"]

MIN_WINDOW = 20
NUM_HELD_OUT_WINDOWS = 2
STEP_DECAY = 0.9  # the step shrinks by this each iteration
MAX_LOG_WEIGHT = 5.0  # weights stay within e^-5 .. e^5 of the heuristic's
RIDGE_L2 = 1e-4

_DESCRIPTION = (
    "Train the Intelligent Router (Jain et al. 2024) in the simulator and save its model file: "
    "a response-length predictor fitted on the trace, and the weights of its per-instance "
    "latency and mixing terms learned by policy gradient (evolution strategies) with the "
    "episode return = minus the mean end-to-end latency of a window of the trace, starting "
    "from the workload-aware heuristic and kept only if it beats the heuristic on held-out "
    "windows. Defaults train in about a minute on two cores.")
_EPILOG = (
    "Use the file in a scenario's [cluster] table (simulate, compare, serve): router = "
    "\"intelligent\" and router_params = { mode = \"rl\", model_path = \"router.json\", llm = "
    "\"llama-3.1-8b\", num_replicas = 4 } (llm and num_replicas: refuse a file trained for "
    "another). Example: shunter train-router azure2023_conv.csv --replicas 4 --speedup 5 "
    "--out router.json")


def add_train_router_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter train-router` on the CLI's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train-router", help="train the intelligent router's model in the simulator",
        description=_DESCRIPTION, epilog=_EPILOG)
    p.add_argument("trace", metavar="TRACE", help="workload trace file to train on")
    p.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of TRACE (default: detected from the file)")
    p.add_argument("--num-requests", type=positive_int, default=4000, metavar="N",
                   help="use the first N requests (length files: sample N)")
    p.add_argument("--speedup", type=float, default=1.0, metavar="X",
                   help="divide arrival times by X (more load on the same cluster)")
    p.add_argument("--replicas", type=positive_int, default=4, metavar="N",
                   help="replicas of the simulated cluster (the model is for this size)")
    p.add_argument("--model", default="llama-3.1-8b", help="LLM of the simulated replicas")
    p.add_argument("--gpu", default="a100-80gb", help="GPU of the simulated replicas")
    p.add_argument("--train-fraction", type=_fraction, default=0.7, metavar="F",
                   help="share of the trace (in time) to train on; the rest is held out")
    p.add_argument("--window", type=positive_int, default=800, metavar="N",
                   help="requests per simulated episode")
    p.add_argument("--iterations", type=positive_int, default=10, metavar="N",
                   help="policy-gradient iterations")
    p.add_argument("--pairs", type=positive_int, default=2, metavar="N",
                   help="antithetic weight perturbations per iteration (2 simulations each)")
    p.add_argument("--sigma", type=float, default=0.4, metavar="S",
                   help="perturbation size in log-weight")
    p.add_argument("--step", type=float, default=0.3, metavar="S",
                   help="first step length in log-weight (shrinks each iteration)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of windows and noise")
    p.add_argument("--out", default="router.json", metavar="FILE", help="model file to write")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run_train_router)
    return p


def fit_length_model(specs: Sequence[RequestSpec]) -> LengthModel:
    """Ridge regression of log(1 + output tokens) on the arrival features of `specs` (in
    arrival order, sessions whole), with Duan's smearing factor."""
    if len(specs) < 2:
        raise ValueError(f"fitting a length model needs at least 2 requests, got {len(specs)}")
    turns = SessionTurns()
    x = np.array([turns.features(s) for s in specs])
    y = np.log1p(np.array([s.num_output_tokens for s in specs], dtype=np.float64))
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    penalty = RIDGE_L2 * len(y) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    w = np.linalg.solve(xs.T @ xs + penalty, xs.T @ y) / scale
    smear = float(np.mean(np.exp(np.clip(y - x @ w, -MAX_LOG_TOKENS, MAX_LOG_TOKENS))))
    return LengthModel(tuple(float(v) for v in w), smear)


def mean_e2e_s(config: SimConfig, specs: Sequence[RequestSpec]) -> float:
    """The mean end-to-end latency of `specs` simulated under `config`."""
    return float(summarize(simulate(config, specs).records).e2e_s.mean)  # type: ignore[arg-type]


def _config(base: SimConfig, model: RouterModel) -> SimConfig:
    return replace(base, router="intelligent",
                   router_params={"mode": "rl", "router_model": model, "randomize_ties": False})


def _windows(specs: Sequence[RequestSpec], size: int, rng: random.Random, count: int,
             ) -> list[list[RequestSpec]]:
    last = len(specs) - size
    return [list(specs[start:start + size]) for start in
            (rng.randint(0, last) if last > 0 else 0 for _ in range(count))]


def train_router_model(specs: Sequence[RequestSpec], base: SimConfig, *, window: int = 800,
                       iterations: int = 10, pairs: int = 2, sigma: float = 0.4,
                       step: float = 0.3, train_fraction: float = 0.7, seed: int = 0,
                       say: Callable[[str], None] = lambda text: None) -> RouterModel:
    """The trained model for `base`'s cluster (see the module doc); `specs` sorted by arrival."""
    num_train = int(len(specs) * train_fraction)
    train, held_out = list(specs[:num_train]), list(specs[num_train:])
    window = min(window, len(train), max(len(held_out), 1))
    if window < MIN_WINDOW or len(held_out) < MIN_WINDOW:
        raise ConfigError(f"{len(specs)} requests split into {len(train)} to train on and "
                          f"{len(held_out)} held out; each needs at least {MIN_WINDOW} (give "
                          "more --num-requests or change --train-fraction)")
    length = fit_length_model(train)
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    theta = np.zeros(len(FEATURE_NAMES))

    def model(log_weights: np.ndarray) -> RouterModel:
        return RouterModel(length=length, log_weights=tuple(float(w) for w in log_weights),
                           model=base.model, gpu=base.gpu, num_replicas=base.num_replicas)

    for it in range(iterations):
        [episode] = _windows(train, window, rng, 1)
        grad = np.zeros_like(theta)
        gains = []
        for _ in range(pairs):
            eps = noise.standard_normal(len(theta))
            plus = mean_e2e_s(_config(base, model(theta + sigma * eps)), episode)
            minus = mean_e2e_s(_config(base, model(theta - sigma * eps)), episode)
            gain = (minus - plus) / max(plus + minus, 1e-12)  # > 0: theta + eps was faster
            grad += gain * eps
            gains.append(gain)
        norm = float(np.linalg.norm(grad))
        if norm > 0:
            theta = np.clip(theta + step * STEP_DECAY ** it * grad / norm, -MAX_LOG_WEIGHT,
                            MAX_LOG_WEIGHT)
        say(f"iteration {it + 1}/{iterations}: pair gains "
            f"{', '.join(f'{100 * g:+.2f}%' for g in gains)}; weights "
            + " ".join(f"{n}={math.exp(w):.2f}" for n, w in zip(FEATURE_NAMES, theta,
                                                               strict=True)))
    checks = _windows(held_out, window, rng, NUM_HELD_OUT_WINDOWS)
    learned = sum(mean_e2e_s(_config(base, model(theta)), w) for w in checks) / len(checks)
    heuristic = sum(mean_e2e_s(_config(base, model(np.zeros_like(theta))), w)
                    for w in checks) / len(checks)
    kept = "learned" if learned < heuristic else "heuristic"
    say(f"held out ({len(checks)} windows of {window}): mean E2E learned {learned:.3f} s, "
        f"heuristic {heuristic:.3f} s; keeping the {kept} weights")
    final = theta if kept == "learned" else np.zeros_like(theta)
    return replace(model(final), info={
        "num_train_requests": len(train), "num_held_out_requests": len(held_out),
        "held_out_mean_e2e_s": {"learned": learned, "heuristic": heuristic}, "kept": kept,
        "iterations": iterations, "pairs": pairs, "window": window, "seed": seed})


def run_train_router(args: argparse.Namespace) -> int:
    if not 0.0 < args.train_fraction < 1.0:
        raise ConfigError(f"--train-fraction must be between 0 and 1 (exclusive), got "
                          f"{args.train_fraction}")
    for name in ("speedup", "sigma", "step"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"--{name} must be a finite number > 0, got {value}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    console = stdout_console()

    def say(text: str) -> None:
        if not args.quiet:
            console.print(text, markup=False, highlight=False, soft_wrap=True)

    out = Path(args.out)
    base = SimConfig(model=args.model, gpu=args.gpu, num_replicas=args.replicas)
    with _reserved(out) as tmp:
        specs = load_workload(args.trace, args.trace_format, num_requests=args.num_requests,
                              seed=args.seed, sort=True)
        specs = [replace(s, arrival_s=s.arrival_s / args.speedup) for s in specs]
        say(f"training on {args.trace}: {len(specs)} requests, {args.replicas}x {args.model} "
            f"on {args.gpu}, arrivals sped up {args.speedup:g}x")
        model = train_router_model(
            specs, base, window=args.window, iterations=args.iterations, pairs=args.pairs,
            sigma=args.sigma, step=args.step, train_fraction=args.train_fraction,
            seed=args.seed, say=say)
        model = replace(model, info={**model.info, "trace": str(args.trace),
                                     "speedup": args.speedup})
        try:
            save_model(model, tmp)
            tmp.replace(out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    console.print(f"wrote {out}\nuse it in a scenario's [cluster] table: router = "
                  f"\"intelligent\", router_params = {{ mode = \"rl\", model_path = "
                  f"{json.dumps(str(out))}, llm = \"{args.model}\", num_replicas = "
                  f"{args.replicas} }}", markup=False, highlight=False, soft_wrap=True)
    return 0

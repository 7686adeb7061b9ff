"""A cost model fitted to measured step times of a live backend (`shunter profile`).

Where the roofline model derives step time from datasheet peaks, this one is fitted to what
a real backend did: (StepShape, seconds) samples measured in-process on the reference engine
(exact shapes, full step periods) or from outside through the OpenAI API (TTFT of a lone
prompt ~ one prefill step; the inter-token gap of B concurrent streams ~ one decode step of
B requests). The model, all coefficients >= 0, fitted by non-negative least squares on
relative error (each sample weighted by 1 / its time, so 30 ms decodes count as much as 3 s
prefills):

    step_s = fixed_s + base(num_tokens) + s_per_prefill_chunk * num_prefill_chunks
             + s_per_prefill_pair * sum(n * (context + n) over chunks)
             + s_per_decode_kv_token * decode context tokens

`base` is piecewise linear and non-decreasing in the step's token count, with breakpoints at
measured token counts (at least doubling); it captures the GEMMs' batching curve (flat while
memory-bound, then linear) without assuming where the knee is. Below the first breakpoint it
is 0, beyond the last its last slope continues. The per-chunk term holds what a new prompt
costs once (for a profile taken over HTTP: request parsing, tokenization, the first chunk's
round trip).

A profile file is JSON (`save_profile` / `load_profile`) holding the coefficients, the KV
capacity and the samples (so it can be refitted). The registry's `profile` cost model reads
one: `cost_model = "profile"` with `gpu = "<path to the profile file>"` (the file stands in for
the hardware: it describes one replica of one model on one device).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shunter.core.types import DEFAULT_BLOCK_SIZE, StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec
from shunter.sim.cost.profile_fit import fit_coefficients

__all__ = [
    "DEFAULT_HOST_BANDWIDTH_BYTES_S",
    "PROFILE_FORMAT",
    "ProfileCostModel",
    "StepProfile",
    "fit_profile",
    "load_profile",
    "profile_cost_model",
    "save_profile",
]

PROFILE_FORMAT = "shunter-step-profile/1"
# Host<->device copies are not measured by the profiler; a CPU "device" copies within DRAM.
# Estimate: ~10 GB/s for one memcpy stream on a server CPU.
DEFAULT_HOST_BANDWIDTH_BYTES_S = 10e9
KV_TRANSFER_LATENCY_S = 50e-6  # as in the roofline model; estimate


@dataclass(frozen=True, slots=True, kw_only=True)
class StepProfile:
    """Fitted step-time coefficients of one replica, plus what the simulator needs besides."""

    model: str
    source: str  # what was measured: "engine:<model>" or the endpoint's URL
    knots_tokens: tuple[int, ...]  # breakpoints of base(num_tokens), increasing
    slopes_s_per_token: tuple[float, ...]  # one per knot: base's slope right of it
    fixed_s: float
    s_per_prefill_chunk: float
    s_per_prefill_pair: float
    s_per_decode_kv_token: float
    max_model_len: int
    kv_bytes_per_token: int
    kv_capacity_tokens: int | None = None  # None: unknown, the scenario must set num_blocks
    host_bandwidth_bytes_s: float = DEFAULT_HOST_BANDWIDTH_BYTES_S
    samples: tuple[tuple[StepShape, float], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.knots_tokens) != len(self.slopes_s_per_token) or not self.knots_tokens:
            raise ConfigError("a step profile needs one slope per knot and at least one knot")
        if list(self.knots_tokens) != sorted(set(self.knots_tokens)):
            raise ConfigError(f"profile knots must increase, got {self.knots_tokens}")
        coefficients = (self.fixed_s, self.s_per_prefill_chunk, self.s_per_prefill_pair,
                        self.s_per_decode_kv_token, *self.slopes_s_per_token)
        if any(not np.isfinite(c) or c < 0 for c in coefficients):
            raise ConfigError("profile coefficients must be finite and >= 0")
        if self.max_model_len < 1 or self.kv_bytes_per_token < 1:
            raise ConfigError("profile max_model_len and kv_bytes_per_token must be >= 1")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < 1:
            raise ConfigError("profile kv_capacity_tokens must be >= 1 (or absent)")

    def errors(self) -> dict[str, float]:
        """How well the fit reproduces its own samples: mean and max relative error."""
        model = ProfileCostModel(self)
        rel = [abs(model.step_time_s(shape) - s) / s for shape, s in self.samples if s > 0]
        if not rel:
            return {}
        return {"mean_rel_error": float(np.mean(rel)), "max_rel_error": float(np.max(rel))}


def fit_profile(samples: Iterable[tuple[StepShape, float]], *, model: str, source: str,
                max_model_len: int, kv_bytes_per_token: int,
                kv_capacity_tokens: int | None = None) -> StepProfile:
    """Fit the module's step-time model to measured (shape, seconds) samples."""
    pairs = [(shape, float(s)) for shape, s in samples if shape.num_tokens > 0]
    knots, slopes, fixed_s, per_chunk, per_pair, per_kv = fit_coefficients(pairs)
    return StepProfile(model=model, source=source, knots_tokens=knots, slopes_s_per_token=slopes,
                       fixed_s=fixed_s, s_per_prefill_chunk=per_chunk, s_per_prefill_pair=per_pair,
                       s_per_decode_kv_token=per_kv, max_model_len=max_model_len,
                       kv_bytes_per_token=kv_bytes_per_token,
                       kv_capacity_tokens=kv_capacity_tokens, samples=tuple(pairs))


class ProfileCostModel:
    """The CostModel protocol over a StepProfile."""

    __slots__ = ("_base_at_knots", "block_size", "profile")

    def __init__(self, profile: StepProfile, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.profile = profile
        self.block_size = block_size
        # base() at each knot: the sum of full segments to its left
        values, total = [], 0.0
        knots, slopes = profile.knots_tokens, profile.slopes_s_per_token
        for i, knot in enumerate(knots):
            values.append(total)
            if i + 1 < len(knots):
                total += slopes[i] * (knots[i + 1] - knot)
        self._base_at_knots = tuple(values)

    def base_time_s(self, num_tokens: int) -> float:
        """The token-count part of a step: 0 up to the first knot, then piecewise linear."""
        knots = self.profile.knots_tokens
        i = bisect.bisect_right(knots, num_tokens) - 1
        if i < 0:
            return 0.0
        return self._base_at_knots[i] + self.profile.slopes_s_per_token[i] * (num_tokens - knots[i])

    def _fixed_part_s(self, num_tokens: int, num_chunks: int, num_pairs: int) -> float:
        p = self.profile
        return (p.fixed_s + self.base_time_s(num_tokens) + p.s_per_prefill_chunk * num_chunks
                + p.s_per_prefill_pair * num_pairs)

    def step_time_s(self, shape: StepShape) -> float:
        """Predicted wall time of one step of this shape (module docstring)."""
        num_tokens = shape.num_tokens
        if num_tokens == 0:
            return self.profile.fixed_s
        num_pairs = sum(n * (ctx + n) for n, ctx in shape.prefill_chunks)
        fixed = self._fixed_part_s(num_tokens, len(shape.prefill_chunks), num_pairs)
        return fixed + self.profile.s_per_decode_kv_token * shape.num_decode_context_tokens

    def decode_step_line_s(self, num_decodes: int) -> tuple[float, float]:
        """`step_time_s` of a decode-only step is `fixed + slope * context tokens`, with the
        same float operations, so equal bit for bit."""
        return self._fixed_part_s(num_decodes, 0, 0), self.profile.s_per_decode_kv_token

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        """KV bytes of `num_blocks` blocks over the (estimated) host copy bandwidth."""
        if num_blocks <= 0:
            return 0.0
        size = num_blocks * self.block_size * self.profile.kv_bytes_per_token
        return size / self.profile.host_bandwidth_bytes_s

    def kv_transfer_time_s(self, num_tokens: int, bandwidth_bytes_s: float) -> float:
        if bandwidth_bytes_s <= 0:
            raise ValueError(f"bandwidth_bytes_s must be > 0, got {bandwidth_bytes_s}")
        if num_tokens <= 0:
            return 0.0
        size = num_tokens * self.profile.kv_bytes_per_token
        return KV_TRANSFER_LATENCY_S + size / bandwidth_bytes_s

    def num_kv_blocks(self, block_size: int) -> int:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        capacity = self.profile.kv_capacity_tokens
        if capacity is None:
            raise ConfigError(f"profile of {self.profile.source} does not know the KV capacity: "
                              "set num_blocks in the scenario")
        return capacity // block_size

    @property
    def kv_bytes_per_token(self) -> int:
        return self.profile.kv_bytes_per_token

    @property
    def max_model_len(self) -> int:
        return self.profile.max_model_len


# ---- files -----------------------------------------------------------------------------------

def _shape_json(shape: StepShape) -> dict[str, Any]:
    return {"prefill_chunks": [list(c) for c in shape.prefill_chunks],
            "num_decode_requests": shape.num_decode_requests,
            "num_decode_context_tokens": shape.num_decode_context_tokens}


def save_profile(profile: StepProfile, path: str | Path) -> Path:
    """Write `profile` as JSON (format PROFILE_FORMAT), samples and fit errors included."""
    body = {"format": PROFILE_FORMAT, "model": profile.model, "source": profile.source,
            "coefficients": {"knots_tokens": list(profile.knots_tokens),
                             "slopes_s_per_token": list(profile.slopes_s_per_token),
                             "fixed_s": profile.fixed_s,
                             "s_per_prefill_chunk": profile.s_per_prefill_chunk,
                             "s_per_prefill_pair": profile.s_per_prefill_pair,
                             "s_per_decode_kv_token": profile.s_per_decode_kv_token},
            "max_model_len": profile.max_model_len,
            "kv_bytes_per_token": profile.kv_bytes_per_token,
            "kv_capacity_tokens": profile.kv_capacity_tokens,
            "host_bandwidth_bytes_s": profile.host_bandwidth_bytes_s,
            "fit": profile.errors(),
            "samples": [{**_shape_json(shape), "step_s": s} for shape, s in profile.samples]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _sample(row: dict[str, Any]) -> tuple[StepShape, float]:
    shape = StepShape(prefill_chunks=tuple((int(n), int(c)) for n, c in row["prefill_chunks"]),
                      num_decode_requests=int(row["num_decode_requests"]),
                      num_decode_context_tokens=int(row["num_decode_context_tokens"]))
    return shape, float(row["step_s"])


def load_profile(path: str | Path) -> StepProfile:
    """Read a profile file; ConfigError naming the file if it is not one."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read profile {path}: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != PROFILE_FORMAT:
        raise ConfigError(f"{path} is not a step profile (format {PROFILE_FORMAT!r}); make one "
                          "with `shunter profile`")
    try:
        c = body["coefficients"]
        return StepProfile(
            model=str(body["model"]), source=str(body["source"]),
            knots_tokens=tuple(int(k) for k in c["knots_tokens"]),
            slopes_s_per_token=tuple(float(s) for s in c["slopes_s_per_token"]),
            fixed_s=float(c["fixed_s"]), s_per_prefill_chunk=float(c["s_per_prefill_chunk"]),
            s_per_prefill_pair=float(c["s_per_prefill_pair"]),
            s_per_decode_kv_token=float(c["s_per_decode_kv_token"]),
            max_model_len=int(body["max_model_len"]),
            kv_bytes_per_token=int(body["kv_bytes_per_token"]),
            kv_capacity_tokens=None if body.get("kv_capacity_tokens") is None
            else int(body["kv_capacity_tokens"]),
            host_bandwidth_bytes_s=float(body.get("host_bandwidth_bytes_s",
                                                  DEFAULT_HOST_BANDWIDTH_BYTES_S)),
            samples=tuple(_sample(row) for row in body.get("samples", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed step profile ({exc!r})") from None


def profile_cost_model(model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1) -> ProfileCostModel:
    """The registry's factory: `gpu` is the profile file's path (it stands in for the hardware:
    one replica of one model on one device), `model` is not consulted, `tp` must be 1."""
    if tp != 1:
        raise ConfigError(f"a step profile describes a whole replica; set tp = 1, got {tp}")
    if not isinstance(gpu, str):
        raise ConfigError("the profile cost model needs gpu = <path to a profile file>")
    return ProfileCostModel(load_profile(gpu))


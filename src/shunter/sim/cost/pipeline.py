"""Pipeline parallelism (`pp`), as vLLM runs it: a replica is `pp` stages of `tp` GPUs each.

Stage `s` holds a contiguous slice of the decoder layers, split as vLLM's `get_pp_indices`
splits them (`vllm/distributed/utils.py`, no `VLLM_PP_LAYER_PARTITION`): `L // pp` layers each,
and the `L % pp` left over go one each to the stages just before the last (the last stage also
holds the LM head, so it gets the fewest). The first stage holds the embedding, the last the
final norm and the LM head; each keeps the KV cache of its own layers only.

Between two stages, each batch's activations go point to point: vLLM's `IntermediateTensors`
of a Llama-style model carry `hidden_states` and `residual`, `PIPELINE_TENSORS` tensors of
`tokens x hidden x dtype` bytes, split over the `tp` ranks of the stage (vLLM's
`send_tensor_dict(..., all_gather_group=tp group)` sends 1/tp from each rank and all-gathers on
the receiver, which is ignored here). The sending stage is busy until its send completes.

`shunter.sim.cost.roofline` folds these into per-stage step times (`stage_times_s`);
`shunter.sim.pipeline` runs up to `pp` batches through the stages.
"""

from __future__ import annotations

from typing import Protocol

from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import ModelSpec

__all__ = ["P2P_LATENCY_S", "PIPELINE_TENSORS", "StagedCostModel", "check_pipeline",
           "pipeline_layers", "stage_kv_tokens"]

# One point-to-point send between GPUs of a node, fixed part. Vidur's measured send_recv.csv
# (../shared/vidur-profiling/network, devices_per_node = 2, i.e. within a node), least-squares
# `latency + bytes / bandwidth` over its 994 sizes: h100_dgx 8.0 us + bytes / 362 GB/s,
# a100_dgx 4.7 us + bytes / 235 GB/s, a100/h100 pairwise NVLink 3.3 us + bytes / 318 GB/s.
# The bytes term uses the GPU's link at its efficiency (catalog: H100 450 GB/s x 0.75 = 338,
# A100 300 x 0.6 = 180 GB/s), within 25% of those fits; the latency is the H100 DGX fit.
P2P_LATENCY_S = 8e-6
PIPELINE_TENSORS = 2  # hidden_states and residual (vLLM's Llama IntermediateTensors)


def check_pipeline(model: ModelSpec, pp: int) -> None:
    """ConfigError unless `model` can be split into `pp` pipeline stages."""
    if type(pp) is bool or not isinstance(pp, int):
        raise ConfigError(f"pp must be a whole number, got {pp!r}")
    if pp < 1:
        raise ConfigError(f"pp must be >= 1, got {pp}")
    if pp > model.num_layers:
        raise ConfigError(f"pp={pp} is more pipeline stages than {model.name}'s "
                          f"{model.num_layers} layers")
    if pp > 1 and model.is_moe:
        raise ConfigError(f"pp={pp}: pipeline parallelism is modelled for dense models only, "
                          f"not {model.name} (mixture of experts)")


def pipeline_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers of each of `pp` stages, first to last, as vLLM's `get_pp_indices` splits them."""
    assert 1 <= pp <= num_layers, f"pp={pp} for {num_layers} layers"
    layers = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        layers[-i] += 1
    return tuple(layers)


def stage_kv_tokens(what: str, stage_layers: tuple[int, ...], *, layer_bytes: int,
                    vocab_bytes: int, norm_bytes: int, reserve_bytes: int, budget_bytes: int,
                    kv_bytes_per_layer_token: int) -> int:
    """Tokens of KV a replica of these stages holds: each GPU of stage s holds its layers'
    weights (plus the embedding on the first stage, the final norm and the LM head on the last),
    `reserve_bytes` of activations and runtime, and its layers' KV in what is left of
    `budget_bytes`; the replica holds what its tightest stage does (vLLM takes the minimum of
    its workers' block counts). ConfigError naming `what` if a stage's weights do not fit."""
    last, tokens = len(stage_layers) - 1, -1
    for s, num_layers in enumerate(stage_layers):
        weights = (num_layers * layer_bytes + (vocab_bytes if s == 0 else 0)
                   + (vocab_bytes + norm_bytes if s == last else 0))
        usable = budget_bytes - weights - reserve_bytes
        if usable <= 0:
            gib = 1 << 30
            raise ConfigError(
                f"{what} does not fit: stage {s} holds {weights / gib:.1f} GiB of weights "
                f"({num_layers} layers) + {reserve_bytes / gib:.1f} GiB activations/runtime a GPU, "
                f"over its {budget_bytes / gib:.1f} GiB; use more GPUs (pp or tp) or a larger GPU")
        stage_tokens = usable // (num_layers * kv_bytes_per_layer_token)
        tokens = stage_tokens if tokens < 0 else min(tokens, stage_tokens)
    return tokens


class StagedCostModel(Protocol):
    """A cost model that prices each pipeline stage of a step (roofline with `pp` > 1)."""

    pp: int

    def stage_times_s(self, shape: StepShape) -> list[float]:
        """Busy time of each stage, first to last, for one batch of this shape (a stage's
        send of its activations to the next included)."""
        ...

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        """Host<->device copy time of `num_blocks` KV blocks (each stage copies its own)."""
        ...

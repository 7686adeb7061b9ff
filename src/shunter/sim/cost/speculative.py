"""Speculative decoding: its settings, and the step time of a replica that speculates.

Settings follow vLLM's `speculative_config` where it has a name: `method` ("draft_model",
"eagle" or "ngram"), `num_speculative_tokens` (k, drafts per decode and step) and `model` (the
draft model, method "draft_model"). `acceptance_rate` (the probability that the target accepts
a draft token, i.i.d. per token as in Leviathan et al. 2023; vLLM reports it as the
`spec_decode` acceptance rate metric) and `seed` (of the acceptance draws) are the
simulator's, standing in for the model pair and the workload.

A step with speculation (`SpeculativeCostModel.step_time_s`) is two things, as in vLLM v1's
model runner, which proposes drafts right after the target's forward pass:

- the target's verification pass: the step as scheduled, each decode carrying 1 + d query
  tokens with logits for all (`StepShape.num_decode_draft_tokens`; the roofline prices them,
  `shunter.sim.cost.roofline`);
- the drafter proposing the next step's drafts:
  * "draft_model": a smaller model of the same vocabulary, on the target's GPUs at the target's
    TP (vLLM's `draft_tensor_parallel_size` default), priced by the same roofline: a first pass
    over every token the target just processed (the draft model keeps its own KV of prompts
    and accepted tokens), then k - 1 one-token passes over the decodes;
  * "eagle": the same passes through an EAGLE head, one decoder layer of the target's shape
    feeding the target's LM head (Li et al. 2024, EAGLE: "a single transformer decoder
    layer"; its input FC layer, 2h x h, is left out: under 1% of a layer of Llama-3-8B);
  * "ngram": no GPU work; prompt-lookup matching on the CPU, scanning each decode's token
    history (`NGRAM_S_PER_CONTEXT_TOKEN`), on the step's critical path as in vLLM.
  Passes of the drafter carry none of the step's fixed CPU overhead (vLLM runs them inside the
  same step, with CUDA graphs). The first proposals after a prompt (k - 1 passes for a prompt's
  first token) are not charged: `StepShape` does not say which prefill chunk samples.

Memory: the draft model's weights (an EAGLE head: one layer; it shares the target's
embeddings and LM head) and its KV cache, which vLLM keeps in the same blocks as the target's,
come out of the KV budget: `num_kv_blocks` is (the target's KV bytes - the draft's weights) /
(target + draft KV bytes per token).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from shunter.core.types import StepShape, check_number
from shunter.errors import ConfigError, check_keys
from shunter.sim.cost.catalog import ModelSpec, get_model
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.moe import roofline_cost_model
from shunter.sim.cost.roofline import RooflineCostModel

__all__ = ["METHODS", "NGRAM_S_PER_CONTEXT_TOKEN", "SpeculativeConfig", "SpeculativeCostModel",
           "eagle_head", "speculative_cost_model"]

METHODS = ("draft_model", "eagle", "ngram")
# vLLM's n-gram proposer scans each proposing request's token history on the CPU, on the
# critical path of the step. vLLM PR #56732's microbenchmark of the batch-parallel proposer
# (PR #24986, 8 threads) on an H100 host: 9.95 ms for 512 requests of 129,536 tokens (66.3M
# tokens scanned): 1.5e-10 s per token of context.
NGRAM_S_PER_CONTEXT_TOKEN = 9.95e-3 / 66.3e6


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeculativeConfig:
    """Speculative decoding of a simulated cluster (a scenario's [speculative] table)."""

    num_speculative_tokens: int
    acceptance_rate: float
    method: str | None = None  # None: "draft_model" with a model, else an error
    model: str | None = None  # the draft model (method "draft_model"), a catalog name
    seed: int = 0  # of the acceptance draws (one stream per request)

    def __post_init__(self) -> None:
        k = self.num_speculative_tokens
        if type(k) is not int or k < 1:
            raise ConfigError(f"speculative num_speculative_tokens must be a whole number >= 1, "
                              f"got {k!r}")
        try:
            check_number("speculative acceptance_rate", self.acceptance_rate, ge=0, lt=1)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if type(self.seed) is not int:
            raise ConfigError(f"speculative seed must be a whole number, got {self.seed!r}")
        if self.method is None and self.model is None:
            raise ConfigError(f"speculative decoding needs a method ({', '.join(METHODS)}) "
                              "or a draft model")
        if self.method is not None and self.method not in METHODS:
            raise ConfigError(f"unknown speculative method {self.method!r}; valid: "
                              f"{', '.join(METHODS)}")
        if self.draft_method == "draft_model":
            if not isinstance(self.model, str):
                raise ConfigError("speculative method 'draft_model' needs a draft model "
                                  "(speculative model)")
            get_draft_model(self.model)
        elif self.model is not None:
            raise ConfigError(f"speculative model is the draft model of method 'draft_model'; "
                              f"method {self.method!r} takes none")

    @property
    def draft_method(self) -> str:
        return self.method or "draft_model"

    @classmethod
    def from_table(cls, data: Any, where: str = "[speculative]") -> SpeculativeConfig:
        """Build from a scenario's table: ConfigError naming an unknown or missing key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table, got {data!r}")
        check_keys(data, (f.name for f in fields(cls)), where)
        missing = {"num_speculative_tokens", "acceptance_rate"} - set(data)
        if missing:
            raise ConfigError(f"{where} needs {' and '.join(sorted(missing))}")
        return cls(**data)

    def check_target(self, target: ModelSpec | str) -> None:
        """ConfigError unless the draft model can draft for `target` (same vocabulary)."""
        if self.draft_method != "draft_model":
            return
        assert self.model is not None
        spec = target if isinstance(target, ModelSpec) else get_model(target)
        draft = get_draft_model(self.model)
        if draft.vocab_size != spec.vocab_size:
            raise ConfigError(f"speculative model {draft.name} has a vocabulary of "
                              f"{draft.vocab_size} tokens, the target {spec.name} "
                              f"{spec.vocab_size}: a draft model must share the target's")


def get_draft_model(name: str) -> ModelSpec:
    """The catalog model `name`, a ConfigError naming the setting if unknown."""
    try:
        return get_model(name)
    except ConfigError as exc:
        raise ConfigError(f"speculative model: {exc}") from None


def eagle_head(target: ModelSpec) -> ModelSpec:
    """An EAGLE draft head for `target`: one dense decoder layer of its attention shape (its
    MLP at the target's dense intermediate size), with the target's vocabulary."""
    return ModelSpec(name=f"{target.name}-eagle", num_layers=1, hidden_size=target.hidden_size,
                     intermediate_size=target.intermediate_size,
                     num_attention_heads=target.num_attention_heads,
                     num_kv_heads=target.num_kv_heads, head_dim=target.head_dim,
                     vocab_size=target.vocab_size, max_model_len=target.max_model_len,
                     dtype_bytes=target.dtype_bytes)


class SpeculativeCostModel:
    """A target cost model plus the drafter's work and memory (see the module docstring)."""

    def __init__(self, target: CostModel, num_spec_tokens: int, drafter: CostModel | None,
                 *, draft_weight_bytes: int = 0, draft_kv_bytes_per_token: int = 0) -> None:
        self.target = target
        self.num_spec_tokens = num_spec_tokens
        self.drafter = drafter  # None: n-gram proposals on the CPU
        self.draft_weight_bytes = draft_weight_bytes
        self.draft_kv_bytes_per_token = draft_kv_bytes_per_token
        # the drafter's fixed CPU overhead, which its passes inside the step do not repeat
        self._draft_cpu_s = 0.0 if drafter is None else drafter.step_time_s(StepShape())
        self._lines: dict[int, tuple[float, float]] = {}

    def draft_time_s(self, shape: StepShape) -> float:
        """The drafter's time in a step of this shape: proposing the next step's drafts."""
        n = shape.num_decode_requests
        if self.drafter is None:
            return NGRAM_S_PER_CONTEXT_TOKEN * (shape.num_decode_context_tokens
                                                + shape.num_decode_draft_tokens + n)
        if shape.num_tokens == 0:
            return 0.0
        first_s = self.drafter.step_time_s(shape) - self._draft_cpu_s
        if not n or self.num_spec_tokens == 1:
            return first_s
        line = self._lines.get(n)
        if line is None:
            line = self._lines[n] = self.drafter.decode_step_line_s(n)
        fixed_s, slope_s = line
        # passes 2..k, each one token per decode after the tokens this step verified
        passes = self.num_spec_tokens - 1
        context = shape.num_decode_context_tokens + shape.num_decode_draft_tokens + n
        context_sum = passes * context + n * passes * (passes - 1) // 2
        return first_s + passes * (fixed_s - self._draft_cpu_s) + slope_s * context_sum

    # ---- the CostModel protocol -----------------------------------------------------------

    def step_time_s(self, shape: StepShape) -> float:
        """The target's (verification) pass plus the drafter's proposals."""
        return self.target.step_time_s(shape) + self.draft_time_s(shape)

    def decode_step_line_s(self, num_decodes: int) -> tuple[float, float]:
        """(fixed, slope) of decode-only steps of `num_decodes` requests with k drafts each;
        to rounding only (the simulator takes no bulk decode runs under speculation)."""
        shape = StepShape(num_decode_requests=num_decodes,
                          num_decode_draft_tokens=num_decodes * self.num_spec_tokens)
        slope = self.target.decode_step_line_s(num_decodes)[1]
        if self.drafter is None:
            slope += NGRAM_S_PER_CONTEXT_TOKEN
        else:
            slope += self.num_spec_tokens * self.drafter.decode_step_line_s(num_decodes)[1]
        return self.step_time_s(shape), slope

    def swap_time_s(self, num_blocks: int, num_runs: int | None = None) -> float:
        """The target's KV copy and the drafter's (kept in the same blocks)."""
        draft_s = 0.0 if self.drafter is None else self.drafter.swap_time_s(num_blocks, num_runs)
        return self.target.swap_time_s(num_blocks, num_runs) + draft_s

    def kv_transfer_time_s(self, num_tokens: int, bandwidth_bytes_s: float) -> float:
        """The target's KV and the drafter's, over one link."""
        return (self.target.kv_transfer_time_s(num_tokens, bandwidth_bytes_s)
                + num_tokens * self.draft_kv_bytes_per_token / bandwidth_bytes_s)

    def num_kv_blocks(self, block_size: int) -> int:
        """Blocks of target + draft KV that fit beside both models' weights."""
        target_kv = self.kv_bytes_per_token - self.draft_kv_bytes_per_token
        usable = (self.target.num_kv_blocks(block_size) * block_size * target_kv
                  - self.draft_weight_bytes)
        num_blocks = usable // (block_size * self.kv_bytes_per_token)
        if num_blocks < 1:
            raise ConfigError(f"the speculative draft's weights ({self.draft_weight_bytes / 2**30:.1f}"
                              " GiB) leave no room for the KV cache")
        return num_blocks

    @property
    def kv_bytes_per_token(self) -> int:
        target_kv: int = self.target.kv_bytes_per_token  # type: ignore[attr-defined]
        return target_kv + self.draft_kv_bytes_per_token

    @property
    def max_model_len(self) -> int:
        return self.target.max_model_len


def speculative_cost_model(target: CostModel, config: SpeculativeConfig) -> SpeculativeCostModel:
    """Wrap a roofline cost model with `config`'s drafter (same GPUs, same TP)."""
    if not isinstance(target, RooflineCostModel):
        raise ConfigError("speculative decoding needs the roofline cost model")
    if getattr(target, "pp", 1) > 1:
        raise ConfigError("speculative decoding with pipeline parallelism (pp > 1) is not "
                          "modelled")
    config.check_target(target.model)
    k = config.num_speculative_tokens
    method = config.draft_method
    if method == "ngram":
        return SpeculativeCostModel(target, k, None)
    if method == "eagle":
        head = eagle_head(target.model)
        drafter: RooflineCostModel = RooflineCostModel(head, target.gpu, target.tp)
        weights = head.num_params_per_layer * head.dtype_bytes  # embeddings, LM head: shared
    else:
        assert config.model is not None
        spec = get_draft_model(config.model)
        try:
            drafter = roofline_cost_model(spec, target.gpu, target.tp)
        except ConfigError as exc:
            raise ConfigError(f"speculative model {spec.name}: {exc}") from None
        weights = spec.weight_bytes
    return SpeculativeCostModel(target, k, drafter, draft_weight_bytes=weights,
                                draft_kv_bytes_per_token=drafter.kv_bytes_per_token)

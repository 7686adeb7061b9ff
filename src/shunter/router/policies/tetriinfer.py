"""TetriInfer's decode placement: predicted decode length -> a bucket -> the decode instance
where heavy decodes do not pile up.

Paper (Hu et al., "Inference without Interference: Disaggregate LLM Inference for Mixed
Downstream Workloads", arXiv 2401.11181, 2024): three pillars. (1) Prompts are cut into
fixed-size chunks so each prefill batch sits at the accelerator's saturation point; (2) prefill
and decode run on separate instances; (3) a two-level scheduler: a centralized control plane
sends requests to prefill instances, whose local scheduler orders the chunked prefills (FCFS,
or shortest / longest prompt first); a small length-prediction model (a fine-tuned OPT-125M
classifier on the prompt) runs beside each prefill and puts the request's decode length in a
length bucket; the prefill side's dispatcher then picks the decode instance with the least
predicted interference so that heavy decodes do not pile up on one instance (the paper's
summaries: decode-decode interference costs up to 16% throughput and 23% latency, prefill-
prefill up to 10x, prefill-decode up to 5x; alphaxiv.org/overview/2401.11181). Claim, against
a vLLM-like colocated baseline: "uses 38% less resources all the while lowering average TTFT
and average JCT by 97% and 47%" (arXiv abstract; arxiv.org/html/2401.11181v1).

This module is pillar 3's dispatcher, as a decode router (`decode_router = "tetriinfer"`, set
by `topology = "tetriinfer"`, which also brings pillars 1 and 2: `shunter.sim.config`):

- Prediction, at arrival, from arrival facts only (a router sees a `RequestSpec`, no text):
  `predictor = "table"` looks the bucket up in a table fitted on a trace
  (`fit_length_buckets`: the most frequent bucket per tenant and log2 prompt-length bin,
  backed off to the bin over all tenants, then to the whole trace). The tenant stands in for
  the downstream task the paper's classifier reads from the prompt text (ours). Untrained
  (no table) every request gets `default_output_tokens`'s bucket and placement falls back to
  least predicted load. `predictor = "oracle"` buckets the trace's true length: an upper
  bound, simulator only. Prediction cost is not charged (the paper runs it beside the prefill).
- Heavy decode: a predicted length >= `heavy_decode_tokens` (512; ours, the paper's heavy/light
  line is a workload class boundary). Bucket width `bucket_tokens` (200; ours).
- Load ledger (ours): the paper's decode instances broadcast their heavy/light counts; a
  `ReplicaView` has no classes, so the router keeps what it dispatched: each request counts on
  its decode instance for its predicted decode time (bucket midpoint x the view's decode step
  time, or `default_decode_step_s`) from its arrival, the clock being the request's arrival.
- Choice: a predicted-heavy request goes where the fewest predicted-heavy decodes are live, a
  light one where the least predicted decode work is (the paper's aim; its exact selection
  algorithm could not be consulted here, only the paper's abstract and summaries). Ours: the
  candidates are a power-of-two sample (`num_choices`, 0 = all) of the instances whose KV usage
  is under `max_kv_usage` (all if none is); ties: fewer live predicted tokens, fewer requests
  in the view, lower id.
- Not modelled: the decode instance's own reservation of KV for the predicted length (ours
  admits as vLLM does, greedily), and re-prediction as a decode runs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision

__all__ = ["BUCKET_TOKENS", "HEAVY_DECODE_TOKENS", "PREDICTORS", "LengthBucketPredictor",
           "TetriInferRouter", "fit_length_buckets", "table_key"]

BUCKET_TOKENS = 200
HEAVY_DECODE_TOKENS = 512
DEFAULT_OUTPUT_TOKENS = 256  # an untrained predictor's guess: a light decode
DEFAULT_DECODE_STEP_S = 0.03  # when the view carries no decode step time
PREDICTORS = ("table", "oracle")
ANY = "*"


def prompt_bin(num_prompt_tokens: int) -> int:
    """The log2 prompt-length bin (1 token -> 1, 2-3 -> 2, 4-7 -> 3, ...)."""
    return num_prompt_tokens.bit_length()


def table_key(tenant: str, bin_index: int | str) -> str:
    """A fitted table's key: "tenant/bin", with "*" for any tenant or any bin."""
    return f"{tenant}/{bin_index}"


def fit_length_buckets(specs: Iterable[RequestSpec], *, bucket_tokens: int = BUCKET_TOKENS,
                       ) -> dict[str, int]:
    """The most frequent length bucket per (tenant, prompt bin), per bin over all tenants and
    over everything ("*/*"): the `table` a "table" predictor reads. Ties go to the lower bucket."""
    check_number("bucket_tokens", bucket_tokens, ge=1)
    counts: dict[str, Counter[int]] = {}
    for spec in specs:
        bucket = spec.num_output_tokens // bucket_tokens
        b = prompt_bin(spec.num_prompt_tokens)
        for key in (table_key(spec.tenant, b), table_key(ANY, b), table_key(ANY, ANY)):
            counts.setdefault(key, Counter())[bucket] += 1
    return {key: _mode(c) for key, c in sorted(counts.items())}


def _mode(counts: Counter[int]) -> int:
    """The most frequent bucket; the lower one on a tie."""
    return min(counts, key=lambda bucket: (-counts[bucket], bucket))


@dataclass(frozen=True, slots=True)
class LengthBucketPredictor:
    """A request's decode-length bucket, from its arrival facts (or the truth, as an oracle)."""

    table: Mapping[str, int] = field(default_factory=dict)
    bucket_tokens: int = BUCKET_TOKENS
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
    is_oracle: bool = False

    def bucket(self, request: RequestSpec) -> int:
        if self.is_oracle:
            return request.num_output_tokens // self.bucket_tokens
        b = prompt_bin(request.num_prompt_tokens)
        for key in (table_key(request.tenant, b), table_key(ANY, b), table_key(ANY, ANY)):
            found = self.table.get(key)
            if found is not None:
                return found
        return self.default_output_tokens // self.bucket_tokens

    def predicted_tokens(self, request: RequestSpec) -> int:
        """The bucket's midpoint, capped by the request's own max_output_tokens."""
        tokens = self.bucket(request) * self.bucket_tokens + self.bucket_tokens // 2
        return min(tokens, request.max_output_tokens or tokens)


@dataclass(slots=True)
class _Decode:
    """One dispatched decode as the ledger counts it."""

    end_s: float
    step_s: float
    is_heavy: bool


class TetriInferRouter:
    __slots__ = ("default_decode_step_s", "heavy_decode_tokens", "ledger", "max_kv_usage",
                 "num_choices", "predictor", "rng")

    def __init__(self, *, predictor: str = "table", table: Mapping[str, int] | None = None,
                 bucket_tokens: int = BUCKET_TOKENS, heavy_decode_tokens: int = HEAVY_DECODE_TOKENS,
                 default_output_tokens: int = DEFAULT_OUTPUT_TOKENS, num_choices: int = 2,
                 max_kv_usage: float = 0.95, default_decode_step_s: float = DEFAULT_DECODE_STEP_S,
                 seed: int = 0) -> None:
        if predictor not in PREDICTORS:
            raise ValueError(f"tetriinfer predictor must be one of {', '.join(PREDICTORS)}, "
                             f"got {predictor!r}")
        if predictor == "oracle" and table:
            raise ValueError("tetriinfer: the oracle predictor reads the true length; drop table")
        check_number("bucket_tokens", bucket_tokens, ge=1)
        check_number("heavy_decode_tokens", heavy_decode_tokens, gt=0)
        check_number("default_output_tokens", default_output_tokens, ge=1)
        check_number("num_choices", num_choices, ge=0)
        check_number("max_kv_usage", max_kv_usage, gt=0, le=1)
        check_number("default_decode_step_s", default_decode_step_s, gt=0)
        for key, bucket in (table or {}).items():
            if not isinstance(key, str) or key.count("/") != 1:
                raise ValueError(f"tetriinfer table keys are 'tenant/bin' (from "
                                 f"fit_length_buckets), got {key!r}")
            check_number(f"tetriinfer table[{key!r}]", bucket, ge=0)
        self.predictor = LengthBucketPredictor(dict(table or {}), bucket_tokens,
                                               default_output_tokens, predictor == "oracle")
        self.heavy_decode_tokens = heavy_decode_tokens
        self.num_choices = num_choices
        self.max_kv_usage = max_kv_usage
        self.default_decode_step_s = default_decode_step_s
        self.rng = random.Random(seed)
        self.ledger: dict[int, list[_Decode]] = {}  # decode replica -> decodes still counted

    def live(self, replica_id: int, now_s: float) -> list[_Decode]:
        """The decodes the ledger still counts on the replica at `now_s` (older ones dropped)."""
        entries = [d for d in self.ledger.get(replica_id, ()) if d.end_s > now_s]
        self.ledger[replica_id] = entries
        return entries

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        now_s = request.arrival_s
        tokens = self.predictor.predicted_tokens(request)
        is_heavy = tokens >= self.heavy_decode_tokens
        roomy = [v for v in replicas if v.kv_usage < self.max_kv_usage] or list(replicas)
        if 0 < self.num_choices < len(roomy):
            roomy = self.rng.sample(roomy, self.num_choices)

        def key(v: ReplicaView) -> tuple[float, ...]:
            live = self.live(v.replica_id, now_s)
            work = sum((d.end_s - now_s) / d.step_s for d in live)
            heavy = sum(d.is_heavy for d in live)
            return ((heavy, work) if is_heavy else (work, heavy)) + (v.num_requests, v.replica_id)

        chosen = min(roomy, key=key)
        step_s = chosen.decode_step_s or self.default_decode_step_s
        self.ledger.setdefault(chosen.replica_id, []).append(
            _Decode(now_s + tokens * step_s, step_s, is_heavy))
        return RouteDecision(chosen.replica_id)

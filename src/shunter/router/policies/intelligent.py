"""Intelligent Router: workload-aware routing with a response-length predictor, an estimate of
the slowdown that mixing prefill-heavy and decode-heavy requests on one instance causes, and
a heuristic-guided learned policy (Jain et al., "Intelligent Router for LLM Workloads:
Improving Performance Through Workload-Aware Load Balancing", arXiv 2408.13510, 2024).

What is the paper's (from its abstract and published summaries; its full text could not be
read here): an LLM request has a compute-bound prefill and a memory-bound decode, and where it
runs should depend on both phases of it and of the requests already on each instance, not on
request counts; a trainable response-length predictor (theirs: DistilBERT over length
buckets); a latency-impact estimate of mixing workloads on one instance; routing as an MDP
solved by reinforcement learning guided by a heuristic built on that estimate; the claim,
over 11% lower end-to-end latency than existing approaches (11.43% against round robin on a
mix of public datasets, 7.8% on a production trace).

What is ours where the paper is silent or out of reach:
- Predictor: `intelligent_model.LengthModel`, a ridge regression of log(1 + output tokens) on
  prompt length and the session turn (token counts; a router sees no text), trained by
  `shunter train-router`; without a model file, every request is predicted
  `expected_output_tokens`. The prediction is capped by the request's `max_output_tokens`.
- Bookkeeping (a router sees snapshots, never completions): per instance, what this router
  sent there, each with its predicted length and an estimated decode start and step time; its
  remaining decode is aged with the clock (`now - decode start) / step`, never below
  `min_remaining_fraction` of the prediction while it is still counted). When a snapshot shows
  fewer requests than the book, the ones with the least estimated work left are taken as
  finished; requests the book does not know (sent by others) count as an average prediction.
- The mixing estimate, per candidate instance, in seconds (`FEATURE_NAMES`):
      queue_s       = waiting prompt tokens / prefill speed       (its own wait)
      prefill_s     = prompt tokens / prefill speed               (its own prefill)
      decode_s      = L * step(n + 1)                             (its own decode)
      slot_s        = a full batch: excess * mean remaining decode * step / max_num_seqs
      mix_prefill_s = prefill_s * running requests   (its prefill stalls every decode there:
                                                     prefill-heavy onto decode-heavy)
      mix_decode_s  = per_seq_s * sum_j min(remaining_j, L)  (its decode slows the steps of
                                                     every request decoding beside it)
      kv_s          = the cost router's convex KV penalty at the projected usage
  with L the predicted output length, step(n) the snapshot's decode step (else base +
  per_seq_s * n), and speeds from the snapshot when it has them.
- Heuristic (`mode="heuristic"`): the instance with the least sum of those terms, i.e. the
  least estimated increase of total latency (its own plus what it adds to the others').
- Learned policy (`mode="rl"`, `model_path=`): the least weighted sum, the weights learned in
  the simulator by `shunter train-router` (`cli/train_router.py`): parameter-space policy
  gradient (evolution strategies with antithetic pairs), episode return = minus the mean E2E
  latency of a window of the trace, starting from the heuristic's weights (all 1) and kept only
  where it beats the heuristic on held-out windows. The paper's agent is a deep RL agent over
  the whole cluster's state; ours scores each candidate with shared weights, so it needs few
  episodes, and its weights say what it learned.
Ties break at random from the seeded RNG (or by lowest id with `randomize_ties=False`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from shunter.core.types import RequestSpec, check_number
from shunter.router.interface import ReplicaView, RouteDecision
from shunter.router.policies.intelligent_model import (
    FEATURE_NAMES,
    LengthModel,
    RouterModel,
    SessionTurns,
    load_model,
)

__all__ = ["IntelligentRouter", "MODES"]

MODES = ("heuristic", "rl")
TIE_TOLERANCE_S = 1e-9
MIN_FREE_FRACTION = 1e-3  # caps the KV penalty's pole at full usage
AVERAGE_WINDOW = 256  # requests in the moving average of predictions (for unknown requests)


@dataclass(slots=True)
class _Job:
    """A request this router sent to an instance, as its book keeps it."""

    decode_start_s: float
    num_predicted_tokens: float
    step_s: float

    def remaining(self, now_s: float, floor_fraction: float) -> float:
        done = max(0.0, now_s - self.decode_start_s) / self.step_s
        return max(self.num_predicted_tokens - done,
                   floor_fraction * self.num_predicted_tokens)


class IntelligentRouter:
    __slots__ = ("_avg_prediction", "_books", "_turns", "decode_step_base_s",
                 "decode_step_per_seq_s", "kv_knee", "kv_penalty_s", "length_model",
                 "min_remaining_fraction", "mode", "num_replicas", "prefill_tokens_per_s",
                 "randomize_ties", "rng", "weights")

    def __init__(self, *, mode: str = "heuristic", model_path: str | None = None,
                 router_model: RouterModel | None = None, llm: str | None = None,
                 num_replicas: int | None = None, seed: int = 0, randomize_ties: bool = True,
                 expected_output_tokens: float = 128.0, prefill_tokens_per_s: float = 10_000.0,
                 decode_step_base_s: float = 0.012, decode_step_per_seq_s: float = 0.0001,
                 kv_knee: float = 0.8, kv_penalty_s: float = 0.1,
                 min_remaining_fraction: float = 0.1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        for name, value in (("prefill_tokens_per_s", prefill_tokens_per_s),
                            ("decode_step_base_s", decode_step_base_s),
                            ("expected_output_tokens", expected_output_tokens)):
            check_number(name, value, gt=0)
        check_number("decode_step_per_seq_s", decode_step_per_seq_s, ge=0)
        check_number("kv_knee", kv_knee, ge=0, lt=1)
        check_number("kv_penalty_s", kv_penalty_s, ge=0)
        check_number("min_remaining_fraction", min_remaining_fraction, ge=0, le=1)
        if num_replicas is not None:
            check_number("num_replicas", num_replicas, ge=1)
        if model_path is not None and router_model is not None:
            raise ValueError("give model_path or router_model, not both")
        if model_path is not None:
            router_model = load_model(model_path, model=llm, num_replicas=num_replicas)
        if mode == "rl" and router_model is None:
            raise ValueError("mode 'rl' needs model_path (a file from `shunter train-router`)")
        self.mode = mode
        self.length_model = (router_model.length if router_model is not None
                             else LengthModel.constant(expected_output_tokens))
        self.weights = (router_model.weights if mode == "rl" and router_model is not None
                        else (1.0,) * len(FEATURE_NAMES))
        self.num_replicas = router_model.num_replicas if router_model is not None else None
        self.rng = random.Random(seed)
        self.randomize_ties = randomize_ties
        self.prefill_tokens_per_s = prefill_tokens_per_s
        self.decode_step_base_s = decode_step_base_s
        self.decode_step_per_seq_s = decode_step_per_seq_s
        self.kv_knee = kv_knee
        self.kv_penalty_s = kv_penalty_s
        self.min_remaining_fraction = min_remaining_fraction
        self._turns = SessionTurns()
        self._books: dict[int, list[_Job]] = {}
        self._avg_prediction = self.length_model.predict(self._turns.features(_PROBE))

    def predict_tokens(self, request: RequestSpec) -> float:
        """Predicted output tokens of `request` (read-only: records no session turn)."""
        return self._capped(request, self.length_model.predict(self._turns.peek(request)))

    def features(self, request: RequestSpec, view: ReplicaView, num_predicted_tokens: float,
                 now_s: float) -> tuple[float, ...]:
        """The candidate instance's terms in FEATURE_NAMES order (reconciles its book)."""
        tps = view.prefill_tokens_per_s or self.prefill_tokens_per_s
        step_now = view.decode_step_s
        if step_now is None:
            step_now = self.decode_step_base_s + self.decode_step_per_seq_s * view.num_running
        step_with = step_now + self.decode_step_per_seq_s
        remaining = self._remaining(view, now_s)
        num_out = num_predicted_tokens
        prefill_s = request.num_prompt_tokens / tps
        slot_s = 0.0
        if view.max_num_seqs is not None and remaining:
            excess = view.num_requests + 1 - view.max_num_seqs
            if excess > 0:
                slot_s = excess * (sum(remaining) / len(remaining)) * step_now / view.max_num_seqs
        mix_decode = sum(r if r < num_out else num_out for r in remaining)
        return (view.num_waiting_tokens / tps, prefill_s, num_out * step_with, slot_s,
                prefill_s * view.num_running, self.decode_step_per_seq_s * mix_decode,
                self._kv_s(view, request.num_prompt_tokens + num_out))

    def scores(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> list[float]:
        """Every replica's weighted cost for `request` (read-only, but for book reconciling)."""
        now_s = _now(request, replicas)
        predicted = self.predict_tokens(request)
        return [self._score(self.features(request, v, predicted, now_s)) for v in replicas]

    def route(self, request: RequestSpec, replicas: Sequence[ReplicaView]) -> RouteDecision:
        if self.num_replicas is not None and len(replicas) > self.num_replicas:
            raise ValueError(f"the intelligent router's model was trained for "
                             f"{self.num_replicas} replicas; it was offered {len(replicas)}")
        now_s = _now(request, replicas)
        predicted = self._capped(request, self.length_model.predict(
            self._turns.features(request)))
        self._avg_prediction += (predicted - self._avg_prediction) / AVERAGE_WINDOW
        costs = [self._score(self.features(request, v, predicted, now_s)) for v in replicas]
        view = replicas[self._pick(costs, replicas)]
        self._record(request, view, predicted, now_s)
        return RouteDecision(view.replica_id)

    def _score(self, features: tuple[float, ...]) -> float:
        return sum(w * x for w, x in zip(self.weights, features, strict=True))

    def _capped(self, request: RequestSpec, predicted: float) -> float:
        cap = request.max_output_tokens
        return predicted if cap is None else max(1.0, min(predicted, float(cap)))

    def _remaining(self, view: ReplicaView, now_s: float) -> list[float]:
        """Estimated decode tokens left of each request on the instance: the book's, trimmed
        to the snapshot's count (the least-remaining taken as finished), others at average."""
        book = self._books.setdefault(view.replica_id, [])
        floor = self.min_remaining_fraction
        left = [job.remaining(now_s, floor) for job in book]
        excess = len(book) - view.num_requests
        if excess > 0:
            order = sorted(range(len(book)), key=left.__getitem__)
            gone = set(order[:excess])
            book[:] = [j for i, j in enumerate(book) if i not in gone]
            left = [r for i, r in enumerate(left) if i not in gone]
        return left + [self._avg_prediction] * (view.num_requests - len(left))

    def _record(self, request: RequestSpec, view: ReplicaView, predicted: float,
                now_s: float) -> None:
        tps = view.prefill_tokens_per_s or self.prefill_tokens_per_s
        step = view.decode_step_s
        if step is None:
            step = self.decode_step_base_s + self.decode_step_per_seq_s * view.num_running
        start = now_s + (view.num_waiting_tokens + request.num_prompt_tokens) / tps
        self._books.setdefault(view.replica_id, []).append(
            _Job(start, predicted, step + self.decode_step_per_seq_s))

    def _kv_s(self, view: ReplicaView, num_new_tokens: float) -> float:
        num_used = view.num_total_blocks - view.num_free_blocks
        usage = (num_used + num_new_tokens / view.block_size) / view.num_total_blocks
        if usage <= self.kv_knee:
            return 0.0
        return self.kv_penalty_s * (usage - self.kv_knee) / (1.0 - self.kv_knee) / max(
            1.0 - usage, MIN_FREE_FRACTION)

    def _pick(self, costs: list[float], replicas: Sequence[ReplicaView]) -> int:
        best = min(costs)
        ties = [i for i, c in enumerate(costs) if c <= best + TIE_TOLERANCE_S]
        if self.randomize_ties and len(ties) > 1:
            return self.rng.choice(ties)
        return min(ties, key=lambda i: replicas[i].replica_id)


def _now(request: RequestSpec, replicas: Sequence[ReplicaView]) -> float:
    return max(request.arrival_s, max(v.taken_at_s for v in replicas))


_PROBE = RequestSpec(request_id="probe", arrival_s=0.0, num_prompt_tokens=1024,
                     num_output_tokens=1)  # the first guess of an unknown request's length

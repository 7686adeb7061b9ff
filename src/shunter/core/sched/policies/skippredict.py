"""SkipPredict (Shahout & Mitzenmacher, "SkipPredict: When to Invest in Predictions for
Scheduling", 2024): short requests first, in arrival order; long ones by predicted size.

The paper's policy, on one M/G/1 server: a cheap one-bit prediction splits jobs into short and
long; predicted-short jobs run first, FCFS among them; only predicted-long jobs get the
expensive size prediction, and run by shortest predicted remaining processing time (SPRPT)
among themselves. What predicting costs is charged to the system, as an external cost or as
server time. Claim: counting that cost, SkipPredict beats always predicting (SPRPT with an
expensive prediction for every job), most when the expensive prediction costs much more than
the cheap one, and at high load.

Ours. The predictions arrive in `Request.predicted_output_tokens`, set once at arrival by the
`skip_oracle` or `skip_learned` predictor (`shunter.core.predict.skip`, which also models and
charges the cost): `SHORT_PREDICTION` (0.0) for a predicted-short request, else its predicted
output tokens (>= 1). A request without a prediction (no predictor) counts as short, so
without a predictor the order is FCFS. With a plain size predictor (`oracle`, `learned`)
every request reads as long and the order is shortest predicted job first: the always-predict
baseline, which pays the expensive cost for every request.
- One server becomes a batching engine: "runs first" means "is admitted first" to the batch;
  the key is static (predicted size, not predicted size minus the tokens generated so far),
  which is SPRPT for every waiting request (fresh ones have generated nothing) and keeps the
  simulator's decode runs exact. Under memory pressure the largest key is preempted first (a
  long request with the largest predicted size, never a short one while a long one runs).
  With `preemptive`, a waiting request displaces a running one with a larger key (the paper's
  long jobs are preemptible; off by default, as recomputing a victim's KV is rarely worth it).
- `aging_tokens_per_s` (off, as in the paper) lets a long request's wait forgive predicted
  tokens, as `sjf` does, against starvation among long requests; shorts stay ahead.
- It orders the gateway's queue too (a static order: `requires_engine` is None).
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.predict.skip import SHORT_PREDICTION
from shunter.core.request import Request
from shunter.core.sched.policy import StaticKeyPolicy
from shunter.core.types import check_number

__all__ = ["SkipPredictPolicy"]

_SHORT, _LONG = 0, 1  # the classes, in the order they run


@dataclass(slots=True)
class SkipPredictPolicy(StaticKeyPolicy):
    aging_tokens_per_s: float | None = None
    preemptive: bool = False
    name: str = "skippredict"
    has_static_order: bool = True  # keys depend on arrival-time facts only

    def __post_init__(self) -> None:
        if self.aging_tokens_per_s is not None:
            check_number("aging_tokens_per_s", self.aging_tokens_per_s, gt=0)
        if not isinstance(self.preemptive, bool):
            raise ValueError(f"preemptive must be true or false, got {self.preemptive!r}")

    @staticmethod
    def is_short(request: Request) -> bool:
        """Whether the cheap prediction called `request` short (or nothing was predicted)."""
        p = request.predicted_output_tokens
        return p is None or p == SHORT_PREDICTION

    def order_key(self, request: Request) -> tuple[int, int, float, float]:
        if self.is_short(request):
            return (request.priority, _SHORT, request.arrival_s, request.arrival_s)
        size = float(request.predicted_output_tokens)  # type: ignore[arg-type]
        if self.aging_tokens_per_s is not None:
            size += request.arrival_s * self.aging_tokens_per_s
        return (request.priority, _LONG, size, request.arrival_s)

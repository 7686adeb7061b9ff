"""Learning to rank (Fu et al., "Efficient LLM Scheduling by Learning to Rank", NeurIPS'24).

A ranker scores each request at arrival (`Request.predicted_output_tokens` holds the score; a
pairwise-trained `learned` predictor with kind="rank", or any predictor: only the order of
scores matters, never their scale as tokens). Requests run by priority, then score: an
approximation of SJF that needs a good ranking, not good lengths. Unscored requests count as
`unknown_score`, so with no ranker the order is FCFS.

Ranked at admission, or every step. By default a request's rank decides only when it is
admitted: once running it keeps its batch slot until it finishes (or memory runs short). With
`preemptive`, ranking is re-applied to running and swapped requests at every step, as in the
paper's scheduler (its artifact sorts waiting, running and swapped requests together each step
and runs the best-ranked that fit): whenever the best-ranked waiting or swapped request cannot
get a batch slot or its KV blocks, it displaces the worst-ranked running request that ranks
below it (`CoreScheduler` phase 0), which is preempted by recompute (its full blocks stay in the
prefix cache) or swapped to host memory (`preemption_mode="swap"`), and comes back in rank
order. The artifact differs in two details: a displaced request stays resident on the GPU,
paused, until memory is needed (here it is evicted, so it re-reads its cached prefix or
recomputes), and ranks also share the token budget (here running requests take theirs first).
Off by default (the recorded runs keep it off): with a static rank it changes few decisions,
and each displacement costs a recompute.

Starvation prevention. The paper promotes a request once it has been passed over for a number
of scheduling rounds; here waiting earns rank credit continuously instead, one score unit per
`aging_s` seconds, i.e. the static key `score * aging_s + arrival_s` (as `priority` ages). It
bounds starvation the same way (a request scored higher than a newcomer by D waits at most
D * aging_s for it) and keeps the order static, so the simulator's decode runs stay exact.
The credit is in score units: with a predictor of tokens rather than a ranker, scale `aging_s`
down accordingly (or use `sjf`, whose aging is in tokens per second).
"""

from __future__ import annotations

from dataclasses import dataclass

from shunter.core.request import Request
from shunter.core.sched.policy import StaticKeyPolicy
from shunter.core.types import check_number

__all__ = ["LtrPolicy"]


@dataclass(slots=True)
class LtrPolicy(StaticKeyPolicy):
    aging_s: float | None = 30.0
    unknown_score: float = 0.0
    preemptive: bool = False
    name: str = "ltr"
    has_static_order: bool = True

    def __post_init__(self) -> None:
        if self.aging_s is not None:
            check_number("aging_s", self.aging_s, gt=0)
        check_number("unknown_score", self.unknown_score)

    def score(self, request: Request) -> float:
        s = request.predicted_output_tokens
        return self.unknown_score if s is None else s

    def order_key(self, request: Request) -> tuple[int, float, float]:
        if self.aging_s is None:
            return (request.priority, self.score(request), request.arrival_s)
        return (request.priority, self.score(request) * self.aging_s + request.arrival_s,
                request.arrival_s)

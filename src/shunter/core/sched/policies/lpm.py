"""Longest Prefix Match (SGLang's `--schedule-policy lpm`): the waiting request with the longest
cached prefix runs next (ties: priority, then arrival), so requests that share a prompt prefix
run back to back while its KV is resident. It is DLPM (`dlpm.py`) without the fairness bound,
and runs as DLPM with every tenant always in credit: no rounds, nothing charged. The baseline
that DLPM's paper measures against: the most cache hits, and no bound on how long a tenant
whose prompts share nothing with the cache waits.

As in DLPM, only the first `max_candidates` waiting requests of each tenant (in priority, then
arrival order) are probed, as SGLang bounds its LPM scan. Under memory pressure the latest
arrival is preempted first (at equal priority); LPM itself never preempts. No output lengths
are used.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from shunter.core.request import Request
from shunter.core.sched.policies.dlpm import DlpmPolicy
from shunter.core.sched.policies.service import ServiceMeter
from shunter.core.types import TenantId, check_number

__all__ = ["LpmPolicy"]


@dataclass(slots=True)
class LpmPolicy(DlpmPolicy):
    # DLPM's fairness parameters do not exist here (passing one is an error)
    quantum: float = field(default=math.inf, init=False)
    input_weight: float = field(default=1.0, init=False)
    output_weight: float = field(default=1.0, init=False)
    tenant_weights: dict[TenantId, float] | None = field(default=None, init=False)
    name: str = "lpm"

    def __post_init__(self) -> None:  # (DLPM's checks a finite quantum)
        check_number("max_candidates", self.max_candidates, ge=1)
        self.meter = ServiceMeter(self.input_weight, self.output_weight, skip_cached=True)

    def deficit(self, tenant: TenantId) -> float:
        return math.inf  # always in credit: the longest prefix among all waiting wins

    def charge(self, request: Request, service: float) -> None:
        pass

    def steps_until_reorder(self, running: Sequence[Request]) -> int:
        """The victim order (priority, arrival) never changes, and which request heads the
        queue does not matter during a decode run (every seat is taken; LPM never preempts)."""
        return sys.maxsize

"""Hand-written records whose metrics were computed by hand in the tests that use them."""

from __future__ import annotations

import pytest

from shunter.core.types import FinishReason
from shunter.metrics.record import RequestRecord


def record(request_id: str, arrival_s: float, num_prompt_tokens: int, tokens: list[float],
           finish_s: float | None, reason: FinishReason | None, **kwargs: object) -> RequestRecord:
    return RequestRecord(request_id=request_id, arrival_s=arrival_s,
                         num_prompt_tokens=num_prompt_tokens, token_times_s=list(tokens),
                         finish_s=finish_s, finish_reason=reason, **kwargs)


@pytest.fixture
def make_record():
    """The `record` builder, for tests that write their own records."""
    return record


@pytest.fixture
def hand_records() -> list[RequestRecord]:
    """Five requests of tenants A and B: 3 completed, 1 rejected, 1 aborted mid-stream.

    A r1 [0, 1.4)  tokens 0.5 0.7 1.0 1.4   (TTFT .5, TPOT .3, ITL .2 .3 .4, queue .2)
    B r2 [.5, 1.5) tokens 1.0 1.5           (TTFT .5, TPOT .5, ITL .5, queue .1)
    A r3 [1, 1.2)  token 1.2                (TTFT .2, no TPOT, queue 0)
    B r4 rejected at 1.5
    A r5 [2, 3) aborted after tokens 2.5 3.0
    """
    stop, length = FinishReason.STOP, FinishReason.LENGTH
    return [
        record("r1", 0.0, 100, [0.5, 0.7, 1.0, 1.4], 1.4, stop, tenant="A",
               first_scheduled_s=0.2, num_cached_tokens=40, num_preemptions=1),
        record("r2", 0.5, 50, [1.0, 1.5], 1.5, length, tenant="B", first_scheduled_s=0.6,
               num_preemptions=2, ttft_slo_s=0.6, tpot_slo_s=0.6),
        record("r3", 1.0, 20, [1.2], 1.2, stop, tenant="A", first_scheduled_s=1.0,
               num_cached_tokens=20),
        record("r4", 1.5, 30, [], 1.5, FinishReason.REJECTED, tenant="B", error="queue full"),
        record("r5", 2.0, 10, [2.5, 3.0], 3.0, FinishReason.ABORT, tenant="A",
               first_scheduled_s=2.1, error="client disconnected"),
    ]

"""Drive a core scheduler over requests that arrive over time, and keep metrics records."""

from __future__ import annotations

from tests.factories import FakeExecutor

from shunter.core.clock import ManualClock
from shunter.core.request import Request
from shunter.core.sched.scheduler import CoreScheduler
from shunter.metrics.record import RequestRecord

__all__ = ["run_trace"]


def run_trace(scheduler: CoreScheduler, executor: FakeExecutor, clock: ManualClock,
              requests: list[Request], max_steps: int = 100_000) -> dict[str, RequestRecord]:
    """Add each request at its arrival time, step until idle; one record per request."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    records = {r.request_id: RequestRecord(request_id=r.request_id, arrival_s=r.arrival_s,
                                           num_prompt_tokens=r.num_prompt_tokens, tenant=r.tenant,
                                           priority=r.priority, program_id=r.program_id)
               for r in pending}
    i = 0
    for _ in range(max_steps):
        while i < len(pending) and pending[i].arrival_s <= clock.now():
            assert scheduler.add_request(pending[i]) is None
            i += 1
        if not scheduler.has_work:
            if i == len(pending):
                break
            clock.advance_to(pending[i].arrival_s)
            continue
        out = scheduler.schedule()
        res = executor.execute(out)
        clock.advance_to(clock.now() + res.duration_s)
        for o in scheduler.update(out, res):
            record = records[o.request_id]
            record.token_times_s.extend([clock.now()] * len(o.new_token_ids))
            record.num_cached_tokens = o.num_cached_tokens
            if o.finish_reason is not None:
                record.finish_s = clock.now()
                record.finish_reason = o.finish_reason
        scheduler.kv.pool.check_invariants()
    assert not scheduler.has_work and i == len(pending), "trace did not finish"
    return records

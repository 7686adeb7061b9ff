"""One simulated replica: the core scheduler driven by a SimExecutor on the virtual clock."""

from __future__ import annotations

from shunter.core.clock import Clock
from shunter.core.request import Request
from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestId, RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.interface import ReplicaView
from shunter.sim.executor import SimExecutor

__all__ = ["SimReplica", "StepLog"]

StepLog = tuple[int, float, float, int, int, int]  # replica, start, end, prefill tokens, decodes, preempted


class SimReplica:
    def __init__(self, replica_id: int, scheduler: CoreScheduler, executor: SimExecutor,
                 clock: Clock) -> None:
        self.replica_id = replica_id
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self._live: dict[RequestId, tuple[Request, RequestRecord]] = {}
        self._in_flight: tuple[SchedulerOutput, StepResult, float] | None = None

    @property
    def is_busy(self) -> bool:
        return self._in_flight is not None

    def view(self) -> ReplicaView:
        s = self.scheduler.stats()
        return ReplicaView(replica_id=self.replica_id, num_waiting=s.num_waiting,
                           num_running=s.num_running, num_waiting_tokens=s.num_waiting_tokens,
                           num_running_tokens=s.num_running_tokens,
                           num_free_blocks=s.num_free_blocks, num_total_blocks=s.num_total_blocks,
                           block_size=self.scheduler.config.block_size, taken_at_s=self.clock.now())

    def add(self, spec: RequestSpec) -> RequestRecord | None:
        """Queue a request; returns its finished record at once if the scheduler rejected it."""
        record = RequestRecord(
            request_id=spec.request_id, arrival_s=spec.arrival_s,
            num_prompt_tokens=spec.num_prompt_tokens, tenant=spec.tenant, priority=spec.priority,
            ttft_slo_s=spec.ttft_slo_s, tpot_slo_s=spec.tpot_slo_s, session_id=spec.session_id,
            program_id=spec.program_id, replica_id=self.replica_id,
        )
        request = Request.from_spec(spec, block_size=self.scheduler.config.block_size)
        self.executor.register(spec.request_id, spec.num_output_tokens)
        rejected = self.scheduler.add_request(request)
        if rejected is not None:
            self.executor.forget(spec.request_id)
            record.finish_s = self.clock.now()
            record.finish_reason = rejected.finish_reason
            record.error = rejected.error
            return record
        self._live[spec.request_id] = (request, record)
        return None

    def start_step(self) -> float | None:
        """Begin the next step if idle and there is work; returns when it will end."""
        if self._in_flight is not None or not self.scheduler.has_work:
            return None
        output = self.scheduler.schedule()
        assert not output.is_empty, f"replica {self.replica_id} has work but scheduled nothing"
        result = self.executor.execute(output)
        start_s = self.clock.now()
        self._in_flight = (output, result, start_s)
        return start_s + result.duration_s

    def finish_step(self, log: list[StepLog] | None = None) -> list[RequestRecord]:
        """Apply the step that just ended; returns the records of requests that finished."""
        assert self._in_flight is not None
        output, result, start_s = self._in_flight
        self._in_flight = None
        now = self.clock.now()
        if log is not None:
            shape = output.shape
            log.append((self.replica_id, start_s, now, shape.num_prefill_tokens,
                        shape.num_decode_requests, len(output.preempted_ids) + len(output.swap_out)))
        done: list[RequestRecord] = []
        for out in self.scheduler.update(output, result):
            request, record = self._live[out.request_id]
            record.token_times_s.append(now)
            if out.finish_reason is not None:
                del self._live[out.request_id]
                record.finish_s = now
                record.finish_reason = out.finish_reason
                record.first_scheduled_s = request.first_scheduled_s
                record.num_preemptions = request.num_preemptions
                record.num_cached_tokens = request.num_cached_tokens or 0
                done.append(record)
        return done

    def unfinished(self) -> list[RequestRecord]:
        """Records of requests still queued or running (a run cut short must still report them)."""
        out = []
        for request, record in self._live.values():
            record.first_scheduled_s = request.first_scheduled_s
            record.num_preemptions = request.num_preemptions
            out.append(record)
        return out

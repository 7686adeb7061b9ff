"""One simulated replica: the core scheduler driven by a SimExecutor on the virtual clock.

A step in flight may be the first of a steady decode run (`sim.decode_run`): the replica
then plans the run's remaining steps at once, with their exact end times, and applies them in
bulk when the run ends. When the next step is steady already (nothing waits, every running
request decodes), the run starts without a real first step (`begin_steady_run`). A request
routed here cuts the run short at the step in flight; until it ends, `view()` reports the
state step by step would have then. Under a policy that stops requests from probes of their
progress (`EarlyStoppingPolicy`), a run also ends before the first step that reaches a probe
point (`SimExecutor.steps_until_probe`), taken for real so the policy sees its probes.
Results are identical to stepping one by one (`fast_forward=False`), which the tests check.
With `pp` > 1 pipeline stages, up to `pp` batches are in flight (`sim.pipeline`), step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

from shunter.core.clock import Clock
from shunter.core.request import Request
from shunter.core.sched import handover
from shunter.core.sched.interface import RequestOutput
from shunter.core.sched.policy import EarlyStoppingPolicy
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestId, RequestSpec
from shunter.metrics.record import RequestRecord
from shunter.router.interface import ReplicaView
from shunter.sim.cost.speed import ReplicaSpeeds
from shunter.sim.decode_run import advance_decode_run, begin_steady_run, decode_run_horizon
from shunter.sim.executor import SimExecutor
from shunter.sim.flight import InFlight, LastView, StepLog, log_steps, run_load
from shunter.sim.handoff import MovedRequest
from shunter.sim.pipeline import Pipeline
from shunter.sim.timeline import StepTimeline, TokenTimes, add_range

__all__ = ["SimReplica", "StepLog"]

class SimReplica:
    def __init__(self, replica_id: int, scheduler: CoreScheduler, executor: SimExecutor,
                 clock: Clock, *, fast_forward: bool = True, role: str | None = None,
                 pp: int = 1) -> None:
        self.replica_id = replica_id
        self.role = role  # "prefill" / "decode" in a disaggregated cluster, else None
        # Llumnix's priority headroom: (priority at or below which a request is high priority,
        # blocks of virtual usage each running one adds to what this replica reports)
        self.priority_headroom: tuple[int, int] | None = None
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.fast_forward = fast_forward and pp == 1  # (no bulk runs through a pipeline)
        # pp > 1: batches in flight through the stages of a `StagedCostModel`
        self._pipeline = Pipeline(pp) if pp > 1 else None
        self.generation = 0  # bumped when a run is cut short: older StepDone events are stale
        # each live request, its record, and the token times this replica adds its tokens to
        # (the record's own, or their tail on this replica if it moved here)
        self._live: dict[RequestId, tuple[Request, RequestRecord, TokenTimes]] = {}
        self._in_flight: InFlight | None = None
        # bumped by every call that may change what `view()` reports, but for the passing of
        # time within a run (`InFlight.steps_done`); `_last_view` is valid while it stands
        self.stamp = 0
        self._last_view: LastView | None = None
        self._timeline = StepTimeline()  # every applied step's end: token times index into it
        self._speeds = ReplicaSpeeds(executor.cost_model, scheduler.config.max_num_batched_tokens)
        self._held_s = 0.0  # server time of predictions made here, spent before the next step
        policy = scheduler.policy
        self._is_probing = isinstance(policy, EarlyStoppingPolicy)
        if isinstance(policy, EarlyStoppingPolicy):
            executor.enable_probes(policy.probe_tokens)

    @property
    def is_busy(self) -> bool:
        return self._in_flight is not None or (self._pipeline is not None
                                               and len(self._pipeline.batches) > 0)

    def view(self, with_speeds: bool = True, *, reuse: bool = False) -> ReplicaView:
        """This replica's load now; its speed fields None unless `with_speeds` (the router
        reads them: `router.interface.reads_speeds`). With `reuse`, while no call has changed
        what it reports since the last such call, the view that call returned comes back,
        brought up to now (for views that live for one routing decision)."""
        scheduler, flight, now = self.scheduler, self._in_flight, self.clock.now()
        last = self._last_view
        if (reuse and last is not None and last.stamp == self.stamp
                and last.with_speeds == with_speeds and last.headroom is self.priority_headroom):
            view = last.view
            view.taken_at_s = now
            # the same flight, if any: only time has passed
            done = last.done if flight is None else flight.steps_done(now, since=last.done)
            if done != last.done:
                tokens, blocks = run_load(scheduler, flight, done)
                view.num_running_tokens = last.running_tokens + tokens
                view.num_free_blocks = last.free_blocks - blocks
                if with_speeds:
                    view.decode_step_s = self._speeds.decode_step_s(view.num_running,
                                                                    view.num_running_tokens)
                last.done = done
            return view
        done = 0 if flight is None else flight.steps_done(now)
        running = scheduler.running
        running_tokens = sum([r.num_tokens for r in running])
        free_blocks = scheduler.kv.num_free_blocks
        if self.priority_headroom is not None:
            high, blocks = self.priority_headroom
            free_blocks -= blocks * sum(1 for r in running if r.priority <= high)
        tokens, blocks = run_load(scheduler, flight, done)
        config, speeds, lora = scheduler.config, self._speeds, self.executor.lora
        num_running, num_tokens = len(running), running_tokens + tokens
        decode_s = speeds.decode_step_s(num_running, num_tokens) if with_speeds else None
        if reuse and last is not None and last.with_speeds == with_speeds:
            last.refill(self.stamp, done, self.priority_headroom, running_tokens, free_blocks,
                        len(scheduler.waiting), num_running, scheduler.num_waiting_tokens,
                        num_tokens, free_blocks - blocks, now, decode_s,
                        None if lora is None else lora.lora_ids)
            return last.view
        view = ReplicaView(
            replica_id=self.replica_id, num_waiting=len(scheduler.waiting),
            num_running=num_running, num_waiting_tokens=scheduler.num_waiting_tokens,
            num_running_tokens=num_tokens, num_free_blocks=free_blocks - blocks,
            num_total_blocks=config.num_blocks, block_size=config.block_size,
            taken_at_s=now, max_num_seqs=config.max_num_seqs,
            prefill_tokens_per_s=speeds.prefill_tokens_per_s if with_speeds else None,
            decode_step_s=decode_s, lora_ids=frozenset() if lora is None else lora.lora_ids)
        if reuse:
            self._last_view = LastView(view, self.stamp, done, with_speeds, self.priority_headroom,
                                       running_tokens, free_blocks)
        return view

    def add(self, spec: RequestSpec, *, predicted_output_tokens: float | None = None,
            dispatched_s: float | None = None, server_s: float = 0.0) -> RequestRecord | None:
        """Queue a request; returns its finished record at once if the scheduler rejected it.

        `predicted_output_tokens`: the cluster's prediction (sjf, ltr). `dispatched_s`: when a
        gateway tier released it here, which is the arrival this engine sees (the record keeps
        the request's own arrival). `server_s`: seconds its prediction holds this replica
        (`core.predict.skip`, cost_mode "server"): the next step starts that much later."""
        self.stamp += 1
        self._held_s += server_s
        times = TokenTimes(self._timeline)
        record = RequestRecord(
            request_id=spec.request_id, arrival_s=spec.arrival_s,
            num_prompt_tokens=spec.num_prompt_tokens, tenant=spec.tenant, priority=spec.priority,
            ttft_slo_s=spec.ttft_slo_s, tpot_slo_s=spec.tpot_slo_s, session_id=spec.session_id,
            program_id=spec.program_id, replica_id=self.replica_id,
            token_times_s=times,  # type: ignore[arg-type]  # see timeline.py
        )
        config = self.scheduler.config
        request = Request.from_spec(spec, block_size=config.block_size,
                                    hash_blocks=config.enable_prefix_caching)
        request.predicted_output_tokens = predicted_output_tokens
        if dispatched_s is not None:
            request.arrival_s = dispatched_s
        self.executor.register(spec.request_id, spec.num_output_tokens, spec.probe_trace,
                               expert_profile=spec.expert_profile, lora_id=spec.lora_id)
        rejected = self.scheduler.add_request(request)
        if rejected is not None:
            self.executor.forget(spec.request_id)
            record.finish_s = self.clock.now()
            record.finish_reason = rejected.finish_reason
            record.error = rejected.error
            return record
        self._live[spec.request_id] = (request, record, times)
        return None

    def start_step(self) -> float | None:
        """Begin the next step (or decode run) if idle and there is work; returns when it ends.
        With a pipeline: begin batches while there is room; returns when the oldest ends, if
        no event for it is pending yet."""
        self.stamp += 1
        if self._pipeline is not None:
            return self._start_batches(self._pipeline)
        if self._in_flight is not None or not self.scheduler.has_work:
            return None
        if self.fast_forward:
            end_s = self._start_steady_run()
            if end_s is not None:
                return end_s
        output = self.scheduler.schedule()
        assert not output.is_empty, f"replica {self.replica_id} has work but scheduled nothing"
        result = self.executor.execute(output)
        start_s = self._take_held()
        end_times = [start_s + result.duration_s]
        run_ids: list[RequestId] = []
        if self.fast_forward:
            run_ids = [r.request_id for r in self.scheduler.running]
            cap = self.executor.steps_until_stop(run_ids) if run_ids else 0
            if self._is_probing and cap:  # the policy must see this step's and later probes
                cap = 0 if result.probes else min(cap, self.executor.steps_until_probe(run_ids) - 1)
            num_steps = decode_run_horizon(self.scheduler, output, cap)
            if num_steps:
                end_times += self.executor.decode_run_end_times(
                    end_times[0], len(run_ids), output.shape.num_decode_context_tokens, num_steps,
                    run_ids)
        self._in_flight = InFlight(output, result, start_s, end_times, run_ids)
        return end_times[-1]

    def _start_batches(self, pipe: Pipeline) -> float | None:
        if pipe.is_blocked:
            return None  # (vLLM's engine waits for its oldest batch: so does this arrival)
        pipe.launch(self.scheduler, self.executor, self._take_held)
        if not pipe.batches or pipe.has_event:
            return None
        pipe.has_event = True
        return pipe.batches[0].end_s

    def _finish_batch(self, pipe: Pipeline, log: list[StepLog] | None) -> list[RequestRecord]:
        """Apply the oldest batch in flight, which just left the last stage."""
        batch = pipe.batches.popleft()
        pipe.has_event = pipe.is_blocked = False
        output = batch.output
        in_flight = self.scheduler.in_flight_ids
        for chunk in output.chunks:
            in_flight.discard(chunk.request_id)
        if log is not None:
            log.append((self.replica_id, batch.start_s, batch.end_s, output.shape.num_prefill_tokens,
                        output.shape.num_decode_requests,
                        len(output.preempted_ids) + len(output.swap_out)))
        first = self._timeline.append(batch.end_s)
        return self._record_tokens(self.scheduler.update(output, batch.result), first)

    def _start_steady_run(self) -> float | None:
        """Plan a run with no real first step if the next steps are steady; returns its end."""
        scheduler = self.scheduler
        if not scheduler.running or (len(scheduler.waiting)
                                     and len(scheduler.running) < scheduler.config.max_num_seqs):
            return None  # (begin_steady_run checks this too; this is the cheap common exit)
        run_ids = [r.request_id for r in scheduler.running]
        cap = self.executor.steps_until_stop(run_ids)
        if self._is_probing:  # a probe's step is a real one
            cap = min(cap, self.executor.steps_until_probe(run_ids) - 1)
        lora = self.executor.lora
        if lora is not None and lora.run_s(run_ids) is None:
            cap = 0  # its first step would load an adapter or reorder the slots: a real step
        num_steps = begin_steady_run(scheduler, cap)
        if not num_steps:
            return None
        start_s = self._take_held()
        n = len(run_ids)
        context_tokens = 0
        for r in scheduler.running:
            context_tokens += r.num_computed_tokens
        # step i (1-based) reads the KV of every token computed before it
        end_times = self.executor.decode_run_end_times(start_s, n, context_tokens - n, num_steps,
                                                       run_ids)
        self._in_flight = InFlight(None, None, start_s, end_times, run_ids)
        return end_times[-1]

    def _take_held(self) -> float:
        """When the step starting now begins computing: after the predictions held here."""
        start_s, self._held_s = self.clock.now() + self._held_s, 0.0
        return start_s

    def cut_run(self) -> float | None:
        """A request was just queued here: end the run after the step now in flight.

        Returns the new end time (the caller schedules it), or None if nothing changed."""
        flight = self._in_flight
        if flight is None or len(flight.end_times_s) == 1:
            return None
        keep = flight.steps_done(self.clock.now()) + 1
        if keep >= len(flight.end_times_s):
            return None  # (what `view` reports now stands: the steps done and the one in flight)
        del flight.end_times_s[keep:]
        self.generation += 1
        return flight.end_times_s[-1]

    def finish_step(self, log: list[StepLog] | None = None) -> list[RequestRecord]:
        """Apply the step (or run) that just ended; returns the records of finished requests."""
        self.stamp += 1
        if self._pipeline is not None:
            return self._finish_batch(self._pipeline, log)
        flight = self._in_flight
        assert flight is not None
        self._in_flight = None
        output, end_times = flight.output, flight.end_times_s
        if log is not None:
            log_steps(log, self.replica_id, flight)
        if output is None:  # a steady run: every step is a bulk decode step
            return self._apply_run(flight, self._timeline.extend(end_times), len(end_times))
        first = self._timeline.append(end_times[0])
        assert flight.result is not None
        outputs = self.scheduler.update(output, flight.result)
        num_steps = len(end_times) - 1
        if not num_steps:
            return self._record_tokens(outputs, first)
        # A run's first step samples exactly the run's requests and ends none of them (or there
        # would be no run), so each gets one range: the first step and the run's steps.
        assert len(outputs) == len(flight.run_ids) and not any(o.finish_reason for o in outputs)
        self._timeline.extend(end_times[1:])
        return self._apply_run(flight, first, num_steps)

    def _record_tokens(self, outputs: Sequence[RequestOutput], first: int) -> list[RequestRecord]:
        """Give each output's token timeline step `first`; returns the finished records."""
        live = self._live
        done: list[RequestRecord] = []
        for out in outputs:
            # (none: a request stopped early while it sampled nothing; several: speculative
            # decoding's accepted drafts, all at this step)
            times = live[out.request_id][2]
            for _ in out.new_token_ids:
                times.add(first, first + 1)
            if out.finish_reason is not None:
                done.append(self._close(out.request_id, out.finish_reason))
        return done

    def _apply_run(self, flight: InFlight, first: int, num_steps: int) -> list[RequestRecord]:
        """Apply a run's `num_steps` bulk steps; its requests' tokens are timeline steps
        [first, end) (`first` may be the run's real first step, already applied)."""
        stopped = self.executor.advance(flight.run_ids, num_steps)
        finished = advance_decode_run(self.scheduler, num_steps, stopped)
        live = self._live
        add_range([live[rid][2] for rid in flight.run_ids], first, len(self._timeline))
        return [self._close(out.request_id, out.finish_reason) for out in finished]

    def _close(self, request_id: RequestId, reason: object) -> RequestRecord:
        request, record, _ = self._live.pop(request_id)
        record.finish_s = record.token_times_s[-1] if record.token_times_s else self.clock.now()
        record.finish_reason = reason  # type: ignore[assignment]
        record.first_scheduled_s = request.first_scheduled_s
        record.num_preemptions = request.num_preemptions
        record.num_cached_tokens = request.num_cached_tokens or 0
        return record

    # ---- requests moving in and out (between steps: the caller cut the run first) ----------

    def computed_tokens_now(self, request_id: RequestId) -> int:
        """KV tokens the request holds now, as step by step would have applied them."""
        request = self._live[request_id][0]
        flight = self._in_flight
        if flight is None or request_id not in flight.run_ids:
            return request.num_computed_tokens
        return request.num_computed_tokens + flight.steps_done(self.clock.now())

    def prefilled_ids(self) -> list[RequestId]:
        """Running requests that have sampled their first token (a prefill replica's to hand off)."""
        return [r.request_id for r in self.scheduler.running
                if r.num_output_tokens and r.num_uncomputed_tokens == 1]

    def cached_prompt_tokens(self, spec: RequestSpec) -> int:
        """Prompt tokens of `spec` this replica's prefix cache would serve now."""
        config = self.scheduler.config
        if not config.enable_prefix_caching:
            return 0
        request = Request.from_spec(spec, block_size=config.block_size)
        return self.scheduler.num_cached_prefix_tokens(request)

    def detach(self, request_id: RequestId) -> MovedRequest:
        """Take a running request out, with its record and true remaining length."""
        assert self._in_flight is None, "detach between steps only"
        self.stamp += 1
        request, record, _ = self._live.pop(request_id)
        handover.detach(self.scheduler, request_id)
        num_remaining = self.executor.steps_until_stop([request_id])
        probe_trace = self.executor.probe_trace(request_id)
        self.executor.forget(request_id)
        return MovedRequest(request, record, num_remaining, self.clock.now(), probe_trace)

    def can_attach(self, moved: MovedRequest) -> bool:
        return handover.can_attach(self.scheduler, moved.request)

    def attach(self, moved: MovedRequest) -> bool:
        """Continue a moved request here with its KV (copied in); False if it does not fit."""
        assert self._in_flight is None, "attach between steps only"
        self.stamp += 1
        if not handover.attach(self.scheduler, moved.request):
            return False
        self._adopt(moved)
        return True

    def requeue(self, moved: MovedRequest) -> None:
        """Continue a moved request here by recomputing its KV (it could not be copied in)."""
        self.stamp += 1
        handover.requeue(self.scheduler, moved.request)
        self._adopt(moved)

    def _adopt(self, moved: MovedRequest) -> None:
        rid = moved.request.request_id
        record = moved.record
        times = moved.continue_on(self._timeline)
        record.replica_id = self.replica_id
        self.executor.register(rid, moved.num_remaining_tokens, moved.probe_trace,
                               num_sampled=moved.request.num_output_tokens,
                               expert_profile=moved.request.expert_profile,
                               lora_id=moved.request.lora_id)
        self._live[rid] = (moved.request, record, times)

    def trim_timeline(self) -> None:
        """Forget step times no live request can read (a streamed run has handed its finished
        records off)."""
        firsts = (times.first_step for _, _, times in self._live.values())
        self._timeline.trim(min((f for f in firsts if f is not None), default=len(self._timeline)))

    def unfinished(self) -> list[RequestRecord]:
        """Records of requests still queued or running (a run cut short must still report them)."""
        out = []
        for request, record, _ in self._live.values():
            record.first_scheduled_s = request.first_scheduled_s
            record.num_preemptions = request.num_preemptions
            out.append(record)
        return out

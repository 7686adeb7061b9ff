"""What a simulated replica has in flight: one step, or a decode run (`sim.decode_run`) of
planned steps with their exact end times, and the step log it leaves once applied."""

from __future__ import annotations

from bisect import bisect_right

from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.types import RequestId
from shunter.router.interface import ReplicaView
from shunter.sim.decode_run import blocks_for_steps

__all__ = ["InFlight", "LastView", "StepLog", "log_steps", "run_load"]

StepLog = tuple[int, float, float, int, int, int]  # replica, start, end, prefill tokens, decodes, preempted


class InFlight:
    __slots__ = ("end_times_s", "output", "result", "run_ids", "start_s")

    def __init__(self, output: SchedulerOutput | None, result: StepResult | None,
                 start_s: float, end_times_s: list[float], run_ids: list[RequestId]) -> None:
        # the run's first step, scheduled for real; None for a steady run, all of whose steps
        # are planned decode steps (`begin_steady_run`)
        self.output = output
        self.result = result
        self.start_s = start_s
        self.end_times_s = end_times_s  # end of the first step, then of each planned decode step
        self.run_ids = run_ids  # the requests every decode step of the run serves

    def steps_done(self, now_s: float, since: int = 0) -> int:
        """Steps of this flight that step by step would have applied by `now_s`, knowing that
        `since` of them were by an earlier time (a bisect only if a step has ended since)."""
        ends = self.end_times_s
        if since < len(ends) and ends[since] > now_s:
            return since
        return bisect_right(ends, now_s, since)


def log_steps(log: list[StepLog], replica_id: int, flight: InFlight) -> None:
    """Append one entry per step of `flight` (a run's planned steps each get theirs)."""
    ends = flight.end_times_s
    previous = flight.start_s
    if flight.output is not None:
        shape = flight.output.shape
        log.append((replica_id, flight.start_s, ends[0], shape.num_prefill_tokens,
                    shape.num_decode_requests,
                    len(flight.output.preempted_ids) + len(flight.output.swap_out)))
        previous, ends = ends[0], ends[1:]
    for end in ends:
        log.append((replica_id, previous, end, 0, len(flight.run_ids), 0))
        previous = end


class LastView:
    """The view a replica last handed out for reuse, and what it was taken under: the
    replica's `stamp`, the steps of its flight `done` then, and its load before them."""

    __slots__ = ("done", "free_blocks", "headroom", "running_tokens", "stamp", "view",
                 "with_speeds")

    def __init__(self, view: ReplicaView, stamp: int, done: int, with_speeds: bool,
                 headroom: tuple[int, int] | None, running_tokens: int, free_blocks: int) -> None:
        self.view = view
        self.stamp = stamp
        self.done = done
        self.with_speeds = with_speeds
        self.headroom = headroom
        self.running_tokens = running_tokens  # of the running requests, as last applied
        self.free_blocks = free_blocks  # less the priority headroom

    def refill(self, stamp: int, done: int, headroom: tuple[int, int] | None,
               running_tokens: int, free_blocks: int, num_waiting: int, num_running: int,
               num_waiting_tokens: int, num_running_tokens: int, num_free_blocks: int,
               taken_at_s: float, decode_step_s: float | None,
               lora_ids: frozenset[str] | None) -> None:
        """Take the replica's load now into this view (it lived for one decision only, so
        refilling it is safe, and about a fifth of the cost of building a `ReplicaView`).
        `lora_ids` None: the replica serves no adapters (the view's stay empty)."""
        self.stamp, self.done, self.headroom = stamp, done, headroom
        self.running_tokens, self.free_blocks = running_tokens, free_blocks
        view = self.view
        view.num_waiting, view.num_running = num_waiting, num_running
        view.num_waiting_tokens, view.num_running_tokens = num_waiting_tokens, num_running_tokens
        view.num_free_blocks, view.taken_at_s = num_free_blocks, taken_at_s
        view.decode_step_s = decode_step_s
        if lora_ids is not None:
            view.lora_ids = lora_ids


def run_load(scheduler: CoreScheduler, flight: InFlight | None, done: int) -> tuple[int, int]:
    """The tokens the first `done` steps of `flight` add to its replica's running requests and
    the KV blocks they take, with the next step's if it is scheduled: what the replica reports,
    between a run's planned steps, as stepping one by one would have by then."""
    if flight is None or (flight.output is not None and len(flight.end_times_s) == 1):
        return 0, 0  # one real step: nothing applied before it ends
    tokens = len(flight.run_ids) * done
    if flight.output is None:  # a steady run has scheduled the step after those done
        return tokens, blocks_for_steps(scheduler, done + 1, is_applied=True)
    if done:
        return tokens, blocks_for_steps(scheduler, min(done, len(flight.end_times_s) - 1))
    return tokens, 0

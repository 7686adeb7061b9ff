"""Batches in flight through a replica's `pp` pipeline stages (pipeline parallelism).

vLLM v1 runs pipeline parallelism with a batch queue of `pp` batches (`EngineCore.
step_with_batch_queue`): while fewer than `pp` are in flight it schedules another at once, and
when the queue is full or nothing more can be scheduled it blocks until the oldest finishes and
applies its output. A request of an in-flight batch is not scheduled again until that batch is
applied (for a decode: it has no token to compute yet). Vidur's replica scheduler keeps
`num_pipeline_stages` running batches the same way, its stage schedulers passing each batch
from stage to stage in order. Here:

- the replica schedules batches while fewer than `pp` are in flight and something can be
  scheduled, when it is idle or has just applied its oldest batch; otherwise it is blocked
  on the oldest, as vLLM's engine is, and a request that arrives meanwhile waits for it
  (Vidur schedules at arrival instead: the two differ only while the pipeline is not full);
  the core scheduler skips the requests of the batches in flight
  (`CoreScheduler.in_flight_ids`);
- each stage runs one batch at a time, in the order they were scheduled: a batch enters stage
  s when it has left stage s-1 (its activations sent) and stage s is free, and leaves after the
  stage's busy time (`StagedCostModel.stage_times_s`); so a new batch starts computing when
  the first stage frees, and its tokens land when it leaves the last stage;
- batches therefore finish in the order they started; the replica keeps one `StepDone` event
  pending, for the oldest.

Simplifications: a later chunk of a prompt waits for its earlier chunk's batch to finish (vLLM
may schedule it into the next batch at once), and a send does not wait for the receiving stage
to be free. Bulk decode runs (`sim.decode_run`) are off with `pp` > 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import cast

from shunter.core.sched.interface import SchedulerOutput, StepResult
from shunter.core.sched.scheduler import CoreScheduler
from shunter.sim.cost.pipeline import StagedCostModel
from shunter.sim.executor import SimExecutor, num_block_runs

__all__ = ["Batch", "Pipeline", "has_schedulable", "stage_times_s"]


class Batch:
    """One scheduled batch in flight: its output and result, when it entered the first stage
    and when it leaves the last."""

    __slots__ = ("end_s", "output", "result", "start_s")

    def __init__(self, output: SchedulerOutput, result: StepResult, start_s: float,
                 end_s: float) -> None:
        self.output = output
        self.result = result
        self.start_s = start_s
        self.end_s = end_s


class Pipeline:
    """The stages of one replica: when each is next free, and the batches in flight."""

    __slots__ = ("_stage_free_s", "batches", "has_event", "is_blocked", "pp")

    def __init__(self, pp: int) -> None:
        assert pp >= 2, "a pipeline has at least two stages"
        self.pp = pp
        self._stage_free_s = [0.0] * pp
        self.batches: deque[Batch] = deque()  # oldest first (they finish in this order)
        self.has_event = False  # a StepDone for the oldest batch is pending
        self.is_blocked = False  # waiting for the oldest batch: schedules nothing until then

    @property
    def is_full(self) -> bool:
        return len(self.batches) >= self.pp

    def place(self, ready_s: float, stage_times_s: list[float]) -> tuple[float, float]:
        """Run a batch ready at `ready_s` through the stages, after the batches before it;
        returns (when it enters the first stage, when it leaves the last)."""
        free = self._stage_free_s
        start_s = end_s = max(ready_s, free[0])
        for s, busy_s in enumerate(stage_times_s):
            end_s = max(end_s, free[s]) + busy_s
            free[s] = end_s
        return start_s, end_s

    def launch(self, scheduler: CoreScheduler, executor: SimExecutor,
               take_ready_s: Callable[[], float]) -> None:
        """Schedule batches into the pipeline while there is room and something to schedule
        (each ready at `take_ready_s()`), then block until the oldest batch lands."""
        while not self.is_full and has_schedulable(scheduler):
            output = scheduler.schedule()
            if output.is_empty:  # (nothing admissible: e.g. the waiting head does not fit)
                for rid in output.finished_ids:
                    executor.forget(rid)
                assert self.batches, "a replica has work but scheduled nothing"
                break
            result = executor.execute(output)
            times = stage_times_s(cast(StagedCostModel, executor.cost_model), output)
            start_s, end_s = self.place(take_ready_s(), times)
            scheduler.in_flight_ids.update(chunk.request_id for chunk in output.chunks)
            self.batches.append(Batch(output, result, start_s, end_s))
        self.is_blocked = len(self.batches) > 0


def has_schedulable(scheduler: CoreScheduler) -> bool:
    """Whether a step could schedule something now: a running request not in flight, a
    waiting one with a free seat, or finished turns' KV to copy."""
    running, in_flight = scheduler.running, scheduler.in_flight_ids
    if len(running) > len(in_flight):  # (the common case; an id in flight may have finished
        return True                    # early, a gang's other branch: hence the scan below)
    if (len(scheduler.waiting) > 0 and len(running) < scheduler.config.max_num_seqs
            or scheduler.has_pending_copies):
        return True
    return any(r.request_id not in in_flight for r in running)


def stage_times_s(cost_model: StagedCostModel, output: SchedulerOutput) -> list[float]:
    """Each stage's busy time for `output`: its share of the step, plus, for a swap, the copy
    of its own layers' blocks (every stage copies at once, before its forward pass)."""
    times = cost_model.stage_times_s(output.shape)
    num_swapped = len(output.swap_out) + len(output.swap_in)
    if num_swapped:
        num_runs = num_block_runs(output.swap_out) + num_block_runs(output.swap_in)
        swap_s = cost_model.swap_time_s(num_swapped, num_runs)
        times = [t + swap_s for t in times]
    return times

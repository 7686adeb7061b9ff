"""The gateway tier: requests waiting in front of the backends, ordered and charged by a core
`Policy`, the same object type an engine's scheduler runs (DESIGN.md: "Two tiers can schedule").

Both runtimes of the gateway tier drive this one class: the live gateway
(`shunter.gateway.admission`) and the simulator (`shunter.sim.gateway`). A request is added
when it arrives; when a backend has a free slot the runtime pops the policy's head and
dispatches it; when it ends, the runtime settles it with the token counts the backend reported.

Charging mirrors an engine that admits the request at dispatch and runs it to the end:
- at dispatch (`pop`), the policy's queue charges what it charges on admission (VTC, DLPM: the
  prompt) and `on_scheduled` charges the prompt's positions but the last (so a charging policy
  that charges nothing on admission, PLAS, sees the call start);
- at the end (`finish`), `on_scheduled` charges the last prompt position and every output token
  (the last prompt position samples the first output token), then `on_finished`. A backend's
  prompt count replaces the gateway's estimate when it is larger; when it is smaller the
  difference stays charged (service meters never refund).
So a request that ran to completion is charged its prompt and its outputs exactly as an engine
would charge them, once. Nothing is preempted here: `should_preempt` and victim keys are the
engine tier's, and a policy that needs an engine (`Policy.requires_engine`) is refused.

A prefix-aware policy (DLPM) gets `probe`: here the prompt tokens the router's index says the
best replica holds for the request.
"""

from __future__ import annotations

from collections.abc import Iterator

from shunter.core.request import Request
from shunter.core.sched.policy import Policy, PrefixAwarePolicy, PrefixProbe, WaitingQueue
from shunter.core.types import RequestStatus

__all__ = ["GatewayQueue", "gateway_refusal"]

_ENGINE_TIER = ("in-process engine backends (kind = \"engine\", what `shunter serve` runs by "
                "default) and the simulator's engine tier (--policy)")


def gateway_refusal(policy: Policy) -> str | None:
    """Why `policy` cannot order the gateway's queue, and where it can run; None if it can."""
    reason = policy.requires_engine
    if reason is None:
        return None
    return (f"policy {policy.name!r} cannot order the gateway's queue: {reason}. It runs in "
            f"engines: {_ENGINE_TIER}")


class GatewayQueue:
    """Requests waiting at the gateway, in `policy`'s order; dispatched ones until they end."""

    __slots__ = ("_queue", "policy")

    def __init__(self, policy: Policy, probe: PrefixProbe | None = None) -> None:
        refusal = gateway_refusal(policy)
        if refusal is not None:
            raise ValueError(refusal)
        self.policy = policy
        self._queue: WaitingQueue = (policy.make_prefix_queue(probe)
                                     if probe is not None and isinstance(policy, PrefixAwarePolicy)
                                     else policy.make_queue())

    def add(self, request: Request) -> None:
        """A request arrived (status WAITING)."""
        assert request.status == RequestStatus.WAITING, f"{request.request_id} is not new"
        self._queue.add(request)

    def peek(self) -> Request | None:
        """The request the next free slot goes to."""
        return self._queue.peek()

    def pop(self, now_s: float) -> Request:
        """Dispatch the head: it leaves the queue and is charged its prompt (but the last
        position, which `finish` charges with the outputs it samples)."""
        request = self._queue.pop()
        request.set_status(RequestStatus.RUNNING)
        if request.num_prompt_tokens > 1:
            self.policy.on_scheduled(request, request.num_prompt_tokens - 1, now_s)
            request.num_computed_tokens = request.num_prompt_tokens - 1
        return request

    def remove(self, request: Request, now_s: float) -> None:
        """A waiting request left before dispatch (cancelled, timed out, shed)."""
        self._queue.remove(request)
        request.set_status(RequestStatus.FINISHED_ABORTED)
        self.policy.on_finished(request, now_s)

    def finish(self, request: Request, num_prompt_tokens: int | None, num_output_tokens: int,
               now_s: float) -> None:
        """A dispatched request ended: charge what it used (module docstring) and forget it."""
        assert request.status == RequestStatus.RUNNING, f"{request.request_id} was not dispatched"
        if num_prompt_tokens is not None and num_prompt_tokens > request.num_prompt_tokens:
            request.num_prompt_tokens = num_prompt_tokens
        end = request.num_prompt_tokens - 1 + num_output_tokens  # positions computed in all
        num_tokens = end - request.num_computed_tokens
        if num_tokens > 0:
            self.policy.on_scheduled(request, num_tokens, now_s)
            request.num_computed_tokens = end
        request.num_output_tokens = num_output_tokens
        request.set_status(RequestStatus.FINISHED_STOPPED)
        self.policy.on_finished(request, now_s)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

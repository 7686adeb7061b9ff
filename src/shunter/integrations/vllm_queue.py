"""vLLM's waiting queue in a Shunter policy's order, and the core records the policy reads.

A policy orders, charges and picks victims over `shunter.core.request.Request` records. vLLM
has its own `Request`; `Mirrors` keeps one core record per vLLM request (its *mirror*: ids,
tenant, priority, arrival, token counts, preemptions) and brings it up to date from the vLLM
request whenever the policy is about to read it.

`PolicyRequestQueue` is a vLLM `RequestQueue` over the policy's own `WaitingQueue`. vLLM's
scheduler pops a request from its queue both to admit it and to skip it for a step (a grammar
still compiling, a LoRA slot taken: it puts those back afterwards), and a policy's `pop` means
admission: VTC and DLPM charge the prompt there. So `pop_request` only marks the head as
taken; the next call on the queue (or `settle`, which the scheduler calls when the step's
decisions are done) looks at what vLLM did with it: admitted (RUNNING now, its prefix-cache
hits counted in `num_computed_tokens`) is the policy's `pop`, anything else its `remove`. vLLM
calls nothing on the queue between popping a request and deciding its fate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request as VllmRequest
from vllm.v1.request import RequestStatus as VllmStatus

from shunter.core.request import Request
from shunter.core.sched.policy import WaitingQueue
from shunter.core.types import RequestId, RequestStatus
from shunter.integrations.settings import RequestTags

__all__ = ["Mirrors", "PolicyRequestQueue", "core_status"]

_STATUSES: dict[VllmStatus, RequestStatus] = {
    VllmStatus.RUNNING: RequestStatus.RUNNING,
    VllmStatus.PREEMPTED: RequestStatus.PREEMPTED,
    VllmStatus.FINISHED_STOPPED: RequestStatus.FINISHED_STOPPED,
    VllmStatus.FINISHED_LENGTH_CAPPED: RequestStatus.FINISHED_LENGTH,
    VllmStatus.FINISHED_ABORTED: RequestStatus.FINISHED_ABORTED,
}


def _core_status(status: VllmStatus) -> RequestStatus:
    if VllmStatus.is_finished(status):
        return _STATUSES.get(status, RequestStatus.FINISHED_ABORTED)
    return _STATUSES.get(status, RequestStatus.WAITING)


# every vLLM status, looked up once: `sync` runs for each running request at every step
_CORE_STATUSES: dict[VllmStatus, RequestStatus] = {s: _core_status(s) for s in VllmStatus}


def core_status(status: VllmStatus) -> RequestStatus:
    """A vLLM status as the core's: every other live one (a grammar compiling, KV on its way)
    waits, every other finished one (ignored, error, repetition) was cut short."""
    return _CORE_STATUSES[status]


class Mirrors:
    """One core `Request` per live vLLM request, by request id."""

    __slots__ = ("_mirrors", "_requests", "_static_key", "static_keys")

    def __init__(self, static_key: Callable[[Request], Any] | None = None) -> None:
        self._mirrors: dict[RequestId, Request] = {}
        self._requests: dict[RequestId, VllmRequest] = {}
        # a static-key policy's key of each mirror, taken once when it is made: it reads only
        # what a request arrives with, so the running list sorts without a sync per request
        self._static_key = static_key
        self.static_keys: dict[RequestId, Any] = {}

    def add(self, request: VllmRequest, tags: RequestTags) -> Request:
        """Make the mirror of a request vLLM has just been given."""
        mirror = Request(
            request_id=request.request_id, arrival_s=request.arrival_time,
            num_prompt_tokens=request.num_prompt_tokens, max_output_tokens=request.max_tokens,
            tenant=tags.tenant, priority=request.priority, session_id=request.session_id,
            program_id=tags.program_id, predicted_output_tokens=tags.predicted_output_tokens)
        self._mirrors[request.request_id] = mirror
        self._requests[request.request_id] = request
        if self._static_key is not None:
            self.static_keys[request.request_id] = self._static_key(mirror)
        return mirror

    def pop(self, request_id: RequestId) -> Request | None:
        """Forget a request (it finished); None if it had no mirror."""
        self._requests.pop(request_id, None)
        self.static_keys.pop(request_id, None)
        return self._mirrors.pop(request_id, None)

    def request(self, mirror: Request) -> VllmRequest:
        return self._requests[mirror.request_id]

    def get(self, request: VllmRequest) -> Request | None:
        return self._mirrors.get(request.request_id)

    def sync_computed(self, request_ids: Iterable[RequestId],
                      requests: Mapping[RequestId, VllmRequest]) -> list[Request]:
        """The mirror of each request id with only `num_computed_tokens` brought up to date
        from `requests` (all a charging hook reads besides what the request arrived with)."""
        mirrors = self._mirrors
        synced = []
        for request_id in request_ids:
            mirror = mirrors[request_id]
            mirror.num_computed_tokens = requests[request_id].num_computed_tokens
            synced.append(mirror)
        return synced

    @property
    def by_id(self) -> dict[RequestId, Request]:
        """Every mirror by request id, as last synced (for what reads only what a request
        arrives with)."""
        return self._mirrors

    def sync(self, request: VllmRequest) -> Request:
        """The request's mirror, brought up to date with it."""
        return self.sync_all((request,))[0]

    def sync_all(self, requests: Iterable[VllmRequest]) -> list[Request]:
        """`sync` of each request, in order (one loop, no call per request: the scheduler
        syncs every running request at every step)."""
        mirrors, statuses = self._mirrors, _CORE_STATUSES
        synced = []
        for request in requests:
            mirror = mirrors[request.request_id]
            mirror.status = statuses[request.status]
            num_preemptions = request.num_preemptions
            if num_preemptions != mirror.num_preemptions:
                mirror.num_preemptions = num_preemptions
                mirror.has_progressed = False  # preempted: no new token since it was readmitted
            mirror.num_computed_tokens = request.num_computed_tokens
            mirror.num_output_tokens = request.num_output_tokens
            synced.append(mirror)
        return synced

    def __len__(self) -> int:
        return len(self._mirrors)


class PolicyRequestQueue(RequestQueue):
    """vLLM's waiting queue, ordered (and charged at admission) by a policy's queue."""

    def __init__(self, queue: WaitingQueue, mirrors: Mirrors) -> None:
        self._queue = queue
        self._mirrors = mirrors
        self._taken: VllmRequest | None = None  # popped by vLLM, fate not yet looked at

    def settle(self) -> None:
        """Turn a pop whose outcome is now known into the policy's pop or remove."""
        taken, self._taken = self._taken, None
        if taken is None:
            return
        mirror = self._mirrors.sync(taken)
        if taken.status == VllmStatus.RUNNING:  # admitted: the policy's admission (and charge)
            popped = self._queue.pop()
            assert popped is mirror, f"the policy's head moved under vLLM: {popped.request_id}"
        else:  # skipped for this step; vLLM puts it back
            self._queue.remove(mirror)

    def peek_mirror(self) -> Request | None:
        """The policy's next request to admit, as its mirror."""
        self.settle()
        return self._queue.peek()

    def add_request(self, request: VllmRequest) -> None:
        self.settle()
        self._queue.add(self._mirrors.sync(request))

    def pop_request(self) -> VllmRequest:
        mirror = self.peek_mirror()
        if mirror is None:
            raise IndexError("pop from an empty queue")
        self._taken = self._mirrors.request(mirror)
        return self._taken

    def peek_request(self) -> VllmRequest:
        mirror = self.peek_mirror()
        if mirror is None:
            raise IndexError("peek from an empty queue")
        return self._mirrors.request(mirror)

    # No front of the queue to put a request back at: the policy's order decides, as in vLLM's
    # own priority queue.
    def prepend_request(self, request: VllmRequest) -> None:
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[VllmRequest]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: VllmRequest) -> None:
        self.settle()
        mirror = self._mirrors.get(request)
        if mirror is not None:
            self._queue.remove(mirror)

    def remove_requests(self, requests: Iterable[VllmRequest]) -> None:
        for request in requests:
            self.remove_request(request)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __len__(self) -> int:
        self.settle()
        return len(self._queue)

    def __iter__(self) -> Iterator[VllmRequest]:
        self.settle()
        return iter([self._mirrors.request(m) for m in self._queue])

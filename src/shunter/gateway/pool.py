"""The live router loop: route each request with a `router/` policy, retry, fail over.

The router is the same object the simulator uses (`shunter.router.registry.make_router`): it
sees `ReplicaView` snapshots of the routable replicas (healthy, breaker not open) that hold
fewer than their `max_concurrency` of the gateway's requests, reconciled from the gateway's
own in-flight counts and the backends' reports (`replica.py`), exactly as the simulator's
gateway tier offers them (`shunter.sim.gateway`).

A request that fails before any output reached the client is retried on another replica. One
that fails mid-stream is resumed on another replica: by token ids where the backend takes them
(`GenerateRequest.resumed`, the ids kept by `stream_watch.TokenTrail`), else with its prompt
plus the text already sent (`GenerateRequest.replayed`), and the client sees one unbroken
stream; a backend with no first or next token in time is left (`stream_watch.StallWatch`); the usage it is told
adds up the tokens of every attempt. A backend's 4xx is the request's fault: passed through,
never retried. A background task checks health and reads each backend's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from shunter.backend.protocol import BackendError, GenerateChunk, GenerateRequest, Usage
from shunter.core.types import RequestSpec
from shunter.gateway.errors import ServiceUnavailableError
from shunter.gateway.kv_events import KvEventSubscriber
from shunter.gateway.metrics import GatewayMetrics, Gauge
from shunter.gateway.prompt_ids import BackendTokenizer
from shunter.gateway.replica import Replica, estimate_tokens, text_hash_ids
from shunter.gateway.stream_watch import StallWatch, TokenTrail
from shunter.router.interface import Router
from shunter.router.prefix_index import DispatchIndex

__all__ = ["Attempt", "PoolConfig", "ReplicaPool", "prompt_text"]

log = logging.getLogger("shunter.gateway")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_attempts: int = 3  # per request, over all replicas
    health_interval_s: float = 1.0
    health_timeout_s: float = 2.0
    # a backend that sends no first token (or no next token) for this long is left for another
    # replica: its stream is aborted and the request fails over (a long prefill on a CPU takes
    # tens of seconds: the defaults are generous)
    ttft_timeout_s: float = 300.0
    stall_timeout_s: float = 60.0
    # a text or chat prompt's ids for the exact prefix index (`prompt_ids.py`): a backend's
    # /tokenize slower than this routes the request on the approximation; answers cached up
    # to this many tokens in all
    tokenize_timeout_s: float = 0.2
    max_tokenize_cache_tokens: int = 1 << 18

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_tokenize_cache_tokens < 0:
            raise ValueError("max_tokenize_cache_tokens must be >= 0, got "
                             f"{self.max_tokenize_cache_tokens}")
        for name in ("health_interval_s", "health_timeout_s", "ttft_timeout_s",
                     "stall_timeout_s", "tokenize_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(slots=True)
class Attempt:
    """What the caller learns while a request runs: where it is, and its merged usage."""

    replica: Replica | None = None
    num_attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    num_cached_tokens: int | None = None
    has_output: bool = False  # a chunk with content reached the caller
    finish_reason: str | None = None  # the last one a backend gave

    @property
    def usage(self) -> Usage | None:
        return None if self.prompt_tokens is None else Usage(self.prompt_tokens,
                                                             self.completion_tokens)


def prompt_text(request: GenerateRequest) -> str:
    if request.messages is not None:
        return "".join(f"<{m.role}>{m.content}" for m in request.messages)
    if isinstance(request.prompt, tuple):  # token ids: equal ids, equal text (prefix hashes)
        return " ".join(map(str, request.prompt))
    return request.prompt or ""


@dataclass(slots=True)
class ReplicaPool:
    replicas: list[Replica]
    router: Router
    config: PoolConfig
    metrics: GatewayMetrics
    clock: Callable[[], float]
    on_capacity: Callable[[], None] = lambda: None  # called when replicas come back
    # prompts dispatched per replica, for a prefix-aware gateway policy's probe (else None)
    dispatch_index: DispatchIndex | None = None
    kv_events: list[KvEventSubscriber] = field(default_factory=list)  # exact prefix state feeds
    tokenizer: BackendTokenizer | None = None  # text prompts' ids for them (None: from config)
    _health_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.metrics.gauges += self._gauges()
        if self.tokenizer is None:
            self.tokenizer = BackendTokenizer(self.config.tokenize_timeout_s,
                                              self.config.max_tokenize_cache_tokens, self.clock)
        self.metrics.extra.append(self.tokenizer.outcomes.render)

    def capacity(self) -> int:
        """Request slots over every routable replica."""
        now = self.clock()
        return sum(r.max_concurrency for r in self.replicas if r.can_route(now))

    def unavailable_s(self) -> float | None:
        """None while some replica can serve now or soon (healthy, and its breaker closed or
        probing); else seconds until the first ejection ends (at least one health interval)."""
        now = self.clock()
        waits = []
        for r in self.replicas:
            if not r.is_healthy or r.is_draining:
                continue
            wait = r.breaker.ejected_for_s(now)
            if wait == 0.0:
                return None
            waits.append(wait)
        return max(min(waits, default=0.0), self.config.health_interval_s)

    def spec(self, request: GenerateRequest) -> RequestSpec:
        """The request as routers and the gateway tier see it (the true output length is
        unknown: `num_output_tokens` is a placeholder nothing reads). A prompt of token ids
        carries them, for the routers' exact prefix index (`kv_events.py`); a text one gets
        them when it is routed (`with_token_ids`)."""
        text = prompt_text(request)
        ids = request.prompt if isinstance(request.prompt, tuple) and request.prompt else None
        return RequestSpec(
            request_id=request.request_id, arrival_s=self.clock(),
            num_prompt_tokens=len(ids) if ids else estimate_tokens(len(text)),
            num_output_tokens=1, max_output_tokens=request.max_tokens, tenant=request.tenant,
            priority=request.priority, session_id=request.session_id,
            program_id=request.program_id, prompt_token_ids=ids,
            hash_ids=None if ids else text_hash_ids(text))

    async def with_token_ids(self, request: GenerateRequest, spec: RequestSpec) -> RequestSpec:
        """`spec` with its text or chat prompt's token ids, as a backend tokenizes them, when
        a replica that may take it has exact prefix state to match them against (else, or
        when /tokenize fails or is slow, `spec` itself: no round trip without an exact feed)."""
        if spec.prompt_token_ids is not None or not self.kv_events:
            return spec
        exact = {s.replica_id for s in self.kv_events if s.is_exact}
        if not exact:
            return spec
        now = self.clock()
        replicas = [r for r in self.replicas if r.replica_id in exact and r.can_route(now)
                    and r.client.unsupported(request) is None]
        assert self.tokenizer is not None, "set in __post_init__"
        ids = await self.tokenizer.token_ids(request, replicas) if replicas else None
        if ids is None:
            return spec
        # hash_ids stay: the approximation keys the prompt by its text, as for every request
        return replace(spec, prompt_token_ids=ids, num_prompt_tokens=len(ids))

    def refusal(self, request: GenerateRequest) -> tuple[str, str] | None:
        """(parameter, why) when every backend refuses `request` (`unsupported`), else None."""
        first = None
        for replica in self.replicas:
            why = replica.client.unsupported(request)
            if why is None:
                return None
            first = first or why
        return first

    def choose(self, spec: RequestSpec, excluded: set[int],
               request: GenerateRequest | None = None) -> Replica:
        """A routable replica that can serve `request` and has a free slot, by the router (any
        routable one when none has a slot: replicas went down while their requests were
        admitted)."""
        now = self.clock()
        routable = [r for r in self.replicas if r.replica_id not in excluded and r.can_route(now)
                    and (request is None or r.client.unsupported(request) is None)]
        if not routable:
            raise ServiceUnavailableError("no healthy backend can take this request",
                                          code="no_backend")
        with_room = [r for r in routable if r.num_in_flight < r.max_concurrency] or routable
        chosen = with_room[0]
        if len(with_room) > 1:
            decision = self.router.route(spec, [r.view(now) for r in with_room])
            found = next((r for r in with_room if r.replica_id == decision.replica_id), None)
            assert found is not None, f"router chose replica {decision.replica_id}, not offered"
            chosen = found
        if self.dispatch_index is not None:
            self.dispatch_index.dispatched(spec.request_id, chosen.view(now))
        return chosen

    async def generate(self, request: GenerateRequest, spec: RequestSpec, attempt: Attempt
                       ) -> AsyncIterator[GenerateChunk]:
        """Run `request` (`spec`: as `self.spec` describes it) to its end somewhere (usage is
        in `attempt`). A backend that fails, stalls or answers 429/503 before any output is
        left for another. A stream that fails after output is resumed elsewhere with the text
        sent so far, for the tokens still allowed; one that failed after its finish (or its
        last allowed token) is over, never extended. What cannot be replayed safely (tool-call
        deltas, several choices, an echoed prompt) fails with a BackendError saying so."""
        if self.kv_events:  # (no await on the request path without exact feeds)
            spec = await self.with_token_ids(request, spec)
        excluded: set[int] = set()
        current, text_sent = request, ""
        # text replay needs text: one choice, a text prompt (or chat), no echoed prompt
        is_replayable = (request.n == 1 and not request.echo
                         and not isinstance(request.prompt, tuple))
        # token replay needs every id: the prompt's (from the first backend) and each output's
        resume = TokenTrail() if request.stream and request.is_token_resumable else None
        is_finished = False
        last_error: BackendError | None = None
        while attempt.num_attempts < self.config.max_attempts:
            try:
                replica = self.choose(spec, excluded, current)
            except ServiceUnavailableError:
                if last_error is None:
                    raise
                break
            attempt.num_attempts += 1
            attempt.replica = replica
            self.metrics.routed.inc((replica.name,))
            base_tokens = attempt.completion_tokens
            sent = current
            if attempt.has_output and resume is not None and replica.client.resumes_by_tokens() \
                    and resume.is_whole(attempt.completion_tokens):
                sent = request.resumed(resume.ids(), attempt.completion_tokens)
            try:
                async for chunk in self._run_on(replica, sent, spec.num_prompt_tokens, attempt,
                                                base_tokens):
                    text_sent += chunk.text
                    is_replayable = is_replayable and not chunk.has_tool_calls
                    is_finished = is_finished or (chunk.finish_reason is not None
                                                  and request.n == 1)
                    if resume is not None:
                        resume.add(chunk, is_first_attempt=sent is request)
                    yield chunk
                return
            except BackendError as exc:
                if exc.is_client_error and exc.status_code != 429:
                    raise  # the request's fault (a 429 is the backend's load: try another)
                if is_finished:
                    return  # it died after its last event: the answer is whole
                can_resume = resume is not None and resume.is_whole(attempt.completion_tokens)
                if (text_sent or attempt.has_output) and not is_replayable and not can_resume:
                    raise BackendError(f"the backend failed mid-stream ({exc}) after sending "
                                       "tool-call deltas, several choices or an echoed prompt, "
                                       "which cannot be resumed on another backend without "
                                       "corrupting them",
                                       status_code=None, code="backend_failed_mid_stream"
                                       ) from None
                last_error = exc
                excluded.add(replica.replica_id)
                self.metrics.failovers.inc(("mid_stream" if attempt.has_output
                                            else "before_first_byte",))
                if (request.max_tokens is not None
                        and attempt.completion_tokens >= request.max_tokens):
                    yield GenerateChunk("", "length")  # every allowed token was sent already
                    return
                current = request.replayed(text_sent, attempt.completion_tokens) \
                    if is_replayable else request  # (by tokens only: `can_resume`)
                if not is_replayable:
                    excluded.update(r.replica_id for r in self.replicas
                                    if not r.client.resumes_by_tokens())
        assert last_error is not None
        if last_error.status_code in (429, 503):
            raise last_error  # every backend said it is busy: so does the gateway
        raise BackendError(f"request failed on {attempt.num_attempts} backend(s); last error: "
                           f"{last_error}", status_code=None)

    async def _run_on(self, replica: Replica, request: GenerateRequest, num_prompt_tokens: int,
                      attempt: Attempt, base_tokens: int) -> AsyncIterator[GenerateChunk]:
        clock, meter = self.clock, replica.meter
        timer = replica.on_dispatch(num_prompt_tokens, clock())
        is_started = is_verdict = False
        is_replay = bool(request.continuation) or request.resume_token_ids is not None
        watch = StallWatch(self.config.ttft_timeout_s, self.config.stall_timeout_s)
        try:
            async with contextlib.aclosing(replica.client.submit(request)) as chunks:
                async for chunk in watch.guard(chunks, replica.name):
                    if not is_started:
                        is_started = is_verdict = True
                        replica.on_first_output(num_prompt_tokens)
                        replica.breaker.on_success(self.clock())
                    meter.on_chunk(timer, clock(), chunk,
                                   replica.num_running + replica.num_other_running)
                    if chunk.usage is not None:
                        if attempt.prompt_tokens is None or not is_replay:
                            attempt.prompt_tokens = chunk.usage.prompt_tokens
                        attempt.completion_tokens = base_tokens + chunk.usage.completion_tokens
                    if chunk.num_cached_tokens is not None:
                        attempt.num_cached_tokens = chunk.num_cached_tokens
                    if chunk.text or chunk.has_tool_calls or chunk.logprobs:
                        attempt.has_output = True
                    if chunk.finish_reason is not None:
                        attempt.finish_reason = chunk.finish_reason
                    yield chunk
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # a backend client that broke on what its backend sent: that backend's failure
            log.warning("backend %s failed: %s: %s", replica.name, type(exc).__name__, exc)
            is_verdict = True
            replica.breaker.on_failure(self.clock())
            self.metrics.backend_errors.inc((replica.name, "mid_stream" if is_started
                                             else "before_first_byte"))
            raise BackendError(f"backend {replica.name} failed: {type(exc).__name__}: "
                               f"{exc}") from exc
        except BackendError as exc:
            if not exc.is_client_error:
                is_verdict = True
                replica.breaker.on_failure(self.clock())
                self.metrics.backend_errors.inc((replica.name, "mid_stream" if is_started
                                                 else "before_first_byte"))
            raise
        finally:
            watch.close()
            replica.on_done(num_prompt_tokens, is_started=is_started, timer=timer)
            if not is_verdict:
                replica.breaker.on_abandoned()
            self.on_capacity()

    def start(self) -> None:
        """Start the background health and load checks (needs a running loop)."""
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        for subscriber in self.kv_events:
            subscriber.start()

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for subscriber in self.kv_events:
            await subscriber.stop()
        for replica in self.replicas:
            await replica.client.close()

    async def check_once(self) -> None:
        """One round of health checks and load reads over every replica, concurrently."""
        await asyncio.gather(*(self._check(r) for r in self.replicas))
        self.on_capacity()

    async def _check(self, replica: Replica) -> None:
        timeout = self.config.health_timeout_s
        try:
            is_healthy = await asyncio.wait_for(replica.client.health(), timeout)
            load = await asyncio.wait_for(replica.client.load(), timeout) if is_healthy else None
        except Exception as exc:  # one check fails, never the loop of every later one
            if not isinstance(exc, TimeoutError | BackendError | OSError):
                log.exception("health check of backend %s failed", replica.name)
            is_healthy, load = False, None
        replica.is_healthy = is_healthy
        if load is not None:
            replica.on_report(load)

    async def _health_loop(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.config.health_interval_s)

    def _gauges(self) -> list[Gauge]:
        def per_replica(read: Callable[[Replica], float]) -> Callable[[], list]:
            return lambda: [((r.name,), read(r)) for r in self.replicas]

        def reported(name: str) -> Callable[[Replica], float]:
            return lambda r: 0.0 if r.reported is None else float(getattr(r.reported, name))

        def speed(name: str) -> Callable[[], list]:
            def read() -> list:  # replicas whose speed is unknown (None) are left out
                views = ((r.name, getattr(r.view(self.clock()), name)) for r in self.replicas)
                return [((n,), v) for n, v in views if v is not None]
            return read

        return [
            Gauge("shunter_replica_waiting", "Requests waiting at each replica (reconciled).",
                  ("replica",), per_replica(lambda r: r.view(self.clock()).num_waiting)),
            Gauge("shunter_replica_running", "Requests running at each replica (reconciled).",
                  ("replica",), per_replica(lambda r: r.view(self.clock()).num_running)),
            Gauge("shunter_replica_kv_usage", "KV cache usage each replica reported (0..1).",
                  ("replica",), per_replica(reported("kv_usage"))),
            Gauge("shunter_replica_preemptions", "Preemptions each replica reported (cumulative).",
                  ("replica",), per_replica(reported("num_preemptions"))),
            Gauge("shunter_replica_in_flight", "Requests the gateway has in flight at each replica.",
                  ("replica",), per_replica(lambda r: r.num_in_flight)),
            Gauge("shunter_replica_healthy", "1 if the replica is healthy and its breaker closed.",
                  ("replica",), per_replica(lambda r: float(r.can_route(self.clock())))),
            Gauge("shunter_replica_prefill_tokens_per_s", "Prefill speed the router sees "
                  "(profiled or measured).", ("replica",), speed("prefill_tokens_per_s")),
            Gauge("shunter_replica_decode_step_s", "Decode step time the router sees at the "
                  "replica's batch (profiled or measured).", ("replica",), speed("decode_step_s")),
        ]

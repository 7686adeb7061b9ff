"""Send a batch's requests and write each result as it arrives (needs the gateway extra's
aiohttp).

At most `max_concurrency` requests are in flight, taken in the order given (with BatchLLM's
warm-ups, one more: see `run_batch`). A request that
meets a connection error, a timeout, 429 or a 5xx is retried after 0.5, 1, 2, ... s (at most
`max_retries` times); one that still fails is left unfinished, written nowhere, so the next
run sends it again. A 4xx other than 429 is the request's own fault: written to the error file
as OpenAI writes failed requests, and not retried. Results are appended by one writer, each in
one write and flushed, so a killed run loses at most the answers still in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import aiohttp

from shunter.batch.file import BatchLine, LineError
from shunter.bench.client import CONNECTION_ERRORS, api_root

__all__ = ["BatchCounts", "BatchTarget", "run_batch", "warmup_line", "write_line_errors"]

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class BatchTarget:
    url: str  # the server, with or without /v1
    api_key: str | None = None
    max_concurrency: int = 32
    timeout_s: float = 600.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        api_root(self.url)  # refuses a non-http URL
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass(slots=True)
class BatchCounts:
    answered: int = 0
    failed: int = 0  # 4xx: written to the error file
    unfinished: int = 0  # gave up after retries: sent again by the next run
    num_warmups: int = 0  # prefix warm-ups sent (their answers are not results)
    num_warmups_failed: int = 0  # the group then ran without one
    last_problem: str = ""
    statuses: dict[int, int] = field(default_factory=dict)


def _result(line: BatchLine, status: int, body: Any, request_id: str | None) -> dict[str, Any]:
    ok = status < 400
    error = None if ok else {"code": str(status), "message": _message(body)}
    return {"id": f"batch_req_{line.line_no}", "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": error}


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:500]


def write_line_errors(errors: Sequence[LineError], out: IO[str]) -> None:
    """Malformed input lines, as error-file results (no response)."""
    for error in errors:
        out.write(json.dumps({"id": f"batch_req_{error.line_no}", "custom_id": error.custom_id,
                              "line": error.line_no, "response": None,
                              "error": {"code": "invalid_line", "message": str(error)}}) + "\n")
    out.flush()


async def _send(session: aiohttp.ClientSession, root: str, line: BatchLine,
                target: BatchTarget) -> tuple[int, Any, str | None] | str:
    """(status, body, request id) of a final answer, or why this try should be retried."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    try:
        async with session.post(root + line.url, json=line.body, headers=headers) as response:
            raw = await response.read()
            status = response.status
            request_id = response.headers.get("x-request-id")
    except (TimeoutError, *CONNECTION_ERRORS, aiohttp.ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    try:
        body: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = raw.decode("utf-8", "replace")[:2000]
    if status in _RETRY_STATUSES:
        return f"HTTP {status}: {_message(body)}"
    return status, body, request_id


def warmup_line(line: BatchLine) -> BatchLine:
    """`line` asking for one output token: its prompt computed, and so the prefix it shares."""
    body = {k: v for k, v in line.body.items()
            if k not in ("max_completion_tokens", "min_tokens", "n", "best_of")}
    return replace(line, custom_id=f"warmup:{line.custom_id}", body={**body, "max_tokens": 1})


async def run_batch(lines: Sequence[BatchLine], target: BatchTarget, out: IO[str],
                    errors_out: IO[str], on_progress: Callable[[int], None] = lambda n: None,
                    *, sleep: Callable[[float], Any] = asyncio.sleep,
                    warm_groups: Sequence[Sequence[BatchLine]] = ()) -> BatchCounts:
    """Send `lines` in order, at most `target.max_concurrency` at a time; answers to `out`,
    4xx failures to `errors_out`, each as one line as it arrives.

    `warm_groups` (BatchLLM, as the simulator's `prefix_order.batch_job` does it): the groups
    of `lines` whose requests share a prefix. Lines in no group go first; each group's lines
    wait until a warm-up computed the prefix (the group's first request asking for one token:
    a server's prefix cache then holds its whole prompt, which the sharers reuse; the answer
    is not a result), and warm-ups go one after another, the next as soon as the last one is
    answered, so a prefix is computed just before its sharers run. Without them an engine that
    admits a group's requests in one step computes the prefix once per request. A warm-up
    that fails releases its group all the same."""
    counts = BatchCounts()
    root = api_root(target.url)
    grouped = {id(line) for group in warm_groups for line in group}
    queue: asyncio.Queue[BatchLine | None] = asyncio.Queue()
    for line in lines:
        if id(line) not in grouped:
            queue.put_nowait(line)
    done = 0

    async def attempts(session: aiohttp.ClientSession, line: BatchLine
                       ) -> tuple[int, Any, str | None] | str:
        outcome: tuple[int, Any, str | None] | str = ""
        for attempt in range(target.max_retries + 1):
            outcome = await _send(session, root, line, target)
            if not isinstance(outcome, str):
                break
            if attempt < target.max_retries:
                await sleep(min(30.0, 0.5 * 2 ** attempt))
        return outcome

    async def warm_up(session: aiohttp.ClientSession) -> None:
        for group in warm_groups:
            counts.num_warmups += 1
            outcome = await attempts(session, warmup_line(group[0]))
            if isinstance(outcome, str) or outcome[0] >= 400:
                counts.num_warmups_failed += 1
            for line in group:
                queue.put_nowait(line)
        for _ in range(target.max_concurrency):
            queue.put_nowait(None)  # the workers' end

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while (line := await queue.get()) is not None:
            outcome = await attempts(session, line)
            if isinstance(outcome, str):
                counts.unfinished += 1
                counts.last_problem = f"{line.custom_id}: {outcome}"
            else:
                status, body, request_id = outcome
                counts.statuses[status] = counts.statuses.get(status, 0) + 1
                sink = out if status < 400 else errors_out
                sink.write(json.dumps(_result(line, status, body, request_id)) + "\n")
                sink.flush()
                if status < 400:
                    counts.answered += 1
                else:
                    counts.failed += 1
            done += 1
            on_progress(done)

    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    connector = aiohttp.TCPConnector(limit=target.max_concurrency + 1)  # + the warm-up
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(warm_up(session),
                             *(worker(session) for _ in range(target.max_concurrency)))
    return counts


def open_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8")  # noqa: SIM115 (the caller closes it)

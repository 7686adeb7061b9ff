"""Chaos and soak: the gateway under a rotating fault mix and hostile clients, with a steady
streaming load; every request accounted for, the gateway's RSS and descriptors over time.

    python benchmarks/chaos.py [--requests 2000] [--rate 200] [--concurrency 48] [--backends 4]
        [--faults all] [--hostile all] [--router cost] [--seed 0] [--max-duration-s 1800]
        [--json FILE] [--gateway-log FILE]

    soak: python benchmarks/chaos.py --requests 100000 --json results/chaos_soak.json
    (100,000 requests at the default 200 req/s: about 9 minutes on 2 cores; the load stops at
    --max-duration-s whatever was sent, and the whole run ends within that plus about 2 min)

Setup, all on 127.0.0.1 of this machine: `backends` fake OpenAI servers
(`shunter.gateway.fake_server`) in one child process, which every `fault_period_s` puts the
next fault of a shuffled cycle on one healthy backend for 1 to 3 periods, never on more than
half of them: killed (and restarted on the same port when the fault ends), a stall after 0-8
tokens, a first token later than the TTFT timeout, 500s, a wrong-shaped event, a malformed
event, an `error` event, the connection cut after 0-8 tokens, the connection cut after the
final token before [DONE]. The gateway is `shunter serve --config` in its own process, with
short timeouts (TTFT 2 s, stall 1 s, every connection limit 2 s, breaker cooldown 1 s) so that
faults resolve quickly; half its backends resume a broken stream by tokens, half by text. This
process sends the load (aiohttp + uvloop): at `rate` requests/s, at most `concurrency` at once,
completions and chat at random, `ignore_eos` with 8-32 `max_tokens`, streamed but for
`whole_fraction` of them. The fake model is deterministic, so each request's exact text is
known beforehand (`FakeModel`). Alongside, a hostile client every `hostile_period_s`, in turn:
a slowloris head, a connect that says nothing, an idle keep-alive, endless headers, a stalled
body, a heavy stream that is never read (4 KiB receive buffer), a client that leaves its
stream after the first bytes.

Each request is exactly one of: correct (the expected text, one finish_reason "length", one
[DONE], usage = prompt and k tokens), an error status (any status but 200, by status), an
error event (an SSE `{"error": ...}` then [DONE], the text before it a prefix of the right
one), wrong (finished, but other text, finish reason or usage), lost (no answer, the
connection ended without [DONE], or a stream ended early with no error), duplicated (a second
[DONE] or finish_reason, more text or text events than asked for) or hung (no whole answer
within `REQUEST_TIMEOUT_S`). A hostile client passes when the gateway closes it within its limit
plus `SLACK_S` (408 for a slow head or body, 431 for endless headers, or a reset before the
status could be read, which is counted apart; the never-reading and the leaving clients: once
the gateway holds no descriptor of their connection).

The gateway's RSS and open descriptors are sampled every second. RSS is flat when the median
of the load phase's last tenth is within tolerance of its 20-30 % stretch's. (With the cost
router RSS rises about 1 MiB per 10,000 requests here: its prefix index fills, one entry per
distinct prompt, up to its bound of 65,536 nominal blocks of 16 tokens per backend that does
not report its KV size; `--router round_robin` shows the gateway's own, flat.) Descriptors swing
with the requests in flight, so the strict test is the idle gateway after the run against the
idle gateway before it: no more descriptors other than sockets, no client connection held, no
backend connection but its keep-alive pools' (established), and no stream left running at any
backend. The exit status is 1 if anything was lost, duplicated, wrong or hung, a hostile client
was not closed as due, RSS grew or the idle gateway holds more than before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shunter.backend.protocol import ChatMessage, GenerateRequest
from shunter.gateway.fake import FakeModel, fake_context, fake_num_tokens
from shunter.gateway.supervisor import stop_process_group

MODEL = "fake-model"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL
REQUEST_TIMEOUT_S = 30.0  # a request with no whole answer by then is "hung"
MIN_TOKENS, MAX_TOKENS = 8, 32
TOKEN_DELAY_S = 0.002  # between two tokens at the backends
TTFT_TIMEOUT_S, STALL_TIMEOUT_S = 2.0, 1.0  # the gateway's [pool]
LIMIT_S = 2.0  # the gateway's header, idle, body and send timeouts ([limits])
SLOW_FIRST_TOKEN_S = 5.0  # the "slow_first_token" fault: past the TTFT timeout
SLACK_S = 3.0  # how late past its limit a hostile client may be closed on a noisy 2-core box
# what the never-reading client asks for: 400 events of 16 KiB, more than the kernel's socket
# buffers take (autotuned to 4 MiB on loopback), so the gateway's own buffer fills within a
# second or two and its send timeout must cut the connection
NEVER_READ_TOKENS, NEVER_READ_PAD_BYTES = 400, 16 << 10
NEVER_READ_BOUND_S = 2.0 + LIMIT_S + SLACK_S
RSS_TOLERANCE = (32 << 20, 0.15)  # growth allowed: bytes, or this fraction, whichever is more
# the descriptor count swings with the requests in flight (each holds a client and a
# backend connection): growth allowed is twice the concurrency, or this fraction
FD_TOLERANCE_FRACTION = 0.25
NON_SOCKET_SLACK = 4  # descriptors other than sockets an idle gateway may have gained
TCP_STATES = {"01": "established", "02": "syn_sent", "03": "syn_recv", "04": "fin_wait1",
              "05": "fin_wait2", "06": "time_wait", "07": "close", "08": "close_wait",
              "09": "last_ack", "0B": "closing"}
SAMPLE_PERIOD_S = 1.0
FAULTS = ("kill", "stall", "slow_first_token", "status_500", "wrong_shape", "malformed",
          "error_event", "abort", "cut_after_final")
HOSTILE = ("slowloris", "silent", "idle_keepalive", "endless_headers", "stalled_body",
           "never_reader", "quitter")
BAD_EVENTS: dict[str, tuple[bytes, ...]] = {
    "wrong_shape": (b"[1,2,3]", b'{"choices": [{"index": 0, "text": 7}]}', b'{"choices": "x"}'),
    "malformed": (b"{not json", b'{"choices": [', b"\xff\xfe"),
    "error_event": (b'{"error": {"message": "backend exploded", "type": "server_error"}}',),
}
OUTCOMES = ("correct", "error_status", "error_event", "wrong", "lost", "duplicated", "hung")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the backends' child process: fake servers and the fault rotation ----------------------

def _apply(backend: Any, fault: str, rng: random.Random) -> None:
    match fault:
        case "kill":
            backend.kill()
        case "stall":
            backend.stall_after_tokens = rng.randint(0, 8)
        case "slow_first_token":
            backend.first_token_delay_s = SLOW_FIRST_TOKEN_S
        case "status_500":
            backend.fail_status = 500
        case "abort":
            backend.abort_after_tokens = rng.randint(0, 8)
        case "cut_after_final":
            backend.cut_after_final_token = True
        case _:
            backend.bad_event_after_tokens = rng.randint(0, 8)
            backend.bad_event = rng.choice(BAD_EVENTS[fault])


async def _clear(backend: Any, fault: str, port: int) -> None:
    backend.fail_status = backend.bad_event_after_tokens = None
    backend.stall_after_tokens = backend.abort_after_tokens = None
    backend.cut_after_final_token = False
    backend.first_token_delay_s = 0.0
    if fault == "kill":
        await backend.start(port=port)  # the crashed server comes back on its port


def _run_backends(spec: dict[str, Any]) -> None:
    import uvloop

    from shunter.gateway.fake_server import FakeHttpBackend

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        ports, faults, period_s = spec["ports"], spec["faults"], spec["fault_period_s"]
        rng = random.Random(spec["seed"])
        backends = [FakeHttpBackend(model_name=MODEL, token_delay_s=TOKEN_DELAY_S) for _ in ports]
        for backend, port in zip(backends, ports, strict=True):
            await backend.start(port=port)
        active: dict[int, tuple[str, float]] = {}  # backend -> (fault, until)
        counts: Counter[str] = Counter()
        order: list[str] = []  # every fault once, in a shuffled order, then again
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
            now = loop.time()
            for i, (fault, until) in list(active.items()):
                if until <= now or stop.is_set():
                    await _clear(backends[i], fault, ports[i])
                    del active[i]
            if faults and len(active) < len(backends) // 2 and not stop.is_set():
                i = rng.choice([j for j in range(len(backends)) if j not in active])
                if not order:
                    order = rng.sample(faults, len(faults))
                fault = order.pop()
                _apply(backends[i], fault, rng)
                active[i] = (fault, now + period_s * rng.uniform(1.0, 3.0))
                counts[fault] += 1
        Path(spec["summary"]).write_text(json.dumps({
            "faults": dict(counts), "num_requests": [b.num_requests for b in backends],
            "num_disconnects": [b.num_disconnects for b in backends]}))
        for backend in backends:
            await backend.stop()
    uvloop.run(main())


# ---- the gateway's process -------------------------------------------------------------------

def _gateway_config(port: int, backend_ports: list[int], router: str = "cost") -> str:
    backends = "".join(
        f'[[backends]]\nname = "b{i}"\nkind = "remote"\nurl = "http://127.0.0.1:{p}"\n'
        f'max_concurrency = 64\nresume = "{"tokens" if i % 2 == 0 else "text"}"\n\n'
        for i, p in enumerate(backend_ports))
    return (f'[server]\nhost = "127.0.0.1"\nport = {port}\nmodels = ["{MODEL}"]\n'
            f'drain_timeout_s = 5\n\n[router]\nname = "{router}"\n\n'
            f"[pool]\nmax_attempts = 3\nhealth_interval_s = 0.5\nhealth_timeout_s = 1\n"
            f"ttft_timeout_s = {TTFT_TIMEOUT_S}\nstall_timeout_s = {STALL_TIMEOUT_S}\n\n"
            f"[breaker]\nfailure_threshold = 3\ncooldown_s = 1\nmax_ejection_s = 4\n"
            f"success_threshold = 2\n\n"
            f"[admission]\nmax_queue_wait_s = 10\n\n"
            f"[limits]\nheader_timeout_s = {LIMIT_S}\nidle_timeout_s = {LIMIT_S}\n"
            f"body_timeout_s = {LIMIT_S}\nsend_timeout_s = {LIMIT_S}\n\n" + backends)


def _wait_healthy(port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    import urllib.request
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"the gateway on port {port} was not healthy within {START_TIMEOUT_S} s")


# ---- the load: one request, its expected answer, its outcome ----------------------------------

@dataclass(frozen=True, slots=True)
class Spec:
    index: int
    prompt: str
    max_tokens: int
    is_chat: bool
    is_stream: bool


def _spec(index: int, seed: int, whole_fraction: float) -> Spec:
    rng = random.Random(seed * 1_000_003 + index)
    words = " ".join(rng.choices(("ship", "cargo", "rail", "yard", "switch", "track"), k=6))
    return Spec(index, f"chaos {seed} request {index}: {words}",
                rng.randint(MIN_TOKENS, MAX_TOKENS), rng.random() < 0.5,
                rng.random() >= whole_fraction)


def _expected(spec: Spec) -> tuple[str, int]:
    """The exact text the fake model gives `spec`, and its prompt tokens."""
    request = GenerateRequest(
        request_id="x", model=MODEL, prompt=None if spec.is_chat else spec.prompt,
        messages=(ChatMessage("user", spec.prompt),) if spec.is_chat else None,
        max_tokens=spec.max_tokens, ignore_eos=True)
    words, _ = FakeModel().generate(request)
    return "".join(words), fake_num_tokens(fake_context(request))


def _body(spec: Spec) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": spec.max_tokens, "ignore_eos": True,
                            "stream": spec.is_stream}
    if spec.is_stream:
        body["stream_options"] = {"include_usage": True}
    if spec.is_chat:
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    return body


def _usage_wrong(usage: Any, spec: Spec, num_prompt: int) -> str | None:
    if not isinstance(usage, dict):
        return "no usage"
    if usage.get("prompt_tokens") != num_prompt or usage.get("completion_tokens") != \
            spec.max_tokens:
        return f"usage {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}, " \
               f"expected {num_prompt}+{spec.max_tokens}"
    return None


def classify_stream(raw: bytes, spec: Spec, is_cut: bool) -> tuple[str, str]:
    """(outcome, why) of a streamed answer; `is_cut`: the connection broke while reading."""
    expected, num_prompt = _expected(spec)
    pieces: list[str] = []
    num_done = num_finish = 0
    usage = finish = error = None
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            num_done += 1
            continue
        if num_done:
            return "duplicated", "an event after [DONE]"
        try:
            obj = json.loads(data)
        except ValueError:
            return ("lost", "cut mid-event") if is_cut else ("wrong", "a malformed event")
        if "error" in obj:
            error = obj["error"]
            continue
        usage = obj.get("usage") or usage
        for choice in obj.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if spec.is_chat \
                else choice.get("text")
            if piece:
                pieces.append(piece)
            if choice.get("finish_reason") is not None:
                num_finish += 1
                finish = choice["finish_reason"]
    text = "".join(pieces)
    if num_done > 1 or num_finish > 1 or len(pieces) > spec.max_tokens:
        return "duplicated", f"{num_done} [DONE], {num_finish} finish, {len(pieces)} pieces"
    if not expected.startswith(text):
        return ("duplicated", "more text than asked for") if len(text) > len(expected) \
            else ("wrong", "other text")
    if error is not None:
        code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
        return ("error_event", str(code)) if num_done == 1 else ("lost", "error without [DONE]")
    if num_done == 0:
        return "lost", f"cut before [DONE] ({len(pieces)} of {spec.max_tokens} tokens)"
    if text != expected or num_finish == 0:
        return "lost", f"ended early: {len(pieces)} of {spec.max_tokens} tokens, no error"
    if finish != "length":
        return "wrong", f"finish_reason {finish!r}"
    why = _usage_wrong(usage, spec, num_prompt)
    return ("wrong", why) if why else ("correct", "")


def classify_whole(raw: bytes, spec: Spec) -> tuple[str, str]:
    expected, num_prompt = _expected(spec)
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return "wrong", "a malformed answer"
    text = (choice.get("message") or {}).get("content") if spec.is_chat else choice.get("text")
    if text != expected:
        return ("duplicated", "more text than asked for") if isinstance(text, str) \
            and len(text) > len(expected) else ("wrong", "other text")
    if choice.get("finish_reason") != "length":
        return "wrong", f"finish_reason {choice.get('finish_reason')!r}"
    why = _usage_wrong(body.get("usage"), spec, num_prompt)
    return ("wrong", why) if why else ("correct", "")


@dataclass(slots=True)
class Tally:
    num_sent: int = 0
    num_done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "outcome: why", all but correct
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, spec: Spec, outcome: str, why: str, raw: bytes = b"") -> None:
        self.num_done += 1
        self.outcomes[outcome] += 1
        if outcome != "correct":
            self.reasons[f"{outcome}: {why}"] += 1
        if outcome not in ("correct", "error_status", "error_event") and len(self.examples) < 20:
            self.examples.append({"spec": asdict(spec), "outcome": outcome, "why": why,
                                  "tail": raw[-600:].decode("utf-8", "replace")})


def _error_code(raw: bytes) -> str:
    """An error answer's OpenAI error code (or type), or what is wrong with it."""
    try:
        error = json.loads(raw)["error"]
        return str(error.get("code") or error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "(not OpenAI error JSON)"


async def _one(session: Any, url: str, spec: Spec, tally: Tally) -> None:
    import aiohttp
    path = "/v1/chat/completions" if spec.is_chat else "/v1/completions"
    raw, is_cut = bytearray(), False
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            try:
                async with session.post(url + path, json=_body(spec)) as response:
                    try:
                        async for data in response.content.iter_any():
                            raw += data
                    except (aiohttp.ClientError, OSError):
                        is_cut = True
                    status = response.status
            except (aiohttp.ClientError, OSError) as exc:
                tally.add(spec, "lost", f"no answer: {type(exc).__name__}")
                return
    except TimeoutError:
        tally.add(spec, "hung", f"no whole answer in {REQUEST_TIMEOUT_S:g} s", bytes(raw))
        return
    if status != 200:
        tally.statuses[str(status)] += 1
        tally.add(spec, "error_status", f"{status} {_error_code(bytes(raw))}")
    elif spec.is_stream:
        tally.add(spec, *classify_stream(bytes(raw), spec, is_cut), raw=bytes(raw))
    elif is_cut:
        tally.add(spec, "lost", "cut mid-answer", bytes(raw))
    else:
        tally.add(spec, *classify_whole(bytes(raw), spec), raw=bytes(raw))


async def _load(url: str, args: argparse.Namespace, tally: Tally, deadline_s: float) -> None:
    import aiohttp
    loop = asyncio.get_running_loop()
    # a kept-alive connection is dropped well before the gateway's idle timeout closes it
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=LIMIT_S / 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(None),
                                     auto_decompress=False) as session:
        slots = asyncio.Semaphore(args.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = loop.time()
        for i in range(args.requests):
            if loop.time() > deadline_s:
                break
            delay = start + i / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = loop.create_task(_one(session, url, _spec(i, args.seed, args.whole_fraction),
                                         tally))
            task.add_done_callback(lambda t: (slots.release(), tasks.discard(t)))
            tasks.add(task)
            tally.num_sent += 1
        await asyncio.gather(*list(tasks))


# ---- hostile clients -------------------------------------------------------------------------

class _Probe(asyncio.Protocol):
    """A raw client connection that keeps every byte it gets and how it ended (a reset after
    the answer loses nothing here, unlike a StreamReader, which raises before its buffer)."""

    def __init__(self) -> None:
        self.answer = bytearray()
        self.how: str | None = None  # "eof" or "reset" once ended
        self.transport: asyncio.Transport | None = None
        self.got = asyncio.Event()  # a byte came, or the end
        self.ended = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answer += data
        self.got.set()

    def eof_received(self) -> None:
        self.how = "eof"  # (returning None closes the transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.how = self.how or ("reset" if exc else "eof")
        self.ended.set()
        self.got.set()

    def send(self, data: bytes) -> bool:
        if self.ended.is_set() or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))


def _post_head(body: bytes, length: int | None = None, path: bytes = b"/v1/completions") -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (path, len(body) if length is None else length))


async def _hostile_client(kind: str, port: int, pid: int) -> tuple[bool, float, str]:
    """(closed as it should be, seconds it took, what went wrong) for one hostile client."""
    start = time.monotonic()
    if kind == "never_reader":
        closed = await _never_reads(port, pid)
        took_s = time.monotonic() - start
        return closed, took_s, "" if closed else "still held by the gateway"
    bound_s = LIMIT_S + SLACK_S
    _, probe = await asyncio.get_running_loop().create_connection(_Probe, "127.0.0.1", port)
    try:
        expect = b""
        if kind == "slowloris":  # a byte every 0.25 s, never a whole head: 408
            expect = b"HTTP/1.1 408 "
            for byte in b"POST /v1/completions HTTP/1.1\r\nx-slow: " + b"a" * 1000:
                await probe.wait(probe.got, 0.25)
                if probe.got.is_set() or time.monotonic() - start > bound_s:
                    break
                probe.send(bytes([byte]))
        elif kind == "idle_keepalive":  # one request (its answer: 200, or 503 while every
            expect = b"HTTP/1.1 "  # backend is out), then idle: closed
            probe.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        elif kind == "quitter":  # leaves (a reset) after the first bytes of its stream
            body = json.dumps({"model": MODEL, "prompt": "quit", "stream": True,
                               "max_tokens": 400, "ignore_eos": True}).encode()
            probe.send(_post_head(body) + body)
            await probe.wait(probe.got, bound_s)
            assert probe.transport is not None
            peer_port = probe.transport.get_extra_info("sockname")[1]
            probe.transport.abort()
            while _holds_connection(pid, port, peer_port):
                if time.monotonic() - start > bound_s:
                    return False, time.monotonic() - start, "still held by the gateway"
                await asyncio.sleep(0.1)
            return True, time.monotonic() - start, ""
        elif kind == "endless_headers":  # 1 KiB header lines, up to 4 MiB: 431 at the limit
            expect = b"HTTP/1.1 431 "
            probe.send(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            line = b"x-pad: " + b"a" * 1017 + b"\r\n"
            for _ in range(64):
                if not probe.send(line * 64):
                    break
                await probe.wait(probe.ended, 0.01)
        elif kind == "stalled_body":  # 1000 bytes announced, 10 sent: 408
            expect = b"HTTP/1.1 408 "
            probe.send(_post_head(b"", length=1000) + b'{"model": ')
        elif kind != "silent":  # silent: connects, says nothing, is closed quietly
            raise ValueError(f"unknown hostile client {kind!r}; valid: {', '.join(HOSTILE)}")
        await probe.wait(probe.ended, start + bound_s - time.monotonic())
        took_s = time.monotonic() - start
        if not probe.ended.is_set():
            return False, took_s, "not closed"
        if not probe.answer and probe.how == "reset" and expect:
            # closed, but its status lost: a close with our bytes unread sends a reset, which
            # can reach this client before it read the answer (no lingering close)
            return True, took_s, "reset, no status"
        if not probe.answer.startswith(expect):
            return False, took_s, f"answered {bytes(probe.answer[:24])!r}, then {probe.how}"
        return True, took_s, ""
    finally:
        if probe.transport is not None:
            probe.transport.abort()


async def _never_reads(port: int, pid: int) -> bool:
    """Ask for a heavy stream and read none of it; whether the gateway let go of the
    connection within bound. Seen from the gateway, as a client cannot see it: the gateway's
    abort closes its descriptor, and the kernel keeps the unsent answer and the FIN behind it."""
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        body = json.dumps({"model": MODEL, "prompt": "never read", "stream": True,
                           "max_tokens": NEVER_READ_TOKENS, "ignore_eos": True,
                           "fake_event_pad_bytes": NEVER_READ_PAD_BYTES}).encode()
        await loop.sock_sendall(sock, _post_head(body) + body)
        peer_port = sock.getsockname()[1]
        while time.monotonic() - start < NEVER_READ_BOUND_S:
            await asyncio.sleep(0.25)
            if not _holds_connection(pid, port, peer_port):
                return True
        return False
    finally:
        sock.close()  # unread data: a reset, which frees the kernel's copy too


def _holds_connection(pid: int, port: int, peer_port: int) -> bool:
    """Whether process `pid` holds a descriptor of its connection on `port` from `peer_port`."""
    inodes = {link[8:-1] for link in _fd_links(pid) if link.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and \
                        int(f[2].rsplit(":", 1)[1], 16) == peer_port and f[9] in inodes:
                    return True
    return False


@dataclass(slots=True)
class HostileTally:
    started: Counter[str] = field(default_factory=Counter)
    passed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    max_close_s: dict[str, float] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)  # "kind: why"
    notes: Counter[str] = field(default_factory=Counter)  # passed, but "kind: how"


async def _hostile_loop(port: int, pid: int, kinds: list[str], period_s: float,
                        stop: asyncio.Event, tally: HostileTally) -> None:
    async def one(kind: str) -> None:
        tally.started[kind] += 1
        try:
            ok, took_s, why = await _hostile_client(kind, port, pid)
        except OSError as exc:
            ok, took_s, why = False, 0.0, f"{type(exc).__name__}: {exc}"
        (tally.passed if ok else tally.failed)[kind] += 1
        tally.max_close_s[kind] = max(tally.max_close_s.get(kind, 0.0), took_s)
        if why:
            (tally.notes if ok else tally.failures)[f"{kind}: {why}"] += 1

    tasks: set[asyncio.Task[None]] = set()
    for i in itertools.count():
        if not kinds or stop.is_set():
            break
        task = asyncio.get_running_loop().create_task(one(kinds[i % len(kinds)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
    await asyncio.gather(*list(tasks))


# ---- RSS and descriptors ---------------------------------------------------------------------

def _fd_links(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def _rss_bytes(pid: int) -> int:
    return next(int(line.split()[1]) << 10 for line in
                Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


def census(pid: int, port: int, backend_ports: list[int]) -> dict[str, Any]:
    """The process's descriptors: how many are not sockets, and its TCP sockets by side
    (accepted from clients on `port`, or connected to a backend) and state."""
    links = _fd_links(pid)
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    clients: Counter[str] = Counter()
    backends: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[9] not in inodes or f[3] == "0A":  # not this process's, or listening
                    continue
                state = TCP_STATES.get(f[3], f[3])
                if int(f[1].rsplit(":", 1)[1], 16) == port:
                    clients[state] += 1
                elif int(f[2].rsplit(":", 1)[1], 16) in backend_ports:
                    backends[state] += 1
    return {"fds": len(links), "non_sockets": len(links) - len(inodes),
            "client_sockets": dict(clients), "backend_sockets": dict(backends)}


async def _sample(pid: int, tally: Tally, samples: list[dict[str, Any]], t0: float) -> None:
    while True:
        with contextlib.suppress(OSError, StopIteration):
            links = _fd_links(pid)
            samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_bytes": _rss_bytes(pid),
                            "fds": len(links),
                            "non_sockets": sum(not x.startswith("socket:") for x in links),
                            "sent": tally.num_sent, "done": tally.num_done})
        await asyncio.sleep(SAMPLE_PERIOD_S)


def _growth(samples: list[dict[str, Any]], key: str, start_s: float, end_s: float,
            tolerance: tuple[float, float]) -> dict[str, Any]:
    """The median of `key` over the load phase's 20-30 % stretch and its last tenth, and
    whether the rise between them is within `tolerance` (absolute, fraction)."""
    span = max(end_s - start_s, 1e-9)

    def median_in(lo: float, hi: float) -> float:
        inside = [s[key] for s in samples if lo <= (s["t_s"] - start_s) / span <= hi]
        if not inside:  # a short run: the sample nearest the stretch's middle
            mid = start_s + span * (lo + hi) / 2
            inside = [min(samples, key=lambda s: abs(s["t_s"] - mid))[key]]
        return statistics.median(inside)

    early, late = median_in(0.2, 0.3), median_in(0.9, 1.0)
    allowed = max(tolerance[0], tolerance[1] * early)
    return {"early": early, "late": late, "growth": late - early, "allowed": allowed,
            "is_flat": late - early <= allowed}


def _fd_problems(before: dict[str, Any], after: dict[str, Any], max_pooled: int) -> list[str]:
    """What the idle gateway holds after the run that it did not before (its pool may keep
    up to `max_pooled` backend connections alive)."""
    problems = []
    if after["non_sockets"] > before["non_sockets"] + NON_SOCKET_SLACK:
        problems.append(f"descriptors other than sockets: {before['non_sockets']} before, "
                        f"{after['non_sockets']} after")
    if sum(after["client_sockets"].values()):
        problems.append(f"client connections still held when idle: {after['client_sockets']}")
    backends = after["backend_sockets"]
    if sum(backends.values()) > max_pooled or set(backends) - {"established"}:
        problems.append(f"backend connections held when idle: {backends} (pool: at most "
                        f"{max_pooled} established)")
    return problems


# ---- the run and its report ------------------------------------------------------------------

async def _run(args: argparse.Namespace, port: int, pid: int, backend_ports: list[int],
               kinds: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tally, hostile, samples = Tally(), HostileTally(), []
    t0 = time.monotonic()
    sampler = loop.create_task(_sample(pid, tally, samples, t0))
    await asyncio.sleep(2 * SAMPLE_PERIOD_S)  # the idle gateway, before any load
    idle_before = census(pid, port, backend_ports)
    stop = asyncio.Event()
    hostile_task = loop.create_task(_hostile_loop(port, pid, kinds, args.hostile_period_s, stop,
                                                  hostile))
    load_start = time.monotonic()
    await _load(f"http://127.0.0.1:{port}", args, tally, loop.time() + args.max_duration_s)
    load_s = time.monotonic() - load_start
    stop.set()
    await hostile_task
    await asyncio.sleep(LIMIT_S + 2 * SAMPLE_PERIOD_S)  # idle: client connections close
    idle_after = census(pid, port, backend_ports)
    sampler.cancel()
    metrics = await _gateway_counts(port)
    running = await _backends_running(backend_ports)
    start_s, end_s = load_start - t0, load_start - t0 + load_s
    return {
        "requested": args.requests, "sent": tally.num_sent, "done": tally.num_done,
        "outcomes": {k: tally.outcomes[k] for k in OUTCOMES}, "statuses": dict(tally.statuses),
        "reasons": dict(tally.reasons.most_common()), "examples": tally.examples,
        "load_s": load_s, "rate_per_s": tally.num_done / load_s if load_s else 0.0,
        "hostile": {"started": dict(hostile.started), "passed": dict(hostile.passed),
                    "failed": dict(hostile.failed), "max_close_s": hostile.max_close_s,
                    "failures": dict(hostile.failures), "notes": dict(hostile.notes)},
        "samples": samples, "idle_before": idle_before, "idle_after": idle_after,
        "rss": _growth(samples, "rss_bytes", start_s, end_s, RSS_TOLERANCE),
        "fds": _growth(samples, "fds", start_s, end_s,
                       (2 * args.concurrency, FD_TOLERANCE_FRACTION)),
        "fd_problems": _fd_problems(idle_before, idle_after, _max_pooled(args)),
        "gateway_metrics": metrics, "backend_streams_left": running,
    }


def _max_pooled(args: argparse.Namespace) -> int:
    """Backend connections the gateway's idle pools may keep: one per request that ran at
    once, in each of its two pools (streams, whole answers), and the health checks'."""
    return 2 * (args.concurrency + 4) + 2 * args.backends


async def _backends_running(backend_ports: list[int]) -> dict[str, float | None]:
    """Streams each backend is still running once the gateway is idle (None: down, killed by
    a fault): a stream the gateway left behind, never closed, shows here."""
    import aiohttp
    running: dict[str, float | None] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(5)) as session:
        for backend_port in backend_ports:
            running[str(backend_port)] = None
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{backend_port}/metrics") as answer:
                    for line in (await answer.text()).splitlines():
                        if line.startswith("vllm:num_requests_running"):
                            running[str(backend_port)] = float(line.rsplit(" ", 1)[1])
    return running


async def _gateway_counts(port: int) -> dict[str, float]:
    """The gateway's failover and backend-error counters, summed by kind (its /metrics)."""
    import aiohttp
    wanted = ("shunter_failovers_total", "shunter_backend_errors_total")
    counts: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(5)) as answer:
            for line in (await answer.text()).splitlines():
                name, _, rest = line.partition("{")
                if name in wanted:
                    labels = dict(x.split("=", 1) for x in rest.split("}", 1)[0].split(","))
                    kind = (labels.get("kind") or labels.get("when") or "").strip('"')
                    key = f"{name.removeprefix('shunter_').removesuffix('_total')}: {kind}"
                    counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _print_report(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=130)
    out = res["outcomes"]
    table = Table(title=f"Chaos: {res['load_s']:.0f} s of load at "
                        f"{res['rate_per_s']:.0f} req/s, load average "
                        + " / ".join(f"{x:.2f}" for x in res["loadavg"]))
    for name in ("sent", "correct", "errors by status", "error events", "wrong", "lost",
                 "duplicated", "hung"):
        table.add_column(name, justify="right")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(res["statuses"].items()))
    table.add_row(f"{res['sent']:,}", f"{out['correct']:,}",
                  f"{out['error_status']:,} ({statuses})" if out["error_status"] else "0",
                  f"{out['error_event']:,}", *(f"{out[k]:,}" for k in
                                               ("wrong", "lost", "duplicated", "hung")))
    console.print(table)
    if res["sent"] < res["requested"]:
        console.print(f"(the load stopped at the duration cap, {res['sent']:,} of "
                      f"{res['requested']:,} requests sent)")
    if res["reasons"]:
        why = Table(title="Why, for every request not correct")
        why.add_column("outcome: why")
        why.add_column("requests", justify="right")
        for reason, num in res["reasons"].items():
            why.add_row(reason, f"{num:,}")
        console.print(why)
    _print_faults(console, res)
    _print_samples(console, res)


def _print_faults(console: Any, res: dict[str, Any]) -> None:
    from rich.table import Table
    table = Table(title="Faults injected, and hostile clients")
    for name in ("fault", "times", "hostile client", "started", "closed as due", "failed",
                 "max close s"):
        table.add_column(name, justify="left" if name in ("fault", "hostile client")
                         else "right")
    counts = sorted(res.get("backends", {}).get("faults", {}).items())
    table.caption = "the gateway's own counts: " + ", ".join(
        f"{k} {v:,.0f}" for k, v in sorted(res["gateway_metrics"].items())) + "".join(
        f"; {k}: {v}" for k, v in sorted(res["hostile"]["notes"].items()))
    hostile = res["hostile"]
    kinds = sorted(hostile["started"])
    for i in range(max(len(counts), len(kinds))):
        fault, times = counts[i] if i < len(counts) else ("", "")
        k = kinds[i] if i < len(kinds) else None
        table.add_row(fault, str(times), k or "", *(
            (str(hostile["started"].get(k, 0)), str(hostile["passed"].get(k, 0)),
             str(hostile["failed"].get(k, 0)), f"{hostile['max_close_s'].get(k, 0.0):.1f}")
            if k else ("", "", "", "")))
    console.print(table)


def _print_samples(console: Any, res: dict[str, Any]) -> None:
    from rich.table import Table
    samples = res["samples"]
    over = Table(title="The gateway's process over time")
    for name in ("t s", "sent", "done", "RSS MiB", "fds", "of which not sockets"):
        over.add_column(name, justify="right")
    step = max(1, len(samples) // 10)
    for s in [*samples[::step], samples[-1]] if samples else []:
        over.add_row(f"{s['t_s']:.0f}", f"{s['sent']:,}", f"{s['done']:,}",
                     f"{s['rss_bytes'] / 2**20:.1f}", str(s["fds"]), str(s["non_sockets"]))
    console.print(over)
    flat = Table(title="Flat? (load phase: median over its 20-30 % vs its last 10 %)")
    for name in ("", "first", "min", "max", "last", "20-30 %", "last 10 %", "growth",
                 "allowed", "flat"):
        flat.add_column(name, justify="right")
    for key, name, scale in (("rss_bytes", "RSS MiB", 2**20), ("fds", "fds", 1)):
        values = [s[key] / scale for s in samples] or [0.0]
        g = res["rss" if key == "rss_bytes" else "fds"]
        flat.add_row(name, *(f"{v:.1f}" for v in (values[0], min(values), max(values),
                                                    values[-1], g["early"] / scale,
                                                    g["late"] / scale, g["growth"] / scale,
                                                    g["allowed"] / scale)),
                     "yes" if g["is_flat"] else "NO")
    console.print(flat)
    before, after = res["idle_before"], res["idle_after"]
    console.print(f"idle gateway, before the load / after it: {before['fds']} / {after['fds']} "
                  f"descriptors, {before['non_sockets']} / {after['non_sockets']} not sockets, "
                  f"client connections {before['client_sockets']} / {after['client_sockets']}, "
                  f"backend connections (its keep-alive pool) {before['backend_sockets']} / "
                  f"{after['backend_sockets']}; streams left running at the backends: "
                  f"{sum(v or 0 for v in res['backend_streams_left'].values()):.0f}; gateway "
                  f"log: {res['gateway_log_errors']} error lines")


def _verdict(res: dict[str, Any]) -> list[str]:
    out = res["outcomes"]
    problems = [f"{out[k]} {k}" for k in ("lost", "duplicated", "wrong", "hung") if out[k]]
    if sum(res["hostile"]["failed"].values()):
        problems.append(f"hostile clients not closed as due: {res['hostile']['failures']}")
    problems += [f"{name} grew by {res[name]['growth']:.0f}" for name in ("rss", "fds")
                 if not res[name]["is_flat"]]
    problems += res["fd_problems"]
    if any(res["backend_streams_left"].values()):
        problems.append(f"streams left running at the backends (port: streams): "
                        f"{res['backend_streams_left']}")
    if res["done"] != res["sent"]:
        problems.append(f"{res['sent'] - res['done']} requests unaccounted for")
    if res.get("gateway_exit") is not None:
        problems.append(f"the gateway exited with {res['gateway_exit']} during the run")
    return problems


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests to send (default 2000, about a minute; a soak: 100000)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument("--concurrency", type=int, default=48,
                        help="requests in flight at most (default 48)")
    parser.add_argument("--whole-fraction", type=float, default=0.1,
                        help="share of non-streaming requests (default 0.1)")
    parser.add_argument("--backends", type=int, default=4, help="fake backends (default 4)")
    parser.add_argument("--faults", default="all", help=f"comma list of {', '.join(FAULTS)}; "
                                                        "all; none (default all)")
    parser.add_argument("--fault-period-s", type=float, default=1.0,
                        help="a new fault every this many seconds (default 1)")
    parser.add_argument("--hostile", default="all", help=f"comma list of {', '.join(HOSTILE)}; "
                                                         "all; none (default all)")
    parser.add_argument("--hostile-period-s", type=float, default=0.5,
                        help="a new hostile client every this many seconds (default 0.5)")
    parser.add_argument("--router", default="cost", help="the gateway's router (default cost)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-duration-s", type=float, default=1800.0,
                        help="stop sending after this long (default 1800); the whole run "
                             f"ends within it plus {REQUEST_TIMEOUT_S + START_TIMEOUT_S:.0f} s "
                             "and the drain")
    parser.add_argument("--json", metavar="FILE", help="write the figures here")
    parser.add_argument("--gateway-log", metavar="FILE", help="keep the gateway's stderr here")
    return parser


def _choice(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    if text == "all":
        return list(valid)
    chosen = [] if text == "none" else text.split(",")
    unknown = set(chosen) - set(valid)
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(valid)}, all, none")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = _choice(args.faults, FAULTS, "fault(s)")
    kinds = _choice(args.hostile, HOSTILE, "hostile client(s)")
    import uvloop
    with tempfile.TemporaryDirectory(prefix="shunter-chaos-") as tmp:
        backend_ports, port = [_free_port() for _ in range(args.backends)], _free_port()
        summary = Path(tmp) / "backends.json"
        spec = {"ports": backend_ports, "faults": faults, "fault_period_s": args.fault_period_s,
                "seed": args.seed, "summary": str(summary)}
        config = Path(tmp) / "gateway.toml"
        config.write_text(_gateway_config(port, backend_ports, args.router))
        log_path = Path(args.gateway_log or Path(tmp) / "gateway.log")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen([sys.executable, __file__, "_backends",
                                           json.dumps(spec)], start_new_session=True))
            with log_path.open("wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "shunter", "serve", "--config", str(config)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))
            _wait_healthy(port, procs)
            res = uvloop.run(asyncio.wait_for(
                _run(args, port, procs[1].pid, backend_ports, kinds),
                args.max_duration_s + REQUEST_TIMEOUT_S + 4 * LIMIT_S + SLACK_S + 60))
            res["gateway_exit"] = procs[1].poll()
        finally:
            for proc in reversed(procs):
                stop_process_group(proc, STOP_GRACE_S)
        res["backends"] = json.loads(summary.read_text()) if summary.exists() else {}
        lines = log_path.read_text(errors="replace").splitlines()
        res["gateway_log_errors"] = sum("ERROR" in x or "Traceback" in x for x in lines)
        res["gateway_log_tail"] = lines[-40:]
    res["loadavg"] = os.getloadavg()
    res["args"] = vars(args)
    _print_report(res)
    problems = _verdict(res)
    res["problems"] = problems
    print("PASS: nothing lost, duplicated, wrong or hung; RSS and descriptors flat" if not
          problems else "FAIL: " + "; ".join(problems))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_backends":
        _run_backends(json.loads(sys.argv[2]))
    else:
        sys.exit(main())

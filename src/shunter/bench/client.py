"""One streamed OpenAI request -> one RequestRecord, timed on the client.

Every output token gets the time its chunk arrived. Token counts come from `usage` whenever
the server sends it: vLLM's `continuous_usage_stats` puts cumulative counts in every chunk;
servers without it (Shunter's gateway, llama-server) send usage once at the end, and until
then each chunk with text counts as one token. Tokens a server reports but never showed as
text (special tokens, a multi-token chunk) get the time of the chunk that revealed them, so
counts and TPOT are right and only the pooled ITL sees a few zero gaps.

Outcomes: HTTP 429 and 503 (admission said no) are REJECTED; any other HTTP error, transport
error, timeout or a stream that ends without a finish reason is ABORT with `error` saying why.
`first_scheduled_s` stays None: a client cannot see when the server scheduled a request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shunter.bench.prompt import prompt_text
from shunter.core.types import FinishReason, RequestSpec
from shunter.errors import ConfigError, EndpointError
from shunter.metrics.record import RequestRecord

__all__ = ["CONNECTION_ERRORS", "REJECT_STATUSES", "EndpointConfig", "api_root",
           "fetch_model_info", "request_body", "send_request", "unreachable"]

REJECT_STATUSES = frozenset({429, 503})
# what a connection that never got an answer raises (TimeoutError is an OSError)
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, OSError)
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH,
                   "eos": FinishReason.STOP,  # llama-server says "eos" in some versions
                   "early_stop": FinishReason.EARLY_STOP}  # Shunter's engine under dynasor


def unreachable(url: str, exc: BaseException) -> EndpointError:
    """The one-line error for `url` when a connection to it failed: the OS's reason
    ('Connection refused', 'Name or service not known'), not aiohttp's traceback."""
    os_error = getattr(exc, "os_error", exc)  # aiohttp's ClientConnectorError wraps the OSError
    errno = getattr(os_error, "errno", None)
    if isinstance(exc, TimeoutError):
        reason = "timed out"
    elif isinstance(errno, int) and errno > 0:
        reason = os.strerror(errno)
    else:
        reason = getattr(os_error, "strerror", None) or str(exc) or type(exc).__name__
    return EndpointError(f"cannot reach {url}: {reason}")


def api_root(url: str) -> str:
    """'http://h:8000', 'http://h:8000/' and 'http://h:8000/v1' all -> 'http://h:8000'."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the endpoint must be an http:// or https:// URL, got {url!r}")
    url = url.rstrip("/")
    return url.removesuffix("/v1")


VLLM_XARGS = ("tenant", "program_id", "predicted_output_tokens")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """Where to send requests and how to shape them.

    `tenant_keys` maps a workload tenant to the API key that identifies it to the server
    (Shunter's gateway knows tenants by key); other tenants use `api_key`. The tenant also
    goes in OpenAI's `user` field, and a non-zero priority in vLLM's `priority` field. A
    request's session and program go in the `X-Session-Id` and `X-Program-Id` headers
    (Shunter's gateway reads them; other servers ignore unknown headers). `vllm_xargs` names
    what also goes in vLLM's `vllm_xargs` for Shunter's scheduler inside vLLM
    (`shunter.integrations.vllm`): "tenant", "program_id", and "predicted_output_tokens" (the
    workload's true output length: an oracle prediction for sjf/ltr).
    """

    url: str
    model: str
    api_key: str | None = None
    tenant_keys: Mapping[str, str] = field(default_factory=dict)
    is_chat: bool = False
    ignore_eos: bool = True  # replay the trace's output length, as vLLM's benchmark does
    temperature: float = 0.0
    request_timeout_s: float = 600.0
    vllm_xargs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        api_root(self.url)
        unknown = sorted(set(self.vllm_xargs) - set(VLLM_XARGS))
        if unknown:
            raise ConfigError(f"vllm_xargs: unknown {', '.join(map(repr, unknown))}; "
                              f"one of {', '.join(VLLM_XARGS)}")
        if not self.model:
            raise ConfigError("the endpoint config needs a model name")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.is_chat else "/v1/completions"

    def headers(self, spec: RequestSpec) -> dict[str, str]:
        key = self.tenant_keys.get(spec.tenant, self.api_key)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        if spec.session_id is not None:
            headers["x-session-id"] = spec.session_id
        if spec.program_id is not None:
            headers["x-program-id"] = spec.program_id
        return headers


def request_body(spec: RequestSpec, config: EndpointConfig, *,
                 max_tokens: int | None = None) -> dict[str, Any]:
    """The streamed request for `spec`: its prompt, its output length, tenant and priority."""
    text = prompt_text(spec)
    body: dict[str, Any] = {
        "model": config.model, "stream": True, "temperature": config.temperature,
        "max_tokens": max_tokens or spec.max_output_tokens or spec.num_output_tokens,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "user": spec.tenant}
    if config.is_chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    if config.ignore_eos:
        body["ignore_eos"] = True
        body["max_tokens"] = max_tokens or spec.num_output_tokens
    if spec.priority:  # vLLM refuses a non-zero priority unless its policy is "priority"
        body["priority"] = spec.priority
    if config.vllm_xargs:
        values = {"tenant": spec.tenant, "program_id": spec.program_id,
                  "predicted_output_tokens": spec.num_output_tokens}
        xargs = {key: values[key] for key in config.vllm_xargs if values[key] is not None}
        if xargs:
            body["vllm_xargs"] = xargs
    return body


def _new_record(spec: RequestSpec, arrival_s: float) -> RequestRecord:
    return RequestRecord(request_id=spec.request_id, arrival_s=arrival_s,
                         num_prompt_tokens=spec.num_prompt_tokens, tenant=spec.tenant,
                         priority=spec.priority, ttft_slo_s=spec.ttft_slo_s,
                         tpot_slo_s=spec.tpot_slo_s, session_id=spec.session_id,
                         program_id=spec.program_id)


def _error_text(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error")
        return str(error.get("message", error) if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return raw[:300].decode("utf-8", "replace")


def _apply_event(record: RequestRecord, obj: dict[str, Any], now_s: float,
                 is_chat: bool) -> str | None:
    """Fold one SSE event into the record; returns its finish reason, if any."""
    if "error" in obj:
        raise ValueError(f"error mid-stream: {_error_text(json.dumps(obj).encode())}")
    choices = obj.get("choices") or ()
    text, finish = "", None
    if choices:
        choice = choices[0]
        text = ((choice.get("delta") or {}).get("content") if is_chat else choice.get("text")) or ""
        finish = choice.get("finish_reason")
    usage = obj.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        new = int(usage["completion_tokens"]) - record.num_output_tokens
        record.num_prompt_tokens = int(usage.get("prompt_tokens") or record.num_prompt_tokens)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            record.num_cached_tokens = int(cached)
    else:
        new = 1 if text else 0
    record.token_times_s.extend([now_s] * max(new, 0))
    return finish


async def send_request(session: aiohttp.ClientSession, spec: RequestSpec,
                       config: EndpointConfig, clock: Callable[[], float], *,
                       max_tokens: int | None = None) -> RequestRecord:
    """Send `spec` now and follow its stream to the end; never raises for a failed request."""
    record = _new_record(spec, clock())
    finish: str | None = None
    url = api_root(config.url) + config.path
    try:
        async with session.post(url, json=request_body(spec, config, max_tokens=max_tokens),
                                headers=config.headers(spec)) as response:
            if response.status >= 400:
                record.error = f"HTTP {response.status}: {_error_text(await response.read())}"
                record.finish_reason = (FinishReason.REJECTED if response.status in REJECT_STATUSES
                                        else FinishReason.ABORT)
                record.finish_s = clock()
                return record
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                finish = _apply_event(record, json.loads(data), clock(), config.is_chat) or finish
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.finish_s = clock()
    record.finish_reason = _FINISH_REASONS.get(finish or "", FinishReason.ABORT)
    if record.finish_reason is FinishReason.ABORT and record.error is None:
        record.error = f"stream ended without a known finish reason ({finish!r})"
    return record


async def fetch_model_info(session: aiohttp.ClientSession, url: str,
                           api_key: str | None = None) -> dict[str, Any]:
    """The first entry of GET /v1/models (its `id` is the model name to send)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.get(api_root(url) + "/v1/models", headers=headers) as response:
            if response.status != 200:
                raise EndpointError(f"{url}: GET /v1/models answered {response.status}; "
                                    "give --model")
            try:
                data = (await response.json(content_type=None)).get("data") or []
            except (ValueError, AttributeError):
                raise EndpointError(f"{url}: GET /v1/models did not answer an OpenAI model "
                                    "list; give --model") from None
    except CONNECTION_ERRORS as exc:
        raise unreachable(url, exc) from None
    if not data:
        raise EndpointError(f"{url} serves no model; give --model")
    return dict(data[0])

"""The gateway's typed errors and their one mapping to OpenAI's JSON error shape.

    RequestError (shunter.errors)                400 invalid_request_error
     ├── AuthenticationError                     401 authentication_error
     ├── PermissionDeniedError                   403 permission_error
     ├── NotFoundError                           404 not_found_error (unknown model or path)
     ├── MethodNotAllowedError                   405
     ├── PayloadTooLargeError                    413 (body over the gateway's limit)
     ├── ClientDisconnectedError                 499 (the client left mid-body: heard by no one)
     ├── RateLimitError                          429 rate_limit_error (+ Retry-After)
     └── ServiceUnavailableError                 503 (no healthy backend, draining; + Retry-After)
    BackendError                                 a backend failed; 502 to the client unless it
                                                 answered a 4xx, which is passed through as is

OpenAI answers `{"error": {"message", "type", "param", "code"}}`; so do we, from `error_body`.
"""

from __future__ import annotations

import json
import math

from shunter.backend.protocol import BackendError
from shunter.errors import RequestError

__all__ = [
    "AuthenticationError",
    "ClientDisconnectedError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServiceUnavailableError",
    "error_body",
    "error_response",
]

# HTTP status -> OpenAI error `type`
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",  # (the connection layer's: a head or body too slow)
    413: "invalid_request_error",
    431: "invalid_request_error",  # (the connection layer's: headers over the limit)
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class AuthenticationError(RequestError):
    status_code = 401


class PermissionDeniedError(RequestError):
    status_code = 403


class NotFoundError(RequestError):
    status_code = 404


class MethodNotAllowedError(RequestError):
    """A known path asked with a method it does not take; `allow` goes in the Allow header."""

    status_code = 405

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        self.allow = allow
        super().__init__(message, code="method_not_allowed")


class PayloadTooLargeError(RequestError):
    status_code = 413


class ClientDisconnectedError(RequestError):
    """The client left (or was cut off) before its body was whole: nginx's 499; no answer
    reaches it, and nothing is logged."""

    status_code = 499


class RateLimitError(RequestError):
    """Over a tenant's rate limit, shed, or not servable in time: retry after `retry_after_s`."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, code=code)


class ServiceUnavailableError(RequestError):
    status_code = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, code=code)


def error_body(message: str, status_code: int, *, param: str | None = None,
               code: str | None = None) -> bytes:
    """OpenAI's error JSON for `status_code`."""
    error = {"message": message, "type": _ERROR_TYPES.get(status_code, "api_error"),
             "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def error_response(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, extra headers) for any exception; unknown ones are a 500 without details."""
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(exc, RequestError):
        status = exc.status_code
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        if isinstance(exc, MethodNotAllowedError):
            headers.append((b"allow", ", ".join(exc.allow).encode()))
        return status, error_body(str(exc), status, param=exc.param, code=exc.code), headers
    if isinstance(exc, BackendError):
        # the request's fault (4xx) or every backend busy (503) comes through; else 502
        status = exc.status_code if exc.is_client_error or exc.status_code == 503 else 502
        if status == 503:
            headers.append((b"retry-after", b"1"))
        if status == 429:  # a backend's own 429: every 429 says when to retry
            headers.append((b"retry-after", b"1"))
        code = exc.code or "backend_error"
        return status, error_body(str(exc), status, param=exc.param, code=code), headers
    return 500, error_body("internal error in the gateway", 500), headers

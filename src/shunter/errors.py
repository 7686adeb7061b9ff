"""Typed errors for bad input at a boundary (config, trace file, CLI flag, model file, HTTP body).

    ShunterError
     ├── ConfigError          a scenario file, config field or CLI flag is invalid
     ├── WorkloadError        a trace or workload file is malformed (names file, line, field)
     ├── ModelError           a model file is missing, unreadable or of an unsupported kind
     ├── EndpointError        a URL given to bench/profile cannot be reached or served nothing
     └── RequestError         an API request is invalid (mapped to HTTP 4xx by the gateway)
          └── ... the gateway adds its own subclasses (auth, rate limit, not found)

Expected resource outcomes ("does not fit", "preempt") are return values, not exceptions;
broken internal invariants are asserts. These classes are only for what a user handed us.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "EndpointError", "ModelError", "RequestError", "ShunterError",
           "WorkloadError", "check_keys"]


class ShunterError(Exception):
    """Base of every error raised for bad user input."""


class ConfigError(ShunterError, ValueError):
    """A scenario file, config field or CLI flag is invalid."""


def check_keys(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """ConfigError naming every key of a config table `what` that is not among `valid`."""
    valid = set(valid)
    unknown = set(given) - valid
    if unknown:
        raise ConfigError(f"unknown {what} keys {sorted(unknown)}; valid: "
                          f"{', '.join(sorted(valid))}")


class WorkloadError(ShunterError, ValueError):
    """A workload/trace file is malformed. The message names the file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field {field!r})" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")


class EndpointError(ShunterError):
    """An endpoint given by URL cannot be reached, or no request to it completed."""


class ModelError(ShunterError):
    """A model file is missing, corrupt or unsupported."""


class RequestError(ShunterError, ValueError):
    """An API request is invalid; `status_code` is the HTTP status the gateway answers with."""

    status_code = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        self.param = param
        self.code = code
        super().__init__(message)

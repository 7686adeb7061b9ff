"""What one client connection may cost the gateway, and the process's file-descriptor budget.

Every limit here is checked before authentication: a connection that sends endless headers,
sends them one byte at a time, stalls its body, never reads its answer or just sits idle is
closed after a bounded amount of memory and time (the connection side is in `protocol.py`).

File descriptors: every client connection and every backend connection holds one. Past the
process's limit (RLIMIT_NOFILE, often 1,024 by default) `accept()` and the backends' `connect()`
fail and every request fails, so the gateway raises its soft limit to the hard one at start-up
(`raise_fd_limit`), warns once when the open count nears the limit (`fd_warn_fraction`) and
once more when it recovers, and refuses new client connections (a fast 503) above
`fd_refuse_fraction`, which keeps descriptors for the requests already in progress.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

__all__ = ["FD_DIRS", "FD_RECOVERY_MARGIN", "MAX_FDS_UNLIMITED", "FdBudget", "LimitsConfig",
           "count_open_fds", "raise_fd_limit", "soft_fd_limit"]

log = logging.getLogger("shunter.gateway")

FD_DIRS = ("/proc/self/fd", "/dev/fd")  # Linux, then macOS and the BSDs
# a limit that is "unlimited" is at most this in practice (Linux's default fs.nr_open)
MAX_FDS_UNLIMITED = 1 << 20
# the warning clears only once the count is this fraction of the limit below the warning
# line, so that a count hovering on the line does not log a line per poll
FD_RECOVERY_MARGIN = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """The [limits] table: per-connection limits and timeouts, and the descriptor budget."""

    max_header_bytes: int = 64 << 10  # request line + headers; past it: 431 and close
    max_headers: int = 128  # header lines; past it: 431 and close
    header_timeout_s: float = 10.0  # request line + headers, from connect or their first byte
    # an idle keep-alive connection is closed after this. Longer than clients keep theirs
    # (aiohttp 15 s, httpx 5 s, a pooled load generator often 60 s), as nginx's 75 s is: a
    # server that closes first races the client's next request on that connection, which
    # then fails (2,000-stream bursts lost ~100 requests to it with 5 s)
    idle_timeout_s: float = 75.0
    body_timeout_s: float = 30.0  # the whole body, from the end of the headers: else 408
    send_timeout_s: float = 30.0  # a client that takes no byte of its answer for this long
    fd_warn_fraction: float = 0.8  # of RLIMIT_NOFILE: log a warning (once; again on recovery)
    fd_refuse_fraction: float = 0.9  # of RLIMIT_NOFILE: refuse new connections (503)

    def __post_init__(self) -> None:
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")
        if self.max_headers < 1:
            raise ValueError(f"max_headers must be >= 1, got {self.max_headers}")
        for name in ("header_timeout_s", "idle_timeout_s", "body_timeout_s", "send_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("fd_warn_fraction", "fd_refuse_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.fd_warn_fraction > self.fd_refuse_fraction:
            raise ValueError(f"fd_warn_fraction ({self.fd_warn_fraction}) must be <= "
                             f"fd_refuse_fraction ({self.fd_refuse_fraction})")


def count_open_fds() -> int | None:
    """How many file descriptors this process has open; None where the OS does not say."""
    for path in FD_DIRS:
        try:
            return len(os.listdir(path)) - 1  # less the one listdir held open
        except OSError:
            continue
    return None


def soft_fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_FDS_UNLIMITED if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log and return what it became."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FDS_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays %d: cannot raise it to %d (%s)", soft, target,
                        exc)
            return soft
        log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
        return target
    log.info("open-file limit is %d", soft_fd_limit())
    return soft_fd_limit()


@dataclass(slots=True, kw_only=True)
class FdBudget:
    """The process's descriptor budget, as the connection protocol and the server see it.

    `can_accept` runs per new connection and costs O(1): its own descriptor's number is a
    lower bound of the open count (the kernel hands out the lowest free number). `poll` counts
    exactly (a directory listing) and runs about once a second."""

    max_fds: int
    warn_fraction: float = 0.8
    refuse_fraction: float = 0.9
    num_open: int = 0  # at the last poll
    num_refused: int = 0  # connections refused, all told
    is_warned: bool = False
    _num_refused_at_warning: int = 0

    @property
    def warn_at(self) -> int:
        return int(self.max_fds * self.warn_fraction)

    @property
    def refuse_at(self) -> int:
        return int(self.max_fds * self.refuse_fraction)

    def can_accept(self, fd: int) -> bool:
        """Whether a new connection on descriptor `fd` may stay (else: refuse it)."""
        num_open = max(fd + 1, self.num_open)
        if num_open < self.warn_at:
            return True
        if not self.is_warned:
            self._warn(num_open)
        if num_open < self.refuse_at:
            return True
        self.num_refused += 1
        return False

    def poll(self) -> None:
        """Count the open descriptors; warn, or tell of the recovery."""
        num_open = count_open_fds()
        if num_open is None:
            return
        self.num_open = num_open
        if num_open >= self.warn_at and not self.is_warned:
            self._warn(num_open)
        elif self.is_warned and num_open < self.max_fds * (self.warn_fraction
                                                           - FD_RECOVERY_MARGIN):
            self.is_warned = False
            log.warning("file descriptors recovered: %d open of the limit %d; %d new "
                        "connection(s) were refused meanwhile", num_open, self.max_fds,
                        self.num_refused - self._num_refused_at_warning)

    def _warn(self, num_open: int) -> None:
        self.is_warned = True
        self._num_refused_at_warning = self.num_refused
        log.warning("file descriptors near the limit: %d open of %d (RLIMIT_NOFILE); new "
                    "client connections are refused (503) from %d open. Raise the limit "
                    "(ulimit -n) or find the idle connections", num_open, self.max_fds,
                    self.refuse_at)

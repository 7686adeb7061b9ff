"""An asyncio event loop on virtual time, for gateway tests whose timing must be exact.

When the loop has nothing ready and no I/O, it does not sleep until its next timer: it jumps
there. Everything in the loop (asyncio.sleep in fake backends, wait_for timeouts, the gateway's
clock when given `loop.time`) then runs in virtual seconds, deterministically and at once.
Only for in-process code (ASGI transport, fakes): a thread or a real socket would wait on
wall time the loop does not advance.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

_T = TypeVar("_T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now_s = 0.0
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list:
        events = super().select(0)  # real readiness (the loop's self-pipe), never blocking
        if not events and timeout != 0:
            if timeout is None:
                raise RuntimeError("virtual-time loop: nothing ready, no timer, no I/O: deadlock")
            # jump exactly to the next timer (now + timeout would round)
            scheduled = self.loop._scheduled if self.loop is not None else None  # noqa: SLF001
            self.now_s = max(self.now_s, scheduled[0].when()) if scheduled \
                else self.now_s + timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)
        self._jumping.loop = self

    def time(self) -> float:
        return self._jumping.now_s


def run_virtual(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()

"""A fake OpenAI server (`FakeHttpBackend`) on its own event loop thread, for bench tests that
drive the blocking `run_bench` / the CLI. 127.0.0.1 only, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from shunter.gateway.fake import FakeModel
from shunter.gateway.fake_server import FakeHttpBackend

MODEL = "fake-model"


@contextlib.contextmanager
def fake_endpoint(*, num_output_tokens: int = 8, **kwargs: Any) -> Iterator[tuple[str, FakeHttpBackend]]:
    """Yields (base URL with /v1, the backend)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-endpoint", daemon=True)
    thread.start()
    backend = FakeHttpBackend(model=FakeModel(num_output_tokens=num_output_tokens),
                              model_name=MODEL, **kwargs)
    try:
        port = asyncio.run_coroutine_threadsafe(backend.start(), loop).result(5.0)
        yield f"http://127.0.0.1:{port}/v1", backend
    finally:
        asyncio.run_coroutine_threadsafe(backend.stop(), loop).result(5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()

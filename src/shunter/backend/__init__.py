"""The backend protocol: what a gateway sends to a backend and what comes back (`protocol`).

It sits below the gateway and the engine so that the engine can implement it
(`shunter.engine.backend`) without either importing the other.
"""

from __future__ import annotations

from shunter.backend.protocol import (
    BackendError,
    BackendLoad,
    ChatMessage,
    EngineClient,
    GenerateChunk,
    GenerateRequest,
    Usage,
)

__all__ = ["BackendError", "BackendLoad", "ChatMessage", "EngineClient", "GenerateChunk",
           "GenerateRequest", "Usage"]

"""The reference engine: a Llama-family model over a paged KV cache, scheduled by the core.

Public surface: `LLMEngine` (sync: add_request / step / abort / generate), `AsyncEngineClient`
(asyncio: submit / stream / abort / load, stepping on its own thread), `EngineConfig`,
`SamplingParams` (with `StructuredOutput` for constrained decoding), the output records, and
`generate_text` for the CLI.
"""

from __future__ import annotations

from shunter.engine.async_client import AsyncEngineClient, EngineDeadError
from shunter.engine.config import EngineConfig
from shunter.engine.executor import EngineExecutor
from shunter.engine.llm import LLMEngine, generate_text
from shunter.engine.outputs import Completion, EngineOutput, TokenLogprobs
from shunter.engine.sampler import SamplingParams
from shunter.engine.structured import StructuredOutput

__all__ = [
    "AsyncEngineClient",
    "Completion",
    "EngineConfig",
    "EngineDeadError",
    "EngineExecutor",
    "EngineOutput",
    "LLMEngine",
    "SamplingParams",
    "StructuredOutput",
    "TokenLogprobs",
    "generate_text",
]

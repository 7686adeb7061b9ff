"""LLMEngine: the synchronous engine front-end (prompts in, text and tokens out).

It ties together the pieces that stay separate below it: the core scheduler (which request
runs, how many tokens, which blocks), the EngineExecutor (the model, KV tensors, sampling,
EOS and stop strings) and, per request, a streaming detokenizer. Every decision about what to
compute is the core scheduler's, exactly as in the simulator.

KV-cache events (vLLM's BlockStored / BlockRemoved / AllBlocksCleared, `core/kv/events.py`) are
recorded only once a sink is added (`add_kv_event_sink`): each step's events then go to every
sink, in one batch, at the end of the step (a ZMQ publisher, `kv_events.py`, or a gateway's
exact prefix index).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from shunter.core.clock import Clock
from shunter.core.kv.events import KvEvent, KvEventLog
from shunter.core.predict.interface import ArrivalPredictor, Predictor
from shunter.core.request import Request
from shunter.core.sched.config import SchedulerConfig, scheduler_config
from shunter.core.sched.interface import RequestOutput
from shunter.core.sched.policy import EarlyStoppingPolicy
from shunter.core.sched.registry import make_policy
from shunter.core.sched.scheduler import CoreScheduler
from shunter.core.sched.stats import SchedulerStats
from shunter.core.types import DEFAULT_TENANT, RequestId, RequestSpec
from shunter.engine.budget import measure_budget_for_tbt
from shunter.engine.config import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    ENGINE_SCHEDULER_DEFAULTS,
    EngineConfig,
)
from shunter.engine.executor import EngineExecutor
from shunter.engine.loader import LoadedModel, load_model
from shunter.engine.model import build_llama
from shunter.engine.model_runner import ModelRunner
from shunter.engine.outputs import Completion, EngineOutput, WallClock
from shunter.engine.sampler import SamplingParams
from shunter.engine.structured import GrammarCompiler, GrammarMatcher
from shunter.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from shunter.errors import ConfigError, RequestError

__all__ = ["LLMEngine", "generate_text"]


@dataclass(slots=True)
class _Tracked:
    num_prompt_tokens: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int]


class LLMEngine:
    """add_request / step / abort over one model replica; `generate` for batch use."""

    def __init__(self, config: EngineConfig | None = None, *, loaded: LoadedModel | None = None,
                 clock: Clock | None = None, predictor: Predictor | None = None) -> None:
        config = config or EngineConfig()
        self.config = config
        # sets each request's predicted output length when it arrives without one (sjf, ltr);
        # behind the gateway the gateway predicts and passes the number on
        if predictor is not None and predictor.is_oracle:
            raise ConfigError(f"predictor {predictor.name!r} reads the true output length, "
                              "which only the simulator knows")
        self.predictor = None if predictor is None else ArrivalPredictor(predictor)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} requested but CUDA is not available")
        loaded = loaded or load_model(config.model, config.cache_dir)
        self.tokenizer: Tokenizer | None = loaded.tokenizer
        self.model_config = loaded.config
        self.max_model_len = min(loaded.config.max_position_embeddings,
                                 config.scheduler.get("max_model_len",
                                                      loaded.config.max_position_embeddings))
        model = build_llama(loaded.config, loaded.tensors, max_positions=self.max_model_len,
                            dtype=getattr(torch, config.dtype), device=config.device)
        runner = ModelRunner(model, num_blocks=config.num_blocks, block_size=config.block_size,
                             num_host_blocks=config.option("num_host_blocks"))
        eos = self.tokenizer.eos_token_ids if self.tokenizer is not None else frozenset()
        self.executor = EngineExecutor(runner, eos_token_ids=eos, rng=random.Random(config.seed))
        policy = self._policy(config)
        if isinstance(policy, EarlyStoppingPolicy):  # (dynasor: probes of the engine's tokens)
            self.executor.enable_probes(policy.probe_tokens)
        self.scheduler = CoreScheduler(self._scheduler_config(config, policy, runner), policy,
                                       clock or WallClock())
        self._ids = itertools.count()
        self._tracked: dict[RequestId, _Tracked] = {}
        self._kv_event_sinks: list[Callable[[list[KvEvent]], None]] = []
        self.grammars = None if self.tokenizer is None else \
            GrammarCompiler(self.tokenizer.backend, self.tokenizer.eos_token_ids,
                            loaded.config.vocab_size)

    def _scheduler_config(self, config: EngineConfig, policy: Any,
                          runner: ModelRunner) -> SchedulerConfig:
        defaults = {**ENGINE_SCHEDULER_DEFAULTS,
                    "max_num_batched_tokens": DEFAULT_MAX_NUM_BATCHED_TOKENS}
        tbt_slo_s = getattr(policy, "tbt_slo_s", None)  # sarathi: the budget meets a TBT target
        if "max_num_batched_tokens" not in config.scheduler and tbt_slo_s is not None:
            if not config.option("enable_chunked_prefill"):
                raise ConfigError(f"policy {config.policy!r} needs enable_chunked_prefill")
            defaults["max_num_batched_tokens"] = measure_budget_for_tbt(
                runner, tbt_slo_s, num_decodes=config.max_num_seqs,
                max_seq_len=min(self.max_model_len, config.num_blocks * config.block_size))
        try:
            return scheduler_config(  # max_model_len: the user's, capped by the model's
                {**config.scheduler, "max_model_len": self.max_model_len}, defaults=defaults,
                derived={"num_blocks": config.num_blocks}, where="engine scheduler")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @staticmethod
    def _policy(config: EngineConfig) -> Any:
        try:
            return make_policy(config.policy, **config.policy_params)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    # ---- requests ------------------------------------------------------------------------

    @property
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work

    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                    request_id: RequestId | None = None, priority: int = 0,
                    tenant: str = DEFAULT_TENANT, session_id: str | None = None,
                    program_id: str | None = None,
                    predicted_output_tokens: float | None = None) -> RequestId:
        """Queue a prompt (text or token ids); RequestError if it can never run here.

        `program_id` groups an agent's calls (plas); `predicted_output_tokens` is a prediction
        made upstream (the gateway's), else the engine's predictor makes one."""
        params = params or SamplingParams()
        token_ids = self._prompt_token_ids(prompt)
        grammar = self._check_params(params)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._tracked:
            raise RequestError(f"duplicate request id {request_id!r}", param="request_id")
        room = max(self.max_model_len - len(token_ids), 1)
        if params.max_tokens is not None and len(token_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(f"this model's context length is {self.max_model_len} tokens; "
                               f"the prompt has {len(token_ids)} and max_tokens asks for "
                               f"{params.max_tokens}", param="max_tokens",
                               code="context_length_exceeded")
        spec = RequestSpec(request_id=request_id, arrival_s=self.scheduler.clock.now(),
                           num_prompt_tokens=len(token_ids),
                           num_output_tokens=min(params.max_tokens or room, room),
                           max_output_tokens=params.max_tokens, tenant=tenant, priority=priority,
                           session_id=session_id, program_id=program_id,
                           prompt_token_ids=tuple(token_ids))
        request = Request.from_spec(spec, block_size=self.config.block_size)
        request.sampling_seed = params.seed
        if predicted_output_tokens is None and self.predictor is not None:
            predicted_output_tokens = self.predictor.predict(spec)
        request.predicted_output_tokens = predicted_output_tokens
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(self.tokenizer, stop=params.stop,
                                           skip_special_tokens=params.skip_special_tokens)
        elif params.stop:
            raise RequestError("stop strings need a tokenizer; this model has none", param="stop")
        self.executor.register(request_id, params, detok, grammar=grammar,
                               prompt_token_ids=token_ids)
        rejected = self.scheduler.add_request(request)
        if rejected is not None:
            self.executor.unregister(request_id)
            raise RequestError(f"request rejected: {rejected.error}", param="prompt")
        self._tracked[request_id] = _Tracked(len(token_ids), detok, [])
        return request_id

    def _check_params(self, params: SamplingParams) -> GrammarMatcher | None:
        """What only the model can check: token ids inside its vocabulary; and the request's
        grammar, compiled."""
        vocab = self.model_config.vocab_size
        for param, token_ids in params.token_ids_used.items():
            if any(t >= vocab for t in token_ids):
                raise RequestError(f"{param} names a token id outside the vocabulary "
                                   f"[0, {vocab})", param=param)
        if params.structured is None:
            return None
        if self.grammars is None:
            raise RequestError("structured output needs a tokenizer; this model has none",
                               param=params.structured.param)
        return self.grammars.matcher(params.structured)

    def _prompt_token_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer; send token ids", param="prompt")
            token_ids = self.tokenizer.encode(prompt)
        else:
            token_ids = [int(t) for t in prompt]
        if not token_ids:
            raise RequestError("the prompt is empty", param="prompt")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise RequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return token_ids

    def abort(self, request_id: RequestId) -> EngineOutput | None:
        """End a request wherever it is; frees its blocks. None if unknown or finished."""
        out = self.scheduler.abort(request_id)
        self.executor.unregister(request_id)
        if out is None or request_id not in self._tracked:
            return None
        return self._to_engine_output(out)

    def load(self) -> SchedulerStats:
        """Queue lengths and KV usage right now (what routers and the gateway read)."""
        return self.scheduler.stats()

    # ---- the prefix cache and its events ---------------------------------------------------

    def add_kv_event_sink(self, sink: Callable[[list[KvEvent]], None]) -> None:
        """Send every later step's KV-cache events to `sink` (called on the stepping thread,
        once per step that had events). Add sinks before the first request: a consumer's
        history starts from an empty cache."""
        pool = self.scheduler.kv.pool
        if pool.event_log is None:
            pool.event_log = KvEventLog()
        self._kv_event_sinks.append(sink)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after new weights); sinks get AllBlocksCleared."""
        self.scheduler.kv.pool.reset_cache()
        self._flush_kv_events()

    def _flush_kv_events(self) -> None:
        log = self.scheduler.kv.pool.event_log
        if log is None or not log.events:
            return
        events = log.take()
        for sink in self._kv_event_sinks:
            sink(events)

    # ---- stepping ------------------------------------------------------------------------

    def step(self) -> list[EngineOutput]:
        """Run one scheduler step on the model; report every request that progressed."""
        scheduled = self.scheduler.schedule()
        result = self.executor.execute(scheduled)
        outputs = [self._to_engine_output(o) for o in self.scheduler.update(scheduled, result)]
        self._flush_kv_events()
        return outputs

    def _to_engine_output(self, out: RequestOutput) -> EngineOutput:
        tracked = self._tracked[out.request_id]
        tracked.token_ids.extend(out.new_token_ids)
        text = ""
        if tracked.detokenizer is not None:
            text = tracked.detokenizer.take_delta(out.is_finished)
        logprobs = self.executor.take_logprobs(out.request_id, len(out.new_token_ids))
        prompt_logprobs = self.executor.take_prompt_logprobs(out.request_id)
        if out.is_finished:
            del self._tracked[out.request_id]
            self.executor.unregister(out.request_id)
        return EngineOutput(request_id=out.request_id, new_token_ids=tuple(out.new_token_ids),
                            text=text, finish_reason=out.finish_reason,
                            num_prompt_tokens=tracked.num_prompt_tokens,
                            num_output_tokens=len(tracked.token_ids),
                            num_cached_tokens=out.num_cached_tokens, logprobs=logprobs,
                            prompt_logprobs=prompt_logprobs)

    def run(self) -> Iterator[EngineOutput]:
        """Step until no request is left, yielding every output."""
        while self.scheduler.has_work:
            yield from self.step()

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[Completion]:
        """Run prompts to completion together (batched); completions in prompt order."""
        per_prompt = params if isinstance(params, Sequence) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, per_prompt, strict=True)]
        outputs: dict[RequestId, list[EngineOutput]] = {i: [] for i in ids}
        for out in self.run():
            if out.request_id in outputs:
                outputs[out.request_id].append(out)
        return [Completion.from_outputs(outputs[i]) for i in ids]


def generate_text(model: str = "smollm2-135m", prompt: str = "", *, max_tokens: int = 64,
                  temperature: float = 0.0, seed: int | None = None, chat: bool = False,
                  on_text: Callable[[str], None] | None = None,
                  config: Mapping[str, Any] | None = None) -> str:
    """One completion of `prompt` (through the chat template if `chat`): the CLI's entry.

    `on_text` receives each piece of text as it is generated (for streaming to a terminal);
    `config` overrides EngineConfig fields (dtype, num_threads, cache_dir, ...).
    """
    engine = LLMEngine(EngineConfig.of(model=model, **(config or {})))
    if chat:
        if engine.tokenizer is None:
            raise RequestError("this model has no tokenizer for a chat prompt", param="prompt")
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    engine.add_request(prompt, params)
    pieces = []
    for out in engine.run():
        pieces.append(out.text)
        if on_text is not None and out.text:
            on_text(out.text)
    return "".join(pieces)

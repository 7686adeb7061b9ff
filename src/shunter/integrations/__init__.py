"""Adapters that run Shunter's core scheduling policies inside other engines.

- `shunter.integrations.vllm`: `ShunterScheduler`, a subclass of vLLM's own scheduler for
  ``vllm serve --scheduler-cls shunter.integrations.vllm.ShunterScheduler`` (imports vLLM);
- `shunter.integrations.settings`: its environment variables, per-request tags and vLLM
  version check (pure, so it is tested without vLLM);
- `shunter.integrations.step_budget`: a step's token budget from a TBT target, over step times
  measured while the engine serves (`sarathi` inside vLLM; pure).

Only this package imports vLLM, and only in `integrations.vllm` and `integrations.vllm_queue`.
"""

__all__: list[str] = []

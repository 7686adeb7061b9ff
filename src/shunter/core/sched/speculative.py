"""Speculative decoding in the scheduler, as vLLM v1 does it (`vllm/v1/core/sched/scheduler.py`).

A decode with draft tokens is scheduled as one chunk of 1 + d tokens: its last known token and
d drafts proposed after the previous step. Its KV slots are allocated for all of them (vLLM
allocates slots for the draft tokens; the blocks a rejected draft used stay with the request
and serve its next steps). Drafts count against the token budget and stop short of the longest
sequence the replica holds (vLLM caps `num_new_tokens` at `max_model_len - 1 -
num_computed_tokens`); a budget too small for all of them cuts them, not the decode.

When the step comes back, the target model accepted a leading run of j <= d drafts and sampled
one more token (the bonus token if all were accepted, a corrected one otherwise): the request
gains j + 1 tokens, and its computed count drops by the d - j rejected drafts (vLLM:
`request.num_computed_tokens -= num_rejected`), so it is again exactly one token behind. Stop
conditions are checked token by token and the tokens after a stop are dropped, as vLLM's
`_update_request_with_output` does: a request never emits past its max_tokens or the context.

Off (`num_spec_tokens` 0, the default), nothing here runs and no step has drafts.
"""

from __future__ import annotations

from shunter.core.request import Request
from shunter.core.sched.interface import StepResult
from shunter.core.sched.limits import stop_status
from shunter.core.types import RequestStatus

__all__ = ["accept_drafts", "num_draft_slots"]

_NOT_STOPPED: frozenset[str] = frozenset()


def num_draft_slots(request: Request, num_spec_tokens: int, max_seq_len: int, budget: int) -> int:
    """Draft tokens to schedule for a decoding request (one token behind) with `budget` tokens
    left in the step: `num_spec_tokens`, cut by the budget (its own token first) and by the
    longest sequence the replica holds."""
    room = max_seq_len - request.num_tokens - 1
    return max(0, min(num_spec_tokens, budget - 1, room))


def accept_drafts(request: Request, num_drafts: int, result: StepResult,
                  max_seq_len: int) -> tuple[tuple[int, ...], RequestStatus | None]:
    """Apply a verified decode chunk of `num_drafts` draft tokens (the computed count already
    includes the whole chunk): append the accepted drafts and the sampled token, stopping at
    the first stop condition. Returns (the tokens appended, how the request ends or None)."""
    rid = request.request_id
    accepted = result.accepted.get(rid, ())
    assert len(accepted) <= num_drafts, f"{rid}: {len(accepted)} of {num_drafts} drafts accepted"
    request.num_computed_tokens -= num_drafts - len(accepted)  # rejected drafts' KV is void
    tokens = (*accepted, result.sampled[rid])
    last = len(tokens) - 1
    for i, token_id in enumerate(tokens):
        request.append_output(token_id)
        # the executor's own stop (EOS, or the trace's length) comes with the last token
        status = stop_status(request, result.stopped if i == last else _NOT_STOPPED, max_seq_len)
        if status is not None:
            return tokens[:i + 1], status
    return tokens, None

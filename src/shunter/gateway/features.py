"""What a live request tells a length predictor (`shunter.core.predict.RequestFeatures`).

The gateway predicts each request's output length once, when it arrives, and passes the
prediction on to in-process engines (`GenerateRequest.predicted_output_tokens`), so the
engine tier and the gateway tier order by the same number. Features, as in the simulator:
the prompt's size (the gateway's estimate, `replica.estimate_tokens`), tenant, priority,
`max_tokens`, and the request's place in its conversation:

- with a `session_id` (body field or `X-Session-Id`): the turns of that session seen so far
  and how much the prompt grew since its previous turn (`SessionTracker`, as the simulator
  derives them from a trace);
- else, for a chat request: the turn is the number of assistant messages in its history, and
  the growth is what came after the previous user message (the previous answer and the new
  question), read off the messages themselves.
"""

from __future__ import annotations

from shunter.backend.protocol import ChatMessage, GenerateRequest
from shunter.core.predict.interface import RequestFeatures, SessionTracker
from shunter.core.types import RequestSpec
from shunter.gateway.replica import estimate_tokens

__all__ = ["request_features"]


def _chat_history(messages: tuple[ChatMessage, ...]) -> tuple[int, int | None]:
    """(turn index, prompt growth in estimated tokens) read off a chat's messages."""
    turn = sum(1 for m in messages if m.role == "assistant")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if len(users) < 2:
        return turn, None
    grown = sum(len(m.content) for m in messages[users[-2] + 1:])
    return turn, estimate_tokens(grown)


def request_features(request: GenerateRequest, spec: RequestSpec,
                     sessions: SessionTracker) -> RequestFeatures:
    """The request's features; a request with a session id is recorded as its latest turn."""
    if request.session_id is not None or request.messages is None:
        return sessions.features(spec)
    turn, growth = _chat_history(request.messages)
    return RequestFeatures(num_prompt_tokens=spec.num_prompt_tokens, tenant=spec.tenant,
                           priority=spec.priority, max_output_tokens=spec.max_output_tokens,
                           turn_index=turn, prompt_growth_tokens=growth)

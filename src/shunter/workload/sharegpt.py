"""ShareGPT per-turn length files: multi-turn sessions with a growing shared prefix.

Columns `conv_id,turn,user_tokens,assistant_tokens` (`conv_idx` and others are ignored); the
rows of a conversation are contiguous with turns 0, 1, 2, ... There are no arrival times, so
`num_requests` and `rate` work as for any length file (see `length_file`).

Multi-turn (the default): every turn row is one request with session_id = conv_id. Turn k's
prompt is the whole conversation so far: the user and assistant tokens of turns < k plus user
turn k. A conversation is one token stream u0 a0 u1 a1 ...; block b of that stream (16 tokens)
gets the id `session_base + b`, with `session_base` a stable hash of the session id. A turn's
`hash_ids` cover its prompt *and* its output, so turn k+1's prompt starts with exactly the
blocks turn k filled, and a cache that keeps turn k's KV serves them. A zero user turn after
turn 0 is fine (the prompt still holds the history); zero counts elsewhere follow `zero_tokens`,
and a clamped count is used consistently in the history. When more requests are asked for
than rows, whole conversations are sampled with replacement (seeded); a repeated conversation
becomes a new session `"<conv_id>~<n>"` with its own block ids.

`first_turn_only`: vLLM's `--dataset-name sharegpt` sample: turn 0 of each conversation, kept
if both counts are >= 4, the prompt <= 1024 and prompt + output <= 2048 tokens. Rows left out
are counted in `LoadReport.num_filtered`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload.arrival import STREAM_ARRIVALS, STREAM_ROWS, iter_arrival_times, seeded_rng
from shunter.workload.length_file import requests_from_lengths
from shunter.workload.parse import LoadOptions, LoadReport, column_indexes, open_text, parse_count

__all__ = [
    "SHAREGPT_COLUMNS",
    "SHAREGPT_HASH_BLOCK_SIZE",
    "Conversation",
    "iter_conversations",
    "iter_sharegpt",
    "session_base_id",
]

SHAREGPT_COLUMNS = ("conv_id", "turn", "user_tokens", "assistant_tokens")
SHAREGPT_HASH_BLOCK_SIZE = 16
FIRST_TURN_MIN_TOKENS = 4  # vLLM benchmark's sharegpt filter
FIRST_TURN_MAX_PROMPT_TOKENS = 1024
FIRST_TURN_MAX_TOTAL_TOKENS = 2048
_BLOCK_ID_BITS = 20  # block index inside a session: up to 2**20 blocks (16M tokens)
_BASE_BITS = 43  # session hash bits: base + block index stays below 2**63

Conversation = tuple[str, list[tuple[int, int]]]  # (conv_id, [(user_tokens, assistant_tokens)])


def session_base_id(session_id: str) -> int:
    """A stable id base for a session's blocks: a 43-bit hash shifted past the block index."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> (64 - _BASE_BITS)) << _BLOCK_ID_BITS


def _read_turn(row: list[str], col: dict[str, int], name: str, line: int) -> tuple[str, int, int, int]:
    if len(row) <= max(col.values()):
        raise WorkloadError(f"row has only {len(row)} cells", path=name, line=line)
    conv_id = row[col["conv_id"]].strip()
    if not conv_id:
        raise WorkloadError("empty conversation id", path=name, line=line, field="conv_id")
    return (conv_id, parse_count(row[col["turn"]], name, line, "turn"),
            parse_count(row[col["user_tokens"]], name, line, "user_tokens"),
            parse_count(row[col["assistant_tokens"]], name, line, "assistant_tokens"))


def iter_conversations(path: str | Path, options: LoadOptions, report: LoadReport,
                       ) -> Iterator[Conversation]:
    """Yield conversations in file order, their zero counts clamped or rejected, lazily."""
    name = str(path)
    done: set[str] = set()
    conv_id = ""
    turns: list[tuple[int, int]] = []
    with open_text(path) as f:
        rows = csv.reader(f)
        col = column_indexes(rows, name, SHAREGPT_COLUMNS)
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            row_conv, turn, user, assistant = _read_turn(row, col, name, line)
            if row_conv != conv_id:
                if turns:
                    yield conv_id, turns
                if row_conv in done:
                    raise WorkloadError(f"conversation {row_conv!r} seen earlier in the file "
                                        "(its rows must be contiguous)", path=name, line=line,
                                        field="conv_id")
                done.add(row_conv)
                conv_id, turns = row_conv, []
            if turn != len(turns):
                raise WorkloadError(f"expected turn {len(turns)} of {conv_id!r}, got {turn}",
                                    path=name, line=line, field="turn")
            if turn == 0:
                user = report.clamp_zero(user, is_prompt=True, options=options, path=name,
                                         line=line, field="user_tokens")
            assistant = report.clamp_zero(assistant, is_prompt=False, options=options, path=name,
                                          line=line, field="assistant_tokens")
            turns.append((user, assistant))
    if not turns:
        raise WorkloadError("no requests after the header", path=name, line=1)
    yield conv_id, turns


def _first_turns(path: str | Path, options: LoadOptions, report: LoadReport,
                 ) -> Iterator[tuple[int, int]]:
    name = str(path)
    any_row = False
    num_kept = 0
    with open_text(path) as f:
        rows = csv.reader(f)
        col = column_indexes(rows, name, SHAREGPT_COLUMNS)
        for row in rows:
            if not row:
                continue
            _, turn, user, assistant = _read_turn(row, col, name, rows.line_num)
            any_row = True
            if turn != 0:
                continue
            if (min(user, assistant) < FIRST_TURN_MIN_TOKENS or user > FIRST_TURN_MAX_PROMPT_TOKENS
                    or user + assistant > FIRST_TURN_MAX_TOTAL_TOKENS):
                report.num_filtered += 1
                continue
            num_kept += 1
            yield user, assistant
    if not any_row:
        raise WorkloadError("no requests after the header", path=name, line=1)
    if not num_kept:
        raise WorkloadError("no first turn passes the filter (both >= 4 tokens, prompt <= 1024, "
                            "prompt + output <= 2048)", path=name, field="turn")


def _session_requests(session_id: str, turns: list[tuple[int, int]], first_index: int, path: str,
                      ) -> Iterator[tuple[str, int, int, tuple[int, ...]]]:
    """(request_id, prompt, output, hash_ids) per turn of one session."""
    total_tokens = sum(user + assistant for user, assistant in turns)
    num_blocks = -(-total_tokens // SHAREGPT_HASH_BLOCK_SIZE)
    if num_blocks >= 1 << _BLOCK_ID_BITS:
        raise WorkloadError(f"conversation {session_id!r} has {total_tokens} tokens, more than "
                            "its block ids can cover", path=path, field="conv_id")
    base = session_base_id(session_id)
    block_ids = tuple(range(base, base + num_blocks))  # turns share these int objects
    history = 0
    for k, (user, assistant) in enumerate(turns):
        prompt = history + user
        history = prompt + assistant
        yield (f"r{first_index + k}", prompt, assistant,
               block_ids[:-(-history // SHAREGPT_HASH_BLOCK_SIZE)])


def _chosen_sessions(conversations: Iterator[Conversation], options: LoadOptions,
                     ) -> Iterator[Conversation]:
    """Sessions in file order, or conversations sampled with replacement if the file is short."""
    n = options.num_requests
    if n is None:
        yield from conversations
        return
    head: list[Conversation] = []
    num_turns = 0
    for conversation in conversations:
        head.append(conversation)
        num_turns += len(conversation[1])
        if num_turns >= n:
            yield from head
            return
    rng = seeded_rng(options.seed, STREAM_ROWS)
    copies: dict[str, int] = {}
    num_turns = 0
    while num_turns < n:
        conv_id, turns = head[int(rng.integers(len(head)))]
        copy = copies[conv_id] = copies.get(conv_id, -1) + 1
        num_turns += len(turns)
        yield (f"{conv_id}~{copy}" if copy else conv_id), turns


def _multi_turn(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
    if options.rate is None:
        arrivals: Iterator[float] = itertools.repeat(0.0)
    else:
        arrivals = iter_arrival_times(seeded_rng(options.seed, STREAM_ARRIVALS), options.rate)
    index = 0
    sessions = _chosen_sessions(iter_conversations(path, options, report), options)
    for session_id, turns in sessions:
        for request_id, prompt, output, hash_ids in _session_requests(session_id, turns, index,
                                                                      str(path)):
            if index == options.num_requests:
                return
            yield RequestSpec(request_id=request_id, arrival_s=next(arrivals),
                              num_prompt_tokens=prompt, num_output_tokens=output,
                              session_id=session_id, hash_ids=hash_ids,
                              hash_block_size=SHAREGPT_HASH_BLOCK_SIZE)
            index += 1


def iter_sharegpt(path: str | Path, options: LoadOptions, report: LoadReport,
                  ) -> Iterator[RequestSpec]:
    """Requests from a ShareGPT turn-length CSV (multi-turn sessions, or vLLM's first turns)."""
    if options.first_turn_only:
        yield from requests_from_lengths(_first_turns(path, options, report), options)
    else:
        yield from _multi_turn(path, options, report)

"""Batch files in OpenAI's Batch API shape, and the results a run has written so far.

Input: JSON Lines, one request a line,
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
with `url` /v1/chat/completions or /v1/completions and `body` what that endpoint takes
(non-streamed: a batch collects whole answers). Blank lines are skipped. A malformed line is
an error naming its line number; the other lines are unaffected (`read_batch` returns both).

Output: one JSON object a line, as OpenAI's output and error files hold them,
    {"id": "batch_req_<n>", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}
answers and final failures (a 4xx the request itself caused) in the output file, malformed
input lines in the error file. Each result is written whole, in one write, as it arrives, so
a run killed at any moment leaves at most one torn last line: `finished_ids` drops it (and
cuts it from the file), and the next run skips every custom_id already there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENDPOINTS", "BatchLine", "LineError", "finished_ids", "read_batch", "read_records"]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
_KEYS = {"custom_id", "method", "url", "body"}


@dataclass(frozen=True, slots=True)
class BatchLine:
    line_no: int  # 1-based, in the input file
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def prompt_key(self) -> str:
        """The prompt as one string, for grouping requests that share a prefix: a completion's
        prompt, or a chat's messages (role and content each, in order)."""
        if self.url == "/v1/completions":
            prompt = self.body.get("prompt")
            return prompt if isinstance(prompt, str) else json.dumps(prompt)
        parts = []
        for message in self.body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else message
            role = message.get("role", "") if isinstance(message, dict) else ""
            parts.append(f"{role}\x00{content if isinstance(content, str) else json.dumps(content)}\x00")
        return "".join(parts)

    @property
    def max_tokens(self) -> int | None:
        value = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class LineError:
    line_no: int
    custom_id: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.message}"


def _parse(line_no: int, text: str, model: str | None) -> BatchLine:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; a line has "
                         f"{', '.join(sorted(_KEYS))}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("custom_id must be a non-empty string")
    if obj.get("method", "POST") != "POST":
        raise ValueError(f"method must be POST, got {obj.get('method')!r}")
    url = obj.get("url")
    if url not in ENDPOINTS:
        raise ValueError(f"url must be one of {', '.join(ENDPOINTS)}, got {url!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    if body.get("stream"):
        raise ValueError("body.stream must be false: a batch collects whole answers")
    if "model" not in body:
        if model is None:
            raise ValueError("body.model is missing (or give --model)")
        body = {**body, "model": model}
    need = "messages" if url == "/v1/chat/completions" else "prompt"
    if need not in body:
        raise ValueError(f"body.{need} is missing for {url}")
    return BatchLine(line_no, custom_id, url, body)


def read_batch(path: str | Path, model: str | None = None
               ) -> tuple[list[BatchLine], list[LineError]]:
    """Every well-formed line of the batch file, and an error for each malformed one (a
    repeated custom_id included: the first keeps it)."""
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                line = _parse(line_no, text, model)
            except ValueError as exc:
                errors.append(LineError(line_no, _custom_id_of(text), str(exc)))
                continue
            if line.custom_id in seen:
                errors.append(LineError(line_no, line.custom_id, f"custom_id {line.custom_id!r} "
                                        f"repeats line {seen[line.custom_id]}'s"))
                continue
            seen[line.custom_id] = line_no
            lines.append(line)
    return lines, errors


def _custom_id_of(text: str) -> str | None:
    try:
        value = json.loads(text).get("custom_id")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results or error file (each has a `custom_id`). A torn last line (a
    run killed while writing it) is cut from the file, so appending goes on from a whole
    line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "custom_id" not in record:
            raise ValueError(f"{path}: line {number} is not a batch result; is it the output "
                             "of another command?")
        records.append(record)
    return records


def finished_ids(path: Path) -> set[str]:
    """The custom_ids a results file already holds (see `read_records`)."""
    return {record["custom_id"] for record in read_records(path)}

"""The canonical workload file: JSON Lines, a superset of the Mooncake trace format.

One request per line::

    {"timestamp": 1500, "input_length": 700, "output_length": 42, "hash_ids": [0, 1]}

- `timestamp`: arrival in milliseconds, relative to the start of the trace (int or float),
  at most 1e13 (`MAX_ARRIVAL_S` = 1e10 s);
- `input_length`, `output_length`: prompt and true output tokens (ints, at most
  `MAX_TRACE_INT` = 2^31 - 1; see `shunter.workload.parse` for the caps);
- `hash_ids` (optional): ints, each naming `hash_block_size` tokens of the request's token
  sequence from its start (prompt, then output); equal ids at equal positions are a shared
  KV prefix. Mooncake's blocks are 512 tokens, the default here; a line may override it with
  `hash_block_size`. At most ceil((input+output)/hash_block_size) ids are allowed;
- optional: `request_id` (str, default "r<i>" for the i-th request, from 0), `tenant` (str),
  `priority` (int, |priority| <= 2^31 - 1), `session_id`, `program_id` (str), `ttft_slo_s`,
  `tpot_slo_s` (finite, > 0), `max_output_tokens` (int in [1, 2^31 - 1]), `prompt_token_ids`
  (ints, as many as input_length), `probe_tokens` with `certainty` (a reasoning request's
  probe trace, `core.types.ProbeTrace`: its program's Certaindex after each `probe_tokens`
  generated tokens, numbers in [0, 1]; trace knowledge, read only by the simulator's executor
  for `dynasor`), `expert_profile` (numbers >= 0, one per routed expert of a MoE model, scaled
  to sum to 1 unless they already do: the request's spread over the experts,
  `core.types.ExpertProfile`, read by `read_me` and the MoE cost model), `lora_id` (str: the
  LoRA adapter the request runs with; absent: the base model).

Unknown keys are ignored, so traces that carry more columns still load. Blank lines are
skipped. Timestamps must not decrease (equal ones are fine: Mooncake logs in batches).

`write_jsonl` writes exactly what `iter_jsonl` reads back: every RequestSpec field survives,
floats included (the timestamp is written as the exact decimal of arrival_s * 1000).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from shunter.core.types import DEFAULT_TENANT, ExpertProfile, ProbeTrace, RequestSpec, short_repr
from shunter.errors import WorkloadError
from shunter.workload.parse import (
    MAX_ARRIVAL_S,
    MAX_TRACE_INT,
    LoadOptions,
    LoadReport,
    open_text,
)

__all__ = ["MOONCAKE_HASH_BLOCK_SIZE", "iter_jsonl", "spec_to_line", "write_jsonl"]

MOONCAKE_HASH_BLOCK_SIZE = 512  # tokens per hash id in the Mooncake traces

_DECODER = json.JSONDecoder(parse_float=Decimal)  # floats keep their exact decimal text
_OPTIONAL_STRS = ("tenant", "session_id", "program_id", "lora_id")
_SLO_FIELDS = ("ttft_slo_s", "tpot_slo_s")
_LENGTH_FIELDS = ("input_length", "output_length")
_MAX_TIMESTAMP_MS = int(MAX_ARRIVAL_S * 1000)


def _int(obj: dict[str, Any], key: str, where: tuple[str, int], *,
         minimum: int, maximum: int = MAX_TRACE_INT) -> int:
    value = obj[key]
    if type(value) is not int:
        raise WorkloadError(f"must be an integer, got {short_repr(value)}", path=where[0],
                            line=where[1], field=key)
    if value < minimum:
        raise WorkloadError(f"must be >= {minimum}, got {short_repr(value)}", path=where[0],
                            line=where[1], field=key)
    if value > maximum:
        raise WorkloadError(f"must be <= {maximum} (2^31 - 1), got {short_repr(value)}",
                            path=where[0], line=where[1], field=key)
    return value


def _positive_float(value: Any, key: str, where: tuple[str, int]) -> float:
    kind = type(value)
    try:
        number = float(value) if kind is Decimal or kind is int else math.nan
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (number > 0 and number != math.inf):
        raise WorkloadError(f"must be a number > 0, got {short_repr(value)}", path=where[0],
                            line=where[1], field=key)
    return number


def _int_tuple(value: Any, key: str, where: tuple[str, int]) -> tuple[int, ...]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise WorkloadError("must be a list of integers", path=where[0], line=where[1], field=key)
    return tuple(value)


def _arrival_s(obj: dict[str, Any], where: tuple[str, int]) -> float:
    if "timestamp" not in obj:
        raise WorkloadError("missing field", path=where[0], line=where[1], field="timestamp")
    ms = obj["timestamp"]
    kind = type(ms)
    if not (kind is int or (kind is Decimal and ms.is_finite())):
        raise WorkloadError(f"must be a number of milliseconds, got {short_repr(ms)}",
                            path=where[0], line=where[1], field="timestamp")
    if ms < 0:  # both checked before dividing: 10**400 has no float
        raise WorkloadError(f"must be >= 0, got {short_repr(ms)}", path=where[0], line=where[1],
                            field="timestamp")
    if ms > _MAX_TIMESTAMP_MS:
        raise WorkloadError(f"must be <= {_MAX_TIMESTAMP_MS} ms (MAX_ARRIVAL_S = "
                            f"{MAX_ARRIVAL_S:g} s), got {short_repr(ms)}", path=where[0],
                            line=where[1], field="timestamp")
    return ms / 1000 if kind is int else float(ms / 1000)


def _optional_fields(obj: dict[str, Any], where: tuple[str, int]) -> dict[str, Any]:
    """The optional RequestSpec fields present on a line, checked."""
    fields: dict[str, Any] = {}
    for key in _OPTIONAL_STRS:
        value = obj.get(key)
        if value is not None:
            if type(value) is not str:
                raise WorkloadError(f"must be a string, got {value!r}", path=where[0],
                                    line=where[1], field=key)
            fields[key] = value
    if obj.get("priority") is not None:
        fields["priority"] = _int(obj, "priority", where, minimum=-MAX_TRACE_INT)
    if obj.get("max_output_tokens") is not None:
        fields["max_output_tokens"] = _int(obj, "max_output_tokens", where, minimum=1)
    for key in _SLO_FIELDS:
        if obj.get(key) is not None:
            fields[key] = _positive_float(obj[key], key, where)
    if obj.get("prompt_token_ids") is not None:
        fields["prompt_token_ids"] = _int_tuple(obj["prompt_token_ids"], "prompt_token_ids", where)
    if obj.get("probe_tokens") is not None or obj.get("certainty") is not None:
        fields["probe_trace"] = _probe_trace(obj, where)
    if obj.get("expert_profile") is not None:
        fields["expert_profile"] = _expert_profile(obj["expert_profile"], where)
    return fields


def _expert_profile(values: Any, where: tuple[str, int]) -> ExpertProfile:
    if (type(values) is not list or not values
            or not all(type(v) in (int, Decimal) and v >= 0 for v in values)
            or not any(values)):
        shown = [float(v) if type(v) is Decimal else v for v in values] \
            if type(values) is list else values
        raise WorkloadError(f"must be a non-empty list of numbers >= 0, not all 0, got "
                            f"{short_repr(shown)}", path=where[0], line=where[1],
                            field="expert_profile")
    weights = tuple(float(v) for v in values)
    if abs(math.fsum(weights) - 1.0) <= 1e-6 and max(weights) <= 1.0:
        return ExpertProfile(weights)  # as written (a written profile reads back exactly)
    return ExpertProfile.normalized(weights)


def _probe_trace(obj: dict[str, Any], where: tuple[str, int]) -> ProbeTrace:
    values = obj.get("certainty")
    if obj.get("probe_tokens") is None or values is None:
        raise WorkloadError("probe_tokens and certainty go together (a probe trace)",
                            path=where[0], line=where[1],
                            field="certainty" if values is None else "probe_tokens")
    probe_tokens = _int(obj, "probe_tokens", where, minimum=1)
    if (type(values) is not list or not values
            or not all(type(v) in (int, Decimal) and 0 <= v <= 1 for v in values)):
        shown = [float(v) if type(v) is Decimal else v for v in values] \
            if type(values) is list else values
        raise WorkloadError(f"must be a non-empty list of numbers in [0, 1], got "
                            f"{short_repr(shown)}", path=where[0], line=where[1],
                            field="certainty")
    return ProbeTrace(probe_tokens=probe_tokens, values=tuple(float(v) for v in values))


def _record_to_spec(obj: Any, index: int, where: tuple[str, int], options: LoadOptions,
                    report: LoadReport) -> RequestSpec:
    path, line = where
    if type(obj) is not dict:
        raise WorkloadError("line is not a JSON object", path=path, line=line)
    arrival_s = _arrival_s(obj, where)
    for key in _LENGTH_FIELDS:
        if key not in obj:
            raise WorkloadError("missing field", path=path, line=line, field=key)
    num_in, num_out = obj["input_length"], obj["output_length"]
    if (type(num_in) is not int or type(num_out) is not int or not 1 <= num_in <= MAX_TRACE_INT
            or not 1 <= num_out <= MAX_TRACE_INT):
        num_in = report.clamp_zero(_int(obj, "input_length", where, minimum=0), is_prompt=True,
                                   options=options, path=path, line=line, field="input_length")
        num_out = report.clamp_zero(_int(obj, "output_length", where, minimum=0), is_prompt=False,
                                    options=options, path=path, line=line, field="output_length")
    has_more = len(obj) > 3 + ("hash_ids" in obj)  # anything past timestamp, lengths, hash_ids
    fields = _optional_fields(obj, where) if has_more else {}
    block_size = MOONCAKE_HASH_BLOCK_SIZE
    if obj.get("hash_block_size") is not None:
        block_size = _int(obj, "hash_block_size", where, minimum=1)
    hash_ids = None
    if obj.get("hash_ids") is not None:
        hash_ids = _int_tuple(obj["hash_ids"], "hash_ids", where)
        max_ids = -(-(num_in + num_out) // block_size)
        if len(hash_ids) > max_ids:
            raise WorkloadError(
                f"{len(hash_ids)} ids but the request has only {max_ids} blocks of {block_size} tokens",
                path=path, line=line, field="hash_ids")
    request_id = obj.get("request_id", f"r{index}")
    if type(request_id) is not str:
        raise WorkloadError(f"must be a string, got {request_id!r}", path=path, line=line,
                            field="request_id")
    try:
        return RequestSpec(request_id=request_id, arrival_s=arrival_s, num_prompt_tokens=num_in,
                           num_output_tokens=num_out, hash_ids=hash_ids,
                           hash_block_size=block_size, **fields)
    except ValueError as exc:  # a cross-field rule RequestSpec checks (prompt_token_ids length)
        raise WorkloadError(str(exc), path=path, line=line) from None


def iter_jsonl(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
    """Yield the requests of a JSONL / Mooncake file lazily, in file order."""
    name = str(path)
    decode = _DECODER.decode
    prev_arrival_s = 0.0
    index = 0
    with open_text(path) as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = decode(text)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"bad JSON: {exc.msg} at column {exc.colno}", path=name,
                                    line=line_no) from None
            spec = _record_to_spec(obj, index, (name, line_no), options, report)
            if spec.arrival_s < prev_arrival_s and not options.allow_unsorted:
                raise WorkloadError(
                    f"timestamp goes backwards ({prev_arrival_s * 1000:g} ms before it); "
                    "load_workload(..., sort=True) sorts the file stably instead",
                    path=name, line=line_no, field="timestamp")
            prev_arrival_s = spec.arrival_s
            index += 1
            yield spec
    if index == 0:
        raise WorkloadError("file has no requests", path=name, line=1)


def _timestamp_text(arrival_s: float) -> str:
    """arrival_s * 1000 as the exact decimal that reads back to the same float."""
    ms = Decimal(repr(arrival_s)).scaleb(3)
    if ms == ms.to_integral_value():
        return str(int(ms))
    return format(ms.normalize(), "f")


def spec_to_line(spec: RequestSpec, index: int) -> str:
    """One JSONL line (no newline) for the `index`-th request of a file."""
    record: dict[str, Any] = {
        "input_length": spec.num_prompt_tokens,
        "output_length": spec.num_output_tokens,
    }
    if spec.hash_ids is not None:
        record["hash_ids"] = list(spec.hash_ids)
    if spec.hash_block_size != MOONCAKE_HASH_BLOCK_SIZE:
        record["hash_block_size"] = spec.hash_block_size
    if spec.request_id != f"r{index}":
        record["request_id"] = spec.request_id
    if spec.tenant != DEFAULT_TENANT:
        record["tenant"] = spec.tenant
    if spec.priority != 0:
        record["priority"] = spec.priority
    for key in ("session_id", "program_id", "ttft_slo_s", "tpot_slo_s", "max_output_tokens",
                "lora_id"):
        value = getattr(spec, key)
        if value is not None:
            record[key] = value
    if spec.prompt_token_ids is not None:
        record["prompt_token_ids"] = list(spec.prompt_token_ids)
    if spec.probe_trace is not None:
        record["probe_tokens"] = spec.probe_trace.probe_tokens
        record["certainty"] = list(spec.probe_trace.values)
    if spec.expert_profile is not None:
        record["expert_profile"] = list(spec.expert_profile.weights)
    body = json.dumps(record, separators=(", ", ": "), allow_nan=False)
    return '{"timestamp": ' + _timestamp_text(spec.arrival_s) + ", " + body[1:]


def write_jsonl(specs: Iterable[RequestSpec], path: str | Path) -> int:
    """Write requests as canonical JSONL (gzip if the name ends in .gz); return how many."""
    count = 0
    p = Path(path)
    opener = _open_gz_write if p.suffix == ".gz" else _open_write
    with opener(p) as f:
        for spec in specs:
            f.write(spec_to_line(spec, count))
            f.write("\n")
            count += 1
    return count


def _open_write(p: Path) -> Any:
    return open(p, "w", encoding="utf-8", newline="\n")


def _open_gz_write(p: Path) -> Any:
    return gzip.open(p, "wt", encoding="utf-8", newline="\n")

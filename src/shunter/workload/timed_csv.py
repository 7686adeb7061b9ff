"""CSV traces that carry arrival times: Azure LLM inference (2023 and 2024) and VTC's multi-tenant trace.

Azure: `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like `2023-11-16 18:15:46.6805900`
(seven fractional digits, which `datetime.fromisoformat` in 3.11 rejects, so they are parsed
here into integer nanoseconds; a `T` separator and a `Z` / `+HH:MM` suffix are accepted too).
arrival_s = t - t0 of the first row, computed exactly in nanoseconds.

VTC: `arrival_s,client,prompt_tokens,output_tokens`; tenant = client, arrivals used as given.

Both readers are lazy (one row in memory) and yield requests "r0", "r1", ... in file order.
Timestamps must not decrease; equal ones are fine.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from shunter.core.types import RequestSpec
from shunter.errors import WorkloadError
from shunter.workload.parse import (
    LoadOptions,
    LoadReport,
    check_arrival,
    column_indexes,
    open_text,
    parse_count,
    parse_seconds,
)

__all__ = ["AZURE_COLUMNS", "VTC_COLUMNS", "iter_azure", "iter_vtc", "timestamp_ns"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
VTC_COLUMNS = ("arrival_s", "client", "prompt_tokens", "output_tokens")

_NS_PER_S = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_S


def _utc_offset_ns(zone: str) -> int:
    sign = -1 if zone[0] == "-" else 1
    hours, _, minutes = zone[1:].partition(":")
    if not (hours.isdigit() and (minutes.isdigit() or not minutes)):
        raise ValueError(zone)
    return sign * (int(hours) * 60 + int(minutes or 0)) * 60 * _NS_PER_S


def timestamp_ns(text: str, day_ordinals: dict[str, int]) -> int:
    """`YYYY-MM-DD HH:MM:SS[.fraction][Z|+HH:MM]` as integer nanoseconds since 0001-01-01 UTC.

    `day_ordinals` caches date parsing across rows (a trace spans few days). Raises ValueError.
    """
    date_text, sep, time_text = text.strip().partition(" ")
    if not sep:
        date_text, sep, time_text = date_text.partition("T")
    offset_ns = 0
    if time_text.endswith("Z"):
        time_text = time_text[:-1]
    else:
        zone_at = max(time_text.rfind("+"), time_text.rfind("-"))
        if zone_at > 0:
            offset_ns = _utc_offset_ns(time_text[zone_at:])
            time_text = time_text[:zone_at]
    hours, minutes, seconds = time_text.split(":")
    whole, _, fraction = seconds.partition(".")
    if not (hours.isdigit() and minutes.isdigit() and whole.isdigit()):
        raise ValueError(text)
    if fraction and not fraction.isdigit():
        raise ValueError(text)
    day = day_ordinals.get(date_text)
    if day is None:
        day = day_ordinals[date_text] = date.fromisoformat(date_text).toordinal()
    ns = ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * _NS_PER_S
    if fraction:
        ns += int(fraction[:9].ljust(9, "0"))
    return day * _NS_PER_DAY + ns - offset_ns


def _check_order(arrival_s: float, prev_s: float, options: LoadOptions, path: str, line: int,
                 field: str) -> None:
    if arrival_s < prev_s and not options.allow_unsorted:
        raise WorkloadError(
            f"arrival time goes backwards ({arrival_s} s after {prev_s} s); "
            "load_workload(..., sort=True) sorts the file stably instead",
            path=path, line=line, field=field)


def iter_azure(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
    """Yield the requests of an Azure LLM inference trace CSV lazily."""
    name = str(path)
    clamp = report.clamp_zero
    with open_text(path) as f:
        rows = csv.reader(f)
        col = column_indexes(rows, name, AZURE_COLUMNS)
        i_time, i_in, i_out = (col[c] for c in AZURE_COLUMNS)
        days: dict[str, int] = {}
        t0_ns: int | None = None
        prev_s = 0.0
        index = 0
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            try:
                t_ns = timestamp_ns(row[i_time], days)
                num_in = parse_count(row[i_in], name, line, "ContextTokens")
                num_out = parse_count(row[i_out], name, line, "GeneratedTokens")
            except IndexError:
                raise WorkloadError(f"row has only {len(row)} cells", path=name,
                                    line=line) from None
            except ValueError as exc:
                if isinstance(exc, WorkloadError):
                    raise
                raise WorkloadError(
                    f"bad timestamp {row[i_time]!r} (expected YYYY-MM-DD HH:MM:SS.fffffff)",
                    path=name, line=line, field="TIMESTAMP") from None
            if t0_ns is None:
                t0_ns = t_ns
            arrival_s = (t_ns - t0_ns) / _NS_PER_S
            check_arrival(arrival_s, name, line, "TIMESTAMP")
            _check_order(arrival_s, prev_s, options, name, line, "TIMESTAMP")
            prev_s = arrival_s
            num_in = clamp(num_in, is_prompt=True, options=options, path=name, line=line,
                           field="ContextTokens")
            num_out = clamp(num_out, is_prompt=False, options=options, path=name, line=line,
                            field="GeneratedTokens")
            yield RequestSpec(request_id=f"r{index}", arrival_s=arrival_s, num_prompt_tokens=num_in,
                              num_output_tokens=num_out)
            index += 1
    if index == 0:
        raise WorkloadError("no requests after the header", path=name, line=1)


def iter_vtc(path: str | Path, options: LoadOptions, report: LoadReport) -> Iterator[RequestSpec]:
    """Yield the requests of a VTC-style multi-tenant CSV lazily (tenant = client)."""
    name = str(path)
    clamp = report.clamp_zero
    with open_text(path) as f:
        rows = csv.reader(f)
        col = column_indexes(rows, name, VTC_COLUMNS)
        i_time, i_client, i_in, i_out = (col[c] for c in VTC_COLUMNS)
        prev_s = 0.0
        index = 0
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            if len(row) <= max(i_time, i_client, i_in, i_out):
                raise WorkloadError(f"row has only {len(row)} cells", path=name,
                                    line=line)
            arrival_s = parse_seconds(row[i_time], name, line, "arrival_s")
            _check_order(arrival_s, prev_s, options, name, line, "arrival_s")
            prev_s = arrival_s
            client = row[i_client].strip()
            if not client:
                raise WorkloadError("empty client name", path=name, line=line, field="client")
            num_in = clamp(parse_count(row[i_in], name, line, "prompt_tokens"), is_prompt=True,
                           options=options, path=name, line=line, field="prompt_tokens")
            num_out = clamp(parse_count(row[i_out], name, line, "output_tokens"), is_prompt=False,
                            options=options, path=name, line=line, field="output_tokens")
            yield RequestSpec(request_id=f"r{index}", arrival_s=arrival_s, num_prompt_tokens=num_in,
                              num_output_tokens=num_out, tenant=client)
            index += 1
    if index == 0:
        raise WorkloadError("no requests after the header", path=name, line=1)

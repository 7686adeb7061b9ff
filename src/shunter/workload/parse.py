"""What every trace reader shares: load options, the load report, opening files, parsing fields.

Every error a reader raises is a `WorkloadError` naming the file, the 1-based line and the
field, so a user can open the file at the right place.

Zero lengths. `RequestSpec` needs at least one prompt and one output token. A zero length in a
trace is an error by default (`zero_tokens="error"`); `zero_tokens="clamp"` turns it into 1, as
if the model had emitted only EOS or the chat template had added one token, and counts every
clamp in the `LoadReport` (the loaders also warn with `ZeroLengthWarning`). No row is ever
dropped silently: the only rows a loader leaves out are those of an explicit filter
(ShareGPT `first_turn_only`), counted in `LoadReport.num_filtered`.

Caps. A trace's integers are bounded, so that a typo or a hostile file (`input_length` of
10**30) is an error naming the line, not a crash deep in the simulator or an absurd
allocation: a token count (prompt, output, `max_output_tokens`, `hash_block_size`) and a
priority's magnitude are at most `MAX_TRACE_INT` = 2^31 - 1 (the int32 range engines keep token
counts in); an arrival time is at most `MAX_ARRIVAL_S` = 1e10 s (317 years, so Unix-epoch times
fit, and float seconds still resolve 2 us there). A prompt within the cap but longer than the
model's context loads, and the scheduler rejects that request with a reason, as before.
"""

from __future__ import annotations

import gzip
import io
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from shunter.core.types import short_repr
from shunter.errors import ConfigError, WorkloadError

__all__ = [
    "MAX_ARRIVAL_S",
    "MAX_TRACE_INT",
    "ZERO_TOKEN_POLICIES",
    "LoadOptions",
    "LoadReport",
    "ZeroLengthWarning",
    "check_arrival",
    "column_indexes",
    "open_text",
    "parse_count",
    "parse_seconds",
]

ZERO_TOKEN_POLICIES = ("error", "clamp")
MAX_TRACE_INT = 2**31 - 1  # largest token count (and |priority|) a trace may hold
MAX_ARRIVAL_S = 1e10  # latest arrival time a trace may hold, seconds


class ZeroLengthWarning(UserWarning):
    """Some zero token counts in a trace were clamped to 1 (zero_tokens="clamp")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadOptions:
    """How to turn a trace into requests (see `load_workload` for the meaning of each)."""

    num_requests: int | None = None
    rate: float | None = None
    seed: int = 0
    zero_tokens: str = "error"
    first_turn_only: bool = False
    allow_unsorted: bool = False  # readers skip the order check (the caller sorts)

    def __post_init__(self) -> None:
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.num_requests is not None and self.num_requests > sys.maxsize:
            raise ConfigError(f"num_requests must be <= {sys.maxsize}, got "
                              f"{short_repr(self.num_requests)}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.zero_tokens not in ZERO_TOKEN_POLICIES:
            raise ConfigError(
                f"zero_tokens must be one of {', '.join(ZERO_TOKEN_POLICIES)}, got {self.zero_tokens!r}"
            )


@dataclass(slots=True)
class LoadReport:
    """What a load did besides copying rows: clamps and filtered rows, for the user to see."""

    num_requests: int = 0
    num_clamped_prompts: int = 0
    num_clamped_outputs: int = 0
    num_filtered: int = 0
    first_clamped_line: int | None = None

    @property
    def num_clamped(self) -> int:
        return self.num_clamped_prompts + self.num_clamped_outputs

    def clamp_zero(self, value: int, *, is_prompt: bool, options: LoadOptions, path: str,
                   line: int, field: str) -> int:
        """Return a token count >= 1 for `value` (>= 0), or raise as the zero policy says."""
        if value >= 1:
            return value
        if options.zero_tokens == "error":
            raise WorkloadError(
                "token count must be >= 1, got 0 (--zero-tokens clamp, or zero_tokens = "
                "'clamp' in a scenario, loads it as 1)",
                path=path, line=line, field=field,
            )
        if is_prompt:
            self.num_clamped_prompts += 1
        else:
            self.num_clamped_outputs += 1
        if self.first_clamped_line is None:
            self.first_clamped_line = line
        return 1

    def summary(self, path: str) -> str:
        return (
            f"{path}: clamped {self.num_clamped_prompts} zero prompt and "
            f"{self.num_clamped_outputs} zero output token counts to 1 "
            f"(first at line {self.first_clamped_line})"
        )


def open_text(path: str | Path) -> TextIO:
    """Open a trace for reading as text (gzip if it ends in .gz); a missing file is a WorkloadError."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "no such file"
        raise WorkloadError(what, path=str(path))
    try:
        if p.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline="")
        return open(p, encoding="utf-8-sig", newline="")  # noqa: SIM115 - caller closes it
    except OSError as exc:
        raise WorkloadError(f"cannot open: {exc.strerror or exc}", path=str(path)) from exc


def column_indexes(rows: Iterator[list[str]], path: str, required: Sequence[str],
                   optional: Sequence[str] = ()) -> dict[str, int]:
    """Read a CSV header row and map each required (and present optional) column to its index."""
    header = next(rows, None)
    if header is None or not any(cell.strip() for cell in header):
        raise WorkloadError("file is empty (expected a CSV header)", path=path, line=1)
    names = [cell.strip() for cell in header]
    indexes: dict[str, int] = {}
    for name in required:
        if name not in names:
            raise WorkloadError(f"missing column; header is {','.join(names)}", path=path,
                                line=1, field=name)
        indexes[name] = names.index(name)
    for name in optional:
        if name in names:
            indexes[name] = names.index(name)
    return indexes


def parse_count(text: str, path: str, line: int, field: str) -> int:
    """A token count: an integer in [0, MAX_TRACE_INT] ("12" or "12.0")."""
    try:
        value = int(text)
    except ValueError:
        value = _integral(text, path, line, field)
    if value < 0:
        raise WorkloadError(f"must be >= 0, got {value}", path=path, line=line, field=field)
    if value > MAX_TRACE_INT:
        raise WorkloadError(f"must be <= {MAX_TRACE_INT} (2^31 - 1), got {short_repr(text.strip())}",
                            path=path, line=line, field=field)
    return value


def _integral(text: str, path: str, line: int, field: str) -> int:
    try:
        number = float(text)
    except ValueError:
        raise WorkloadError(f"not a number: {text!r}", path=path, line=line, field=field) from None
    if math.isinf(number):  # "1e999", or more digits than int() reads
        raise WorkloadError(f"must be <= {MAX_TRACE_INT} (2^31 - 1), got {short_repr(text.strip())}",
                            path=path, line=line, field=field)
    if not number.is_integer():
        raise WorkloadError(f"not an integer: {text!r}", path=path, line=line, field=field)
    return int(number)


def parse_seconds(text: str, path: str, line: int, field: str) -> float:
    """A time in seconds: a number in [0, MAX_ARRIVAL_S]."""
    try:
        value = float(text)
    except ValueError:
        raise WorkloadError(f"not a number: {short_repr(text)}", path=path, line=line,
                            field=field) from None
    if not math.isfinite(value) or value < 0:
        raise WorkloadError(f"must be a finite number >= 0, got {short_repr(text)}", path=path,
                            line=line, field=field)
    check_arrival(value, path, line, field)
    return value


def check_arrival(arrival_s: float, path: str, line: int, field: str) -> None:
    """Refuse an arrival time past MAX_ARRIVAL_S (see the module docstring)."""
    if arrival_s > MAX_ARRIVAL_S:
        raise WorkloadError(f"arrival time must be <= {MAX_ARRIVAL_S:g} s (about 317 years), got "
                            f"{arrival_s:g} s", path=path, line=line, field=field)

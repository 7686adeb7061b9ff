"""Argparse types shared by the CLI's commands: each checks one flag's value and says what is
wrong with it (`argparse.ArgumentTypeError`), before any work starts."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from shunter.core.types import check_number

__all__ = ["finite_float", "float_flag", "json_object", "nonnegative_float", "output_dir",
           "output_file", "positive_float", "positive_int", "workers_arg"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def workers_arg(text: str) -> int | None:
    """`--workers`: a number of processes, or "auto" (None)."""
    return None if text == "auto" else positive_int(text)


def _why_unwritable(path: Path, *, is_dir: bool) -> str | None:
    """Why `path` cannot be written as a file (or filled as a folder), None if it can. Missing
    folders above it are fine (the writers create them); nothing is created or changed here."""
    if path.exists():
        if path.is_dir() != is_dir:
            return "it is a directory" if path.is_dir() else "it is a file, not a directory"
        if not is_dir:
            try:
                with path.open("a"):  # appending nothing changes nothing
                    return None
            except OSError as exc:
                return exc.strerror or str(exc)
    folder = path if path.is_dir() else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"cannot create files in {folder}: {exc.strerror or exc}"


def output_file(text: str) -> str:
    """A flag's file to write results to, checked before any work (an argparse type)."""
    reason = _why_unwritable(Path(text), is_dir=False)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {reason}")
    return text


def output_dir(text: str) -> str:
    """A flag's folder to write files into, checked before any work (an argparse type)."""
    reason = _why_unwritable(Path(text), is_dir=True)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"cannot write into {text}: {reason}")
    return text


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def float_flag(text: str, **bounds: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    try:
        return check_number("", value, **bounds)
    except ValueError as exc:  # "nan", "inf", "1e999"
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def positive_float(text: str) -> float:
    """A flag's finite number > 0 (an argparse type)."""
    return float_flag(text, gt=0)


def finite_float(text: str) -> float:
    """A flag's finite number (an argparse type)."""
    return float_flag(text)


def nonnegative_float(text: str) -> float:
    return float_flag(text, ge=0)

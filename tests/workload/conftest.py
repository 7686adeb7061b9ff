"""Helpers for workload tests: write tiny trace files, find the real traces in ../shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACES_DIR = REPO_ROOT.parent / "shared" / "traces"


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write `text` to tmp_path/name and return the path."""
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def traces_dir() -> Path:
    """/work/shared/traces (the repo's sibling `shared/traces`); skip when it is absent."""
    if not TRACES_DIR.is_dir():
        pytest.skip(f"real traces not found at {TRACES_DIR}")
    return TRACES_DIR

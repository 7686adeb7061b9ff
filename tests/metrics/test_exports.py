"""Every metrics module declares `__all__`, and every name in it exists."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import shunter.metrics

MODULES = ["shunter.metrics"] + [
    f"shunter.metrics.{m.name}" for m in pkgutil.iter_modules(shunter.metrics.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_explicit_and_resolves(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list | tuple)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.{exported}"


def test_metrics_imports_only_core_and_errors():
    for name in MODULES:
        text = Path(importlib.import_module(name).__spec__.origin).read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.startswith(("import shunter", "from shunter")):
                package = line.split()[1].split(".")[1]
                assert package in {"core", "errors", "metrics"}, f"{name}: {line}"

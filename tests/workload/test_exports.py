"""Every workload module declares `__all__`, and every name in it exists."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import shunter.workload

MODULES = ["shunter.workload"] + [
    f"shunter.workload.{m.name}" for m in pkgutil.iter_modules(shunter.workload.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


def test_package_exports_the_entry_points() -> None:
    for name in ("load_workload", "iter_workload", "detect_format", "TRACE_FORMATS", "write_jsonl",
                 "SyntheticWorkload", "generate", "LengthDistribution", "SharedPrefix"):
        assert name in shunter.workload.__all__


def test_workload_imports_only_core_and_errors() -> None:
    """Layer rule: workload may import shunter.core and shunter.errors, nothing else above."""
    for path in Path(shunter.workload.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shunter"):
                allowed = node.module.startswith(("shunter.core", "shunter.errors", "shunter.workload"))
                assert allowed, f"{path.name} imports {node.module}"

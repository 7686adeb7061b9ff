"""DESIGN.md: `integrations/vllm` imports core and vLLM only, and vLLM is imported nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "shunter"
VLLM_MODULES = {"integrations/vllm.py", "integrations/vllm_queue.py"}
# what the adapter may use of Shunter
ALLOWED = ("shunter.core", "shunter.errors", "shunter.integrations")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_only_the_vllm_adapter_imports_vllm() -> None:
    offenders = [f"{path.relative_to(SRC)}: {name}" for path in sorted(SRC.rglob("*.py"))
                 for name in _imports(path)
                 if name.split(".")[0] == "vllm"
                 and path.relative_to(SRC).as_posix() not in VLLM_MODULES]
    assert not offenders


def test_the_adapter_uses_core_and_errors_only() -> None:
    for path in sorted((SRC / "integrations").glob("*.py")):
        for name in _imports(path):
            if name.startswith("shunter"):
                assert name.startswith(ALLOWED), f"{path.name} imports {name}"

"""Routers import only the standard library, `shunter.core.types`, `shunter.errors` (a leaf:
the autoscaler's config errors) and each other (DESIGN.md)."""

import ast
import sys
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[2] / "src" / "shunter" / "router"


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_router_imports_only_stdlib_core_types_and_router():
    problems = []
    for path in sorted(ROUTER.rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            ok = (name in ("shunter.core.types", "shunter.errors") or name.startswith("shunter.router")
                  or (top != "shunter" and top in sys.stdlib_module_names))
            if not ok:
                problems.append(f"{path.relative_to(ROUTER)} imports {name}")
    assert not problems, problems

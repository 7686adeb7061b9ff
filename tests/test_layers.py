"""The layer directions of DESIGN.md, enforced on the source: imports point downward only."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "shunter"

# layer -> shunter layers it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "router": {"core.types", "errors"},  # errors: AutoscaleConfig.from_table's ConfigError
    "workload": {"core", "errors"},
    "metrics": {"core", "errors"},
    "sim": {"core", "router", "workload", "metrics", "errors"},
    "backend": {"errors"},  # the messages between the gateway and any backend
    "engine": {"core", "errors", "backend"},
    "gateway": {"core", "router", "metrics", "workload", "errors", "backend"},
    "bench": {"core", "workload", "metrics", "errors"},
    "batch": {"bench", "workload", "errors"},  # `shunter batch`: an OpenAI client, as the bench is
    "integrations": {"core", "errors"},  # adapters inside other engines (vLLM's scheduler)
    "config": {"core", "sim", "errors"},
    "errors": set(),
    "scenarios": set(),
    "__init__": {"build"},  # turns the compiled build on when it matches the source
    "build": {"sim"},  # which build is installed: looks at a simulator module (importlib)
    "__main__": {"cli"},  # `python -m shunter`
    "cli": {"*"},
}
FORBIDDEN_THIRD_PARTY = {
    "core": {"torch", "asyncio", "aiohttp", "httpx", "starlette", "uvicorn", "fastapi", "numpy"},
    "router": {"torch", "asyncio", "httpx", "starlette"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def shunter_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def allowed(layer: str, target: str) -> bool:
    rules = ALLOWED[layer]
    if "*" in rules or target in ("shunter",):
        return True
    inner = target.removeprefix("shunter.")
    if inner.split(".")[0] == layer:
        return True
    return any(inner == r or inner.startswith(r + ".") for r in rules)


def test_imports_point_downward():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        assert layer in ALLOWED, f"{path}: new top-level module {layer!r} needs a layer rule here"
        for lineno, name in shunter_imports(ast.parse(path.read_text())):
            where = f"{path.relative_to(SRC)}:{lineno}"
            if name.startswith("shunter") and not allowed(layer, name):
                problems.append(f"{where} ({layer}) imports {name}")
            if name.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(layer, set()):
                problems.append(f"{where} ({layer}) imports {name}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_cli_or_gateway_from_below():
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        for lineno, name in shunter_imports(ast.parse(path.read_text())):
            if name.startswith("shunter.cli"):
                assert layer in ("cli", "__main__"), f"{path}:{lineno} imports the CLI"
            if name.startswith("shunter.gateway"):
                assert layer in ("cli", "gateway"), f"{path}:{lineno} imports the gateway"


def test_the_rule_catches_a_violation():
    tree = ast.parse("from shunter.sim.runner import simulate\n")
    assert not allowed("core", shunter_imports(tree)[0][1])


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> shunter modules it imports (statically, or by importlib with a literal name)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                targets.add(str(node.args[0].value))
        targets.update(t for _, t in shunter_imports(tree))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles_between_modules():
    """Package __init__s re-export their own modules; any other cycle means a type belongs lower
    (STYLE.md section 2). `cli.serve` <-> `cli.serving` was one."""
    graph = _import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)

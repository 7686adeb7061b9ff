"""Every module declares `__all__`, and every name in it exists (httpx's public-surface test)."""

import importlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
OPTIONAL_DEPS = ("torch", "tokenizers", "jinja2", "uvloop", "uvicorn", "aiohttp", "httptools",
                 "matplotlib", "ray", "vllm", "zmq", "msgpack")


def module_names() -> list[str]:
    names = []
    for path in sorted((SRC / "shunter").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_has_a_complete_all():
    missing, broken = [], []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional extra that is not installed
            assert exc.name and exc.name.split(".")[0] in OPTIONAL_DEPS, f"{name}: {exc}"
            continue
        exported = getattr(module, "__all__", None)
        if exported is None:
            missing.append(name)
            continue
        broken += [f"{name}.{n}" for n in exported if not hasattr(module, n)]
    assert not missing, f"modules without __all__: {missing}"
    assert not broken, f"__all__ names that do not exist: {broken}"

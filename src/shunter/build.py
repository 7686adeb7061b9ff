"""Which build of Shunter this install is: pure Python, or setup.py's optional compiled build
(the scheduler core and the simulator compiled with mypyc; same source, same results)."""

from __future__ import annotations

import importlib

__all__ = ["describe_build", "is_compiled"]


def is_compiled() -> bool:
    """Whether this install's simulator modules are compiled extensions."""
    replica = importlib.import_module("shunter.sim.replica")
    return not str(replica.__file__).endswith(".py")


def describe_build() -> str:
    return "compiled with mypyc" if is_compiled() else "pure Python"

"""Shunter: decides which LLM request runs, where, and when."""

from shunter.build import activate as _activate_compiled_build

__all__ = ["__version__"]

__version__ = "0.1.0"

_activate_compiled_build()  # the compiled build of this source, if one was made (shunter.build)

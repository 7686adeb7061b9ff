"""Shunter: decides which LLM request runs, where, and when."""

__all__ = ["__version__"]

__version__ = "0.1.0"

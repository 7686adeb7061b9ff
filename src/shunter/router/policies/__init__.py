"""Cluster routing policies; each is one file plus one line in `router/registry.py`."""

from shunter.router.policies.least_load import LeastLoadRouter
from shunter.router.policies.round_robin import RoundRobinRouter

__all__ = ["LeastLoadRouter", "RoundRobinRouter"]

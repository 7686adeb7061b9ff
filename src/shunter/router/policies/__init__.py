"""Cluster routing policies; each is one file plus one line in `router/registry.py`."""

from shunter.router.policies.cost import CostRouter
from shunter.router.policies.d2lpm import D2lpmRouter
from shunter.router.policies.least_load import LeastLoadRouter
from shunter.router.policies.llumnix import LlumnixRouter
from shunter.router.policies.power_of_two import PowerOfTwoRouter
from shunter.router.policies.prefix_affinity import PrefixAffinityRouter
from shunter.router.policies.random_choice import RandomRouter
from shunter.router.policies.round_robin import RoundRobinRouter
from shunter.router.policies.session import SessionRouter

__all__ = ["CostRouter", "D2lpmRouter", "LeastLoadRouter", "LlumnixRouter", "PowerOfTwoRouter",
           "PrefixAffinityRouter", "RandomRouter", "RoundRobinRouter", "SessionRouter"]

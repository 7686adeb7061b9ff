"""Cluster-level routing: pure policies over ReplicaView snapshots."""

from shunter.router.interface import ReplicaView, RouteDecision, Router
from shunter.router.registry import ROUTERS, make_router

__all__ = ["ROUTERS", "ReplicaView", "RouteDecision", "Router", "make_router"]

"""Cost models: how long a simulated replica takes to run a step, swap KV or ship it elsewhere."""

from __future__ import annotations

from shunter.sim.cost.catalog import GPUS, MODELS, GpuSpec, ModelSpec, get_gpu, get_model
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.moe import MoeRooflineCostModel
from shunter.sim.cost.registry import COST_MODELS, make_cost_model
from shunter.sim.cost.roofline import RooflineCostModel

__all__ = [
    "COST_MODELS",
    "GPUS",
    "MODELS",
    "CostModel",
    "GpuSpec",
    "ModelSpec",
    "MoeRooflineCostModel",
    "RooflineCostModel",
    "get_gpu",
    "get_model",
    "make_cost_model",
]

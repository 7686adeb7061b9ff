"""Cost models by name: `name -> factory(model, gpu, tp)` (STYLE.md section 7)."""

from __future__ import annotations

from collections.abc import Callable

from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.profile import profile_cost_model
from shunter.sim.cost.roofline import RooflineCostModel

__all__ = ["COST_MODELS", "CostModelFactory", "make_cost_model"]

CostModelFactory = Callable[[ModelSpec | str, GpuSpec | str, int], CostModel]

COST_MODELS: dict[str, CostModelFactory] = {
    "profile": profile_cost_model,  # gpu = path of a `shunter profile` file
    "roofline": RooflineCostModel,
}


def make_cost_model(name: str, model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1) -> CostModel:
    """Build the cost model called `name` for `model` on `tp` GPUs of kind `gpu`."""
    factory = COST_MODELS.get(name.strip().lower())
    if factory is None:
        raise ConfigError(f"unknown cost model {name!r}; valid names: {', '.join(sorted(COST_MODELS))}")
    return factory(model, gpu, tp)

"""Cost models by name: `name -> factory(model, gpu, tp)` (STYLE.md section 7).

`roofline` picks the mixture-of-experts model (`shunter.sim.cost.moe`) for a MoE model; expert
parallelism (`ep`, `expert_imbalance`) is a roofline option only."""

from __future__ import annotations

from collections.abc import Callable

from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.moe import DEFAULT_EXPERT_IMBALANCE, roofline_cost_model
from shunter.sim.cost.profile import profile_cost_model

__all__ = ["COST_MODELS", "CostModelFactory", "make_cost_model"]

CostModelFactory = Callable[[ModelSpec | str, GpuSpec | str, int], CostModel]

COST_MODELS: dict[str, CostModelFactory] = {
    "profile": profile_cost_model,  # gpu = path of a `shunter profile` file
    "roofline": roofline_cost_model,
}


def make_cost_model(name: str, model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1, *,
                    ep: int = 1, expert_imbalance: float = DEFAULT_EXPERT_IMBALANCE) -> CostModel:
    """Build the cost model called `name` for `model` on `tp` GPUs of kind `gpu`, its experts
    (a MoE model) split over `ep` of them."""
    key = name.strip().lower()
    factory = COST_MODELS.get(key)
    if factory is None:
        raise ConfigError(f"unknown cost model {name!r}; valid names: {', '.join(sorted(COST_MODELS))}")
    if key == "roofline":
        return roofline_cost_model(model, gpu, tp, ep=ep, expert_imbalance=expert_imbalance)
    if ep != 1 or expert_imbalance != DEFAULT_EXPERT_IMBALANCE:
        raise ConfigError(f"ep and expert_imbalance need the roofline cost model, not {name!r}")
    return factory(model, gpu, tp)

"""Cost models by name: `name -> factory(model, gpu, tp)` (STYLE.md section 7).

`roofline` picks the mixture-of-experts model (`shunter.sim.cost.moe`) for a MoE model; expert
parallelism (`ep`, `expert_imbalance`) and pipeline parallelism (`pp`, dense models) are
roofline options only."""

from __future__ import annotations

from collections.abc import Callable

from shunter.errors import ConfigError
from shunter.sim.cost.catalog import GpuSpec, ModelSpec, get_model
from shunter.sim.cost.interface import CostModel
from shunter.sim.cost.moe import DEFAULT_EXPERT_IMBALANCE, roofline_cost_model
from shunter.sim.cost.pipeline import check_pipeline
from shunter.sim.cost.profile import profile_cost_model
from shunter.sim.cost.roofline import RooflineCostModel

__all__ = ["COST_MODELS", "CostModelFactory", "make_cost_model"]

CostModelFactory = Callable[[ModelSpec | str, GpuSpec | str, int], CostModel]

COST_MODELS: dict[str, CostModelFactory] = {
    "profile": profile_cost_model,  # gpu = path of a `shunter profile` file
    "roofline": roofline_cost_model,
}


def make_cost_model(name: str, model: ModelSpec | str, gpu: GpuSpec | str, tp: int = 1, *,
                    ep: int = 1, expert_imbalance: float = DEFAULT_EXPERT_IMBALANCE,
                    pp: int = 1) -> CostModel:
    """Build the cost model called `name` for `model` on `tp` GPUs of kind `gpu`, its experts
    (a MoE model) split over `ep` of them, in `pp` pipeline stages of `tp` GPUs each."""
    key = name.strip().lower()
    factory = COST_MODELS.get(key)
    if factory is None:
        raise ConfigError(f"unknown cost model {name!r}; valid names: {', '.join(sorted(COST_MODELS))}")
    if key == "roofline" and pp != 1:  # (a dense model: `check_pipeline` refuses the others)
        check_pipeline(get_model(model) if isinstance(model, str) else model, pp)
        if ep != 1:
            raise ConfigError(f"ep={ep} with pp={pp}: pipeline parallelism is dense models only")
        return RooflineCostModel(model, gpu, tp, pp=pp)
    if pp != 1:
        raise ConfigError(f"pp needs the roofline cost model, not {name!r}")
    if key == "roofline":
        return roofline_cost_model(model, gpu, tp, ep=ep, expert_imbalance=expert_imbalance)
    if ep != 1 or expert_imbalance != DEFAULT_EXPERT_IMBALANCE:
        raise ConfigError(f"ep and expert_imbalance need the roofline cost model, not {name!r}")
    return factory(model, gpu, tp)

from __future__ import annotations

import importlib
import inspect

import pytest

from shunter.errors import ConfigError
from shunter.sim.cost import COST_MODELS, CostModel, RooflineCostModel, make_cost_model

MODULES = ("shunter.sim.cost", "shunter.sim.cost.catalog", "shunter.sim.cost.interface",
           "shunter.sim.cost.registry", "shunter.sim.cost.roofline")


def test_make_cost_model_builds_the_named_model() -> None:
    cm = make_cost_model("roofline", "llama-3.1-8b", "h100", 1)
    assert isinstance(cm, RooflineCostModel)
    assert make_cost_model(" Roofline ", "llama-3.1-70b", "h100", 4).tp == 4
    assert "roofline" in COST_MODELS


def test_roofline_satisfies_the_protocol() -> None:
    cm: CostModel = make_cost_model("roofline", "smollm2-135m", "a40")
    for name in ("step_time_s", "swap_time_s", "kv_transfer_time_s", "num_kv_blocks"):
        assert callable(getattr(cm, name))
    assert cm.max_model_len == 8192


def test_unknown_cost_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid names: profile, roofline"):
        make_cost_model("vidur", "llama-3.1-8b", "h100")


@pytest.mark.parametrize("module_name", MODULES)
def test_all_names_every_public_class_and_function(module_name: str) -> None:
    module = importlib.import_module(module_name)
    defined = {name for name, value in vars(module).items()
               if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
               and value.__module__ == module_name}
    assert defined <= set(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name

"""The scheduler's options exist once (SchedulerConfig): the simulator's `[scheduler]` table and
the engine's `scheduler` mapping accept the same names, refuse the same mistakes, and each
runtime only adds its own defaults and the values it derives."""

from __future__ import annotations

import pytest

from shunter.core.sched.config import (
    SCHEDULER_DEFAULTS,
    SchedulerConfig,
    check_scheduler_options,
    scheduler_config,
)
from shunter.engine.config import (
    ENGINE_DERIVED_SCHEDULER_OPTIONS,
    ENGINE_SCHEDULER_DEFAULTS,
    EngineConfig,
)
from shunter.errors import ConfigError
from shunter.sim.config import SIM_DERIVED_SCHEDULER_OPTIONS, SimConfig
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.runner import scheduler_config as sim_scheduler_config

# one non-default value of every option a user may set in both runtimes
EVERY_OPTION = {"block_size": 8, "max_num_batched_tokens": 256, "max_num_seqs": 7,
                "max_model_len": 1024, "enable_chunked_prefill": False,
                "enable_prefix_caching": False, "preemption_mode": "swap",
                "admission": "whole", "watermark": 0.05, "kv_allocation": "contiguous",
                "host_kv_reuse": True, "host_kv_offload": "all"}


def test_defaults_are_read_from_the_dataclass() -> None:
    config = SchedulerConfig(num_blocks=4)
    assert {name: getattr(config, name) for name in SCHEDULER_DEFAULTS} == SCHEDULER_DEFAULTS
    assert "num_blocks" not in SCHEDULER_DEFAULTS


def test_the_runtimes_cover_every_option() -> None:
    """EVERY_OPTION names every option (a new SchedulerConfig field must be added to it, and
    the two tests below then prove both runtimes honour it); the only fields a runtime does not
    take from the user are the ones it derives or cannot honour."""
    assert set(EVERY_OPTION) == set(SCHEDULER_DEFAULTS) - {"num_host_blocks", "emit_block_tables",
                                                           "max_loras"}
    # max_loras: the simulator's comes from its [lora] table; the engine serves no adapters
    assert {"num_blocks", "num_host_blocks", "emit_block_tables",
            "max_loras"} == SIM_DERIVED_SCHEDULER_OPTIONS
    assert {"num_blocks", "emit_block_tables", "max_loras"} == ENGINE_DERIVED_SCHEDULER_OPTIONS


@pytest.mark.parametrize(("options", "match"), [
    ({"max_num_seq": 4}, r"unknown (engine )?scheduler options \['max_num_seq'\]; valid: .*max_num_seqs"),
    ({"max_num_seqs": "4"}, "max_num_seqs must be an integer"),
    ({"max_num_seqs": True}, "max_num_seqs must be an integer"),
    ({"enable_prefix_caching": 1}, "enable_prefix_caching must be true or false"),
    ({"watermark": "low"}, "watermark must be a number"),
    ({"preemption_mode": "drop"}, "preemption_mode must be one of 'recompute', 'swap'"),
    ({"num_blocks": 4}, "deriv"),
])
def test_bad_options_are_named(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_scheduler_options(options, derived={"num_blocks"})
    with pytest.raises(ValueError, match=match):
        SimConfig(scheduler=options)
    with pytest.raises(ConfigError, match=match):
        EngineConfig(scheduler=options)


def test_value_ranges_are_checked_where_the_config_is_built() -> None:
    with pytest.raises(ValueError, match="scheduler: max_num_seqs must be >= 1"):
        scheduler_config({"max_num_seqs": 0}, derived={"num_blocks": 4})
    with pytest.raises(ConfigError, match="engine scheduler: max_num_seqs must be >= 1"):
        EngineConfig(scheduler={"max_num_seqs": 0})


def test_runtime_defaults_sit_under_the_users_options() -> None:
    built = scheduler_config({"max_num_seqs": 3}, defaults={"max_num_seqs": 64, "watermark": 0.1},
                             derived={"num_blocks": 9})
    assert (built.max_num_seqs, built.watermark, built.num_blocks) == (3, 0.1, 9)


def test_the_simulator_honours_every_option() -> None:
    config = SimConfig(model="llama-3.1-8b", gpu="a100-80gb", scheduler=EVERY_OPTION)
    built = sim_scheduler_config(config, make_cost_model(config.cost_model, config.model,
                                                         config.gpu))
    assert {name: getattr(built, name) for name in EVERY_OPTION} == EVERY_OPTION
    assert built.emit_block_tables is False and built.num_blocks > 0


def test_the_engine_honours_every_option(tiny_loaded) -> None:
    from shunter.engine.llm import LLMEngine

    engine = LLMEngine(EngineConfig(model="tiny", dtype="float32", num_blocks=32,
                                    scheduler={**EVERY_OPTION, "num_host_blocks": 8,
                                               "max_model_len": 100}), loaded=tiny_loaded)
    built = engine.scheduler.config
    expected = {**EVERY_OPTION, "num_host_blocks": 8, "max_model_len": 100}
    assert {name: getattr(built, name) for name in expected} == expected
    assert built.num_blocks == 32


def test_the_engine_defaults_and_the_models_context_cap(tiny_loaded) -> None:
    from shunter.engine.config import DEFAULT_MAX_NUM_BATCHED_TOKENS
    from shunter.engine.llm import LLMEngine

    engine = LLMEngine(EngineConfig(model="tiny", dtype="float32", num_blocks=32,
                                    scheduler={"max_model_len": 10**9}), loaded=tiny_loaded)
    built = engine.scheduler.config
    assert built.max_num_seqs == ENGINE_SCHEDULER_DEFAULTS["max_num_seqs"]
    assert built.max_num_batched_tokens == DEFAULT_MAX_NUM_BATCHED_TOKENS
    assert built.max_model_len == tiny_loaded.config.max_position_embeddings


def test_flat_keywords_split_like_vllms_llm() -> None:
    config = EngineConfig.of(model="tiny", num_blocks=12, max_num_seqs=4, block_size=8)
    assert config.num_blocks == 12
    assert dict(config.scheduler) == {"max_num_seqs": 4, "block_size": 8}
    assert (config.max_num_seqs, config.block_size) == (4, 8)
    with pytest.raises(ConfigError, match="max_num_sqs"):
        EngineConfig.of(max_num_sqs=4)

"""Pipeline parallelism in the roofline cost model: stage split, memory, times, refusals."""

import pytest

from shunter.core.types import StepShape
from shunter.errors import ConfigError
from shunter.sim.cost.catalog import get_gpu, get_model
from shunter.sim.cost.pipeline import P2P_LATENCY_S, PIPELINE_TENSORS, pipeline_layers
from shunter.sim.cost.registry import make_cost_model
from shunter.sim.cost.roofline import RooflineCostModel

DECODE = StepShape(num_decode_requests=64, num_decode_context_tokens=64 * 1000)
PREFILL = StepShape(prefill_chunks=((2048, 0), (512, 300)), num_decode_requests=8,
                    num_decode_context_tokens=8000)


def test_layers_split_as_vllm_does():
    # vLLM tests/distributed/test_pipeline_partition.py (test_uneven_auto_partition's goldens):
    # the extra layers go one each to the stages just before the last
    assert pipeline_layers(2, 2) == (1, 1)
    assert pipeline_layers(3, 2) == (2, 1)
    assert pipeline_layers(4, 3) == (1, 2, 1)
    assert pipeline_layers(5, 3) == (2, 2, 1)
    assert pipeline_layers(80, 2) == (40, 40)
    assert pipeline_layers(30, 4) == (7, 8, 8, 7)
    assert pipeline_layers(7, 7) == (1,) * 7


def test_pp_1_is_the_default_model():
    a = RooflineCostModel("llama-2-70b", "a100-80gb", 2)
    b = make_cost_model("roofline", "llama-2-70b", "a100-80gb", 2, pp=1)
    assert a.num_kv_blocks(16) == b.num_kv_blocks(16)
    for shape in (DECODE, PREFILL):
        assert a.step_time_s(shape) == b.step_time_s(shape)
    assert a.swap_time_s(40, 7) == b.swap_time_s(40, 7)


def test_stages_split_the_step_and_add_the_sends():
    whole = RooflineCostModel("llama-3.1-8b", "h100", 1)
    staged = RooflineCostModel("llama-3.1-8b", "h100", 1, pp=2)
    m, g = get_model("llama-3.1-8b"), get_gpu("h100")
    for shape in (DECODE, PREFILL):
        first, last = staged.stage_times_s(shape)
        tokens = shape.num_decode_requests + sum(n for n, _ in shape.prefill_chunks)
        send_s = P2P_LATENCY_S + (PIPELINE_TENSORS * tokens * m.hidden_size * m.dtype_bytes
                                  / (g.intra_node_bandwidth_bytes_s * g.intra_node_efficiency))
        # one batch's latency: every layer once (tp = 1: no all-reduce), plus one send
        assert first + last == pytest.approx(whole.step_time_s(shape) + send_s, rel=1e-12)
        assert staged.step_time_s(shape) == first + last
        # 16 layers each; the first stage has the CPU overhead and the send, the last the LM head
        assert 0.3 < first / last < 3


def test_memory_per_stage():
    # 70B in bf16 (~129 GiB) does not fit one 80 GB GPU, but does fit two stages of one
    with pytest.raises(ConfigError, match="does not fit"):
        RooflineCostModel("llama-2-70b", "a100-80gb", 1)
    two_stages = RooflineCostModel("llama-2-70b", "a100-80gb", 1, pp=2)
    two_ranks = RooflineCostModel("llama-2-70b", "a100-80gb", 2)
    # the same two GPUs hold about as much KV either way (each holds half the weights; a
    # stage's unsplit activations take ~1 GiB more of the ~8 left on each GPU)
    assert 0.8 < two_stages.num_kv_blocks(16) / two_ranks.num_kv_blocks(16) < 1.0
    # more stages, less weight per GPU, more KV
    four = RooflineCostModel("llama-2-70b", "a100-80gb", 1, pp=4)
    assert four.num_kv_blocks(16) > 2 * two_stages.num_kv_blocks(16)
    # a stage's KV is per token for its own layers only: the replica's bytes per token stay
    assert two_stages.kv_bytes_per_token == two_ranks.kv_bytes_per_token  # (8 KV heads: no copy)


def test_refusals_name_pp():
    with pytest.raises(ConfigError, match="pp=33 .*32 layers"):
        RooflineCostModel("llama-3.1-8b", "h100", 1, pp=33)
    with pytest.raises(ConfigError, match="pp must be >= 1"):
        RooflineCostModel("llama-3.1-8b", "h100", 1, pp=0)
    with pytest.raises(ConfigError, match=r"on pp=2 stages of 1 x a100-40gb does not fit"):
        RooflineCostModel("llama-2-70b", "a100-40gb", 1, pp=2)  # 64 GiB a stage on 40 GB GPUs
    with pytest.raises(ConfigError, match="pp=2: .*dense models only"):
        make_cost_model("roofline", "mixtral-8x7b", "h100", 2, pp=2)
    with pytest.raises(ConfigError, match="pp needs the roofline"):
        make_cost_model("profile", "llama-3.1-8b", "x.json", 1, pp=2)


def test_swap_copies_the_fullest_stage():
    whole = RooflineCostModel("llama-2-70b", "h100", 2)
    staged = RooflineCostModel("llama-2-70b", "h100", 2, pp=4)  # 20 layers a stage
    assert staged.swap_time_s(100, 10) < whole.swap_time_s(100, 10) / 3

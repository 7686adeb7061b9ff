"""Swap cost depends on transfer granularity: scattered blocks cost one copy each."""

from shunter.sim.cost.roofline import RooflineCostModel
from shunter.sim.executor import num_block_runs


def test_runs_need_both_sides_consecutive():
    assert num_block_runs([]) == 0
    assert num_block_runs([(3, 0), (4, 1), (5, 2)]) == 1
    assert num_block_runs([(5, 2), (3, 0), (4, 1)]) == 1  # order of the pairs does not matter
    assert num_block_runs([(3, 0), (4, 7), (5, 8)]) == 2
    assert num_block_runs([(3, 0), (9, 1)]) == 2


def test_scattered_swaps_cost_more_than_contiguous_ones():
    cm = RooflineCostModel("llama-3.1-8b", "a100-80gb")
    scattered, grouped = cm.swap_time_s(64, 64), cm.swap_time_s(64, 4)
    assert scattered > 3 * grouped  # 16-token blocks: per-copy latency dominates the bytes
    assert grouped > cm.swap_time_s(64, 1) > 0
    assert cm.swap_time_s(0, 0) == 0.0

"""BatchLLM's order on prefix-block ids: sharers grouped, each group's prefix computed once by
a warm-up before its requests, groups one after another; file order untouched."""

import pytest

from shunter.core.types import RequestSpec
from shunter.metrics import summarize
from shunter.sim.config import SimConfig
from shunter.sim.runner import simulate
from shunter.workload.prefix_order import batch_job
from shunter.workload.program import followers


def spec(rid: str, prefix: int | None, *, out_cap: int | None = None) -> RequestSpec:
    ids = (tuple(range(prefix * 100, prefix * 100 + 8)) if prefix is not None else ()) + (
        1000 + int(rid[1:]),)
    return RequestSpec(request_id=rid, arrival_s=5.0, num_prompt_tokens=9 * 16,
                       num_output_tokens=4, max_output_tokens=out_cap, hash_ids=ids,
                       hash_block_size=16)


def test_groups_get_one_warm_up_each_and_run_one_after_another():
    specs = [spec("r0", 1), spec("r1", 2, out_cap=512), spec("r2", 1), spec("r3", None),
             spec("r4", 2)]
    job = batch_job(specs)
    # group 2 first (its 512-token cap: the larger decode-to-prefill ratio), the lone r3 at t=0
    assert [s.request_id for s in job.first_calls] == ["warmup:r1", "r3"]
    assert all(s.arrival_s == 0.0 for s in job.first_calls)
    warm = job.first_calls[0]
    assert warm.num_prompt_tokens == 8 * 16 and warm.hash_ids == tuple(range(200, 208))
    assert warm.max_output_tokens == 1
    after = [f.spec.request_id for f in followers(job.follow_ups["warmup:r1"])]
    assert after == ["r1", "r4", "warmup:r0"]  # its requests, then the next group's warm-up
    assert [f.spec.request_id for f in followers(job.follow_ups["warmup:r0"])] == ["r0", "r2"]
    assert job.num_calls == len(specs) + 2


def test_file_order_keeps_the_file_and_submits_at_zero():
    specs = [spec("r0", 1), spec("r1", 2)]
    job = batch_job(specs, "file")
    assert [s.request_id for s in job.first_calls] == ["r0", "r1"] and not job.follow_ups
    assert {s.arrival_s for s in job.first_calls} == {0.0}
    with pytest.raises(ValueError, match="order must be one of"):
        batch_job(specs, "random")


def test_each_prefix_is_computed_once_in_the_simulator():
    specs = [spec(f"r{k}", k % 3) for k in range(12)]
    job = batch_job(specs)
    records = simulate(SimConfig(), job.first_calls, follow_ups=job.follow_ups).records
    served = [r for r in records if not r.request_id.startswith("warmup:")]
    assert len(served) == 12
    # every request finds its 8 prefix blocks cached (its own last block is new)
    assert summarize(served).prefix_hit_rate == pytest.approx(8 / 9)

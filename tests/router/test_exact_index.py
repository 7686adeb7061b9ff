import pytest

from shunter.core.types import RequestSpec
from shunter.router.exact_index import (
    AllBlocksCleared,
    BlocksRemoved,
    BlocksStored,
    ExactPrefixIndex,
)
from shunter.router.interface import ReplicaView
from shunter.router.policies.cost import CostRouter
from shunter.router.prefix_index import PrefixIndex

BS = 4
PROMPT = tuple(range(100, 112))  # three blocks of 4


def stored(hashes, parent, tokens, block_size=BS, **kw):
    return BlocksStored(engine_hashes=tuple(hashes), parent_hash=parent, token_ids=tuple(tokens),
                        block_size=block_size, **kw)


def spec(tokens, request_id="r"):
    return RequestSpec(request_id=request_id, arrival_s=0.0, num_prompt_tokens=len(tokens),
                       num_output_tokens=1, prompt_token_ids=tuple(tokens))


def fresh(replica_id=0, block_size=BS):
    index = ExactPrefixIndex()
    index.track(replica_id, block_size)
    index.reset(replica_id, is_complete=True)
    return index


def test_untracked_or_incomplete_replicas_have_no_exact_answer():
    index = ExactPrefixIndex()
    assert index.match_tokens(0, PROMPT) is None
    index.track(0, BS)
    assert index.match_tokens(0, PROMPT) is None  # nothing seen yet: not known empty
    index.reset(0, is_complete=True)
    assert index.match_tokens(0, PROMPT) == 0
    assert index.num_tokens(0) == 0


def test_stored_blocks_match_by_content_across_events_and_hash_kinds():
    index = fresh()
    index.apply(0, [stored([b"h1", b"h2"], None, PROMPT[:8])])
    assert index.match_tokens(0, PROMPT) == 8
    index.apply(0, [stored([7], b"h2", PROMPT[8:])])  # int hashes too, chained to the parent
    assert index.match_tokens(0, PROMPT) == 12
    assert index.match_tokens(0, PROMPT[:4] + (0, 0, 0, 0)) == 4
    assert index.num_tokens(0) == 12


def test_removal_of_a_middle_block_cuts_the_prefix_there():
    index = fresh()
    index.apply(0, [stored([1, 2, 3], None, PROMPT)])
    index.apply(0, [BlocksRemoved((2,))])
    assert index.match_tokens(0, PROMPT) == 4
    index.apply(0, [AllBlocksCleared()])
    assert index.match_tokens(0, PROMPT) == 0


def test_duplicate_stores_need_as_many_removals():
    index = fresh()
    index.apply(0, [stored([1], None, PROMPT[:4]), stored([1], None, PROMPT[:4])])
    index.apply(0, [BlocksRemoved((1,))])
    assert index.match_tokens(0, PROMPT) == 4
    index.apply(0, [BlocksRemoved((1,)), BlocksRemoved((99,))])  # unknown: ignored
    assert index.match_tokens(0, PROMPT) == 0


def test_unknown_parent_and_salted_blocks_never_match():
    index = fresh()
    index.apply(0, [stored([5], b"never seen", PROMPT[4:8])])
    index.apply(0, [stored([1], None, PROMPT[:4], is_salted=True), stored([2], 1, PROMPT[4:8])])
    assert index.match_tokens(0, PROMPT) == 0


def test_block_size_mismatch_is_an_error_and_leaves_the_replica_approximate():
    index = fresh(block_size=16)
    with pytest.raises(ValueError, match="block_size = 4"):
        index.apply(0, [stored([1], None, PROMPT[:4])])
    assert index.match_tokens(0, PROMPT) is None


def test_block_size_is_learned_when_not_configured():
    index = fresh(block_size=None)
    assert index.match_tokens(0, PROMPT) is None
    index.apply(0, [stored([1], None, PROMPT[:4])])
    assert index.match_tokens(0, PROMPT) == 4


def test_routers_read_the_exact_index_and_fall_back_to_their_approximation():
    exact = ExactPrefixIndex()
    for r in (0, 1):
        exact.track(r, BS)
    exact.reset(0, is_complete=True)  # replica 1 stays approximate
    exact.apply(0, [stored([1, 2, 3], None, PROMPT)])
    router = CostRouter(randomize_ties=False)
    router.index.exact = exact
    views = [ReplicaView(replica_id=r, num_total_blocks=100, block_size=BS) for r in (0, 1)]
    blocks = router.index.blocks_of(spec(PROMPT))
    assert router.index.match_all(blocks, views) == [12, 0]
    assert router.route(spec(PROMPT + (1,), "a"), views).replica_id == 0
    # replica 1: what the router sent there, as before
    router.index.record(router.index.blocks_of(spec(PROMPT, "b")), views[1])
    assert router.index.match_all(router.index.blocks_of(spec(PROMPT)), views) == [12, 12]


def test_text_only_requests_stay_approximate():
    exact = fresh()
    exact.apply(0, [stored([1], None, PROMPT[:4])])
    index = PrefixIndex(exact)
    text_only = RequestSpec(request_id="t", arrival_s=0.0, num_prompt_tokens=12,
                            num_output_tokens=1, hash_ids=(1, 2, 3), hash_block_size=BS)
    assert index.match_tokens(0, index.blocks_of(text_only)) == 0

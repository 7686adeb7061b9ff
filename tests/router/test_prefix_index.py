"""The router's approximate prefix index: chained keys, longest-prefix matches, LRU bound."""

from tests.factories import make_spec

from shunter.router.interface import ReplicaView
from shunter.router.prefix_index import PrefixIndex, prompt_blocks


def spec(request_id="r", hash_ids=None, num_prompt_tokens=None, **kw):
    n = num_prompt_tokens if num_prompt_tokens is not None else 16 * len(hash_ids or (1,))
    return make_spec(request_id, num_prompt_tokens=n, hash_ids=hash_ids, **kw)


def test_hash_ids_chain_so_equal_ids_at_other_positions_do_not_match():
    a = prompt_blocks(spec(hash_ids=(1, 2, 3)), "x")
    b = prompt_blocks(spec(hash_ids=(1, 2, 4)), "y")
    c = prompt_blocks(spec(hash_ids=(2, 3)), "z")
    assert a.keys[:2] == b.keys[:2] and a.keys[2] != b.keys[2]
    assert not set(c.keys) & set(a.keys)  # block id 2 after 1 is not block id 2 at the root
    assert a.num_tokens == (16, 16, 16)


def test_last_hash_block_may_be_partial_and_extra_ids_are_ignored():
    blocks = prompt_blocks(spec(hash_ids=(1, 2, 3, 4), num_prompt_tokens=40), "x")
    assert blocks.num_tokens == (16, 16, 8)
    assert blocks.num_prompt_tokens == 40


def test_token_ids_are_cut_into_hash_block_size_chunks():
    ids = tuple(range(40))
    a = prompt_blocks(make_spec(num_prompt_tokens=40, prompt_token_ids=ids), "x")
    b = prompt_blocks(make_spec(num_prompt_tokens=40, prompt_token_ids=ids[:32] + (99,) * 8), "y")
    assert a.num_tokens == (16, 16, 8)
    assert a.keys[:2] == b.keys[:2] and a.keys[2] != b.keys[2]


def test_a_prompt_that_shares_nothing_is_one_anonymous_block():
    blocks = prompt_blocks(make_spec(num_prompt_tokens=100), ("anonymous", 7))
    assert blocks.keys == (("anonymous", 7),) and blocks.num_tokens == (100,)


def test_match_is_the_longest_indexed_prefix_per_replica():
    index = PrefixIndex()
    index.insert(0, prompt_blocks(spec(hash_ids=(1, 2, 3)), "x"), max_tokens=1000)
    query = prompt_blocks(spec(hash_ids=(1, 2, 9, 3)), "y")
    assert index.match_tokens(0, query) == 32
    assert index.match_tokens(1, query) == 0
    assert index.num_tokens(0) == 48


def test_a_block_sent_partial_matches_only_its_tokens():
    index = PrefixIndex()
    index.insert(0, prompt_blocks(spec(hash_ids=(1, 2), num_prompt_tokens=20), "x"), 1000)
    assert index.match_tokens(0, prompt_blocks(spec(hash_ids=(1, 2, 3)), "y")) == 20


def test_capacity_evicts_least_recently_routed_tails_first():
    index = PrefixIndex()
    index.insert(0, prompt_blocks(spec(hash_ids=(1, 2)), "a"), max_tokens=64)
    index.insert(0, prompt_blocks(spec(hash_ids=(5, 6)), "b"), max_tokens=64)
    index.insert(0, prompt_blocks(spec(hash_ids=(1, 3)), "c"), max_tokens=64)  # 16 over: evicts (1,2)'s tail
    assert index.num_tokens(0) == 64
    assert index.match_tokens(0, prompt_blocks(spec(hash_ids=(1, 2)), "q")) == 16
    assert index.match_tokens(0, prompt_blocks(spec(hash_ids=(5, 6)), "q")) == 32
    assert index.match_tokens(0, prompt_blocks(spec(hash_ids=(1, 3)), "q")) == 32


def test_reinserting_a_prompt_adds_no_tokens_and_refreshes_it():
    index = PrefixIndex()
    blocks = prompt_blocks(spec(hash_ids=(1, 2)), "a")
    index.insert(0, blocks, 64)
    index.insert(0, prompt_blocks(spec(hash_ids=(7, 8)), "b"), 64)
    index.insert(0, blocks, 64)
    assert index.num_tokens(0) == 64
    index.insert(0, prompt_blocks(spec(hash_ids=(9,)), "c"), 64)  # evicts (7,8)'s tail, not (1,2)
    assert index.match_tokens(0, blocks) == 32


def test_record_bounds_the_index_by_the_views_kv_capacity():
    index = PrefixIndex()
    view = ReplicaView(replica_id=3, num_total_blocks=4, block_size=16)
    index.record(index.blocks_of(spec(hash_ids=tuple(range(10)))), view)
    assert index.num_tokens(3) == 64
    assert index.match_all(index.blocks_of(spec(hash_ids=(0,))), [view]) == [16]

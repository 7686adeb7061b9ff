import os
import subprocess
import sys

from shunter.core.kv.hashing import BlockHasher, request_salt


def hashes(hasher: BlockHasher, num_tokens: int, token_ids=None) -> list[int]:
    out: list[int] = []
    hasher.extend(out, num_tokens, token_ids)
    return out


def test_equal_token_prefixes_hash_equal_and_diverge_after():
    a = hashes(BlockHasher(4), 12, [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9])
    b = hashes(BlockHasher(4), 12, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0])
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]


def test_only_full_blocks_are_hashed_and_extension_is_incremental():
    hasher = BlockHasher(4, salt=9)
    out: list[int] = []
    hasher.extend(out, 7)
    assert len(out) == 1
    hasher.extend(out, 8)
    assert len(out) == 2 and out == hashes(BlockHasher(4, salt=9), 8)


def test_mooncake_ids_split_into_sub_blocks():
    # two requests sharing the first 512-token id share its 32 sub-blocks of 16 tokens
    a = hashes(BlockHasher(16, hash_ids=[0, 1], hash_block_size=512, salt=1), 1024)
    b = hashes(BlockHasher(16, hash_ids=[0, 2], hash_block_size=512, salt=2), 1024)
    assert len(a) == 64
    assert a[:32] == b[:32] and a[32] != b[32]


def test_blocks_beyond_hash_ids_are_unique_to_the_request():
    a = hashes(BlockHasher(16, hash_ids=[5], hash_block_size=16, salt=request_salt("x")), 48)
    b = hashes(BlockHasher(16, hash_ids=[5], hash_block_size=16, salt=request_salt("y")), 48)
    assert a[0] == b[0] and a[1] != b[1]


def test_a_salt_named_by_request_id_is_that_requests_salt_taken_when_first_needed():
    hasher = BlockHasher(16, hash_ids=[5], hash_block_size=16, salt_id="x")
    assert hashes(hasher, 16) == hashes(BlockHasher(16, hash_ids=[5], hash_block_size=16), 16)
    assert hashes(hasher, 48) == hashes(
        BlockHasher(16, hash_ids=[5], hash_block_size=16, salt=request_salt("x")), 48)
    assert hasher.salt == request_salt("x")


def test_hashes_are_stable_across_processes_with_different_hash_seeds():
    code = ("from shunter.core.kv.hashing import BlockHasher, request_salt; o=[]; "
            "BlockHasher(4, salt=request_salt('r1')).extend(o, 8); "
            "BlockHasher(4).extend(o, 12, list(range(12))); print(o)")
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        seen.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout)
    assert len(seen) == 1
    assert request_salt("r1") != request_salt("r2")

"""Write `examples/trace.jsonl`, the small trace the README's example scenario reads.

    python examples/make_trace.py [OUT]        # default: examples/trace.jsonl next to this file

400 synthetic requests (Poisson arrivals at 8 req/s; lognormal prompts around 512 tokens and
outputs around 128; three tenants sharing 3:1:1; one request in four at priority 1, the rest
at 0; each tenant's requests start with one of its four system prompts, 1,024 tokens, as
Mooncake-style 512-token `hash_ids`) in the canonical JSONL format (`shunter.workload.jsonl`).
Seed 0: running it again writes the same bytes (`tests/test_readme.py` checks).
"""

from __future__ import annotations

import sys
from pathlib import Path

from shunter.workload.generators import RequestClass, SharedPrefix, SyntheticWorkload, generate
from shunter.workload.jsonl import write_jsonl
from shunter.workload.length_dist import LengthDistribution

SEED = 0
WORKLOAD = SyntheticWorkload(
    num_requests=400,
    rate=8.0,
    prompt_tokens=LengthDistribution(kind="lognormal", mean_tokens=512, sigma=0.8,
                                     min_tokens=16, max_tokens=4096),
    output_tokens=LengthDistribution(kind="lognormal", mean_tokens=128, sigma=0.8,
                                     min_tokens=1, max_tokens=1024),
    tenants={"alice": 3.0, "bob": 1.0, "carol": 1.0},
    classes=(RequestClass(weight=3.0, priority=0), RequestClass(weight=1.0, priority=1)),
    shared_prefix=SharedPrefix(num_prefixes_per_tenant=4, hash_block_size=512,
                               prefix_tokens=LengthDistribution(kind="fixed", mean_tokens=1024)),
)


def main(out: Path) -> None:
    count = write_jsonl(generate(WORKLOAD, seed=SEED), out)
    print(f"wrote {count} requests to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("trace.jsonl"))

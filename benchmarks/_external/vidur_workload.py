"""Vidur 0.0.26's synthetic workload, regenerated without Vidur (stdlib + numpy).

`vidur_workload` returns the same (arrival_s, prompt_tokens, output_tokens) list Vidur builds for
``--request_generator_config_type synthetic --length_generator_config_type trace
--interval_generator_config_type poisson`` with one `seed` passed to every generator seed flag
(as `benchmarks._external.vidur.run_vidur` does). Checked against Vidur's own output in
``tests/test_vidur_workload.py``. What it reproduces, from Vidur's source:

- ``TraceRequestLengthGenerator``: lengths capped to ``max_tokens`` (excess removed from prefill
  and decode in proportion, ceil each, then each clipped to >= 1), then the rows are shuffled by
  ``DataFrame.sample(frac=1, random_state=seed)``, which is
  ``numpy.random.RandomState(seed).permutation(num_rows)``, and consumed in that order.
- ``PoissonRequestIntervalGenerator``: gap = ``-log(1 - random.random()) / qps`` clipped to
  ``3 / qps``, drawn from Python's ``random`` seeded with the request generator's seed; the first
  request arrives one gap after 0.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np

__all__ = ["MAX_GAP_MEAN_GAPS", "read_capped_lengths", "vidur_workload"]

MAX_GAP_MEAN_GAPS = 3.0  # Vidur: self.max_interval = (1.0 / qps) * 3.0


def read_capped_lengths(trace_file: Path, *, max_tokens: int = 4096) -> list[tuple[int, int]]:
    """(prefill, decode) per trace row, in file order, after Vidur's proportional cap."""
    lengths = []
    with open(trace_file, newline="") as f:
        for row in csv.DictReader(f):
            prefill = int(float(row["num_prefill_tokens"]))
            decode = int(float(row["num_decode_tokens"]))
            total = prefill + decode
            excess = max(total - max_tokens, 0)
            # Same float operations as Vidur's pandas code: ratio first, then excess * ratio.
            prefill_cut = math.ceil(excess * (prefill / total))
            decode_cut = math.ceil(excess * (decode / total))
            lengths.append((max(prefill - prefill_cut, 1), max(decode - decode_cut, 1)))
    return lengths


def vidur_workload(*, num_requests: int, qps: float, seed: int, trace_file: Path,
                   max_tokens: int = 4096) -> list[tuple[float, int, int]]:
    """The (arrival_s, prompt_tokens, output_tokens) list Vidur simulates for these settings."""
    lengths = read_capped_lengths(trace_file, max_tokens=max_tokens)
    if not 1 <= num_requests <= len(lengths):
        raise ValueError(f"num_requests must be in 1..{len(lengths)} (rows in {trace_file}); "
                         f"Vidur crashes past the end of the trace")
    order = np.random.RandomState(seed).permutation(len(lengths))
    rng = random.Random(seed)
    max_gap_s = (1.0 / qps) * MAX_GAP_MEAN_GAPS
    arrival_s = 0.0
    requests = []
    for index in order[:num_requests]:
        arrival_s += min(-math.log(1.0 - rng.random()) / qps, max_gap_s)
        prefill, decode = lengths[int(index)]
        requests.append((arrival_s, prefill, decode))
    return requests

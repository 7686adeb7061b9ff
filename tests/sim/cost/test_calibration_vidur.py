"""Predicted operator times against Vidur's measured ones (../shared/vidur-profiling).

Vidur's tables are per layer and per TP rank, in milliseconds (medians of repeated CUDA-event /
Kineto timings). `mlp.csv` times every operator of a decoder layer except the attention kernel
itself, for `num_tokens` tokens on `num_tensor_parallel_workers` ranks; we compare its sum (QKV
and O projections, rotary, two RMSNorms, gate+up, SiLU-and-mul, down, two residual adds) with
`dense_layer_time_s`. `attention.csv` (A100, Llama-2-70B, TP 2) times FlashAttention prefill of
one `prefill_chunk_size` chunk over `kv_cache_size` cached tokens, and decode of `batch_size`
requests that each hold `kv_cache_size` tokens. `network/*/all_reduce.csv` sizes are bytes.

Run this file as a script to print the full error tables.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from shunter.sim.cost.catalog import get_gpu, get_model
from shunter.sim.cost.roofline import RooflineCostModel

VIDUR = Path(__file__).resolve().parents[3] / ".." / "shared" / "vidur-profiling"
pytestmark = pytest.mark.skipif(not VIDUR.is_dir(), reason="../shared/vidur-profiling is absent")

# (vidur gpu dir, vidur model dir, our model, our gpu)
MLP_CASES = [
    ("a100", "meta-llama/Llama-2-70b-hf", "llama-2-70b", "a100-80gb"),
    ("a100", "meta-llama/Llama-2-7b-hf", "llama-2-7b", "a100-80gb"),
    ("a100", "meta-llama/Meta-Llama-3-8B", "llama-3-8b", "a100-80gb"),
    ("a100", "meta-llama/Meta-Llama-3-70B", "llama-3-70b", "a100-80gb"),
    ("h100", "meta-llama/Llama-2-70b-hf", "llama-2-70b", "h100"),
    ("h100", "meta-llama/Llama-2-7b-hf", "llama-2-7b", "h100"),
    ("a40", "meta-llama/Llama-2-70b-hf", "llama-2-70b", "a40"),
    ("a40", "meta-llama/Llama-2-7b-hf", "llama-2-7b", "a40"),
]
MLP_OPS = ("attn_pre_proj", "attn_post_proj", "attn_rope", "input_layernorm",
           "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add", "add")
TOKEN_COUNTS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TPS = (1, 2, 4)


def _unchecked_model(model: str, gpu: str, tp: int) -> RooflineCostModel:
    """Vidur times 70B operators on one A40 too: give the GPU room so the fit check passes."""
    return RooflineCostModel(get_model(model), replace(get_gpu(gpu), memory_bytes=1 << 50), tp)


def mlp_rows() -> list[tuple[str, str, int, int, float, float]]:
    """(gpu, model, tp, num_tokens, measured_s, predicted_s) for every MLP case."""
    out = []
    for vidur_gpu, vidur_model, model, gpu in MLP_CASES:
        groups: dict[tuple[int, int], list[dict[str, str]]] = defaultdict(list)
        with open(VIDUR / "compute" / vidur_gpu / vidur_model / "mlp.csv") as f:
            for row in csv.DictReader(f):
                groups[int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])].append(row)
        for tp in TPS:
            cm = _unchecked_model(model, gpu, tp)
            for num_tokens in TOKEN_COUNTS:
                rows = groups[tp, num_tokens]
                measured_ms = sum(statistics.median(float(r[f"time_stats.{op}.median"]) for r in rows)
                                  for op in MLP_OPS)
                out.append((gpu, model, tp, num_tokens, measured_ms * 1e-3,
                            cm.dense_layer_time_s(num_tokens)))
    return out


def attention_rows() -> tuple[list[tuple[int, int, float, float]], list[tuple[int, int, float, float]]]:
    """Decode (batch, kv per request, measured_s, predicted_s) and prefill (chunk, kv, ...) rows."""
    decode: dict[tuple[int, int], list[float]] = defaultdict(list)
    prefill: dict[tuple[int, int], list[float]] = defaultdict(list)
    with open(VIDUR / "compute/a100/meta-llama/Llama-2-70b-hf/attention.csv") as f:
        for row in csv.DictReader(f):
            if row["is_prefill"] == "True":
                key = (int(row["prefill_chunk_size"]), int(row["kv_cache_size"]))
                prefill[key].append(float(row["time_stats.attn_prefill.median"]) * 1e-3)
            else:
                key = (int(row["batch_size"]), int(row["kv_cache_size"]))
                decode[key].append(float(row["time_stats.attn_decode.median"]) * 1e-3)
    cm = RooflineCostModel("llama-2-70b", "a100-80gb", 2)
    decode_rows = [(b, kv, statistics.median(v), cm.attention_decode_time_s(b, b * kv))
                   for (b, kv), v in sorted(decode.items())]
    prefill_rows = [(n, kv, statistics.median(v), cm.attention_prefill_time_s(n, kv))
                    for (n, kv), v in sorted(prefill.items())]
    return decode_rows, prefill_rows


def all_reduce_rows() -> list[tuple[str, int, int, float, float]]:
    """(network, num_gpus, size_bytes, measured_s, predicted_s) on NVSwitch machines, 1-64 MiB."""
    out = []
    for network, gpu in (("a100_dgx", "a100-80gb"), ("h100_dgx", "h100")):
        times: dict[tuple[int, int], list[float]] = defaultdict(list)
        with open(VIDUR / "network" / network / "all_reduce.csv") as f:
            for row in csv.DictReader(f):
                if row["num_workers"] == row["devices_per_node"]:
                    key = (int(row["num_workers"]), int(row["size"]))
                    times[key].append(float(row["time_stats.all_reduce.median"]) * 1e-3)
        for tp in (2, 4, 8):
            cm = RooflineCostModel("llama-3.1-70b", gpu, tp)
            bytes_per_token = cm.model.hidden_size * cm.model.dtype_bytes
            for size in (1 << 20, 1 << 22, 1 << 24, 1 << 26):
                if (tp, size) in times:
                    out.append((network, tp, size, statistics.median(times[tp, size]),
                                cm.all_reduce_time_s(size // bytes_per_token)))
    return out


def _error(measured: float, predicted: float) -> float:
    return predicted / measured - 1.0


def test_mlp_layer_within_30_percent_for_mid_size_batches() -> None:
    rows = mlp_rows()
    errors = [_error(m, p) for *_, m, p in rows]
    mid = [_error(m, p) for _, _, _, t, m, p in rows if 32 <= t <= 2048]
    assert max(abs(e) for e in mid) < 0.30, max(mid, key=abs)
    assert max(abs(e) for e in errors) < 0.35
    assert sum(abs(e) for e in errors) / len(errors) < 0.08  # typical error, all cases


def test_attention_decode_within_30_percent_for_mid_size_batches() -> None:
    # Below batch 32 the measured kernel is not even monotonic (FlashAttention's split-KV
    # heuristics: 16 x 1024 tokens takes 57 us, 26 x 512 takes 23 us); no roofline follows that.
    decode_rows, _ = attention_rows()
    mid = [_error(m, p) for b, kv, m, p in decode_rows if b >= 32 and kv >= 512]
    assert len(mid) > 100
    assert max(abs(e) for e in mid) < 0.30, max(mid, key=abs)
    every = [abs(_error(m, p)) for *_, m, p in decode_rows]
    assert sum(every) / len(every) < 0.15


def test_attention_prefill_within_40_percent() -> None:
    _, prefill_rows = attention_rows()
    mid = [_error(m, p) for n, kv, m, p in prefill_rows if n >= 256]
    assert len(mid) > 100
    assert max(abs(e) for e in mid) < 0.40, max(mid, key=abs)
    every = [abs(_error(m, p)) for *_, m, p in prefill_rows]
    assert sum(every) / len(every) < 0.15


def test_all_reduce_within_50_percent_on_nvswitch_machines() -> None:
    rows = all_reduce_rows()
    assert len(rows) >= 20
    errors = [_error(m, p) for *_, m, p in rows]
    assert max(abs(e) for e in errors) < 0.50, max(errors, key=abs)


def _print_tables() -> None:
    print("MLP layer (per layer, per rank): predicted / measured - 1")
    print(f"{'gpu':10} {'model':12} tp " + " ".join(f"{t:>6}" for t in TOKEN_COUNTS))
    by_case: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for gpu, model, tp, _, m, p in mlp_rows():
        by_case[gpu, model, tp].append(_error(m, p))
    for (gpu, model, tp), errors in by_case.items():
        print(f"{gpu:10} {model:12} {tp:2} " + " ".join(f"{e:+6.0%}" for e in errors))
    decode_rows, prefill_rows = attention_rows()
    print("\nattention decode, A100 Llama-2-70B TP2: batch x kv/request -> measured ms, error")
    for b, kv, m, p in decode_rows:
        if b in (1, 8, 32, 64, 128) and kv in (256, 1024, 2048, 4032):
            print(f"  b={b:3} kv={kv:4}  {m * 1e3:6.3f} ms  {_error(m, p):+5.0%}")
    print("attention prefill: chunk x kv -> measured ms, error")
    for n, kv, m, p in prefill_rows:
        if n in (128, 512, 1024, 2048, 4096) and kv in (0, 1024, 2048):
            print(f"  n={n:4} kv={kv:4}  {m * 1e3:6.3f} ms  {_error(m, p):+5.0%}")
    print("\nall-reduce (NCCL, NVSwitch)")
    for network, tp, size, m, p in all_reduce_rows():
        print(f"  {network:9} tp={tp} {size >> 20:3} MiB  {m * 1e3:6.3f} ms  {_error(m, p):+5.0%}")


if __name__ == "__main__":
    _print_tables()

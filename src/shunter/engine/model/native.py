"""The engine's one native kernel: bfloat16 decode attention read straight from the paged cache.

PyTorch has no paged attention on CPU, so a decode step gathered every request's keys and
values into a buffer (a copy of the whole context, every layer) and ran the fused attention
kernel once per request and KV head, which packs both operands for a tiny matrix product on
every call. At 64 decodes of ~200 tokens that was 2.4 ms a layer; `decode_attention.c` reads
each key and value once, in place, at 1.4 ms over 30 layers' caches (0.7 ms when the layer's
cache sits in the CPU's caches: the rest is waiting on memory), with the fused kernel's
rounding (see the C file).

The C file is compiled on first use with the system's C compiler (`$CC`, else `cc`) for this
machine (`-march=native`; about a second) into `~/.cache/shunter/kernels/` (or
`$SHUNTER_KERNEL_DIR`), keyed by a digest of the source, the flags and the CPU's feature flags,
and called through ctypes: no PyTorch headers, no build step at install. Without a compiler
the engine says so once and keeps PyTorch's kernel; `SHUNTER_ATTENTION=torch` chooses
PyTorch's kernel on purpose (the tests compare the two).

The kernel runs on one thread per call; with more than one torch thread, a batch of decodes is
split across that many threads (ctypes releases the GIL for the call).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from shunter.errors import ConfigError

__all__ = ["ATTENTION_ENV", "NativeKernel", "load_kernel"]

log = logging.getLogger(__name__)

ATTENTION_ENV = "SHUNTER_ATTENTION"  # "torch": PyTorch's kernel; unset or "native": this one
KERNEL_DIR_ENV = "SHUNTER_KERNEL_DIR"
_SOURCE = Path(__file__).with_name("decode_attention.c")
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fvisibility=default")
_MIN_DECODES_PER_THREAD = 4
_C_INT32, _C_INT64, _C_PTR = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p


class NativeKernel:
    """The loaded library: `isa` is 1 for the AVX-512 BF16 build, 0 for portable C."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        fn = self._lib.shunter_decode_attention_bf16
        fn.restype = ctypes.c_int
        fn.argtypes = [_C_PTR, _C_INT64, _C_PTR, _C_PTR, _C_PTR, _C_INT32, _C_PTR, _C_INT32,
                       _C_INT32, _C_INT32, _C_INT32, _C_INT32, _C_INT32, ctypes.c_float, _C_PTR]
        self._fn = fn
        self.isa = int(self._lib.shunter_decode_attention_isa())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            tables: torch.Tensor, lengths: torch.Tensor, scale: float,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """out[i] = attention of q[i] ([num_heads, head_dim]) over the first lengths[i] keys of
        request i's blocks (`tables[i]`); all bfloat16 on the CPU, tables/lengths int32. Into
        `out` if given (a new tensor otherwise); returns it."""
        num_decodes, num_heads, head_dim = q.shape
        _, num_kv_heads, block_size, _ = k_cache.shape
        if q.stride(2) != 1 or q.stride(1) != head_dim:
            q = q.contiguous()
        if out is None:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        assert out.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()
        assert tables.dtype == torch.int32 and lengths.dtype == torch.int32
        args = (q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                tables.data_ptr(), tables.shape[1], lengths.data_ptr())
        tail = (num_heads, num_kv_heads, head_dim, block_size, scale, out.data_ptr())
        threads = min(torch.get_num_threads(), num_decodes // _MIN_DECODES_PER_THREAD)
        if threads <= 1:
            self._check(self._fn(*args, 0, num_decodes, *tail))
            return out
        bounds = [num_decodes * t // threads for t in range(threads + 1)]
        pool = self._threads()
        futures = [pool.submit(self._fn, *args, bounds[t], bounds[t + 1], *tail)
                   for t in range(1, threads)]
        self._check(self._fn(*args, 0, bounds[1], *tail))
        for future in futures:
            self._check(future.result())
        return out

    def _threads(self) -> ThreadPoolExecutor:
        """One pool for every engine in the process (they share this kernel), never replaced
        while another engine's thread may be submitting to it; threads start on demand."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1),
                                                thread_name_prefix="shunter-attention")
            return self._pool

    @staticmethod
    def _check(rc: int) -> None:
        if rc != 0:
            raise RuntimeError("native decode attention refused its sizes (group > 16 query "
                               "heads per KV head or head_dim > 256) or ran out of memory")


_loaded: dict[tuple[str, ...], NativeKernel | None] = {}


def load_kernel(extra_flags: tuple[str, ...] = ()) -> NativeKernel | None:
    """The compiled kernel (built on first use), or None: chosen off, or no compiler. Once
    per process and flags."""
    choice = os.environ.get(ATTENTION_ENV) or "native"
    if choice not in ("native", "torch"):
        raise ConfigError(f"{ATTENTION_ENV}={choice!r}: use 'native' (the default) or 'torch'")
    if choice == "torch" and not extra_flags:
        return None
    if extra_flags not in _loaded:
        _loaded[extra_flags] = _build(extra_flags)
    return _loaded[extra_flags]


def _build(extra_flags: tuple[str, ...]) -> NativeKernel | None:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.warning("no C compiler (%s): decode attention runs on PyTorch's kernel, slower at "
                    "large batches (set CC, or install gcc)", compiler)
        return None
    flags = (*_FLAGS, *extra_flags)
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_flags()])).hexdigest()
    directory = Path(os.environ.get(KERNEL_DIR_ENV)
                     or Path.home() / ".cache" / "shunter" / "kernels")
    path = directory / f"decode_attention-{key[:16]}.so"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:  # atomic: rename when built
            built = Path(tmp) / path.name
            proc = subprocess.run([compiler, *flags, "-o", str(built), str(_SOURCE), "-lm"],
                                  capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0:
                log.warning("compiling the native decode attention failed (%s); PyTorch's "
                            "kernel runs instead: %s", compiler,
                            proc.stderr.strip().splitlines()[-1:] or proc.returncode)
                return None
            os.replace(built, path)
    return NativeKernel(path)


def _cpu_flags() -> bytes:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.encode()
    except OSError:
        pass
    return platform.processor().encode()


"""Process and venv plumbing shared by the external-tool drivers.

Every competitor lives in its own venv under ``<repo>/.bench/`` (git-ignored) so that its pins
(vLLM pins torch; Vidur pins pandas/sklearn) never touch the project venv. Each install step is
idempotent: a venv is complete only when its marker file exists, and the marker is written last.

Every child process runs with a wall-clock limit, in its own session (so a timeout kills the whole
tree it started and nothing else), and is reaped with ``os.wait4`` so that we get the peak RSS of
*that* child tree. ``resource.getrusage(RUSAGE_CHILDREN)`` would be the max over every child this
Python process ever reaped, which breaks as soon as a driver runs two children in a row.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "SHARED_DIR",
    "ProcResult",
    "die_with_parent",
    "ensure_venv",
    "log",
    "pip_install",
    "run_measured",
    "tail",
    "venv_python",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / ".bench"
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()

# pip's index config on this machine lists file:// mirrors that do not exist for most names;
# pip warns once per package. These lines carry no information, so the drivers drop them.
_PIP_NOISE_PREFIX = "WARNING: Location 'file://"
_POLL_INTERVAL_S = 0.05
_KILL_GRACE_S = 10.0
_KIB = 1024
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True, slots=True)
class ProcResult:
    """Outcome of one measured child process tree."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    is_timed_out: bool
    log_path: Path | None


def log(message: str) -> None:
    """Say what a driver is doing (installs and runs take minutes; silence looks like a hang)."""
    print(f"[external] {message}", file=sys.stderr, flush=True)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def run_measured(cmd: Sequence[str | os.PathLike[str]], *, timeout_s: float,
                 cwd: Path | None = None, env: Mapping[str, str] | None = None,
                 log_path: Path | None = None) -> ProcResult:
    """Run `cmd` to completion (or kill its process group at `timeout_s`); measure wall and RSS.

    stdout and stderr go to `log_path` (or are discarded). `peak_rss_bytes` is the largest RSS of
    any single process in the tree that was reaped (Linux wait4 reports RUSAGE_BOTH for a zombie).
    """
    out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        start_s = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=None if env is None else dict(env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            status, rusage, is_timed_out = _wait_with_deadline(proc.pid, start_s + timeout_s)
        except BaseException:  # Ctrl-C, a test timeout: never leave the tree running
            _kill_group(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            raise
        wall_s = time.perf_counter() - start_s
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
    returncode = os.waitstatus_to_exitcode(status)
    proc.returncode = returncode  # reaped by wait4 above; keep Popen from polling a dead pid
    return ProcResult(returncode=returncode, wall_s=wall_s,
                      peak_rss_bytes=rusage.ru_maxrss * _KIB,  # Linux reports KiB
                      is_timed_out=is_timed_out, log_path=log_path)


def _wait_with_deadline(pid: int, deadline_s: float) -> tuple[int, os.struct_rusage, bool]:
    is_timed_out = False
    while True:
        done_pid, status, rusage = os.wait4(pid, os.WNOHANG)
        if done_pid == pid:
            return status, rusage, is_timed_out
        now_s = time.perf_counter()
        if not is_timed_out and now_s >= deadline_s:
            is_timed_out = True
            _kill_group(pid, signal.SIGTERM)
            deadline_s = now_s + _KILL_GRACE_S
        elif is_timed_out and now_s >= deadline_s:
            _kill_group(pid, signal.SIGKILL)
            deadline_s = float("inf")
        time.sleep(_POLL_INTERVAL_S)


def die_with_parent() -> None:
    """Popen `preexec_fn`: the child gets SIGKILL when the process that started it dies.

    A child in its own session is not reached by signals to our process group, so without this
    a killed driver leaves vLLM or Vidur running (seen: a 600 s vLLM run reparented to init).
    Grandchildren are covered by the tools themselves (vLLM's workers watch their parent).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own session (start_new_session), so its pgid is its pid: this reaches
    # exactly the tree we started.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def ensure_venv(venv_dir: Path) -> Path:
    """Create `venv_dir` with pip if it does not exist; return its python."""
    python = venv_python(venv_dir)
    if not python.exists():
        log(f"creating venv {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    return python


def pip_install(python: Path, args: Sequence[str], *, timeout_s: float, log_path: Path) -> None:
    """`python -m pip <args>`; raise RuntimeError with the log tail when it fails."""
    log(f"pip {' '.join(args)}  (log: {log_path})")
    result = run_measured([python, "-m", "pip", *args], timeout_s=timeout_s, log_path=log_path)
    if result.returncode != 0 or result.is_timed_out:
        raise RuntimeError(f"pip {' '.join(args)} failed (rc={result.returncode}, "
                           f"timed_out={result.is_timed_out}):\n{tail(log_path)}")
    log(f"pip {args[0]} done in {result.wall_s:.0f} s")


def tail(path: Path, *, num_lines: int = 30) -> str:
    lines = path.read_text(errors="replace").splitlines()
    kept = [line for line in lines if not line.startswith(_PIP_NOISE_PREFIX)]
    return "\n".join(kept[-num_lines:])

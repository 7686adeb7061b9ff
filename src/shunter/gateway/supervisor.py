"""A vLLM server the gateway runs itself (`kind = "vllm"`): started, health-checked, restarted
on crash, stopped with the gateway.

`ProcessSupervisor` owns one child process, whatever it runs: it starts it in its own session
on a fixed port (so the backend's URL never changes), appends its output to a log file, waits
(bounded) for its health URL to answer 200, and from then on a monitor thread restarts it when
it exits (backoff doubling from `backoff_s`, at most `max_restarts` times in a row; a run that
stayed up `stable_s` resets the count). `stop` ends it: SIGTERM to its process group (vLLM's API
server and its engine-core child), SIGKILL after `stop_grace_s`. On Linux the child also dies
with the thread that started it (PR_SET_PDEATHSIG), so a gateway killed outright leaves no
engine behind.

`vllm_launch_command` and `vllm_launch_env` say what runs: ``python -m
vllm.entrypoints.openai.api_server`` on 127.0.0.1 with Shunter's scheduler
(``--scheduler-cls shunter.integrations.vllm.ShunterScheduler``), the policy in
``SHUNTER_POLICY``/``SHUNTER_POLICY_PARAMS``, and this Shunter importable through
``PYTHONPATH`` (the directory holding the installed `shunter` package), so vLLM's own venv
needs no Shunter install.

A thread, not an asyncio task, watches the child: the gateway's event loop starts only after
the backends are up, and a blocked loop must not delay a restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shunter
from shunter.errors import ConfigError

__all__ = ["SCHEDULER_CLS", "ProcessSupervisor", "VllmLaunch", "free_port", "shunter_src_dir",
           "stop_process_group", "vllm_launch_command", "vllm_launch_env"]

log = logging.getLogger(__name__)

SCHEDULER_CLS = "shunter.integrations.vllm.ShunterScheduler"
HEALTH_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 2000


def shunter_src_dir() -> Path:
    """The directory that holds the `shunter` package (a checkout's src/ or site-packages)."""
    return Path(shunter.__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmLaunch:
    """What one `kind = "vllm"` backend runs (built from its `BackendConfig`)."""

    name: str
    python: str
    model_dir: str
    port: int
    served_model_name: str
    policy: str
    policy_params: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    args: tuple[str, ...] = ()
    kv_events: str | None = None  # ipc://PATH: vLLM publishes its KV events there
    kv_events_replay: str | None = None


def kv_events_flags(launch: VllmLaunch) -> list[str]:
    """vLLM's flags to publish KV events at the backend's `kv_events` (and replay) addresses,
    unless its `args` configure KV events themselves."""
    if launch.kv_events is None or "--kv-events-config" in launch.args:
        return []
    config: dict[str, Any] = {"enable_kv_cache_events": True, "publisher": "zmq",
                              "endpoint": launch.kv_events}
    if launch.kv_events_replay is not None:
        config["replay_endpoint"] = launch.kv_events_replay
    flags = ["--kv-events-config", json.dumps(config)]
    if "--enable-prefix-caching" not in launch.args:
        flags.insert(0, "--enable-prefix-caching")
    return flags


def vllm_launch_command(launch: VllmLaunch) -> list[str]:
    """The vLLM OpenAI server's command line, Shunter's scheduler in charge."""
    cmd = [launch.python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
           "--port", str(launch.port), "--model", launch.model_dir,
           "--served-model-name", launch.served_model_name, "--scheduler-cls", SCHEDULER_CLS]
    for flag, value in (("--dtype", launch.dtype), ("--max-model-len", launch.max_model_len),
                        ("--max-num-seqs", launch.max_num_seqs),
                        ("--max-num-batched-tokens", launch.max_num_batched_tokens),
                        ("--block-size", launch.block_size)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + kv_events_flags(launch) + list(launch.args)


def vllm_launch_env(launch: VllmLaunch, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with Shunter importable and the policy set; vLLM kept on loopback and offline
    from usage stats."""
    path = os.pathsep.join(p for p in (str(shunter_src_dir()), base.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "SHUNTER_POLICY": launch.policy,
            "SHUNTER_POLICY_PARAMS": json.dumps(launch.policy_params),
            "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class ProcessSupervisor:
    """Runs `cmd` as a supervised child: see the module docstring."""

    def __init__(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str],
                 health_url: str, log_path: Path, startup_timeout_s: float = 600.0,
                 max_restarts: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 stable_s: float = 60.0, stop_grace_s: float = 20.0) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(env)
        self.health_url = health_url
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.stop_grace_s = stop_grace_s
        self.num_starts = 0
        self.has_given_up = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn the child (returns at once; `wait_ready` waits for its health)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._stopping.is_set():
                return
            self.num_starts += 1
            with open(self.log_path, "ab") as out:
                out.write(f"--- shunter: start #{self.num_starts} of backend {self.name}: "
                          f"{' '.join(self.cmd)}\n".encode())
                out.flush()
                self._proc = subprocess.Popen(
                    self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent)

    def wait_ready(self) -> None:
        """Block until the child answers its health check (ConfigError naming the log if it
        exits first or is not healthy within `startup_timeout_s`), then supervise it."""
        self._wait_healthy()
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._supervise, daemon=True,
                                             name=f"supervise-{self.name}")
            self._monitor.start()

    def stop(self) -> None:
        """Stop supervising and end the child (SIGTERM, then SIGKILL); idempotent."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            stop_process_group(proc, self.stop_grace_s)
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=self.stop_grace_s)

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _wait_healthy(self) -> None:
        deadline_s = time.monotonic() + self.startup_timeout_s
        while not self.is_healthy():
            proc = self._proc
            if self._stopping.is_set():
                raise ConfigError(f"backend {self.name}: stopped before it was healthy")
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise ConfigError(f"backend {self.name}: its process exited with {code} before "
                                  f"{self.health_url} answered; log {self.log_path}:\n"
                                  f"{_log_tail(self.log_path)}")
            if time.monotonic() > deadline_s:
                raise ConfigError(f"backend {self.name}: {self.health_url} did not answer 200 "
                                  f"within {self.startup_timeout_s:g} s; log {self.log_path}:\n"
                                  f"{_log_tail(self.log_path)}")
            time.sleep(HEALTH_POLL_S)

    def _supervise(self) -> None:
        num_failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None, "supervising a process that never started"
            started_s = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            num_failures = 1 if time.monotonic() - started_s >= self.stable_s else num_failures + 1
            if num_failures > self.max_restarts:
                self.has_given_up = True
                log.error("backend %s: exited with %s, %d restarts in a row failed; giving up "
                          "(log %s)", self.name, code, self.max_restarts, self.log_path)
                return
            delay_s = min(self.backoff_s * 2 ** (num_failures - 1), self.max_backoff_s)
            log.warning("backend %s: exited with %s; restart %d of %d in %.1f s (log %s)",
                        self.name, code, num_failures, self.max_restarts, delay_s, self.log_path)
            if self._stopping.wait(delay_s):
                return
            self.start()
            try:
                self._wait_healthy()
                log.warning("backend %s: restarted, healthy again (pid %s)", self.name, self.pid)
            except ConfigError as exc:
                log.warning("%s", str(exc).splitlines()[0])
                with self._lock:
                    restarted = self._proc
                if restarted is not None:
                    stop_process_group(restarted, self.stop_grace_s)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after `grace_s`, to a child started with start_new_session: its
    pgid is its pid, which reaches its own children (vLLM's engine core) and nothing else."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # a grandchild that outlived its parent

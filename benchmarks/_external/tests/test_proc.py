from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._external._proc import run_measured, tail


def test_peak_rss_is_of_this_child_tree(tmp_path: Path) -> None:
    grab_64_mib = "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok')"
    result = run_measured([sys.executable, "-c", grab_64_mib], timeout_s=30.0,
                          log_path=tmp_path / "log.txt")
    assert result.returncode == 0 and not result.is_timed_out
    assert result.peak_rss_bytes >= 64 * 2**20
    assert (tmp_path / "log.txt").read_text().strip() == "ok"
    # a later, smaller child must not inherit the earlier peak (RUSAGE_CHILDREN would)
    small = run_measured([sys.executable, "-c", "pass"], timeout_s=30.0)
    assert small.peak_rss_bytes < result.peak_rss_bytes


def test_timeout_kills_the_child(tmp_path: Path) -> None:
    result = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    assert result.is_timed_out
    assert result.returncode != 0
    assert result.wall_s < 5.0


def test_tail_drops_pip_mirror_noise(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    log.write_text("WARNING: Location 'file:///opt/pypi/simple/x/' is ignored\nERROR: real\n")
    assert tail(log) == "ERROR: real"


def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    # parent starts a sleeping grandchild through run_measured's preexec hook, prints its pid and
    # exits abruptly (os._exit skips every cleanup): the kernel must kill the orphan.
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "from benchmarks._external._proc import die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,\n"
        "                     start_new_session=True, preexec_fn=die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n")
    repo_root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "PYTHONPATH": repo_root}, check=True)
    orphan_pid = int(out.stdout.strip())
    deadline_s = time.monotonic() + 5.0
    while time.monotonic() < deadline_s:
        try:
            with open(f"/proc/{orphan_pid}/stat") as f:
                state = f.read().split()[2]
        except FileNotFoundError:
            return
        if state == "Z":  # killed, waiting for init to reap it
            return
        time.sleep(0.05)
    os.kill(orphan_pid, 9)
    raise AssertionError("child outlived its parent")

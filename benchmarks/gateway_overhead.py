"""The gateway's added latency and sustained rate, side by side with the Rust `vllm-router`.

    python benchmarks/gateway_overhead.py [--rates 100,500,1000] [--duration-s 4] [--burst 2000]
        [--burst-runs 5]
        [--routers shunter:cost,shunter:round_robin,vllm-router:round_robin,vllm-router:cache_aware]
        [--json results/gateway_overhead.json]

Setup, all on 127.0.0.1 of this machine, in one run: two fake OpenAI backends
(`shunter.gateway.fake_server`, raw asyncio + uvloop, answering within the request's callback)
in one process; the router under test in its own process; the load generator (aiohttp + uvloop)
in this one. "direct" is the load generator talking to the backends itself (alternating); a
router's added latency is its median (p99) minus direct's median (p99) at the same rate.

- Non-streaming completions at fixed rates (evenly spaced, open loop), each for `duration_s`
  after a 1 s warm-up; prompts share one of 8 prefixes (so cache-aware policies have work to do).
  One token each, so that the backend answers at once (a whole answer of n tokens takes the
  n - 1 token delays its stream would): what is timed is the router.
  CPU: the router process's user+system time over the run, in % of one core.
- Burst: `burst` streaming completions (16 tokens, 5 ms apart at the backend) started at once;
  the penalty is the routed median (p99) end-to-end latency minus direct's; errors are counted.
  CPU: the router process's user+system seconds over the burst. The burst runs `burst_runs`
  times, each from a new client that first sends 200 (so 200 connections are open and the
  rest are opened by the burst); each figure is the median over the runs, and the added p50
  of each run is listed. A single run is a coin toss on 2 cores: the load generator, the
  backends and the router share them, and a burst settles into one of two regimes (the router
  relays each event as it comes and takes requests in slowly, so streams finish in arrival
  order; or it takes them all in first and every stream finishes near the end), whose
  medians differ by up to 2x.

vllm-router comes from PyPI into its own venv `.bench/vllm-router-venv` (installed on first use).
Shunter runs `shunter.gateway` with its `cost` router (or any other) over `RemoteEngineClient`s,
with per-backend concurrency set above the burst so that only routing, not admission, is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shunter.gateway.supervisor import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
ROUTER_VENV = ROOT / ".bench" / "vllm-router-venv"
VLLM_ROUTER_SPEC = "vllm-router==0.1.17"
MODEL = "fake-model"
NUM_PREFIXES = 8
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL
REQUEST_TIMEOUT_S = 30.0
BURST_TOKENS = 16
BURST_TOKEN_DELAY_S = 0.005


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _body(i: int, stream: bool) -> bytes:
    prefix = f"System prompt {i % NUM_PREFIXES}: you are a careful assistant. " * 6
    body = {"model": MODEL, "prompt": f"{prefix}Question {i}: what comes next?",
            "max_tokens": BURST_TOKENS if stream else 1, "stream": stream}
    return json.dumps(body).encode()


# ---- child processes -----------------------------------------------------------------------

def _run_backends(ports: list[int]) -> None:
    import uvloop

    from shunter.gateway.fake_server import FakeHttpBackend

    async def main() -> None:
        backends = [FakeHttpBackend(model_name=MODEL, token_delay_s=BURST_TOKEN_DELAY_S)
                    for _ in ports]
        for backend, port in zip(backends, ports, strict=True):
            await backend.start(port=port)
        await asyncio.Event().wait()
    uvloop.run(main())


def _run_shunter(port: int, router: str, backend_ports: list[int], burst: int) -> None:
    from shunter.gateway.app import AppConfig
    from shunter.gateway.factory import BackendSlot, GatewayParts, build_app
    from shunter.gateway.remote import RemoteConfig, RemoteEngineClient
    from shunter.gateway.server import serve

    slots = [BackendSlot(name=f"b{i}", max_concurrency=burst + 1, client=RemoteEngineClient(
        RemoteConfig(url=f"http://127.0.0.1:{p}"))) for i, p in enumerate(backend_ports)]
    params = {"seed": 0} if router in ("cost", "random", "power_of_two") else {}
    app = build_app(GatewayParts(app=AppConfig(model_names=(MODEL,)), router=router,
                                 router_params=params), slots)
    serve(app, "127.0.0.1", port)


def _ensure_vllm_router() -> Path:
    binary = ROUTER_VENV / "bin" / "vllm-router"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ROUTER_VENV)], check=True)
        subprocess.run([str(ROUTER_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", VLLM_ROUTER_SPEC], check=True, timeout=900)
    return binary


def _start_router(kind: str, policy: str, port: int, backend_ports: list[int],
                  burst: int) -> subprocess.Popen[bytes]:
    urls = [f"http://127.0.0.1:{p}" for p in backend_ports]
    if kind == "vllm-router":
        cmd = [str(_ensure_vllm_router()), "--host", "127.0.0.1", "--port", str(port),
               "--policy", policy, "--log-level", "error", "--worker-urls", *urls]
    elif kind == "shunter":
        cmd = [sys.executable, __file__, "_shunter", str(port), policy,
               ",".join(map(str, backend_ports)), str(burst)]
    else:
        raise ValueError(f"unknown router kind {kind!r}; valid: shunter, vllm-router")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load generation -----------------------------------------------------------------------

async def _one(session: Any, url: str, body: bytes, stream: bool) -> float | None:
    start = time.perf_counter()
    try:
        async with session.post(url, data=body,
                                headers={"content-type": "application/json"}) as response:
            if response.status != 200:
                await response.read()
                return None
            if stream:
                saw_done = False
                async for line in response.content:
                    saw_done = saw_done or line.startswith(b"data: [DONE]")
                if not saw_done:
                    return None
            else:
                json.loads(await response.read())
    except Exception:  # noqa: BLE001 - any failure is an error row, counted
        return None
    return time.perf_counter() - start


async def _at_rate(session: Any, urls: list[str], rate: float, duration_s: float,
                   offset: int) -> list[float | None]:
    loop = asyncio.get_running_loop()
    num = int(rate * duration_s)
    start = loop.time()
    tasks = []
    for i in range(num):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(_one(session, urls[i % len(urls)],
                                           _body(offset + i, False), False)))
    return await asyncio.wait_for(asyncio.gather(*tasks), duration_s + REQUEST_TIMEOUT_S)


async def _burst(session: Any, urls: list[str], num: int) -> tuple[list[float | None], float]:
    start = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(
        _one(session, urls[i % len(urls)], _body(i, True), True) for i in range(num))),
        REQUEST_TIMEOUT_S * 2)
    return list(results), time.perf_counter() - start


def _summary(latencies: list[float | None]) -> dict[str, float]:
    ok = sorted(x for x in latencies if x is not None)
    if not ok:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "errors": len(latencies)}
    return {"p50_ms": 1e3 * statistics.median(ok), "p99_ms": 1e3 * ok[int(0.99 * (len(ok) - 1))],
            "errors": len(latencies) - len(ok)}


def _burst_row(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The median over burst runs of each figure (errors: their total), and the runs."""
    row: dict[str, Any] = {k: statistics.median(r[k] for r in runs)
                           for k in runs[0] if k != "errors"}
    row["errors"] = sum(int(r["errors"]) for r in runs)
    row["runs"] = runs
    return row


async def _suite(urls: list[str], rates: list[float], duration_s: float, burst: int,
                 burst_runs: int, pid: int | None) -> dict[str, Any]:
    import aiohttp

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S * 2))
    out: dict[str, Any] = {"rates": {}}
    async with session() as client:
        for rate in rates:
            await _at_rate(client, urls, rate, 1.0, 10_000_000)  # warm-up: pools, caches
            cpu0 = _cpu_s(pid) if pid else 0.0
            wall0 = time.perf_counter()
            row = _summary(await _at_rate(client, urls, rate, duration_s, 0))
            if pid:
                row["cpu_pct"] = 100 * (_cpu_s(pid) - cpu0) / (time.perf_counter() - wall0)
            out["rates"][str(rate)] = row
    runs = []
    for _ in range(burst_runs if burst else 0):
        # each run as the first: a new client, 200 connections warmed, the rest opened cold
        async with session() as client:
            await _burst(client, urls, min(burst, 200))
            cpu0 = _cpu_s(pid) if pid else 0.0
            results, wall_s = await _burst(client, urls, burst)
            runs.append({**_summary(results), "wall_s": wall_s})
            if pid:
                runs[-1]["cpu_s"] = _cpu_s(pid) - cpu0
    if runs:
        out["burst"] = _burst_row(runs)
    return out


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None) -> None:
    import urllib.request
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            body = json.dumps({"model": MODEL, "prompt": "ready?", "max_tokens": 1}).encode()
            req = urllib.request.Request(url, data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {START_TIMEOUT_S} s")


# ---- report --------------------------------------------------------------------------------

def _print_table(results: dict[str, Any], rates: list[float]) -> None:
    direct = results["direct"]
    print("\nnon-streaming completions, fixed rate (added = routed - direct)")
    print(f"{'router':34} {'req/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
          f"{'cpu %':>6} {'errors':>6}")
    for name, res in results.items():
        for rate in rates:
            row, base = res["rates"][str(rate)], direct["rates"][str(rate)]
            add50 = row["p50_ms"] - base["p50_ms"] if name != "direct" else 0.0
            add99 = row["p99_ms"] - base["p99_ms"] if name != "direct" else 0.0
            cpu = f"{row['cpu_pct']:.0f}" if "cpu_pct" in row else "-"
            print(f"{name:34} {rate:6.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {add50:8.2f} "
                  f"{add99:8.2f} {cpu:>6} {row['errors']:6d}")
    if "burst" in direct:
        print(f"\nburst of concurrent streams ({BURST_TOKENS} tokens, {BURST_TOKEN_DELAY_S * 1e3:.0f}"
              " ms apart at the backend; penalty = routed - direct; medians over "
              f"{len(direct['burst']['runs'])} runs)")
        print(f"{'router':34} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
              f"{'wall s':>7} {'cpu s':>6} {'errors':>6}")
        base = direct["burst"]
        for name, res in results.items():
            b = res["burst"]
            cpu = f"{b['cpu_s']:.2f}" if "cpu_s" in b else "-"
            print(f"{name:34} {b['p50_ms']:8.1f} {b['p99_ms']:8.1f} "
                  f"{b['p50_ms'] - base['p50_ms']:8.1f} {b['p99_ms'] - base['p99_ms']:8.1f} "
                  f"{b['wall_s']:7.2f} {cpu:>6} {b['errors']:6d}")
        for name, res in results.items():
            if name != "direct":
                added = ", ".join(f"{r['p50_ms'] - base['p50_ms']:.0f}"
                                  for r in res["burst"]["runs"])
                print(f"  {name}: added p50 of each run (ms): {added}")
    _print_ratios(results, rates)


def _print_ratios(results: dict[str, Any], rates: list[float]) -> None:
    shunter = [n for n in results if n.startswith("shunter:")]
    others = [n for n in results if n.startswith("vllm-router:")]
    if not shunter or not others:
        return
    print("\nratios (Shunter added latency / vllm-router added latency; < 1: Shunter adds less)")
    direct = results["direct"]
    for s in shunter:
        for o in others:
            parts = []
            for rate in rates:
                key = str(rate)
                add_s = results[s]["rates"][key]["p50_ms"] - direct["rates"][key]["p50_ms"]
                add_o = results[o]["rates"][key]["p50_ms"] - direct["rates"][key]["p50_ms"]
                parts.append(f"{rate:.0f}/s: {add_s / add_o:.2f}" if add_o > 0 else
                             f"{rate:.0f}/s: n/a")
            if "burst" in direct:
                pen_s = results[s]["burst"]["p50_ms"] - direct["burst"]["p50_ms"]
                pen_o = results[o]["burst"]["p50_ms"] - direct["burst"]["p50_ms"]
                parts.append(f"burst p50: {pen_s / pen_o:.2f}" if pen_o > 0 else "burst: n/a")
                pen_s = results[s]["burst"]["p99_ms"] - direct["burst"]["p99_ms"]
                pen_o = results[o]["burst"]["p99_ms"] - direct["burst"]["p99_ms"]
                parts.append(f"burst p99: {pen_s / pen_o:.2f}" if pen_o > 0 else "p99: n/a")
            print(f"  {s} vs {o}: " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,500,1000")
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--burst", type=int, default=2000,
                        help="concurrent streams in the burst, 0 for none (default: 2000)")
    parser.add_argument("--burst-runs", type=int, default=5,
                        help="bursts per router; the figures are their medians (default: 5)")
    parser.add_argument("--routers", default="shunter:cost,shunter:round_robin,"
                                             "vllm-router:round_robin,vllm-router:cache_aware")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    if args.burst < 0 or args.burst_runs < 1:
        parser.error(f"--burst must be >= 0 and --burst-runs >= 1, got {args.burst} and "
                     f"{args.burst_runs}")
    import uvloop
    backend_ports = [_free_port(), _free_port()]
    backends = subprocess.Popen([sys.executable, __file__, "_backends",
                                 ",".join(map(str, backend_ports))], start_new_session=True)
    results: dict[str, Any] = {}
    try:
        urls = [f"http://127.0.0.1:{p}/v1/completions" for p in backend_ports]
        for url in urls:
            _wait_ready(url, backends)
        results["direct"] = uvloop.run(_suite(urls, rates, args.duration_s, args.burst,
                                                  args.burst_runs, None))
        for spec in args.routers.split(","):
            kind, _, policy = spec.partition(":")
            port = _free_port()
            proc = _start_router(kind, policy, port, backend_ports, args.burst)
            try:
                url = f"http://127.0.0.1:{port}/v1/completions"
                _wait_ready(url, proc)
                results[spec] = uvloop.run(_suite([url], rates, args.duration_s, args.burst,
                                                  args.burst_runs, proc.pid))
            finally:
                stop_process_group(proc, STOP_GRACE_S)
            print(f"done: {spec}", file=sys.stderr, flush=True)
    finally:
        stop_process_group(backends, STOP_GRACE_S)
    _print_table(results, rates)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_backends":
        _run_backends([int(p) for p in sys.argv[2].split(",")])
    elif len(sys.argv) > 1 and sys.argv[1] == "_shunter":
        _run_shunter(int(sys.argv[2]), sys.argv[3], [int(p) for p in sys.argv[4].split(",")],
                     int(sys.argv[5]))
    else:
        sys.exit(main())

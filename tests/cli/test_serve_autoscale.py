"""`shunter serve` with an [autoscale] table scales its in-process engine replicas live: a burst
brings a second SmolLM2-135M replica up (it loads the model: its cold start), and once the
burst is over the autoscaler drains one and removes it; every request is answered (slow: the
real server, started and stopped here)."""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.cli.test_serve_policies import serving

openai = pytest.importorskip("openai")

CONFIG = """
[[backends]]
name = "engine"
kind = "engine"

[autoscale]
min_replicas = 1
max_replicas = 2
interval_s = 0.5
scale_up_load = 0.1
scale_down_load = 0.02
scale_down_cooldown_s = 1.0
"""
NUM_REQUESTS = 16
PROMPT = " ".join(f"word{i}" for i in range(200))  # a few hundred tokens: KV blocks held


def events(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in
            re.finditer(r'shunter_autoscale_events_total\{event="(\w+)"\} (\S+)', text)}


def wait_for(url: str, event: str, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = events(url)
        if seen.get(event):
            return seen
        time.sleep(0.25)
    pytest.fail(f"no {event} event within {timeout_s} s: {events(url)}")


@pytest.mark.slow
def test_serve_scales_engine_replicas_up_under_a_burst_and_down_after(tmp_path: Path) -> None:
    config = tmp_path / "autoscale.toml"
    config.write_text(CONFIG)
    with serving("--config", str(config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=300, max_retries=0)

        def ask(i: int) -> str | None:
            answer = client.completions.create(model="smollm2-135m", prompt=f"{i} {PROMPT}",
                                               max_tokens=24, temperature=0,
                                               extra_body={"ignore_eos": True})
            return answer.choices[0].finish_reason

        t0 = time.monotonic()
        with ThreadPoolExecutor(NUM_REQUESTS) as pool:
            answers = pool.map(ask, range(NUM_REQUESTS))
            up = wait_for(url, "ready", 120.0)  # asked for, loaded, serving: during the burst
            print(f"ready after {time.monotonic() - t0:.1f} s")
            reasons = list(answers)
            print(f"burst done after {time.monotonic() - t0:.1f} s")
        assert reasons == ["length"] * NUM_REQUESTS
        assert up["up"] == 1
        done = wait_for(url, "removed", 60.0)  # idle: one drained and removed
        print(f"removed after {time.monotonic() - t0:.1f} s")
        assert done["down"] == 1 and done.get("failed", 0) == 0

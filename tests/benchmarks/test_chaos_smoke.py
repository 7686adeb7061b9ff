"""The chaos benchmark, small: 200 requests under the whole fault mix and every hostile client
against a real `shunter serve` on 127.0.0.1; nothing lost, duplicated, wrong or hung, and the
idle gateway holds no more than it did before. Bounded: about 20 s."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")
pytest.importorskip("uvloop")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="samples the gateway through /proc")

from benchmarks import chaos  # noqa: E402


@pytest.mark.slow
def test_chaos_benchmark_loses_nothing_under_faults(tmp_path):
    out = tmp_path / "chaos.json"
    code = chaos.main(["--requests", "200", "--rate", "100", "--fault-period-s", "0.5",
                       "--hostile-period-s", "0.3", "--max-duration-s", "30",
                       "--json", str(out)])
    res = json.loads(out.read_text())
    assert code == 0, res["problems"]
    outcomes = res["outcomes"]
    assert res["sent"] == res["done"] == 200
    assert outcomes["lost"] == outcomes["duplicated"] == outcomes["wrong"] \
        == outcomes["hung"] == 0
    assert outcomes["correct"] + outcomes["error_status"] + outcomes["error_event"] == 200
    assert sum(res["backends"]["faults"].values()) >= 2  # faults did happen meanwhile
    assert sum(res["hostile"]["started"].values()) >= 5
    assert not res["fd_problems"]


def test_a_stream_is_classified_by_what_it_carries():
    spec = chaos.Spec(0, "chaos 0 request 0: ship", 8, is_chat=False, is_stream=True)
    text, num_prompt = chaos._expected(spec)
    words = [w for w in text.split(" ") if w]
    events = [{"choices": [{"index": 0, "text": f" {w}",
                            "finish_reason": "length" if i == len(words) - 1 else None}]}
              for i, w in enumerate(words)]
    usage = {"choices": [], "usage": {"prompt_tokens": num_prompt, "completion_tokens": 8}}

    def sse(*items: object, done: int = 1) -> bytes:
        return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in items) \
            + b"data: [DONE]\n\n" * done

    assert chaos.classify_stream(sse(*events, usage), spec, False) == ("correct", "")
    assert chaos.classify_stream(sse(*events, usage, done=2), spec, False)[0] == "duplicated"
    assert chaos.classify_stream(sse(*events, events[-1], usage), spec, False)[0] \
        == "duplicated"
    assert chaos.classify_stream(sse(*events, usage, done=0), spec, True)[0] == "lost"
    assert chaos.classify_stream(sse(*events[:3], usage), spec, False)[0] == "lost"
    error = {"error": {"message": "x", "code": "backend_error"}}
    assert chaos.classify_stream(sse(*events[:3], error), spec, False) \
        == ("error_event", "backend_error")
    other = [{**events[0], "choices": [{"index": 0, "text": " zzz", "finish_reason": None}]}]
    assert chaos.classify_stream(sse(*other, *events[1:], usage), spec, False)[0] == "wrong"
    bad_usage = {"choices": [], "usage": {"prompt_tokens": num_prompt, "completion_tokens": 9}}
    assert chaos.classify_stream(sse(*events, bad_usage), spec, False)[0] == "wrong"

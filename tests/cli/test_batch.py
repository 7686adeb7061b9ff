"""`shunter batch`: batch files read line by line (malformed lines named, the rest run),
BatchLLM's order, answers written as they arrive and a killed run resumed without redoing
finished lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shunter.batch import batchllm_order, finished_ids, prefix_groups, read_batch
from shunter.cli import main

MODEL = "fake-model"


def chat_line(custom_id: str, text: str, max_tokens: int = 4, **extra) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": text}],
                                "max_tokens": max_tokens, **extra}})


def write_batch(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


BAD_LINES = {  # line text -> what the error says
    "{not json": "not JSON",
    json.dumps({"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}):
        "custom_id must be a non-empty string",
    json.dumps({"custom_id": "u", "url": "/v1/embeddings", "body": {}}): "url must be one of",
    chat_line("s", "hi", stream=True): "body.stream must be false",
    json.dumps({"custom_id": "k", "url": "/v1/completions", "body": {"prompt": "x"},
                "extra": 1}): "unknown key(s) 'extra'",
    json.dumps({"custom_id": "p", "url": "/v1/completions", "body": {"model": MODEL}}):
        "body.prompt is missing",
}


def test_malformed_lines_are_named_by_number_and_the_rest_is_read(tmp_path):
    texts = [chat_line("a", "first"), *BAD_LINES, "", chat_line("a", "again"),
             chat_line("b", "second")]
    lines, errors = read_batch(write_batch(tmp_path / "b.jsonl", texts))
    assert [line.custom_id for line in lines] == ["a", "b"]
    assert [e.line_no for e in errors] == [*range(2, 2 + len(BAD_LINES)), len(BAD_LINES) + 3]
    for error, expected in zip(errors, [*BAD_LINES.values(), "repeats line 1's"], strict=True):
        assert expected in str(error), (str(error), expected)
    assert str(errors[0]).startswith("line 2: ")


def test_a_missing_model_takes_the_flag_or_is_malformed(tmp_path):
    text = json.dumps({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x"}})
    path = write_batch(tmp_path / "b.jsonl", [text])
    assert "body.model is missing" in str(read_batch(path)[1][0])
    assert read_batch(path, model="m")[0][0].body["model"] == "m"


def test_batchllm_order_keeps_sharers_together_and_starts_decode_heavy_groups(tmp_path):
    shared = "You are a careful assistant. " * 4  # > 64 characters
    texts = [(f"x{i}", shared + f"question {i}", 8) for i in range(3)]
    texts += [(f"y{i}", f"summarize document number {i} " * 10, 4) for i in range(2)]
    texts += [("z", "write a long story", 512)]
    path_lines = [chat_line(cid, text, max_tokens=m) for cid, text, m in texts]
    lines, _ = read_batch(write_batch(tmp_path / "b.jsonl", path_lines))
    interleaved = [lines[i] for i in (0, 3, 1, 5, 4, 2)]
    ordered = [line.custom_id for line in batchllm_order(interleaved)]
    assert ordered[0] == "z"  # decode-heavy first
    xs = [ordered.index(f"x{i}") for i in range(3)]
    assert max(xs) - min(xs) == 2  # the three sharers are adjacent
    assert sorted(ordered) == sorted(cid for cid, _, _ in texts)
    groups = prefix_groups(lines)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 3]
    with pytest.raises(ValueError, match="min_shared_chars"):
        prefix_groups(lines, 0)


def test_a_torn_last_result_is_cut_and_its_request_sent_again(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"custom_id": "a"}) + "\n" + '{"custom_id": "b", "resp')
    assert finished_ids(out) == {"a"}
    assert out.read_text() == json.dumps({"custom_id": "a"}) + "\n"
    out.write_text("hello\n")
    with pytest.raises(ValueError, match="line 1 is not a batch result"):
        finished_ids(out)


def test_batch_runs_reports_malformed_lines_and_resumes_without_resending(tmp_path, capsys):
    texts = [chat_line(f"r{i}", f"request {i}") for i in range(30)]
    texts.insert(7, "{broken")
    texts.append(json.dumps({"custom_id": "bad-model", "url": "/v1/completions",
                             "body": {"model": "no-such-model", "prompt": "x"}}))
    batch = write_batch(tmp_path / "jobs.jsonl", texts)
    from tests.gateway.live import live_gateway
    with live_gateway(1) as stack:
        url, backend = stack.base_url, stack.backends[0]
        assert main(["batch", str(batch), "--url", url, "--quiet"]) == 1  # a malformed line
        err = capsys.readouterr().err
        assert "jobs.jsonl: line 8: not JSON" in err
        out = results(tmp_path / "jobs.results.jsonl")
        assert sorted(r["custom_id"] for r in out) == sorted(f"r{i}" for i in range(30))
        assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in out)
        assert out[0]["response"]["body"]["choices"][0]["message"]["content"]
        errors = results(tmp_path / "jobs.errors.jsonl")
        assert [e.get("line") for e in errors] == [8, None]
        assert errors[1]["custom_id"] == "bad-model"
        assert errors[1]["response"]["status_code"] == 404
        sent = backend.num_requests
        assert main(["batch", str(batch), "--url", url, "--quiet"]) == 1
        assert "32 lines: 31 already done, 0 to send, 1 malformed" in capsys.readouterr().err
        assert backend.num_requests == sent  # nothing sent again
        assert len(results(tmp_path / "jobs.results.jsonl")) == 30
        assert len(results(tmp_path / "jobs.errors.jsonl")) == 2  # not reported twice


def test_an_unreachable_server_leaves_requests_for_the_next_run(tmp_path, capsys):
    batch = write_batch(tmp_path / "jobs.jsonl", [chat_line("a", "x")])
    assert main(["batch", str(batch), "--url", "http://127.0.0.1:9/v1", "--max-retries", "0",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 requests left unfinished after retries" in err and "run the same command" in err
    assert (tmp_path / "jobs.results.jsonl").read_text() == ""


@pytest.mark.slow
def test_ten_thousand_lines_through_the_gateway_killed_halfway_then_resumed(tmp_path):
    from tests.gateway.live import live_gateway
    n = 10_000
    shared = "Answer in one word. " * 5
    texts = [chat_line(f"q{i}", shared + f"item {i}" if i % 2 else f"alone {i}", max_tokens=2)
             for i in range(n)]
    batch = write_batch(tmp_path / "big.jsonl", texts)
    out = tmp_path / "big.results.jsonl"
    with live_gateway(2) as stack:
        cmd = [sys.executable, "-m", "shunter", "batch", str(batch), "--url", stack.base_url,
               "--max-concurrency", "64", "--quiet"]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if out.exists() and out.read_text().count("\n") >= n // 2:
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[0][-2000:]
        os.killpg(first.pid, signal.SIGKILL)  # halfway, mid-write for all it knows
        first.wait(10)
        before = finished_ids(out)
        assert n // 2 <= len(before) < n
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{len(before)} already done, {n - len(before)} to send" in second.stderr
    ids = [r["custom_id"] for r in results(out)]
    assert len(ids) == n and set(ids) == {f"q{i}" for i in range(n)}  # each exactly once


def test_batchllm_warms_each_shared_prefix_up_before_its_group(tmp_path, capsys):
    shared = {g: f"group {g} shares this long instruction. " * 3 for g in "xy"}
    texts = [chat_line(f"{g}{i}", shared[g] + f"item {i}") for g in "xy" for i in range(3)]
    texts += [chat_line("solo", "nothing shared"), chat_line("solo2", "alone too")]
    batch = write_batch(tmp_path / "jobs.jsonl", texts)
    from tests.gateway.live import live_gateway
    with live_gateway(1) as stack:
        backend = stack.backends[0]
        stack.call(lambda: setattr(backend, "bodies", []))
        assert main(["batch", str(batch), "--url", stack.base_url, "--quiet",
                     "--max-concurrency", "2"]) == 0
        bodies = list(backend.bodies)
        assert "2 prefix warm-ups (0 failed)" in capsys.readouterr().err
        stack.call(lambda: setattr(backend, "bodies", []))
        again = write_batch(tmp_path / "again.jsonl", texts)
        assert main(["batch", str(again), "--url", stack.base_url, "--quiet",
                     "--no-warmup"]) == 0
        assert len(backend.bodies) == len(texts)  # no warm-ups asked for: none sent
    out = results(tmp_path / "jobs.results.jsonl")
    assert sorted(r["custom_id"] for r in out) == sorted(json.loads(t)["custom_id"]
                                                         for t in texts)  # no warm-up's answer
    assert len(bodies) == len(texts) + 2
    for g in "xy":
        sent = [b for b in bodies if b["messages"][0]["content"].startswith(shared[g])]
        assert len(sent) == 4 and sent[0]["max_tokens"] == 1  # the warm-up first
        assert all(b["max_tokens"] == 4 for b in sent[1:])


def test_serve_and_replicas_flags_are_checked_before_anything_runs(tmp_path, capsys):
    batch = write_batch(tmp_path / "jobs.jsonl", [chat_line("a", "x")])
    assert main(["batch", str(batch), "--url", "http://127.0.0.1:9/v1", "--replicas", "2"]) == 2
    assert "--replicas is for the gateway --serve starts" in capsys.readouterr().err
    assert main(["batch", str(batch), "--serve", str(tmp_path / "nope.toml")]) == 2
    assert "no such gateway config file" in capsys.readouterr().err
    assert not (tmp_path / "jobs.results.jsonl").exists()


@pytest.mark.slow
def test_serve_runs_the_batch_on_in_process_engines_it_starts_and_stops(tmp_path, capsys):
    pytest.importorskip("torch")
    shared = "You are a terse assistant. Answer with one word only, please. " * 2
    texts = [chat_line(f"q{i}", shared + f"Name colour {i}.", max_tokens=3)
             for i in range(6)]
    texts = [t.replace(MODEL, "smollm2-135m") for t in texts]
    batch = write_batch(tmp_path / "jobs.jsonl", texts)
    assert main(["batch", str(batch), "--serve", "--replicas", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "answered 6, failed 0" in err and "1 prefix warm-ups (0 failed)" in err
    out = results(tmp_path / "jobs.results.jsonl")
    assert all(r["response"]["body"]["usage"]["completion_tokens"] >= 1 for r in out)
    log = (tmp_path / "jobs.serve.log").read_text()
    assert "shunter gateway on http://127.0.0.1:" in log

"""`shunter train-predictor`: trains, prints the held-out tau, writes a model the CLI loads."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from shunter.cli import main
from shunter.workload.rank_training import build_predictor, load_model

TRACES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SHAREGPT = TRACES_DIR / "sharegpt_v3_turn_lengths_mistral_tok.csv"
TAU = re.compile(r"held-out Kendall tau (-?\d+\.\d+)")


def write_trace(tmp_path: Path, num_sessions: int = 100, name: str = "trace.jsonl") -> Path:
    """Two-turn sessions whose output length grows with the prompt (plus seeded noise)."""
    rng = random.Random(0)
    lines = []
    for s in range(num_sessions):
        history = 0
        for _ in range(2):
            prompt = history + rng.randint(20, 2000)
            output = max(1, int(prompt * 0.2 * rng.uniform(0.5, 1.5)))
            lines.append(json.dumps({
                "timestamp": len(lines) * 50, "input_length": prompt, "output_length": output,
                "session_id": f"s{s}", "tenant": "a" if s % 2 else "b"}))
            history = prompt + output
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def train(tmp_path: Path, *extra: str, trace: Path | None = None) -> tuple[int, Path]:
    out = tmp_path / "model.json"
    trace = trace if trace is not None else write_trace(tmp_path)
    rc = main(["train-predictor", str(trace), "--out", str(out), "--quiet", *extra])
    return rc, out


def error_text(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("kind", ["length", "rank"])
def test_trains_a_model_that_loads_and_prints_a_positive_tau(tmp_path, capsys, kind):
    rc, out = train(tmp_path, "--kind", kind)
    assert rc == 0
    text = capsys.readouterr().out
    tau = float(TAU.search(text).group(1))
    assert tau > 0.3
    assert re.search(r"on \d+ requests \(\d+ sessions\)", text)
    assert f"wrote {out}" in text
    assert load_model(out)["kind"] == kind
    predictor = build_predictor("learned", {"model_path": str(out)})
    assert predictor.name == "learned" and predictor.kind == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "trace.jsonl"]


def test_same_seed_writes_the_same_file(tmp_path):
    trace = write_trace(tmp_path)
    assert main(["train-predictor", str(trace), "--kind", "rank", "--seed", "3", "--quiet",
                 "--out", str(tmp_path / "a.json")]) == 0
    assert main(["train-predictor", str(trace), "--kind", "rank", "--seed", "3", "--quiet",
                 "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


@pytest.mark.parametrize(("kind", "policy"), [("length", "sjf"), ("rank", "ltr")])
def test_simulate_runs_with_the_trained_file(tmp_path, capsys, kind, policy):
    trace = write_trace(tmp_path)
    rc, model = train(tmp_path, "--kind", kind, trace=trace)
    assert rc == 0
    assert f"--policy {policy}" in capsys.readouterr().out
    result = tmp_path / "result.json"
    rc = main(["simulate", "--trace", str(trace), "--policy", policy, "--predictor", "learned",
               "--predictor-params", json.dumps({"model_path": str(model)}),
               "--json", str(result), "--quiet"])
    assert rc == 0
    data = json.loads(result.read_text())
    assert data["policy"] == policy and data["num_completed"] == 200


def test_help_says_what_the_file_is_for(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train-predictor", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("sjf", "ltr", "--predictor learned", '{"model_path": "predictor.json"}',
                  "Kendall tau", "--train-fraction"):
        assert words in text


def test_missing_trace_is_a_one_line_error(tmp_path, capsys):
    rc, out = train(tmp_path, trace=tmp_path / "nope.jsonl")
    assert rc == 2
    assert "nope.jsonl: no such file" in error_text(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_as_trace_is_an_error(tmp_path, capsys):
    rc, _ = train(tmp_path, trace=tmp_path)
    assert rc == 2
    assert "is a directory" in error_text(capsys)


def test_too_few_requests_to_split(tmp_path, capsys):
    rc, out = train(tmp_path, trace=write_trace(tmp_path, num_sessions=15))
    assert rc == 2
    text = error_text(capsys)
    assert "30 requests in 15 sessions" in text and "needs at least 20" in text
    assert not out.exists()


def test_num_requests_too_small_to_split(tmp_path, capsys):
    rc, _ = train(tmp_path, "--num-requests", "25")
    assert rc == 2
    assert "needs at least 20" in error_text(capsys)


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2", "nan"])
def test_train_fraction_outside_zero_one(tmp_path, capsys, fraction):
    rc, out = train(tmp_path, "--train-fraction", fraction)
    assert rc == 2
    assert "--train-fraction must be between 0 and 1" in error_text(capsys)
    assert not out.exists()


def test_train_fraction_not_a_number(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train(tmp_path, "--train-fraction", "half")
    assert info.value.code == 2
    assert "expected a number" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing_dir", "directory"])
def test_unwritable_out_is_an_error(tmp_path, capsys, where):
    trace = write_trace(tmp_path)
    out = tmp_path / "no" / "such" / "model.json" if where == "missing_dir" else tmp_path
    rc = main(["train-predictor", str(trace), "--out", str(out), "--quiet"])
    assert rc == 2
    assert f"cannot write {out}" in error_text(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["trace.jsonl"]


def test_failure_keeps_the_old_file_and_leaves_nothing_behind(tmp_path, capsys):
    trace = write_trace(tmp_path)
    trace.write_text(trace.read_text() + '{"timestamp": 1, "input_length": 5}\n')  # bad last line
    out = tmp_path / "model.json"
    out.write_text("old")
    rc = main(["train-predictor", str(trace), "--out", str(out), "--quiet"])
    assert rc == 2
    assert "trace.jsonl:201" in error_text(capsys)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "trace.jsonl"]


@pytest.mark.skipif(not SHAREGPT.is_file(), reason="../shared/traces absent")
def test_real_sharegpt_multi_turn_trace_ranks_well(tmp_path, capsys):
    rc, out = train(tmp_path, "--num-requests", "3000", "--kind", "rank", trace=SHAREGPT)
    assert rc == 0
    tau = float(TAU.search(capsys.readouterr().out).group(1))
    assert tau > 0.2
    assert load_model(out)["kind"] == "rank"

"""Issue 17: one clear line for every user mistake, and results that say what they mean."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.bench.fake import MODEL, fake_endpoint

from shunter.cli import build_parser, main
from shunter.cli.common import fail

SHUNTER = str(Path(sys.executable).parent / "shunter")


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # no traceback, no wrap
    return err.strip()


def dead_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def write_trace(path: Path, prompt_lengths: list[int]) -> Path:
    path.write_text("".join(json.dumps({"timestamp": i * 100, "input_length": n,
                                        "output_length": 4}) + "\n"
                            for i, n in enumerate(prompt_lengths)))
    return path


# ---- a: bench and profile of a URL where nothing listens, or where nothing completes ----------

@pytest.mark.parametrize("argv", [
    ["bench", "{url}", "--num-requests", "5", "--rate", "50"],
    ["bench", "{url}", "--model", "m", "--num-requests", "5", "--rate", "50"],
    ["profile", "{url}"],
    ["profile", "{url}", "--model", "smollm2-135m"],
])
def test_a_dead_url_is_one_line_naming_it(argv, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    url = dead_url()
    assert main([a.format(url=url) for a in argv] + ["--quiet"]) == 2
    assert one_line_error(capsys) == f"error: cannot reach {url}: Connection refused"


def test_a_bench_where_nothing_completed_exits_non_zero_saying_why(capsys) -> None:
    with fake_endpoint(fail_status=500) as (url, _):
        assert main(["bench", url, "--model", MODEL, "--num-requests", "3", "--rate", "100",
                     "--quiet"]) == 2
    assert one_line_error(capsys) == (f"error: none of the 3 requests to {url} (rate=100) "
                                      "completed: 3 x HTTP 500: fake failure")


# ---- b: config errors keep their table names --------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[workload]\nnum_requets = 5\n",
     "s.toml: unknown key 'num_requets' in [workload]; valid: format, num_requests, rate, seed, "
     "trace, zero_tokens"),
    ("[wrkload]\n", "s.toml: unknown table [wrkload]; valid: name, workload, cluster,"),
    ("[cluster]\nreplicas = \"x\"\n", "s.toml [cluster]: replicas must be an int, got 'x'"),
    ("[server]\nport = 1\n", "s.toml: unknown table [server]"),
])
def test_b_config_errors_keep_their_table_names(text, message, tmp_path, monkeypatch,
                                                capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(text)
    assert main(["simulate", "s.toml", "--quiet"]) == 2
    assert one_line_error(capsys).startswith(f"error: {message}")


def test_b_nothing_printed_is_read_as_markup(tmp_path, monkeypatch, capsys) -> None:
    fail("bad [bold]x[/bold] in [cluster]")
    assert capsys.readouterr().err == "error: bad [bold]x[/bold] in [cluster]\n"
    monkeypatch.chdir(tmp_path)
    write_trace(Path("t.jsonl"), [10, 10])
    Path("s.toml").write_text('name = "run [red]1[/red]"\n[workload]\ntrace = "t.jsonl"\n')
    assert main(["simulate", "s.toml", "--quiet"]) == 0
    assert "run [red]1[/red]: 2 requests" in capsys.readouterr().out  # the table's title


# ---- c: output paths are checked before any work ----------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["simulate", "--csv", "{dir}"], "--csv"),
    (["simulate", "--json", "{file}/r.json"], "--json"),
    (["compare", "--policy", "fcfs,sjf", "--json", "{dir}"], "--json"),
    (["sweep", "--rate", "1", "--csv", "{dir}"], "--csv"),
    (["sweep", "--rate", "1", "--plot", "{dir}"], "--plot"),
    (["bench", "{url}", "--json", "{dir}"], "--json"),
    (["bench", "{url}", "--report", "{file}"], "--report"),
    (["profile", "{url}", "--out", "{dir}"], "--out"),
])  # train-predictor checks its --out before it reads the trace (test_train_predictor.py)
def test_c_output_paths_are_checked_before_any_work(argv, flag, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    paths = {"dir": str(tmp_path), "file": str(tmp_path / "file"), "url": dead_url()}
    with pytest.raises(SystemExit) as info:
        main([a.format(**paths) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: cannot write" in err
    assert "Traceback" not in err and "cannot reach" not in err  # before any work


# ---- d: serve on a port that is taken ---------------------------------------------------------

def test_d_serve_on_a_taken_port_fails_before_its_banner(tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([SHUNTER, "serve", "--port", str(port), "--replicas", "1"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""  # no "shunter gateway on http://..." banner
    assert done.stderr == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"


# ---- e and f: rejections by reason; no SLO is n/a, not 0 -------------------------------------

def test_e_rejections_are_grouped_by_reason_with_their_prompt_range(tmp_path, monkeypatch,
                                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_trace(Path("t.jsonl"), [20, 1500, 3000, 2000])
    Path("s.toml").write_text('[workload]\ntrace = "t.jsonl"\n[scheduler]\nmax_model_len = 1024\n')
    assert main(["simulate", "s.toml", "--json", "r.json", "--quiet"]) == 0
    reason = "prompt leaves no room for output within max_model_len=1024"
    assert json.loads(Path("r.json").read_text())["rejections"] == {
        reason: {"num_requests": 3, "min_prompt_tokens": 1500, "max_prompt_tokens": 3000}}
    assert f"3 rejected: {reason} (prompts of 1500-3000 tokens)" in capsys.readouterr().out


def test_f_without_an_slo_attainment_and_goodput_are_null_and_n_a(tmp_path, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_trace(Path("t.jsonl"), [20, 30])
    Path("s.toml").write_text('[workload]\ntrace = "t.jsonl"\n')
    assert main(["simulate", "s.toml", "--json", "r.json", "--quiet"]) == 0
    data = json.loads(Path("r.json").read_text())
    assert data["slo_attainment"] is None and data["goodput_req_s"] is None
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in capsys.readouterr().out.splitlines() if line.count("│") == 3}
    assert rows["slo_attainment"] == rows["goodput_req_s"] == "n/a"
    assert main(["simulate", "s.toml", "--ttft-slo", "10", "--json", "r.json", "--quiet"]) == 0
    assert json.loads(Path("r.json").read_text())["slo_attainment"] == 1.0


# ---- g: --help shows every default and lists what there is to choose from --------------------

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_g_help_shows_every_flags_default() -> None:
    missing = []
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction | argparse._StoreTrueAction):
                continue
            text = formatter._get_help_string(action) or ""
            if "default" not in text and "scenario's" not in text:
                missing.append(f"{name} {action.option_strings[-1]}")
    assert not missing


def test_g_simulate_help_lists_models_gpus_policies_routers_and_predictors(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("llama-3.1-70b", "smollm2-135m", "a100-40gb", "l40s", "noisy_oracle", "vtc",
                 "prefix_affinity"):
        assert name in text
    assert "(default: the scenario's, else least_load)" in text  # not cost: that is serve's

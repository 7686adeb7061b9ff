"""`shunter batch FILE --url URL`: an OpenAI batch file through the gateway or any OpenAI
server, in BatchLLM's prefix-sharing order, resumable (`shunter.batch`); with `--serve`, through
a gateway of in-process engines it starts for the batch and stops after."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shunter.cli.common import console, fail, positive_float, positive_int, progress_bar

__all__ = ["add_batch_parser", "run_batch_command"]

_SHOWN_LINE_ERRORS = 5


def add_batch_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batch", help="run an OpenAI batch file (JSONL) against a server, resumable",
        description="Send every request of an OpenAI Batch API file (one JSON object a line: "
                    "custom_id, method POST, url /v1/chat/completions or /v1/completions, body) "
                    "to an OpenAI-compatible server (Shunter's gateway, vLLM, ...) and append "
                    "each answer to the output file as it arrives. Requests sharing a prompt "
                    "prefix are sent together and decode-heavy groups first (BatchLLM), so each "
                    "shared prefix is computed once while its sharers run. Run the same command "
                    "again after an interruption: custom_ids already answered are skipped. "
                    "Malformed lines go to the error file with their line number; the rest of "
                    "the batch runs. Exit status 0 when every line is answered or failed for "
                    "its own reason (a 4xx), 1 when lines are malformed or left unfinished.")
    p.add_argument("file", type=Path, help="the batch file (JSON Lines)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the server, e.g. http://127.0.0.1:8000/v1 (no default: "
                                     "--url or --serve is required)")
    where.add_argument("--serve", nargs="?", const="", metavar="CONFIG",
                       help="start `shunter serve` on a free local port for the batch (its "
                            "embedded default, in-process SmolLM2 engine replicas; or the "
                            "gateway config CONFIG) and stop it at the end; its log goes to "
                            "FILE's name + .serve.log")
    p.add_argument("--replicas", type=positive_int, metavar="N",
                   help="--serve: in-process engine replicas (default: serve's)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="answers, one JSON line each (default: FILE's name + .results.jsonl)")
    p.add_argument("--errors", type=Path, metavar="FILE",
                   help="malformed lines and failed requests (default: FILE's name + "
                        ".errors.jsonl)")
    p.add_argument("--model", help="body.model for lines that name none (default: such lines "
                                   "are malformed)")
    p.add_argument("--api-key", metavar="KEY", help="sent as a bearer token (default: none)")
    p.add_argument("--max-concurrency", type=positive_int, default=32, metavar="N",
                   help="requests in flight at once")
    p.add_argument("--order", choices=("batchllm", "file"), default="batchllm",
                   help="batchllm: prefix groups together, decode-heavy groups first; file: "
                        "the file's order")
    p.add_argument("--min-shared-chars", type=positive_int, default=64, metavar="N",
                   help="batchllm: prompts sharing at least this many leading characters form "
                        "a group")
    p.add_argument("--no-warmup", action="store_true",
                   help="batchllm: send a group's requests at once, without first computing "
                        "their shared prefix with a one-token warm-up (its answer is not a "
                        "result)")
    p.add_argument("--timeout-s", type=positive_float, default=600.0, metavar="S",
                   help="give up on one try of a request after this long")
    p.add_argument("--max-retries", type=int, default=5, metavar="N",
                   help="tries after a connection error, timeout, 429 or 5xx before a request "
                        "is left for the next run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_batch_command)


def _sibling(path: Path, suffix: str) -> Path:
    name = path.name.removesuffix(".jsonl").removesuffix(".json")
    return path.with_name(name + suffix)


def _reported(errors_path: Path) -> tuple[set[str], set[int]]:
    """(custom_ids that failed for their own reason, input line numbers reported malformed)
    in an existing error file; its torn last line, if any, is cut (`finished_ids`)."""
    from shunter.batch import read_records
    failed: set[str] = set()
    lines: set[int] = set()
    for obj in read_records(errors_path):  # validated, a torn tail repaired
        if obj.get("line") is not None:
            lines.add(int(obj["line"]))
        elif obj.get("custom_id") is not None:
            failed.add(obj["custom_id"])
    return failed, lines


SERVE_START_TIMEOUT_S = 600.0  # engines load their model


@contextlib.contextmanager
def _served(config: str, replicas: int | None, log_path: Path) -> Iterator[str]:
    """A `shunter serve` subprocess on a free local port for the duration: its /v1 URL
    (ConfigError with its log's tail if it does not start)."""
    from shunter.errors import ConfigError
    from shunter.gateway.supervisor import free_port
    port = free_port()
    cmd = [sys.executable, "-m", "shunter", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--config", config] if config else []
    cmd += ["--replicas", str(replicas)] if replicas else []
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health",
                                                                      timeout=2) as r:
                if r.status == 200:
                    break
            time.sleep(0.3)
        else:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise ConfigError(f"shunter serve did not start (log {log_path}): {tail}")
        yield url + "/v1"
    finally:
        proc.send_signal(signal.SIGINT)  # drains, then stops its engines
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_batch_command(args: argparse.Namespace) -> int:
    from shunter.batch import batchllm_groups, finished_ids, read_batch
    try:
        from shunter.batch.runner import (
            BatchCounts,
            BatchTarget,
            open_append,
            run_batch,
            write_line_errors,
        )
    except ImportError as exc:
        return fail(f"shunter batch needs the gateway extra (pip install 'shunter[gateway]'): "
                    f"{exc}")
    if args.max_retries < 0:
        return fail(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.replicas and args.serve is None:
        return fail("--replicas is for the gateway --serve starts; --url names a server "
                    "that is already running")
    if args.serve and not Path(args.serve).is_file():
        return fail(f"--serve {args.serve}: no such gateway config file")
    if args.url is not None:
        BatchTarget(url=args.url)  # a bad URL is refused before anything is read or written
    out_path = args.out or _sibling(args.file, ".results.jsonl")
    errors_path = args.errors or _sibling(args.file, ".errors.jsonl")
    if out_path.resolve() in (args.file.resolve(), errors_path.resolve()):
        return fail(f"--out {out_path} must differ from the batch file and the error file")
    lines, line_errors = read_batch(args.file, args.model)
    done = finished_ids(out_path)
    failed_before, reported = _reported(errors_path)
    for error in line_errors[:_SHOWN_LINE_ERRORS]:
        console.print(f"{args.file}: {error}", style="yellow", highlight=False, soft_wrap=True)
    if len(line_errors) > _SHOWN_LINE_ERRORS:
        console.print(f"... and {len(line_errors) - _SHOWN_LINE_ERRORS} more malformed lines "
                      f"(all in {errors_path})", style="yellow", highlight=False)
    skip = done | failed_before
    todo = [line for line in lines if line.custom_id not in skip]
    warm: list[list[Any]] = []
    if args.order == "batchllm":
        groups = batchllm_groups(todo, min_shared_chars=args.min_shared_chars)
        todo = [line for group in groups for line in group]
        warm = [] if args.no_warmup else [group for group in groups if len(group) > 1]
    skipped = len(lines) - len(todo)
    console.print(f"{len(lines) + len(line_errors)} lines: {skipped} already done, {len(todo)} "
                  f"to send, {len(line_errors)} malformed", highlight=False)
    counts = BatchCounts()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_append(out_path))
        errors_out = stack.enter_context(open_append(errors_path))
        write_line_errors([e for e in line_errors if e.line_no not in reported], errors_out)
        url = args.url
        if args.serve is not None and todo:
            console.print("starting shunter serve for the batch ...", highlight=False)
            url = stack.enter_context(_served(args.serve, args.replicas,
                                              _sibling(args.file, ".serve.log")))
        if todo:
            target = BatchTarget(url=url, api_key=args.api_key,
                                 max_concurrency=args.max_concurrency, timeout_s=args.timeout_s,
                                 max_retries=args.max_retries)
            with progress_bar(len(todo), f"batch -> {url}", quiet=args.quiet) as on_progress:
                counts = asyncio.run(run_batch(todo, target, out, errors_out, on_progress,
                                               warm_groups=warm))
    warmups = f", {counts.num_warmups} prefix warm-ups ({counts.num_warmups_failed} failed)" \
        if counts.num_warmups else ""
    console.print(f"answered {counts.answered}, failed {counts.failed} (a 4xx, in "
                  f"{errors_path}), unfinished {counts.unfinished}{warmups}; answers in "
                  f"{out_path}", highlight=False, soft_wrap=True)
    if counts.unfinished:
        fail(f"{counts.unfinished} requests left unfinished after retries (last: "
             f"{counts.last_problem}); run the same command again to resume")
        return 1
    return 1 if line_errors else 0

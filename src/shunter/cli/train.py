"""`shunter train-predictor TRACE`: fit the learned output-length predictor on a trace and save it.

    shunter train-predictor TRACE [--trace-format FMT] [--num-requests N] [--kind length|rank]
                            [--train-fraction F] [--seed N] [--out FILE] [--quiet]

The trace's sessions are split into a training part and a held-out part (a conversation's turns
stay on one side, `split_by_session`); the model is fitted on the first (`fit_length_model` or
`fit_rank_model`) and judged on the second by Kendall's tau between its prediction and the true
output length. The file is what `--predictor learned --predictor-params '{"model_path": FILE}'`
reads in `simulate`, `compare` and `serve`.

The output is written to a temporary file beside FILE and renamed over it, so a failure never
leaves a half-written model (nor a stale temporary file).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shunter.cli.common import positive_int, progress_bar, stdout_console
from shunter.core.predict import SessionTracker
from shunter.core.predict.learned import LearnedPredictor
from shunter.core.types import RequestSpec
from shunter.errors import ConfigError
from shunter.workload.loaders import TRACE_FORMATS, load_workload
from shunter.workload.rank_training import (
    fit_length_model,
    fit_rank_model,
    kendall_tau,
    save_model,
    split_by_session,
)

__all__ = ["add_train_parser", "held_out_tau", "run_train"]

MIN_SPLIT_REQUESTS = 20  # fewer in either part and the fit or its tau says nothing
MAX_EVAL_REQUESTS = 4000  # kendall_tau is O(n^2)
DEFAULT_TRAIN_FRACTION = 0.6
POLICY_OF_KIND = {"length": "sjf", "rank": "ltr"}
_NUM_STAGES = 3  # load, fit, evaluate

_DESCRIPTION = (
    "Train the `learned` output-length predictor on a trace and save it as a JSON model file. "
    "The sjf and ltr policies order requests by a prediction of their output length; this "
    "fits one from what a request tells at arrival (prompt length, turn index and prompt "
    "growth within its session, tenant). --kind length fits a ridge regression of the output "
    "length (for --policy sjf); --kind rank fits a pairwise ranker whose scores only order "
    "requests (for --policy ltr). Sessions are split into a training part (--train-fraction) "
    "and a held-out part; the command prints the held-out Kendall tau between prediction and "
    "true output length (1 = perfect order, 0 = no better than chance).")
_EPILOG = (
    "Use the file: shunter simulate --trace T --policy sjf --predictor learned "
    "--predictor-params '{\"model_path\": \"predictor.json\"}' (the same flags work for "
    "`compare` and `serve`; use --policy ltr with a --kind rank model). Example: shunter "
    "train-predictor sharegpt.csv --num-requests 20000 --kind rank --out ranker.json")


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `shunter train-predictor` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "train-predictor", help="fit the learned output-length predictor (sjf/ltr) on a trace",
        description=_DESCRIPTION, epilog=_EPILOG)
    p.add_argument("trace", metavar="TRACE", help="workload trace file to learn from")
    p.add_argument("--trace-format", choices=sorted(TRACE_FORMATS),
                   help="format of TRACE (default: detected from the file)")
    p.add_argument("--num-requests", type=positive_int, metavar="N",
                   help="use the first N requests (length files: sample N with replacement) "
                        "(default: all)")
    p.add_argument("--zero-tokens", choices=("error", "clamp"), default="error",
                   help="rows with 0 prompt or output tokens: reject the file (default) or load "
                        "them as 1 token")
    p.add_argument("--kind", choices=sorted(POLICY_OF_KIND), default="length",
                   help="length: predicted output tokens, for sjf (default); rank: a ranking "
                        "score, for ltr")
    p.add_argument("--train-fraction", type=_fraction, default=DEFAULT_TRAIN_FRACTION,
                   metavar="F", help="share of sessions to train on, in (0, 1); the rest is "
                                     f"held out for the tau (default {DEFAULT_TRAIN_FRACTION})")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the split, sampling and the ranker's pairs (default 0)")
    p.add_argument("--out", default="predictor.json", metavar="FILE",
                   help="model file to write (default predictor.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)
    return p


def held_out_tau(model: LearnedPredictor, specs: Sequence[RequestSpec]) -> float:
    """Kendall tau between the model's predictions and the true output lengths of `specs`.

    Features are tracked in arrival order, as at serving time; `specs` must hold whole
    sessions in order (as `split_by_session` leaves them)."""
    tracker = SessionTracker()
    predictions = [model.predict(tracker.features(s)) for s in specs]
    return kendall_tau(predictions, [s.num_output_tokens for s in specs])


def _num_sessions(specs: Sequence[RequestSpec]) -> int:
    return len({s.session_id if s.session_id is not None else s.request_id for s in specs})


def _split(specs: Sequence[RequestSpec], fraction: float, seed: int, trace: str,
           ) -> tuple[list[RequestSpec], list[RequestSpec]]:
    train, held_out = split_by_session(specs, fraction, seed)
    if min(len(train), len(held_out)) < MIN_SPLIT_REQUESTS:
        raise ConfigError(
            f"{trace}: {len(specs)} requests in {_num_sessions(specs)} sessions split into "
            f"{len(train)} to train on and {len(held_out)} held out; each part needs at least "
            f"{MIN_SPLIT_REQUESTS} (give a longer trace or more --num-requests, or change "
            "--train-fraction)")
    return train, held_out


@contextmanager
def _reserved(out: Path) -> Iterator[Path]:
    """A fresh temporary file beside `out` (proving it writable now), removed on exit."""
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.touch(exist_ok=False)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _fit(kind: str, train: Sequence[RequestSpec], seed: int) -> LearnedPredictor:
    if kind == "rank":
        return fit_rank_model(train, seed=seed)
    return fit_length_model(train)


def run_train(args: argparse.Namespace) -> int:
    fraction = args.train_fraction
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--train-fraction must be between 0 and 1 (exclusive), got {fraction}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    with _reserved(out) as tmp, progress_bar(_NUM_STAGES, "training predictor",
                                             quiet=args.quiet) as on_progress:
        specs = load_workload(args.trace, args.trace_format, num_requests=args.num_requests,
                              seed=args.seed, zero_tokens=args.zero_tokens)
        train, held_out = _split(specs, fraction, args.seed, args.trace)
        on_progress(1)
        model = _fit(args.kind, train, args.seed)
        on_progress(2)
        sample = held_out[:MAX_EVAL_REQUESTS]
        tau = held_out_tau(model, sample)
        on_progress(3)
        try:
            save_model(model, tmp)
            tmp.replace(out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    policy = POLICY_OF_KIND[args.kind]
    console = stdout_console()

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    say(f"trained a {args.kind} model (for --policy {policy}) on {len(train)} requests "
        f"({_num_sessions(train)} sessions) of {args.trace}")
    say(f"held out {len(held_out)} requests ({_num_sessions(held_out)} sessions)")
    say(f"held-out Kendall tau {tau:.3f} (prediction vs true output tokens, "
        f"{len(sample)} requests)")
    say(f"wrote {out}")
    params = json.dumps({"model_path": str(out)})
    say(f"use it: shunter simulate --policy {policy} --predictor learned "
        f"--predictor-params '{params}'")
    return 0

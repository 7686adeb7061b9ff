"""SJF / learning-to-rank reproduction: mean latency of length-aware orders against FCFS.

Paper (Fu et al., "Efficient LLM Scheduling by Learning to Rank", NeurIPS'24): ranking
requests by a learned predictor of output length approximates shortest-job-first and gives
"2.8x lower mean latency in chatbot serving" than FCFS (vLLM, Llama-3 on A100s, ShareGPT and
LMSYS-Chat prompts, at high load).

Our setup, and where it differs:
- The simulator (roofline cost model, Llama-3.1-8B on one A100-80GB), default vLLM limits.
- Requests: multi-turn ShareGPT (../shared/traces, per-turn token counts, Mistral tokenizer);
  sessions are split 60/40 into a training part (fits the learned predictors) and a held-out
  part that is served, with seeded Poisson arrivals at each rate (turns arrive independently).
- Predictors: the oracle (true length), a noisy oracle degraded to Kendall tau 0.5, and our
  learned models. The paper's ranker is an OPT-125M fine-tuned on prompt *text* with a
  listwise loss; the traces hold token counts only, so ours are linear models over what the
  counts reveal at arrival (prompt length, turn index, prompt growth since the session's
  previous turn), fitted pointwise (`sjf`, predicted tokens) and pairwise (`ltr`, rank score).
  Their Kendall tau on the served part is printed.
- Starvation prevention: both policies use their default aging (see their docstrings), which
  the paper replaces by a starvation counter; it costs a little mean latency.
Ratios are FCFS mean E2E latency over each policy's, in the same run.

Run: python benchmarks/repro_sjf_ltr.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the fits are tiny; threads only contend

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shunter.core.predict import NoisyOraclePredictor, SessionTracker  # noqa: E402
from shunter.metrics import summarize  # noqa: E402
from shunter.sim.config import SimConfig  # noqa: E402
from shunter.sim.runner import simulate  # noqa: E402
from shunter.workload import ZeroLengthWarning, load_workload, retime  # noqa: E402
from shunter.workload.rank_training import (  # noqa: E402
    fit_length_model,
    fit_rank_model,
    kendall_tau,
    split_by_session,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
TRACE = "sharegpt_v3_turn_lengths_mistral_tok.csv"
MODEL, GPU = "llama-3.1-8b", "a100-80gb"
PAPER_CLAIM = "2.8x (mean, chatbot)"
NOISY_TAU = 0.5
TRAIN_FRACTION = 0.6
MAX_TAU_SAMPLE = 4000


def learned_params(model) -> dict:
    return {"weights": dict(model.weights), "tenant_bias": dict(model.tenant_bias),
            "kind": model.kind}


def measured_tau(predict, specs) -> float:
    tracker = SessionTracker()
    sample = specs[:MAX_TAU_SAMPLE]
    preds = [predict(tracker.features(s), s.num_output_tokens) for s in sample]
    return kendall_tau(preds, [s.num_output_tokens for s in sample])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one load")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    num_requests, rates = (600, (14.0,)) if args.quick else (2000, (13.0, 15.0))
    started = time.perf_counter()
    warnings.simplefilter("ignore", ZeroLengthWarning)  # ShareGPT has empty turns; clamped to 1
    specs = load_workload(SHARED / TRACE, num_requests=10 * num_requests, zero_tokens="clamp")
    train, served = split_by_session(specs, TRAIN_FRACTION, seed=0)
    served = served[:num_requests]
    length_model, rank_model = fit_length_model(train), fit_rank_model(train)
    runs = {  # name -> (policy, predictor, predictor params, tau)
        "fcfs": ("fcfs", None, {}, None),
        "sjf + oracle": ("sjf", "oracle", {}, 1.0),
        f"sjf + noisy oracle (tau {NOISY_TAU})": (
            "sjf", "noisy_oracle", {"kendall_tau": NOISY_TAU, "seed": 0},
            measured_tau(NoisyOraclePredictor(kendall_tau=NOISY_TAU, seed=0).predict, served)),
        "sjf + learned length": ("sjf", "learned", learned_params(length_model),
                                 measured_tau(length_model.predict, served)),
        "ltr + learned ranker": ("ltr", "learned", learned_params(rank_model),
                                 measured_tau(rank_model.predict, served)),
    }
    console = Console(width=150)
    table = Table(title=f"Mean E2E latency, multi-turn ShareGPT (held-out sessions), {MODEL} on "
                        f"1x {GPU}, {len(served)} requests")
    for col in ("rate", "policy", "Kendall tau", "mean E2E (s)", "P50 E2E (s)", "mean queue (s)",
                "ours: FCFS / policy", "paper"):
        table.add_column(col)
    for rate in rates:
        workload = list(retime(served, rate, seed=1))
        fcfs_mean = None
        for name, (policy, predictor, params, tau) in runs.items():
            run = simulate(SimConfig(model=MODEL, gpu=GPU, policy=policy, predictor=predictor,
                                     predictor_params=params), workload)
            s = summarize(run.records)
            fcfs_mean = s.e2e_s.mean if fcfs_mean is None else fcfs_mean
            table.add_row(f"{rate:g}/s", name, "-" if tau is None else f"{tau:.2f}",
                          f"{s.e2e_s.mean:.2f}", f"{s.e2e_s.p50:.2f}", f"{s.queue_s.mean:.2f}",
                          "1.00x" if policy == "fcfs" else f"{fcfs_mean / s.e2e_s.mean:.2f}x",
                          "baseline" if policy == "fcfs" else PAPER_CLAIM)
    console.print(table)
    console.print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

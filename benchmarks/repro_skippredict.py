"""SkipPredict reproduction: mean response time with the cost of prediction counted.

Paper (Shahout & Mitzenmacher, "SkipPredict: When to Invest in Predictions for Scheduling",
2024): a cheap one-bit short/long prediction for every job, an expensive size prediction only
for the jobs called long; shorts run first (FCFS), longs by shortest predicted remaining time.
With the cost of predicting charged as an external cost or as server time, SkipPredict has a
lower mean response time than always predicting (SPRPT with an expensive prediction for
every job), most when the expensive prediction costs much more than the cheap one and at high
load; both beat FCFS once predictions are worth their cost. The paper shows this in closed
form and in simulation of an M/G/1 queue (synthetic sizes and real job-size traces), not on
LLM serving; it gives no single headline number.

Our setup, and where it differs:
- The simulator (roofline cost model, Llama-3.1-8B on one A100-80GB), default vLLM limits: a
  batching engine, not one server; "runs first" means "is admitted to the batch first"; the
  order is static (predicted size, not size minus tokens served; see the policy's docstring).
- Requests: multi-turn ShareGPT (../shared/traces, per-turn token counts); sessions split
  60/40 into a training part (fits the learned length model and the threshold) and a held-out
  part that is served, with seeded Poisson arrivals at each rate. A job's size is its output
  length in tokens; the short/long threshold is the training part's median output.
- Predictors: `skip_oracle` (the trace's truth; the bit wrong for 10% of requests, the size
  degraded to Kendall tau 0.7) and `skip_learned` (a linear length model over arrival-time
  features: prompt length, turn, prompt growth; its bit is its prediction against the
  threshold). Always-predict is the same policy with threshold 0: every request gets the
  expensive prediction and runs by predicted size.
- Costs are ours (the paper sweeps them): "server" charges the replica cheap 0.5 ms / expensive
  5 ms per prediction (a small model run on the serving GPU between steps); "external" delays
  a request until its predictions are back, cheap 50 ms / expensive 500 ms (a separate
  predictor service), and its response time includes the wait. The paper's external cost is
  added to the response time; ours also shifts when the request joins the queue. A
  cost-free always-predict row shows what the predictions are worth before their cost.
- Not reproduced: the paper's other baselines (1bit: the short/long bit alone; DelayPredict:
  FCFS for a while, then predict) and its sweeps over costs and thresholds.
Ratios are against anchors of the same run: FCFS mean E2E over each policy's, and
always-predict's mean over SkipPredict's (> 1: SkipPredict better, the paper's direction).

Run: python benchmarks/repro_skippredict.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the fit is tiny; threads only contend

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shunter.core.predict import SessionTracker  # noqa: E402
from shunter.core.predict.skip import SHORT_PREDICTION, SkipLearnedPredictor  # noqa: E402
from shunter.core.types import RequestSpec  # noqa: E402
from shunter.metrics import summarize  # noqa: E402
from shunter.sim.config import SimConfig  # noqa: E402
from shunter.sim.runner import simulate  # noqa: E402
from shunter.workload import ZeroLengthWarning, load_workload, retime  # noqa: E402
from shunter.workload.rank_training import fit_length_model, split_by_session  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
TRACE = "sharegpt_v3_turn_lengths_mistral_tok.csv"
MODEL, GPU = "llama-3.1-8b", "a100-80gb"
PAPER_CLAIM = "SkipPredict < always-predict (mean, with cost)"
TRAIN_FRACTION = 0.6
ORACLE_BIT_ERROR, ORACLE_SIZE_TAU = 0.1, 0.7
COSTS = {  # cost mode -> (cheap s, expensive s)
    "server": (0.0005, 0.005),
    "external": (0.050, 0.500),
}


def predictors(train: list[RequestSpec], threshold: float) -> dict[str, tuple[str, dict]]:
    """Name -> (predictor, parameters), the costs and threshold left out."""
    model = fit_length_model(train)
    return {
        "oracle": ("skip_oracle", {"cheap_error_rate": ORACLE_BIT_ERROR,
                                   "expensive_kendall_tau": ORACLE_SIZE_TAU, "seed": 0}),
        "learned": ("skip_learned", {"weights": dict(model.weights),
                                     "tenant_bias": dict(model.tenant_bias)}),
    }


def long_fraction(params: dict, threshold: float, specs: list[RequestSpec]) -> float:
    """How many requests the learned model calls long (the ones paying the expensive cost)."""
    model = SkipLearnedPredictor(**params, threshold_tokens=threshold)
    tracker = SessionTracker()
    preds = [model.predict(tracker.features(s)) for s in specs]
    return sum(p != SHORT_PREDICTION for p in preds) / max(len(preds), 1)


def run(workload: list[RequestSpec], policy: str, predictor: str | None = None,
        params: dict | None = None) -> float:
    config = SimConfig(model=MODEL, gpu=GPU, policy=policy, predictor=predictor,
                       predictor_params=params or {})
    return summarize(simulate(config, workload).records).e2e_s.mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one load")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared traces) is absent")
        return 0
    num_requests, rates = (500, (14.0,)) if args.quick else (2000, (12.0, 14.0, 16.0))
    started = time.perf_counter()
    warnings.simplefilter("ignore", ZeroLengthWarning)  # ShareGPT has empty turns; clamped to 1
    specs = load_workload(SHARED / TRACE, num_requests=10 * num_requests, zero_tokens="clamp")
    train, served = split_by_session(specs, TRAIN_FRACTION, seed=0)
    served = served[:num_requests]
    threshold = float(statistics.median(s.num_output_tokens for s in train))
    preds = predictors(train, threshold)
    console = Console(width=160)
    learned_long = long_fraction(preds["learned"][1], threshold, served)
    table = Table(title=f"Mean E2E latency with prediction cost, multi-turn ShareGPT (held-out "
                        f"sessions), {MODEL} on 1x {GPU}, {len(served)} requests, threshold "
                        f"{threshold:g} tokens (learned calls {learned_long:.0%} long)")
    for col in ("rate", "cost (cheap/exp.)", "predictor", "policy", "mean E2E (s)",
                "ours: FCFS / policy", "ours: always / skip", "paper"):
        table.add_column(col)
    for rate in rates:
        workload = list(retime(served, rate, seed=1))
        fcfs = run(workload, "fcfs")
        table.add_row(f"{rate:g}/s", "-", "-", "fcfs", f"{fcfs:.2f}", "1.00x", "", "baseline")
        for label, (name, params) in preds.items():
            free = run(workload, "skippredict", name, params | {"threshold_tokens": 0.0})
            table.add_row(f"{rate:g}/s", "none", label, "always-predict (SPRPT)", f"{free:.2f}",
                          f"{fcfs / free:.2f}x", "", "(cost-free reference)")
            for mode, (cheap_s, expensive_s) in COSTS.items():
                cost = f"{mode} {cheap_s * 1e3:g}/{expensive_s * 1e3:g} ms"
                always = run(workload, "skippredict", name,
                             params | {"threshold_tokens": 0.0, "cheap_cost_s": 0.0,
                                       "expensive_cost_s": expensive_s, "cost_mode": mode})
                skip = run(workload, "skippredict", name,
                           params | {"threshold_tokens": threshold, "cheap_cost_s": cheap_s,
                                     "expensive_cost_s": expensive_s, "cost_mode": mode})
                table.add_row(f"{rate:g}/s", cost, label, "always-predict (SPRPT)",
                              f"{always:.2f}", f"{fcfs / always:.2f}x", "1.00x", "anchor")
                table.add_row(f"{rate:g}/s", cost, label, "skippredict", f"{skip:.2f}",
                              f"{fcfs / skip:.2f}x", f"{always / skip:.2f}x", PAPER_CLAIM)
    console.print(table)
    console.print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

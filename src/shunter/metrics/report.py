"""Rendering and files for Summaries: rich tables, JSON, CSV, and (optionally) plots.

Kept apart from the computation (STYLE.md section 9): nothing here changes a number. Output
is deterministic: JSON keys sorted, CSV columns in first-seen order, no timestamps.
matplotlib is optional and imported only inside the plot function.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from shunter.errors import ConfigError
from shunter.metrics.summary import Summary

__all__ = [
    "BEST_STYLE",
    "NOT_APPLICABLE",
    "REPORT_METRICS",
    "flatten",
    "format_value",
    "metric_direction",
    "plot_cdf",
    "rejection_lines",
    "render_comparison",
    "render_table",
    "write_csv",
    "write_json",
]

BEST_STYLE = "bold green"
_LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s")
_STAT_KEYS = ("mean", "p50", "p90", "p99")

# Rows of the tables, in order (flattened keys of Summary.to_dict()).
REPORT_METRICS: tuple[str, ...] = (
    "num_requests", "num_completed", "num_rejected", "num_aborted", "num_unfinished",
    "duration_s",
    "throughput_tok_s", "throughput_req_s", "throughput_input_tok_s",
    *(f"{lat}.{stat}" for lat in _LATENCIES for stat in _STAT_KEYS),
    "slo_attainment", "goodput_req_s", "num_preemptions", "prefix_hit_rate",
    "fairness.max_service_gap", "fairness.jain_index",
)

# Which way is better, by the metric's top-level key; metrics not listed are not ranked.
_HIGHER_IS_BETTER = {
    "num_completed", "throughput_tok_s", "throughput_req_s", "throughput_input_tok_s",
    "slo_attainment", "goodput_req_s", "prefix_hit_rate", "fairness.jain_index",
}
_LOWER_IS_BETTER = {
    "num_rejected", "num_aborted", "num_unfinished", "num_preemptions",
    "fairness.max_service_gap", *_LATENCIES,
}


def metric_direction(key: str) -> int:
    """+1 if larger is better, -1 if smaller is better, 0 if the metric is not ranked."""
    for name in (key, key.split(".", 1)[0]):
        if name in _HIGHER_IS_BETTER:
            return 1
        if name in _LOWER_IS_BETTER:
            return -1
    return 0


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'ttft_s': {'p99': 1.0}} -> {'ttft_s.p99': 1.0}; non-dict values are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


NOT_APPLICABLE = "n/a"  # a table's cell for None: nothing to measure (no SLO, no samples)


def format_value(value: Any) -> str:
    """A cell: 'n/a' for None, ints as ints, floats to 4 significant digits."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, int):  # bool included
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else NOT_APPLICABLE
    return str(value)


def render_table(summary: Summary, title: str) -> Table:
    """One run: a row per metric (REPORT_METRICS), then each tenant's service and TTFT p99."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    flat = flatten(summary.to_dict())
    for key in REPORT_METRICS:
        table.add_row(key, format_value(flat.get(key)))
    if len(summary.tenants) > 1:
        for name, tenant in summary.tenants.items():
            # Text, not str: a tenant name is user input and must not be read as rich markup.
            table.add_row(Text(f"tenant {name}: service"), format_value(tenant.service))
            table.add_row(Text(f"tenant {name}: ttft_s.p99"), format_value(tenant.ttft_s.p99))
    return table


def rejection_lines(summary: Summary) -> list[str]:
    """One line per rejection reason: how many requests, why, and their prompt lengths."""
    lines = []
    for reason, group in summary.rejections.items():
        low, high = group.min_prompt_tokens, group.max_prompt_tokens
        prompts = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"{group.num_requests} rejected: {reason} (prompts of {prompts} tokens)")
    return lines


def _best_columns(values: Sequence[Any], direction: int) -> set[int]:
    ranked = [(v, i) for i, v in enumerate(values)
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if direction == 0 or len(ranked) < 2:
        return set()
    scores = [v * direction for v, _ in ranked]
    if min(scores) == max(scores):
        return set()  # a tie across every run ranks nothing
    return {i for (_, i), score in zip(ranked, scores, strict=True) if score == max(scores)}


def render_comparison(summaries: Sequence[tuple[str, Summary]], key_name: str) -> Table:
    """Runs side by side (one column each, headed by its name) with the best value per row
    highlighted; `key_name` heads the metric column (e.g. 'policy')."""
    table = Table(title=f"by {key_name}")
    table.add_column(key_name)
    for name, _ in summaries:
        table.add_column(Text(name), justify="right")
    flats = [flatten(summary.to_dict()) for _, summary in summaries]
    for key in REPORT_METRICS:
        values = [flat.get(key) for flat in flats]
        best = _best_columns(values, metric_direction(key))
        cells = [Text(format_value(v), style=BEST_STYLE if i in best else "")
                 for i, v in enumerate(values)]
        table.add_row(key, *cells)
    return table


def _json_ready(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` (a dict, or anything with to_dict()) as indented JSON with sorted keys.

    Raises ValueError rather than write NaN or Infinity, which are not JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_ready(obj), indent=2, sort_keys=True, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return json.dumps(value, allow_nan=False)
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows with nested keys flattened ('ttft_s.p99'); columns in first-seen order,
    missing and None cells empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat_rows = [flatten(_json_ready(row)) for row in rows]
    columns: dict[str, None] = {}
    for row in flat_rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in flat_rows:
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return path


def plot_cdf(samples: Mapping[str, Sequence[float]], path: str | Path, *,
             xlabel: str = "seconds", title: str = "") -> Path:
    """Empirical CDF of each named sample set in one PNG/PDF (needs matplotlib: shunter[plot])."""
    try:
        import matplotlib  # optional dependency, imported only when a plot is asked for

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install 'shunter[plot]'") from e
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in samples.items():
        ordered = sorted(float(v) for v in values)
        if ordered:
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, fractions, where="post", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    if title:
        ax.set_title(title)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

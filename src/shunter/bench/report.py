"""The bench report: one self-contained HTML page (index.html) with its plots embedded as PNG,
the same PNGs beside it, and results.json.

Plots: latency CDFs (TTFT, TPOT, E2E, pooled ITL), TTFT over time (each request at its
arrival), queue over time (waiting for a first token / decoding, `timeline.queue_series`) and
cumulative service per tenant (`timeline.tenant_service_series`). matplotlib is optional
(`shunter[plot]`) and imported only here, only when a report is written. Nothing in the page
loads anything from the network: it opens from disk in any browser.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from shunter.bench.timeline import queue_series, tenant_service_series
from shunter.errors import ConfigError
from shunter.metrics.record import RequestRecord
from shunter.metrics.report import REPORT_METRICS, flatten, format_value
from shunter.metrics.summary import Summary

__all__ = ["PLOT_FILES", "write_report"]

PLOT_FILES = ("latency_cdf.png", "ttft_over_time.png", "queue_over_time.png",
              "tenant_service.png")
_FIGSIZE = (7.0, 4.0)
_DPI = 100


def _pyplot() -> Any:
    try:
        import matplotlib  # optional dependency: only a report needs it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("the report's plots need matplotlib: "
                          "pip install 'shunter[plot]'") from exc
    return plt


def _completed(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.is_completed]


def _latency_cdf(ax: Any, records: Sequence[RequestRecord]) -> None:
    done = _completed(records)
    samples = {
        "TTFT": [r.ttft_s for r in done],
        "TPOT": [r.tpot_s for r in done],
        "E2E": [r.e2e_s for r in done],
        "ITL": [b - a for r in done for a, b in pairwise(r.token_times_s)],
    }
    for name, values in samples.items():
        ordered = np.sort(np.array([v for v in values if v is not None], dtype=float))
        if ordered.size:
            ax.step(ordered, np.arange(1, ordered.size + 1) / ordered.size, where="post",
                    label=name)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction")
    ax.set_title("latency CDFs (completed requests)")


def _ttft_over_time(ax: Any, records: Sequence[RequestRecord]) -> None:
    done = [r for r in _completed(records) if r.ttft_s is not None]
    ax.scatter([r.arrival_s for r in done], [r.ttft_s for r in done], s=8, label="TTFT")
    ax.set_xlabel("arrival (s from start)")
    ax.set_ylabel("TTFT (s)")
    ax.set_title("TTFT over time")


def _queue_over_time(ax: Any, records: Sequence[RequestRecord]) -> None:
    series = queue_series(records)
    ax.step(series.times_s, series.num_waiting, where="post", label="waiting for first token")
    ax.step(series.times_s, series.num_decoding, where="post", label="decoding")
    ax.set_xlabel("time (s from start)")
    ax.set_ylabel("requests")
    ax.set_title("queue over time (seen from the client)")


def _tenant_service(ax: Any, records: Sequence[RequestRecord]) -> None:
    for tenant, (times, service) in tenant_service_series(records).items():
        ax.step(times, service, where="post", label=tenant)
    ax.set_xlabel("time (s from start)")
    ax.set_ylabel("service (prompt + 2 x output tokens)")
    ax.set_title("cumulative service per tenant")


_PLOTS: dict[str, Callable[[Any, Sequence[RequestRecord]], None]] = dict(zip(
    PLOT_FILES, (_latency_cdf, _ttft_over_time, _queue_over_time, _tenant_service), strict=True))


def _render_plots(records: Sequence[RequestRecord], directory: Path) -> dict[str, bytes]:
    plt = _pyplot()
    images = {}
    for name, draw in _PLOTS.items():
        fig, ax = plt.subplots(figsize=_FIGSIZE)
        draw(ax, records)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=_DPI, format="png")
        plt.close(fig)
        images[name] = path.read_bytes()
    return images


def _table(rows: Sequence[tuple[str, str]], head: tuple[str, str] = ("metric", "value")) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td class=n>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return (f"<table><tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>"
            f"{cells}</table>")


def _tenant_table(summary: Summary) -> str:
    head = "<tr><th>tenant</th><th>requests</th><th>service</th><th>TTFT p50</th>" \
           "<th>TTFT p99</th><th>E2E p99</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=n>{t.num_requests}</td>"
        f"<td class=n>{t.service}</td><td class=n>{format_value(t.ttft_s.p50)}</td>"
        f"<td class=n>{format_value(t.ttft_s.p99)}</td>"
        f"<td class=n>{format_value(t.e2e_s.p99)}</td></tr>"
        for name, t in summary.tenants.items())
    return f"<table>{head}{rows}</table>"


_STYLE = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
          "padding:2px 8px}td.n{text-align:right;font-family:monospace}"
          "img{max-width:100%;border:1px solid #eee;margin:.5em 0}")


def write_report(directory: str | Path, summary: Summary, records: Sequence[RequestRecord], *,
                 title: str, meta: Mapping[str, Any] | None = None,
                 extra_html: str = "") -> Path:
    """Write index.html (plots embedded), the PNGs and results.json into `directory`;
    `extra_html` (already escaped) goes before the summary."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    images = _render_plots(records, out)
    flat = flatten(summary.to_dict())
    meta_rows = [(str(k), format_value(v)) for k, v in (meta or {}).items()]
    metric_rows = [(key, format_value(flat.get(key))) for key in REPORT_METRICS]
    figures = "".join(
        f'<h3>{html.escape(name.removesuffix(".png").replace("_", " "))}</h3>'
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}">' for name, data in images.items())
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{_table(meta_rows, ('run', '')) if meta_rows else ''}{extra_html}"
            f"<h2>summary</h2>{_table(metric_rows)}<h2>tenants</h2>{_tenant_table(summary)}"
            f"<h2>plots</h2>{figures}</body></html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    results = {"title": title, "meta": dict(meta or {}), "summary": summary.to_dict()}
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True,
                                                 allow_nan=False, default=str) + "\n",
                                      encoding="utf-8")
    return out / "index.html"

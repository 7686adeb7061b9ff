"""The bench report renders: index.html with every plot embedded, the PNGs, results.json."""

from __future__ import annotations

import base64
import json
import re

import pytest

from shunter.bench.report import PLOT_FILES, write_report
from shunter.core.types import FinishReason
from shunter.metrics.record import RequestRecord
from shunter.metrics.summary import summarize

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run() -> list[RequestRecord]:
    """Two tenants, a rejected request and a tenant name that must be escaped."""
    records = []
    for i in range(12):
        arrival = 0.25 * i
        first = arrival + 0.1 + 0.02 * (i % 4)
        tokens = [first + 0.03 * k for k in range(4 + i % 3)]
        records.append(RequestRecord(
            request_id=f"r{i}", arrival_s=arrival, num_prompt_tokens=16 + i,
            tenant="a" if i % 2 else "<b>", token_times_s=tokens, finish_s=tokens[-1],
            finish_reason=FinishReason.LENGTH))
    records.append(RequestRecord(request_id="x", arrival_s=1.0, num_prompt_tokens=4,
                                 finish_s=1.01, finish_reason=FinishReason.REJECTED,
                                 error="HTTP 503"))
    return records


@pytest.mark.slow  # matplotlib's import and four renders: ~2 s
def test_report_renders_every_plot(tmp_path) -> None:
    records = fake_run()
    path = write_report(tmp_path / "rep", summarize(records), records, title="t <1>",
                        meta={"endpoint": "http://x", "requests": 13})
    assert path == tmp_path / "rep" / "index.html"
    page = path.read_text()
    for name in PLOT_FILES:
        data = (tmp_path / "rep" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name  # axes, lines, labels
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(PLOT_FILES)
    assert all(base64.b64decode(e).startswith(PNG_MAGIC) for e in embedded)
    assert "&lt;b&gt;" in page and "<b>" not in page and "t &lt;1&gt;" in page
    assert "http://" not in page.replace("http://x", "")  # nothing fetched from the network
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["summary"]["num_completed"] == 12 and results["summary"]["num_rejected"] == 1

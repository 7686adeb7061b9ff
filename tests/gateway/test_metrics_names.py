"""/metrics carries vLLM's series under vLLM's names and labels beside the gateway's own, and the
Grafana dashboard shipped with the package reads only series the gateway exports."""

import json
import re
from importlib import resources

from tests.gateway.factories import MODEL, asgi_client, make_app, run

VLLM_SERIES = ("vllm:num_requests_running", "vllm:num_requests_waiting",
               "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds",
               "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
               "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
               "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
               "vllm:prefix_cache_hits_total")


def scraped_after_traffic() -> str:
    app, _ = make_app()

    async def go():
        async with asgi_client(app) as c:
            await c.post("/v1/completions", json={"model": MODEL, "prompt": "a b c",
                                                  "max_tokens": 3})
            await c.post("/v1/chat/completions", json={
                "model": MODEL, "stream": True, "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}]})
            await c.post("/v1/completions", json={"model": MODEL})  # a 400 is counted too
            return (await c.get("/metrics")).text
    return run(go())


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_vllm_series_carry_vllm_names_and_the_model_name_label():
    text = scraped_after_traffic()
    names = exported_names(text)
    assert set(VLLM_SERIES) <= names
    assert f'vllm:generation_tokens_total{{model_name="{MODEL}"}} 7' in text
    assert 'shunter_http_responses_total{code="200"} 2' in text
    assert 'shunter_http_responses_total{code="400"} 1' in text


def test_the_grafana_dashboard_reads_only_exported_series():
    dashboard = json.loads(resources.files("shunter.gateway").joinpath(
        "dashboards/grafana.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(?:vllm:|shunter_)[a-z0-9_:]+", e)}
    exported = exported_names(scraped_after_traffic())
    assert used and used <= exported, sorted(used - exported)
    assert {n for n in used if n.startswith("vllm:")} and {n for n in used if
                                                             n.startswith("shunter_")}

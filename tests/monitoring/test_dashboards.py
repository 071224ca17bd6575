"""deploy/grafana/infercdn.json and deploy/prometheus/alerts.yaml read only metrics the gateway
exports: every expression's metric names against the live /metrics of a gateway on simulators."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import LONDON, base_config
from tests.monitoring.promql import exposition_names, metric_names, template_metric

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "infercdn.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", ())]
    return exprs


def template_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (region) (rate(infercdn_requests_total{region=~"$region", status!="200"}[$__rate_interval]))',
     {"infercdn_requests_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > 2 and b:rec:rate5m > 3 * "
     "avg_over_time(b:rec:rate5m[1d] offset 10m)", {"a_bucket", "b:rec:rate5m"}),
    ("x / on(pool) group_left(region) y_info", {"x", "y_info"}),
    ("sum(rate(c_total[5m])) / clamp_min(sum(rate(d_total[5m])), 1e-9)", {"c_total", "d_total"}),
    ("(time() - e_seconds) / 86400 > 45", {"e_seconds"}),
    ("max without (instance) (f) == bool 0 unless g", {"f", "g"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exposition_names_expand_families() -> None:
    text = ("# HELP a_total x\n# TYPE a_total counter\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n"
            "# TYPE g gauge\n")
    assert exposition_names(text) == {"a_total", "a_created", "h_bucket", "h_count", "h_sum", "h_created", "g"}
    assert template_metric("label_values(infercdn_x_total, tenant)") == {"infercdn_x_total"}


async def test_every_expression_names_metrics_the_gateway_exports(sim_factory, gateway_factory) -> None:
    sims = [await sim_factory() for _ in range(3)]
    data = base_config({"us-east": [sims[0].url], "eu-west": [sims[1].url], "ap-southeast": [sims[2].url]})
    data["auth"] = {"tenants": [{"name": "team-a", "api_keys": ["sk-a"], "tokens_per_minute": 10_000}]}
    gw = await gateway_factory(data)
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", json=body,
                          headers={"Authorization": "Bearer sk-a", "X-Forwarded-For": LONDON}) as r:
            assert r.status == 200
        async with s.get(gw.url + "/metrics") as r:
            catalogue = exposition_names(await r.text())
    assert "infercdn_requests_total" in catalogue and "infercdn_time_to_first_token_seconds_bucket" in catalogue

    used: dict[str, set[str]] = {}
    for expr in dashboard_exprs() + [rule["expr"] for rule in rules()]:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(expr)
    for query in template_queries():
        for name in template_metric(query):
            used.setdefault(name, set()).add(query)
    unknown = {name: sorted(exprs) for name, exprs in used.items() if name not in catalogue | recorded()}
    assert not unknown, f"not exported by the gateway: {unknown}"
    # the dashboard covers what the issue asks: traffic by region, first-token percentiles,
    # failovers and resumes, endpoint health, tenant usage
    for needed in ("infercdn_requests_total", "infercdn_time_to_first_token_seconds_bucket", "infercdn_failovers_total",
                   "infercdn_stream_resumes_total", "infercdn_region_healthy_endpoints", "infercdn_endpoint_healthy",
                   "infercdn_tenant_tokens_total"):
        assert any(needed in metric_names(e) for e in dashboard_exprs()), needed


def test_dashboard_is_importable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_alerts_cover_what_operators_page_on() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == {"InfercdnRegionDown", "InfercdnFailoverRateAboveBaseline", "InfercdnFirstTokenP99High",
                      "InfercdnSharedLimitsFailing", "InfercdnGeoipDatabaseOld"}

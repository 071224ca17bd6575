import orjson

from loadtest.config import LoadConfig
from loadtest.engine import Engine
from loadtest.html import render_html
from loadtest.report import SCHEMA, build_report, write_json

from .conftest import SSEServer

TOP_KEYS = ["schema", "generated_at", "model", "config", "totals", "latency_ms", "cdf_ms", "errors",
            "by_client_region", "by_serving_region", "routing_matrix", "failovers", "timeline", "generator"]
TOTAL_KEYS = ["requests", "ok", "errors", "cancelled", "error_rate", "duration_s", "requests_per_s",
              "input_tokens", "output_tokens", "output_tokens_per_s", "failovers"]
STAT_KEYS = ["count", "mean", "min", "p50", "p90", "p99", "max"]
GEN_KEYS = ["schedule_lag_ms", "late_requests", "loop_lag_ms", "cpu_user_s", "cpu_sys_s", "cpu_util", "wall_s",
            "saturated", "event_loop", "python", "platform"]


async def _report(server: SSEServer, **kw) -> dict:
    cfg = LoadConfig(url=server.url, model="tiny-chat", rate=200.0, arrival="poisson", requests=24,
                     max_tokens="4", prompt_tokens="8", clients="singapore:1,london:1,virginia:1",
                     api_key="sekrit", headers=(("Authorization", "Bearer x"),), **kw).validate()
    return build_report(await Engine(cfg, "tiny-chat").run())


async def test_schema_keys_are_stable(sse_server: SSEServer, tmp_path) -> None:
    report = await _report(sse_server)
    assert list(report) == TOP_KEYS and report["schema"] == SCHEMA == "infercdn.loadtest/1"
    assert list(report["totals"]) == TOTAL_KEYS
    for name in ("ttft", "itl", "e2e"):
        assert list(report["latency_ms"][name]) == STAT_KEYS
        assert len(report["cdf_ms"][name]) == 101
    assert list(report["generator"]) == GEN_KEYS
    assert list(report["failovers"]) == ["requests", "attempts", "by_serving_region"]
    assert list(report["timeline"][0]) == ["t", "requests", "ok", "errors", "tokens"]
    path = tmp_path / "r.json"
    write_json(report, str(path))
    assert orjson.loads(path.read_bytes())["totals"] == report["totals"]
    assert "sekrit" not in path.read_text() and "Bearer x" not in path.read_text()


async def test_totals_regions_and_matrix(sse_server: SSEServer) -> None:
    report = await _report(sse_server)
    t = report["totals"]
    assert t["requests"] == t["ok"] == 24 and t["output_tokens"] == 96 and t["errors"] == 0
    assert sum(row["requests"] for row in report["timeline"]) == 24
    assert sum(row["tokens"] for row in report["timeline"]) == 96
    matrix = report["routing_matrix"]
    assert matrix["serving_regions"] == ["ap-southeast", "eu-west", "us-east"]
    for client, expected in (("singapore", "ap-southeast"), ("london", "eu-west"), ("virginia", "us-east")):
        row = matrix["counts"][client]
        assert row[expected] == report["by_client_region"][client]["requests"] > 0
        assert sum(row.values()) == row[expected]
    assert report["failovers"]["requests"] == t["failovers"] == report["by_serving_region"]["eu-west"]["requests"]
    assert report["failovers"]["by_serving_region"] == {"eu-west": t["failovers"]}
    assert report["generator"]["schedule_lag_ms"]["count"] == 24


async def test_errors_in_report(sse_server: SSEServer) -> None:
    sse_server.mode = "500"
    report = await _report(sse_server)
    assert report["errors"] == {"http_500": 24} and report["totals"]["error_rate"] == 1.0
    assert report["latency_ms"]["ttft"]["p50"] is None
    assert report["routing_matrix"]["serving_regions"] == ["(none)"]
    assert "<svg" in render_html(report)  # renders without samples


async def test_html_is_self_contained_with_charts(sse_server: SSEServer) -> None:
    html = render_html(await _report(sse_server))
    assert html.startswith("<!doctype html>") and html.count("<svg") == 5
    assert "<polyline" in html and "client region × serving region" in html
    assert "src=\"http" not in html and "<script" not in html

import pytest

from loadtest.config import LoadConfig
from loadtest.engine import Engine

from .conftest import SSEServer


def _cfg(url: str, **kw) -> LoadConfig:
    base = dict(url=url, model="tiny-chat", concurrency=4, requests=12, max_tokens="6", prompt_tokens="8",
                timeout=10.0, duration=20.0)
    base.update(kw)
    return LoadConfig(**base).validate()


async def _run(cfg: LoadConfig):
    return await Engine(cfg, cfg.model or "tiny-chat").run()


async def test_stream_counts_tokens_and_times(sse_server: SSEServer) -> None:
    sse_server.itl_s = 0.002
    data = await _run(_cfg(sse_server.url))
    assert len(data.results) == 12 and all(r.ok for r in data.results)
    for r in data.results:
        assert r.completion_tokens == 6 and r.prompt_tokens == 5 and r.content_events == 6
        assert r.ttft is not None and 0 < r.ttft <= r.e2e
        assert len(r.itl) == 5 and all(gap >= 0 for gap in r.itl)
        assert max(r.itl) > 0.001
    assert all(b["stream_options"] == {"include_usage": True} for b in sse_server.bodies)


async def test_non_stream(sse_server: SSEServer) -> None:
    data = await _run(_cfg(sse_server.url, stream=False, endpoint="completions"))
    assert all(r.ok and r.completion_tokens == 6 and r.ttft and r.ttft > 0 and not r.itl for r in data.results)
    assert all("prompt" in b and "stream_options" not in b for b in sse_server.bodies)


async def test_usage_missing_falls_back_to_counting_events(sse_server: SSEServer) -> None:
    sse_server.mode = "nousage"
    data = await _run(_cfg(sse_server.url, requests=3))
    assert all(r.ok and r.completion_tokens == 6 and r.prompt_tokens == 0 for r in data.results)


@pytest.mark.parametrize("mode,kind", [("500", "http_500"), ("cut", "truncated"), ("inband", "inband_error")])
async def test_errors_by_kind(sse_server: SSEServer, mode: str, kind: str) -> None:
    sse_server.mode = mode
    data = await _run(_cfg(sse_server.url, requests=5))
    assert [r.error for r in data.results] == [kind] * 5
    assert data.live.errors == 5 and data.live.done == 5


async def test_connect_error_kind() -> None:
    data = await _run(_cfg("http://127.0.0.1:9", requests=2, concurrency=1))
    assert [r.error for r in data.results] == ["connect", "connect"]


async def test_timeout_kind(sse_server: SSEServer) -> None:
    sse_server.itl_s = 0.2
    data = await _run(_cfg(sse_server.url, requests=2, concurrency=2, timeout=0.3))
    assert [r.error for r in data.results] == ["timeout", "timeout"]


async def test_headers_fill_regions_and_failovers(sse_server: SSEServer) -> None:
    data = await _run(_cfg(sse_server.url, requests=30, clients="singapore:1,london:1,virginia:1", seed=3))
    by_client = {}
    for r in data.results:
        by_client.setdefault(r.client, set()).add(r.region)
        assert r.attempts == (2 if r.region == "eu-west" else 1)
    assert by_client == {"singapore": {"ap-southeast"}, "london": {"eu-west"}, "virginia": {"us-east"}}
    assert set(sse_server.seen_ips) <= {"165.21.0.1", "103.4.96.1", "81.2.69.142", "81.2.69.160",
                                        "212.58.244.20", "152.195.0.1", "103.21.244.1"}


async def test_same_seed_same_requests(sse_server: SSEServer) -> None:
    await _run(_cfg(sse_server.url, concurrency=1, requests=5, seed=9))
    first = [(b["messages"][0]["content"], b["max_tokens"]) for b in sse_server.bodies]
    ips = list(sse_server.seen_ips)
    sse_server.bodies.clear()
    sse_server.seen_ips.clear()
    await _run(_cfg(sse_server.url, concurrency=1, requests=5, seed=9))
    assert first == [(b["messages"][0]["content"], b["max_tokens"]) for b in sse_server.bodies]
    assert ips == sse_server.seen_ips


async def test_open_loop_rate_and_lag(sse_server: SSEServer) -> None:
    cfg = _cfg(sse_server.url, concurrency=None, rate=100.0, arrival="constant", requests=30)
    data = await _run(cfg)
    assert len(data.results) == 30 and all(r.ok for r in data.results)
    assert len(data.schedule_lags) == 30
    starts = sorted(r.start for r in data.results)
    assert 0.27 <= starts[-1] - starts[0] <= 0.45
    assert sorted(data.schedule_lags)[15] < 0.02


async def test_duration_is_a_hard_cap(sse_server: SSEServer) -> None:
    sse_server.itl_s = 0.05  # each stream takes ~1 s at 20 tokens
    cfg = _cfg(sse_server.url, requests=None, duration=0.3, grace=0.2, max_tokens="20", concurrency=3)
    data = await _run(cfg)
    assert data.wall_s < 1.0
    assert [r.error for r in data.results] == ["cancelled"] * 3
    assert data.live.errors == 0


async def test_closed_loop_count_bound(sse_server: SSEServer) -> None:
    data = await _run(_cfg(sse_server.url, concurrency=8, requests=3))
    assert sorted(r.index for r in data.results) == [0, 1, 2]
    assert data.cpu_user_s + data.cpu_sys_s > 0

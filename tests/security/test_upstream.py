"""A pool that misbehaves: every read of its bytes is bounded (upstream_limits), crossing a
bound fails the attempt as upstream_too_large (the next candidate serves, a stream resumes or
ends with the in-band error), and what it should not say never reaches the client."""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import base_config
from tests.security.evil import FIRST, SSE_HEAD, chunk, endless, evil_pools
from tests.security.helpers import CHAT, STREAM, call, metric, openai_error, sse_events

SMALL = {"max_head_bytes": 8192, "max_event_bytes": 16384, "max_body_bytes": 65536,
         "max_error_body_bytes": 4096}


def config(evil_url: str, good_url: str | None = None, **sections: object) -> dict:
    pools = {"eu-west": [evil_url], **({"us-east": [good_url]} if good_url else {})}
    data = base_config(pools, upstream_limits=SMALL, **sections)
    return data


async def too_large_attempts(gw) -> float:
    _, text, _ = await call(gw.url, path="/metrics", method="GET")
    return metric(text.decode(), "infercdn_upstream_attempts_total", endpoint="eu-west-0", outcome="upstream_too_large")


async def huge_head(w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await endless(w, b"X-Pad: " + b"a" * 4000 + b"\r\n", framed=False, max_bytes=64 << 20)


async def huge_body(w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 600000000\r\n\r\n")
    await endless(w, b"{" * 65536, framed=False, max_bytes=64 << 20)


async def huge_error(w: asyncio.StreamWriter) -> None:
    w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 300000000\r\n\r\n")
    await endless(w, b"e" * 65536, framed=False, max_bytes=64 << 20)


async def whole_body_over(w: asyncio.StreamWriter) -> None:
    """A complete answer over max_body_bytes, in one write (it arrives in one read): the read
    that ends the body also crosses its bound."""
    body = b'{"pad": "' + b"a" * 70000 + b'"}'
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    await w.drain()


async def whole_error_over(w: asyncio.StreamWriter) -> None:
    body = b'{"error": "' + b"e" * 5000 + b'"}'
    w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body))
    await w.drain()


async def endless_tokens(w: asyncio.StreamWriter) -> None:
    w.write(SSE_HEAD)
    await endless(w, FIRST, max_bytes=64 << 20)


async def endless_event(w: asyncio.StreamWriter) -> None:
    w.write(SSE_HEAD + chunk(FIRST) + chunk(b'data: {"choices":[{"index":0,"delta":{"content":"'))
    await endless(w, b"a" * 4096, max_bytes=64 << 20)


@pytest.mark.parametrize(("script", "model_cfg"), [
    (huge_head, {}),
    (huge_body, {"non_stream": "passthrough"}),
    (huge_error, {}),
    (endless_event, {}),
    (whole_body_over, {"non_stream": "passthrough"}),
    (whole_error_over, {}),
], ids=["head", "non-stream-body", "error-body", "endless-event", "whole-body-in-one-read", "whole-error-in-one-read"])
async def test_an_oversized_answer_fails_over_as_upstream_too_large(script, model_cfg, sim_factory,
                                                                   gateway_factory) -> None:
    sim = await sim_factory()
    async with evil_pools(script) as (evil,):
        models = {"*": {"ttft_deadline_s": 5, "stall_timeout_s": 5, "total_deadline_s": 30, **model_cfg}}
        gw = await gateway_factory(config(evil.url, sim.url, models=models))
        status, body, headers = await call(gw.url, CHAT)
        assert status == 200, body
        assert headers["x-infercdn-region"] == "us-east" and headers["x-infercdn-attempts"] == "2"
        assert evil.posts == 1
        assert await too_large_attempts(gw) == 1


async def test_an_endless_stream_to_a_non_stream_client_is_cut_at_max_body_bytes(sim_factory, gateway_factory) -> None:
    """The answer is assembled from a stream that never ends: at max_body_bytes the attempt
    fails; 4 tokens were asked for and hundreds came, so nothing is left to resume: a 503."""
    sim = await sim_factory()
    async with evil_pools(endless_tokens) as (evil,):
        gw = await gateway_factory(config(evil.url, sim.url))
        status, body, _ = await call(gw.url, CHAT)
        assert status == 503 and "the answer was cut" in openai_error(body)["message"]
        assert await too_large_attempts(gw) == 1


async def test_an_event_that_never_ends_resumes_or_ends_with_the_in_band_error(sim_factory, gateway_factory) -> None:
    async with evil_pools(endless_event) as (evil,):
        gw = await gateway_factory(config(evil.url))  # nowhere to resume
        status, body, _ = await call(gw.url, STREAM)
        assert status == 200
        events = sse_events(body)
        assert b'"content":"hi"' in events[0]
        err = openai_error(events[-1].removeprefix(b"data: "))
        assert err["code"] == "stream_interrupted" and b"[DONE]" not in body
        assert await too_large_attempts(gw) == 1
    sim = await sim_factory()
    async with evil_pools(endless_event) as (evil,):
        gw = await gateway_factory(config(evil.url, sim.url))
        status, body, headers = await call(gw.url, STREAM)
        assert status == 200 and body.endswith(b"data: [DONE]\n\n")
        assert b'"content":"hi"' in body and b"error" not in body


async def test_cookies_cors_and_hop_by_hop_headers_are_not_relayed_and_retry_after_is_capped(gateway_factory) -> None:
    async def refuse(w: asyncio.StreamWriter) -> None:
        body = b'{"error":{"message":"no","type":"invalid_request_error","param":null,"code":null}}'
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nSet-Cookie: session=evil\r\n"
                b"Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n"
                b"Strict-Transport-Security: max-age=1\r\nLocation: http://evil.example\r\n"
                b"Retry-After: 99999999\r\nKeep-Alive: timeout=999\r\nUpgrade: h2c\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body))

    async with evil_pools(refuse) as (evil,):
        gw = await gateway_factory(config(evil.url))
        status, body, headers = await call(gw.url, CHAT)
        assert status == 400 and openai_error(body)["message"] == "no"
        for name in ("set-cookie", "access-control-allow-origin", "access-control-allow-credentials",
                     "strict-transport-security", "location", "keep-alive", "upgrade"):
            assert name not in headers, name
        assert headers["retry-after"] == "60"  # retry.client_retry_after_max_s
        assert headers["content-type"] == "application/json"


async def test_an_upstream_429_retry_after_is_capped_for_the_client(gateway_factory) -> None:
    async def throttle(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 86400\r\nContent-Length: 2\r\n\r\n{}")

    async with evil_pools(throttle) as (evil,):
        gw = await gateway_factory(config(evil.url, retry={"client_retry_after_max_s": 30}))
        status, body, headers = await call(gw.url, CHAT)
        assert status == 429 and openai_error(body)["code"] == "rate_limit_exceeded"
        assert headers["retry-after"] == "30"


async def test_resume_buffers_are_bounded_per_gateway_and_given_back(sim_factory, gateway_factory) -> None:
    """With no room in the gateway-wide budget a stream is still served (it just cannot be
    resumed); afterwards nothing is left accounted."""
    sim = await sim_factory(itl_ms=0)
    gw = await gateway_factory(base_config({"eu-west": [sim.url]},
                                           upstream_limits={"resume_buffer_total_bytes": 100}))
    proxy = gw.app[__import__("gateway.state", fromlist=["PROXY"]).PROXY]
    results = await asyncio.gather(*(call(gw.url, {**STREAM, "max_tokens": 16}) for _ in range(8)))
    assert all(s == 200 and b.endswith(b"data: [DONE]\n\n") for s, b, _ in results)
    assert proxy.parts.retained.used == 0


DEEP = b"[" * 300 + b"]" * 300  # orjson reads it, but cannot write it again


async def test_a_pool_answer_nested_too_deep_to_write_again_is_no_500(gateway_factory, tmp_path) -> None:
    """Usage and stop_reason blocks of any depth: the access log is still written, a
    passthrough answer is relayed as sent, an assembled one is a clean 503."""
    body = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":' + DEEP + b"}}"

    async def deep_json(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    async def deep_stream(w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunk(FIRST) + chunk(b'data: {"choices":[{"index":0,"delta":{"content":"!"},'
                                              b'"finish_reason":"stop","stop_reason":' + DEEP + b"}]}\n\n")
                + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    log = tmp_path / "access.jsonl"
    async with evil_pools(deep_json, deep_stream) as (a, b):
        gw = await gateway_factory(config(a.url, gateway={"access_log": str(log)},
                                          models={"*": {"non_stream": "passthrough"}}))
        status, got, _ = await call(gw.url, CHAT)
        assert status == 200 and got == body
        gw = await gateway_factory(config(b.url))
        status, got, _ = await call(gw.url, CHAT)
        assert status == 503 and openai_error(got)
    from tests.gateway.test_access_log import _lines
    assert [x["status"] for x in await _lines(log, 1)] == [200]


async def test_probe_and_scrape_answers_are_read_within_bounds(gateway_factory) -> None:
    """A pool whose /health or /metrics never ends: the probe fails (the endpoint goes
    unhealthy) after MAX_HEALTH_BYTES, the scrape gives no load, and neither is read whole."""
    import aiohttp

    from gateway.background import MAX_HEALTH_BYTES, MAX_METRICS_BYTES, _scrape, probe
    from routing.topology import Endpoint

    sent: dict[str, int] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent[path] = 0
            while sent[path] < (256 << 20) and not writer.is_closing():
                writer.write(chunk(b"x" * 65536))
                sent[path] += 65536
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        ep = Endpoint("e", url, "p")
        async with aiohttp.ClientSession() as session:
            assert await probe(session, ep, "/health", 10, asyncio.get_running_loop().time) == (False, None)
            assert await _scrape(session, ep, 10) is None
    finally:
        server.close()
    assert sent["/health"] < MAX_HEALTH_BYTES + (16 << 20)  # stopped near the bound (plus socket buffers)
    assert sent["/metrics"] < MAX_METRICS_BYTES + (16 << 20)


@pytest.mark.parametrize(("status", "body", "message"), [
    (b"400 Bad Request", b"<html><script>alert(1)</script></html>", "the upstream refused the request (400)"),
    (b"422 Unprocessable", b'{"object":"error","message":"bad field","type":"BadRequestError","code":422}', "bad field"),
    (b"400 Bad Request", b'{"error":{"message":"deep","type":"x","param":null,"code":' + DEEP + b"}}", "deep"),
])
async def test_a_pool_refusal_reaches_the_client_as_an_openai_error(gateway_factory, status, body, message) -> None:
    async def refuse(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 %b\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body))

    async with evil_pools(refuse) as (evil,):
        gw = await gateway_factory(config(evil.url))
        got, raw, headers = await call(gw.url, CHAT)
        assert got == int(status.split()[0]) and headers["content-type"] == "application/json"
        assert openai_error(raw)["message"] == message


async def test_a_pool_cannot_choose_the_content_type(gateway_factory) -> None:
    async def html_stream(w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD.replace(b"text/event-stream", b"text/html") + chunk(FIRST) + chunk(b"data: [DONE]\n\n")
                + b"0\r\n\r\n")

    async def html_json(w: asyncio.StreamWriter) -> None:
        body = b'{"id":"x","object":"chat.completion","choices":[]}'
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    async with evil_pools(html_stream, html_json) as (a, b):
        gw = await gateway_factory(config(a.url))
        _, _, headers = await call(gw.url, STREAM)
        assert headers["content-type"].startswith("text/event-stream")
        gw = await gateway_factory(config(b.url, models={"*": {"non_stream": "passthrough"}}))
        _, _, headers = await call(gw.url, CHAT)
        assert headers["content-type"] == "application/json"


async def test_a_stream_complete_with_its_first_token_leaves_its_connection_reusable(gateway_factory) -> None:
    """The whole stream in one read: reading, paused after the first token, is resumed before
    the connection goes back to the pool (else the next request on it would wait forever)."""
    async def whole(w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunk(FIRST) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async with evil_pools(whole) as (evil,):
        gw = await gateway_factory(config(evil.url, models={"*": {"ttft_deadline_s": 3}}))
        for _ in range(3):
            status, body, headers = await call(gw.url, STREAM)
            assert status == 200 and body.endswith(b"data: [DONE]\n\n") and headers["x-infercdn-attempts"] == "1"
        assert evil.posts == 3

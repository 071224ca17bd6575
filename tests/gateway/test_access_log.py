"""The access log: one JSON line per completion request, with where it was served and every
attempt; buffered, flushed by the app's flusher, reopened on reload."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from tests.conftest import LONDON, base_config
from tests.gateway.test_failover import dead_url

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _lines(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` lines of the log, once the flusher has written them (within 5 s)."""
    async with asyncio.timeout(5):
        while True:
            text = path.read_text() if path.exists() else ""
            if text.count("\n") >= n:
                return [orjson.loads(x) for x in text.splitlines()]
            await asyncio.sleep(0.05)


async def _post(session: aiohttp.ClientSession, url: str, body: Any, rid: str) -> int:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url + "/v1/chat/completions", data=data,
                            headers={"X-Forwarded-For": LONDON, "X-Request-Id": rid,
                                     "Content-Type": "application/json"}) as r:
        await r.read()
        return r.status


async def test_one_line_per_request_with_route_attempts_and_tokens(tmp_path: Path, sim_factory,
                                                                   gateway_factory) -> None:
    sim = await sim_factory(itl_ms=5.0)
    log = tmp_path / "access.jsonl"
    data = base_config({"eu-west": [dead_url()], "us-east": [sim.url]})
    data["gateway"]["access_log"] = str(log)
    gw = await gateway_factory(data)
    async with aiohttp.ClientSession() as session:
        assert await _post(session, gw.url, CHAT, "r-ok") == 200
        assert await _post(session, gw.url, {**CHAT, "stream": True}, "r-stream") == 200
        assert await _post(session, gw.url, b"{not json", "r-bad") == 400
        assert await _post(session, gw.url, {**CHAT, "model": "nope"}, "r-404") == 404
        async with session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 2000},
                                headers={"X-Forwarded-For": LONDON, "X-Request-Id": "r-left"}) as r:
            await r.content.readuntil(b"\n\n")
            r.close()  # the client leaves mid-stream
    lines = {x["request_id"]: x for x in await _lines(log, 5)}

    ok = lines["r-ok"]
    assert (ok["status"], ok["model"], ok["served_model"], ok["stream"]) == (200, "tiny-chat", "tiny-chat", False)
    assert (ok["region"], ok["endpoint"], ok["attempts"]) == ("us-east", "us-east-0", 2)
    assert ok["tried"] == ["eu-west-0:connect_error"]
    assert (ok["prompt_tokens"] > 0, ok["completion_tokens"]) == (True, 4)
    assert ok["ttft_ms"] > 0 and ok["duration_ms"] >= ok["ttft_ms"]
    assert (ok["client_ip"], ok["tenant"], ok["path"]) == (LONDON, "anonymous", "/v1/chat/completions")
    assert lines["r-stream"]["stream"] is True and lines["r-stream"]["completion_tokens"] is None  # no usage asked
    assert (lines["r-bad"]["status"], lines["r-bad"]["error"]) == (400, "invalid_request_error")
    assert (lines["r-404"]["status"], lines["r-404"]["error"]) == (404, "model_not_found")
    assert lines["r-left"]["status"] == 499 and lines["r-left"]["region"] == "us-east"


async def test_reload_reopens_a_rotated_file(tmp_path: Path, sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    log = tmp_path / "access.jsonl"
    data = base_config({"eu-west": [sim.url]})
    data["gateway"]["access_log"] = str(log)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    async with aiohttp.ClientSession() as session:
        assert await _post(session, gw.url, CHAT, "before") == 200
        assert [x["request_id"] for x in await _lines(log, 1)] == ["before"]
        log.rename(tmp_path / "access.jsonl.1")  # logrotate moves it...
        async with session.post(gw.url + "/admin/reload", json={}) as r:  # ...then tells the gateway
            assert r.status == 200
        assert await _post(session, gw.url, CHAT, "after") == 200
    assert [x["request_id"] for x in await _lines(log, 1)] == ["after"]
    assert (tmp_path / "access.jsonl.1").read_text().count("\n") == 1

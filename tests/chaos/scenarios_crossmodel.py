"""Issue 9, item 1: a stream cut (or stalled) on a one-endpoint pool continues on the fallback
model.  Both simulators have the same ``model_seed`` (the same weights under two names), so the
canonical answer is the one tiny-chat gives unfaulted.  Registered in
``tests.chaos.scenarios.SCENARIOS`` through :mod:`tests.chaos.scenarios_fallback`."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson

from tests.chaos.helpers import (CHAT, FAST, STREAM, Env, Reply, Row, assert_complete, assert_stream_error, call,
                                 clone, config, healthy_after, row, wait_until)
from tests.chaos.scenarios import scenario

CUT = "cut_after:tokens=40"
LONG = clone(STREAM, max_tokens=60)
COMPLETION = {"model": "tiny-chat", "prompt": "once upon a time", "max_tokens": 60, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}}
BOTH = ["tiny-chat", "other-model"]


async def _setup(env: Env, fault: str, other_fault: str | None = None,
                 prefill: bool = True) -> tuple[Any, Any, Any, Path]:
    """tiny-chat on one endpoint (eu-west, with ``fault``), other-model (its fallback) on
    another one-endpoint pool; the access log goes to a file the scenario reads."""
    eu = await env.sim("eu-west", fault=fault)
    other = await env.sim("other-model", model="other-model", fault=other_fault)
    data = config({"eu-west": [eu.url]}, models={"*": dict(FAST), "tiny-chat": {**FAST, "fallbacks": ["other-model"]}})
    pool: dict[str, Any] = {"name": "other-pool", "region": "ap-southeast", "models": ["other-model"],
                            "endpoints": [{"id": "other-0", "url": other.url}]}
    if not prefill:
        pool["prefill"] = False
    data["pools"].append(pool)
    log = Path(tempfile.mkdtemp(prefix="infercdn-chaos-")) / "access.log"
    data["gateway"]["access_log"] = str(log)
    return await env.gateway(data), eu, other, log


async def access_line(log: Path, request_id: str) -> dict[str, Any]:
    """The access-log line of ``request_id`` (the log is flushed every 0.5 s)."""
    def found() -> dict[str, Any] | None:
        if not log.exists():
            return None
        for text in log.read_bytes().splitlines():
            line = orjson.loads(text)
            if line.get("request_id") == request_id:
                return line
        return None
    await wait_until(lambda: found() is not None, timeout=3.0, what="the access-log line")
    line = found()
    assert line is not None
    return line


async def reported(env: Env, gw: Any, name: str, r: Reply, note: str) -> Row:
    """The scenario's row, once the gateway has shown it is healthy afterwards."""
    out = row(name, r, env, note)
    await healthy_after(env, gw, clear=True)
    return out


def assert_one_stream(r: Reply, models: list[str]) -> None:
    """One id, one ``created``, the client's ``model`` unchanged, the final chunk naming every model."""
    docs = [e for e in r.events if "choices" in e]
    assert len({e["id"] for e in docs}) == 1 and len({e["created"] for e in docs}) == 1, r.raw[:300]
    assert r.models == {"tiny-chat"}, r.models
    assert r.headers["x-infercdn-model"] == "tiny-chat"  # sent with the head, before the cut
    assert r.events[-1].get("infercdn") == {"models": models}, r.events[-1]
    assert all("infercdn" not in e for e in r.events[:-1])


async def _cut_continued(env: Env, name: str, body: dict[str, Any], note: str, other_fault: str | None = None,
                         prefill: bool = True, asked: int = 1, sent: int = 20) -> Row:
    gw, eu, other, log = await _setup(env, CUT, other_fault, prefill)
    r = await call(gw.url, body)
    assert_complete(r, await env.reference(body))
    assert_one_stream(r, BOTH)
    assert (eu.stats.requests_total, other.stats.requests_total) == (1, asked)
    assert other.stats.tokens_sent == sent, other.stats.tokens_sent  # 20: a prefill; 60: regenerated
    line = await access_line(log, r.headers["x-request-id"])
    assert line["served_model"] == "tiny-chat" and line["served_models"] == BOTH, line
    assert line["completion_tokens"] == 60 and line["endpoint"] == "other-0", line
    refused = ["other-0:client_error"] if asked == 2 else []  # the rejected prefill is an attempt
    assert line["tried"] == ["eu-west-0:reset", *refused] and line["attempts"] == 2 + len(refused), line
    return await reported(env, gw, name, r, note)


@scenario("stream cut at token 40 of 60, one-endpoint pool, fallback model (prefill)")
async def cut_to_fallback_prefill(env: Env) -> Row:
    return await _cut_continued(env, cut_to_fallback_prefill.fault, LONG,
                                "continued on other-model from an assistant prefill; final chunk names both models")


@scenario("stream cut at token 40 of 60, fallback model's pool has prefill: false")
async def cut_to_fallback_no_prefill_flag(env: Env) -> Row:
    return await _cut_continued(env, cut_to_fallback_no_prefill_flag.fault, LONG,
                                "other-model asked the original request, 40 tokens skipped", prefill=False, sent=60)


@scenario("stream cut at token 40 of 60, fallback model answers 400 to the prefill")
async def cut_to_fallback_rejects_prefill(env: Env) -> Row:
    return await _cut_continued(env, cut_to_fallback_rejects_prefill.fault, LONG,
                                "400 on continue_final_message, then the original request, 40 tokens skipped",
                                other_fault="reject_continuation", asked=2, sent=60)


@scenario("sampled stream cut at token 40, fallback model answers 400 to the prefill")
async def cut_sampled_fallback_rejects(env: Env) -> Row:
    gw, eu, other, log = await _setup(env, CUT, "reject_continuation")
    r = await call(gw.url, clone(LONG, temperature=0.8))
    err = assert_stream_error(r)
    assert "cut after 40 token(s)" in err["message"] and "400" not in err["message"], err
    assert (eu.stats.requests_total, other.stats.requests_total) == (1, 1)
    line = await access_line(log, r.headers["x-request-id"])
    assert line["status"] == "stream_error" and line["served_models"] == ["tiny-chat"], line
    assert line["tried"] == ["eu-west-0:reset", "other-0:client_error"], line["tried"]
    return await reported(env, gw, cut_sampled_fallback_rejects.fault, r, "names the cut, not the continuation's 400")


@scenario("stream stall after 20 tokens, one-endpoint pool, fallback model")
async def stall_to_fallback(env: Env) -> Row:
    gw, eu, other, _ = await _setup(env, "stall_after:tokens=20")
    r = await call(gw.url, LONG)
    assert_complete(r, await env.reference(LONG))
    assert_one_stream(r, BOTH)
    # exactly one continuation (40 tokens from a prefill), within the stall timeout and it
    assert (eu.stats.requests_total, other.stats.requests_total) == (1, 1) and other.stats.tokens_sent == 40
    assert r.wall_s < FAST["stall_timeout_s"] + 3.0, r.wall_s  # generous: no second stall timeout
    return await reported(env, gw, stall_to_fallback.fault, r, "stall seen after 0.5 s, one continuation on other-model")


@scenario("completions stream cut at token 40 of 60, fallback model (prompt + text)")
async def completions_to_fallback(env: Env) -> Row:
    return await _cut_continued(env, completions_to_fallback.fault, COMPLETION,
                                "continued on other-model with prompt + text so far")


@scenario("non-stream request cut at token 40 of 60, fallback model")
async def assembled_to_fallback(env: Env) -> Row:
    gw, eu, other, log = await _setup(env, CUT)
    body = clone(CHAT, max_tokens=60)
    r = await call(gw.url, body)
    assert_complete(r, await env.reference(body))
    assert r.doc["model"] == "tiny-chat" and r.headers["x-infercdn-model"] == "tiny-chat, other-model", r.headers
    assert r.attempts == 2 and (eu.stats.requests_total, other.stats.requests_total) == (1, 1)
    line = await access_line(log, r.headers["x-request-id"])
    assert line["served_models"] == BOTH and line["tried"] == ["eu-west-0:reset"], line
    return await reported(env, gw, assembled_to_fallback.fault, r, "assembled; x-infercdn-model: tiny-chat, other-model")

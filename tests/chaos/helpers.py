"""Chaos-suite helpers: an environment that starts simulators and gateways (usable from pytest
and from ``python -m tests.chaos.report``), a bounded client call that parses what the client
saw, the checks every scenario shares, and the row each scenario reports."""
from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.app import build_app
from gateway.config import parse_config
from gateway.server import start_site
from tests.conftest import LONDON, base_config
from worker.sim import SimConfig, Simulator

CLIENT_TIMEOUT_S = 6.0  # every client call is bounded: a hang is a failure, never a stuck suite
FAST = {"ttft_deadline_s": 0.5, "stall_timeout_s": 0.5, "total_deadline_s": 10}

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 16,
        "temperature": 0}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}


def config(pools: dict[str, list[str]], **sections: Any) -> dict[str, Any]:
    """``base_config`` with the chaos suite's small deadlines unless ``models`` is given."""
    sections.setdefault("models", {"*": dict(FAST)})
    data = base_config(pools, **sections)
    data["gateway"].setdefault("access_log", "stderr")  # the report prints its table on stdout
    return data


@dataclass
class Gateway:
    url: str
    app: Any
    runner: Any


class Env:
    """Named simulators and gateways on 127.0.0.1 port 0; ``close()`` stops them all."""

    def __init__(self, geoip_reader: Any) -> None:
        self.geoip_reader = geoip_reader
        self.sims: dict[str, Simulator] = {}
        self.gateways: list[Gateway] = []
        self._reference: dict[bytes, Reply] = {}

    async def sim(self, name: str, **kwargs: Any) -> Simulator:
        kwargs.setdefault("model", "tiny-chat")
        kwargs.setdefault("ttft_ms", 1.0)
        kwargs.setdefault("itl_ms", 1.0)
        sim = Simulator(SimConfig(**kwargs))
        await sim.start(host="127.0.0.1", port=0)
        self.sims[name] = sim
        return sim

    async def gateway(self, data: dict[str, Any]) -> Gateway:
        app = build_app(parse_config(data, "<chaos>"), geoip_reader=self.geoip_reader)
        runner, port = await start_site(app, "127.0.0.1", 0)
        gw = Gateway(f"http://127.0.0.1:{port}", app, runner)
        self.gateways.append(gw)
        return gw

    async def reference(self, body: dict[str, Any], model: str = "tiny-chat") -> Reply:
        """The uninterrupted generation of ``body`` (same model weights: ``model_seed`` 0)."""
        key = orjson.dumps([body, model], option=orjson.OPT_SORT_KEYS)
        if key not in self._reference:
            sim = Simulator(SimConfig(model=model, ttft_ms=0.0, itl_ms=0.0))
            await sim.start(host="127.0.0.1", port=0)
            try:
                self._reference[key] = await call(sim.url, body)
            finally:
                await sim.stop()
        return self._reference[key]

    def clear_faults(self) -> None:
        for sim in self.sims.values():
            sim.set_fault(None)

    def counts(self, attr: str = "requests_total") -> str:
        return " ".join(f"{name}={getattr(sim.stats, attr)}" for name, sim in self.sims.items())

    async def close(self) -> None:
        for gw in self.gateways:
            await gw.runner.cleanup()
        for sim in self.sims.values():
            await sim.stop()


@dataclass
class Reply:
    """What one client saw."""

    status: int
    headers: dict[str, str]
    raw: bytes
    wall_s: float
    stream: bool
    events: list[dict[str, Any]] = field(default_factory=list)
    done: int = 0  # `data: [DONE]` events
    after_done: int = 0  # events after the first [DONE]
    comments: int = 0  # SSE comments (keep-alives)
    malformed: int = 0  # data events that are not JSON

    @property
    def attempts(self) -> int | None:
        value = self.headers.get("x-infercdn-attempts")
        return int(value) if value is not None else None

    @property
    def region(self) -> str | None:
        return self.headers.get("x-infercdn-region")

    @property
    def doc(self) -> dict[str, Any]:
        return orjson.loads(self.raw)

    @property
    def errors(self) -> list[dict[str, Any]]:
        if not self.stream:
            return [self.doc["error"]] if self.status != 200 else []
        return [e["error"] for e in self.events if "error" in e]

    @property
    def text(self) -> str:
        if not self.stream:
            choice = self.doc["choices"][0]
            return choice.get("text") if "text" in choice else choice["message"]["content"]
        out = []
        for event in self.events:
            for choice in event.get("choices") or ():
                out.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
        return "".join(out)

    @property
    def usage(self) -> dict[str, Any] | None:
        if not self.stream:
            return self.doc.get("usage")
        found = [e["usage"] for e in self.events if e.get("usage")]
        assert len(found) <= 1, f"{len(found)} usage blocks in one stream"
        return found[0] if found else None

    @property
    def models(self) -> set[str]:
        if not self.stream:
            return {self.doc["model"]}
        return {e["model"] for e in self.events if "model" in e}


def _parse_sse(reply: Reply) -> None:
    for block in reply.raw.split(b"\n\n"):
        if not block.strip():
            continue
        if reply.done:
            reply.after_done += 1
        if block.startswith(b":"):
            reply.comments += 1
        elif block == b"data: [DONE]":
            reply.done += 1
        elif block.startswith(b"data: "):
            try:
                reply.events.append(orjson.loads(block[6:]))
            except orjson.JSONDecodeError:
                reply.malformed += 1
        else:
            reply.malformed += 1


async def call(url: str, body: dict[str, Any], ip: str = LONDON, timeout: float = CLIENT_TIMEOUT_S) -> Reply:
    """POST ``body`` to ``url`` (chat or completions by its shape), read everything, within ``timeout``."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with aiohttp.ClientSession() as session:
                async with session.post(url + path, json=body, headers={"X-Forwarded-For": ip}) as r:
                    raw = await r.read()
                    status, headers = r.status, {k.lower(): v for k, v in r.headers.items()}
    except TimeoutError:
        raise AssertionError(f"the client call hung for {timeout} s") from None
    stream = headers.get("content-type", "").startswith("text/event-stream")
    reply = Reply(status, headers, raw, time.monotonic() - t0, stream)
    if stream:
        _parse_sse(reply)
    return reply


def assert_complete(reply: Reply, expected: Reply) -> None:
    """A 200 whose content (and usage) is exactly the uninterrupted generation; a stream ends
    with exactly one [DONE] and carries no error and nothing malformed."""
    assert reply.status == 200, (reply.status, reply.raw[:300])
    assert reply.stream == expected.stream
    if reply.stream:
        assert reply.errors == [], reply.errors
        assert reply.malformed == 0, reply.raw
        assert reply.done == 1 and reply.after_done == 0, reply.raw[-300:]
        assert reply.raw.rstrip().endswith(b"data: [DONE]")
        assert b'token_ids":[' not in reply.raw  # the ids the gateway asked for: null, as vLLM sends them unasked
    assert reply.text == expected.text
    assert counts(reply.usage) == counts(expected.usage)


def counts(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The token counts of a usage block (a pool's non-stream answer also has empty detail
    fields that its stream, and so an answer assembled from it, leaves out)."""
    if usage is None:
        return None
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def assert_openai_error(reply: Reply, status: int, type_: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.raw[:300])
    assert not reply.stream
    err = reply.doc["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if type_ is not None:
        assert err["type"] == type_, err
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_stream_error(reply: Reply) -> dict[str, Any]:
    """A stream that could not be completed: one in-band error event, never [DONE]."""
    assert reply.status == 200 and reply.stream
    assert reply.done == 0, "a broken stream was presented as success"
    assert len(reply.errors) == 1 and reply.events[-1].get("error"), reply.raw[-300:]
    return reply.errors[0]


async def healthy_after(env: Env, gw: Gateway, *, clear: bool = False, within_s: float = 0.0) -> Reply:
    """``/healthz`` answers 200 and a normal stream succeeds (at once, or within ``within_s``
    after clearing every fault when the scenario broke every endpoint)."""
    if clear:
        env.clear_faults()
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(2):
            async with session.get(gw.url + "/healthz") as r:
                assert r.status == 200
    expected = await env.reference(STREAM)
    deadline = time.monotonic() + within_s
    while True:
        reply = await call(gw.url, STREAM)
        if reply.status == 200 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    assert_complete(reply, expected)
    return reply


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a counter, a state) every 10 ms; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def observations(gw: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/admin/observations") as r:
            return orjson.loads(await r.read())


@dataclass
class Row:
    """One line of the closing note's table."""

    fault: str
    seen: str
    attempts: str
    wall_s: float
    reply: Reply | None = field(default=None, repr=False)  # the scenario's main client call


def describe(reply: Reply) -> str:
    if reply.stream:
        if reply.errors:
            return f"{reply.status} stream, in-band error `{reply.errors[0].get('code')}`, no [DONE]"
        n = (reply.usage or {}).get("completion_tokens", "?")
        extra = f", {reply.comments} keep-alive comment(s)" if reply.comments else ""
        return f"{reply.status} stream complete ({n} tokens, exact), one [DONE]{extra}"
    if reply.status == 200:
        return "200 complete (exact)"
    err = reply.doc["error"]
    ra = f", Retry-After: {reply.headers['retry-after']}" if "retry-after" in reply.headers else ""
    return f"{reply.status} `{err.get('code') or err.get('type')}`{ra}"


def row(fault: str, reply: Reply, env: Env, note: str = "") -> Row:
    seen = describe(reply) + (f"; {note}" if note else "")
    return Row(fault, seen, f"header {reply.attempts}; sims {env.counts()}", reply.wall_s, reply)


def clone(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out.update(changes)
    return out

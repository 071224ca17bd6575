"""A pool whose events carry fields of the wrong kinds (a number for an id, a list for a role, a
string for a token count, ...): whatever the gateway makes of them — relayed, assembled, resumed on
another pool — it answers, and never with a 500.  The compiled core (infercdn/core.py) checks the
declared type of every value it binds, so a value from the wire must be checked where it enters
typed state; `make test` runs this on both builds."""
from __future__ import annotations

import asyncio
import copy
import random
from typing import Any

import orjson
import pytest

from tests.conftest import base_config
from tests.security.evil import SSE_HEAD, chunk, evil_pools
from tests.security.helpers import CHAT, STREAM, call, openai_error, sse_events

CASES = 40
JUNK: list[Any] = [5, -1, 2.5, True, "x", "", [1], [None], ["x"], {"a": 1}, {}, None]
PATHS = [("id",), ("created",), ("model",), ("object",), ("system_fingerprint",), ("choices",),
         ("choices", 0), ("choices", 0, "index"), ("choices", 0, "delta"), ("choices", 0, "delta", "content"),
         ("choices", 0, "delta", "role"), ("choices", 0, "delta", "reasoning_content"), ("choices", 0, "text"),
         ("choices", 0, "finish_reason"), ("choices", 0, "stop_reason"), ("choices", 0, "token_ids"),
         ("choices", 0, "logprobs"), ("prompt_token_ids",), ("usage",), ("usage", "prompt_tokens"),
         ("usage", "completion_tokens"), ("usage", "total_tokens")]


def good(i: int, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "tiny-chat",
            "system_fingerprint": "vllm-0", "prompt_token_ids": [1, 2],
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": f" t{i}"}, "token_ids": [10 + i],
                         "finish_reason": finish, "stop_reason": None}],
            "usage": {"prompt_tokens": 2, "completion_tokens": i + 1, "total_tokens": i + 3}}


def junk(rng: random.Random) -> dict[str, Any]:
    """A well-formed event with one to three fields replaced by values of another kind."""
    doc = good(1)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(PATHS)
        holder: Any = doc
        for key in path[:-1]:
            try:
                holder = holder[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            key = path[-1]
            if isinstance(holder, dict) or (isinstance(holder, list) and isinstance(key, int) and key < len(holder)):
                holder[key] = copy.deepcopy(rng.choice(JUNK))
    return doc


def event(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


@pytest.mark.parametrize("ending", ["done", "cut"])
async def test_fields_of_the_wrong_kinds_are_never_a_500(ending: str, sim_factory, gateway_factory) -> None:
    """Each case: a good first event, one with junk fields, then the end ([DONE] after a finish)
    or a cut (the stream resumes on the healthy pool, from what the junk pool sent)."""
    rng = random.Random(f"wire-kinds-{ending}")
    cases = [junk(rng) for _ in range(CASES)]
    current: list[dict[str, Any]] = []

    async def script(w: asyncio.StreamWriter) -> None:
        body = SSE_HEAD + chunk(event(good(0))) + chunk(event(current[0]))
        if ending == "done":
            w.write(body + chunk(event(good(2, "stop"))) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        else:
            w.write(body)
            await w.drain()
            w.transport.abort()  # cut: no terminal chunk

    healthy = await sim_factory()
    async with evil_pools(script) as (pool,):
        gw = await gateway_factory(base_config({"eu-west": [pool.url], "us-east": [healthy.url]},
                                               outlier={"consecutive_failures": 1000}))
        seen: dict[str, int] = {}
        for doc in cases:
            current[:] = [doc]
            for body in (CHAT, STREAM):
                status, got, _ = await call(gw.url, {**body, "temperature": 0})
                where = f"case {orjson.dumps(doc).decode()[:300]} stream={body is STREAM}"
                assert status != 500, where
                seen[str(status)] = seen.get(str(status), 0) + 1
                if status != 200:
                    assert status in (502, 503, 504), where
                    openai_error(got)
                elif body is STREAM:
                    last = sse_events(got)[-1]
                    assert last == b"data: [DONE]" or b'"error"' in last, where
                else:
                    assert isinstance(orjson.loads(got), dict), where
    assert seen.get("200", 0) > CASES // 2, seen  # most junk is relayed or resumed past, not refused

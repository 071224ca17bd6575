"""Which continuation a cut stream gets on which target (gateway.forward.continuation): the served model's
own strategy on its endpoints; across models text only (token ids are one model's), a prefill
only where the pool takes one, else the original request regenerated and skipped, and nothing
for a sampled request that cannot be reproduced."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.forward.continuation import ModelChain, Target, continuation_for, later_fallbacks, with_models
from gateway.request import ParsedRequest
from gateway.forward.resume import StreamState
from routing.plan import Candidate, Plan, RequestContext, ScoreComponents
from routing.topology import Endpoint, Location, Pool
from tests.conftest import LONDON, base_config

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "temperature": 0,
        "stream": True}
COMPLETION = {"model": "tiny-chat", "prompt": "once", "max_tokens": 60, "temperature": 0, "stream": True}


def request(body: dict[str, Any]) -> ParsedRequest:
    kind = "chat" if "messages" in body else "completions"
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    return ParsedRequest(kind, path, orjson.dumps(body), body, body["model"], True, "req-1")


def state(kind: str, text: str = "once upon", ids: bool = True) -> StreamState:
    st = StreamState(kind, id="x", created=1, model="tiny-chat", role_sent=True)
    st.prompt_ids = [1, 2, 3] if ids else None
    st.add(text, [7, 8] if ids else None, None, None)
    return st


def cand(model: str, eid: str = "e0", **pool: Any) -> Candidate:
    ep = Endpoint(eid, "http://127.0.0.1:1", f"{model}-pool")
    return Candidate(Pool(f"{model}-pool", "eu-west", {model: model}, (ep,), **pool), ep, model, 0.0,
                     ScoreComponents(0.0, 0.0, 0.0, 0.0))


def plan(model: str, *cands: Candidate) -> Plan:
    return Plan(model, Location(0, 0), cands)


def test_same_model_keeps_its_token_strategy() -> None:
    cont = continuation_for(request(CHAT), state("chat"), Target(cand("tiny-chat"), "tiny-chat"), ["tiny-chat"],
                            "token_ids")
    assert cont is not None and cont.strategy == "tokens" and cont.body["prompt"] == [1, 2, 3, 7, 8]


@pytest.mark.parametrize("body", [CHAT, COMPLETION])
def test_another_model_continues_by_text_never_by_token_ids(body: dict[str, Any]) -> None:
    st = state("chat" if "messages" in body else "completions")
    cont = continuation_for(request(body), st, Target(cand("big-chat"), "big-chat"), ["tiny-chat"], "token_ids")
    assert cont is not None and cont.strategy == "text" and cont.body["model"] == "big-chat"
    assert cont.body["max_tokens"] == 58  # what is left of the client's 60
    if "messages" in body:
        assert cont.body["messages"][-1] == {"role": "assistant", "content": "once upon"}
        assert cont.body["continue_final_message"] is True and cont.body["add_generation_prompt"] is False
    else:
        assert cont.body["prompt"] == "once" + "once upon"


def test_after_a_model_change_even_the_first_model_continues_by_text() -> None:
    # the client's text now comes from two models: no token ids describe it
    target = Target(cand("tiny-chat", "e1"), "tiny-chat")
    cont = continuation_for(request(CHAT), state("chat"), target, ["tiny-chat", "big-chat"], "token_ids")
    assert cont is not None and cont.strategy == "text"


@pytest.mark.parametrize("pool", [{"prefill": False}, {"can_continue": False}])
def test_a_pool_without_prefill_regenerates_a_deterministic_request(pool: dict[str, bool]) -> None:
    cont = continuation_for(request(CHAT), state("chat"), Target(cand("big-chat", **pool), "big-chat"),
                            ["tiny-chat"], "token_ids")
    assert cont is not None and cont.strategy == "regenerate" and cont.skip == "once upon"
    assert cont.body["messages"] == CHAT["messages"] and cont.body["model"] == "big-chat"


def test_a_pool_without_prefill_cannot_continue_a_sampled_request() -> None:
    sampled = request({**CHAT, "temperature": 0.8})
    target = Target(cand("big-chat", prefill=False), "big-chat")
    assert continuation_for(sampled, state("chat"), target, ["tiny-chat"], "token_ids") is None
    # a pool that takes the prefill can: the text so far is what the client has
    prefill = continuation_for(sampled, state("chat"), Target(cand("big-chat"), "big-chat"), ["tiny-chat"], "text")
    assert prefill is not None and prefill.strategy == "text"


def test_text_that_does_not_round_trip_is_regenerated_not_prefilled() -> None:
    st = state("completions", "\ufffd\ufffd head")  # bytes the first model could not render as text
    target = Target(cand("big-chat"), "big-chat")
    cont = continuation_for(request(COMPLETION), st, target, ["tiny-chat"], "token_ids")
    assert cont is not None and cont.strategy == "regenerate" and cont.skip == "\ufffd\ufffd head"
    # a sampled request cannot be regenerated: the prefill is the best there is
    sampled = continuation_for(request({**COMPLETION, "temperature": 1}), st, target, ["tiny-chat"], "token_ids")
    assert sampled is not None and sampled.strategy == "text"


def test_prefill_flag_does_not_change_the_same_model() -> None:
    target = Target(cand("tiny-chat", "e1", prefill=False), "tiny-chat")
    cont = continuation_for(request(CHAT), state("chat"), target, ["tiny-chat"], "text")
    assert cont is not None and cont.strategy == "text"


class Planner:
    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans
        self.asked: list[str] = []

    def plan(self, ctx: RequestContext) -> Plan:
        self.asked.append(ctx.model)
        return self.plans[ctx.model]


def test_chain_walks_the_served_model_then_each_fallback_in_order() -> None:
    a0, b0, c0 = cand("tiny-chat", "a0"), cand("big-chat", "b0"), cand("other", "c0")
    planner = Planner({"big-chat": plan("big-chat", b0), "other": plan("other", c0)})
    ctx = RequestContext(model="tiny-chat", client=Location(0, 0))
    chain = ModelChain("tiny-chat", plan("tiny-chat", a0), ("big-chat", "other"), planner, ctx)
    assert chain.next(set()) == Target(a0, "tiny-chat") and planner.asked == []  # planned when needed only
    assert chain.next({"a0"}) == Target(b0, "big-chat") and planner.asked == ["big-chat"]
    chain.skip(Target(b0, "big-chat"))
    assert chain.next({"a0"}) == Target(c0, "other")
    assert chain.next({"a0", "c0"}) is None and planner.asked == ["big-chat", "other"]


def test_chain_without_fallbacks_stays_on_the_model() -> None:
    a0 = cand("tiny-chat", "a0")
    assert ModelChain("tiny-chat", plan("tiny-chat", a0)).next({"a0"}) is None


def test_later_fallbacks_and_models() -> None:
    assert later_fallbacks(["b", "c", "d"], "a") == ("b", "c", "d")
    assert later_fallbacks(["b", "c", "d"], "c") == ("d",)
    assert with_models(["a"], "b") == ["a", "b"] and with_models(["a", "b"], "b") == ["a", "b"]


@pytest.mark.parametrize("key,continued", [("sk-both", True), ("sk-small", False)])
async def test_the_tenants_models_bound_the_continuation(sim_factory, gateway_factory, key: str,
                                                         continued: bool) -> None:
    """The fallback model continues a cut stream only for a tenant allowed to use it."""
    tiny = await sim_factory(fault="cut_after:tokens=6")
    big = await sim_factory(model="big-chat")
    data = base_config({"eu-west": [tiny.url], "us-east": [big.url]})
    data["pools"][1]["models"] = ["big-chat"]
    data["models"]["tiny-chat"] = {"fallbacks": ["big-chat"]}
    data["auth"] = {"tenants": [{"name": "small", "api_keys": ["sk-small"], "models": ["tiny-chat"]},
                                {"name": "both", "api_keys": ["sk-both"], "models": ["tiny-chat", "big-chat"]}]}
    gw = await gateway_factory(data)
    body = {**CHAT, "max_tokens": 16, "stream_options": {"include_usage": True}}
    headers = {"X-Forwarded-For": LONDON, "Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            raw = await r.read()
    assert (raw.count(b"data: [DONE]") == 1) is continued, raw[-300:]
    assert (b"stream_interrupted" in raw) is not continued
    assert big.stats.requests_total == (1 if continued else 0)


async def test_max_resumes_bounds_the_walk_across_models(sim_factory, gateway_factory) -> None:
    tiny = await sim_factory(fault="cut_after:tokens=6")
    big = await sim_factory(model="big-chat")
    data = base_config({"eu-west": [tiny.url], "us-east": [big.url]}, retry={"max_resumes": 0})
    data["pools"][1]["models"] = ["big-chat"]
    data["models"]["tiny-chat"] = {"fallbacks": ["big-chat"]}
    gw = await gateway_factory(data)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=CHAT,
                                headers={"X-Forwarded-For": LONDON}) as r:
            raw = await r.read()
    assert b"data: [DONE]" not in raw and b"cut after 6 token(s)" in raw, raw[-300:]
    assert big.stats.requests_total == 0

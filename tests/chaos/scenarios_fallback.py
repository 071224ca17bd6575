"""Issue 9's scenarios: one-endpoint pools with a fallback model, refusals, same-endpoint
retries, stall and resume bounds.  Registered in ``tests.chaos.scenarios.SCENARIOS`` (that
module imports this one at its end), so ``python -m tests.chaos.report`` lists them."""
from __future__ import annotations

from tests.chaos.helpers import (FAST, STREAM, Env, Row, assert_complete, assert_openai_error, call, clone, config,
                                 healthy_after, row)
from tests.chaos.scenarios import eu_faulty, scenario


@scenario("stream stall after 20 tokens, adaptive stall timeout (auto, fallback 5 s)")
async def stall_adaptive(env: Env) -> Row:
    auto = {"floor_s": 0.3, "ceiling_s": 5, "min_samples": 3, "fallback_s": 5}
    models = {"*": {**FAST, "stall_timeout_s": "auto", "stall_auto": auto}}
    gw, eu, us = await eu_faulty(env, "", models=models)
    for _ in range(3):  # healthy streams teach the gateway eu-west's gaps between chunks
        assert_complete(await call(gw.url, STREAM), await env.reference(STREAM))
    eu.set_fault("stall_after:tokens=20")
    body = clone(STREAM, max_tokens=60)
    r = await call(gw.url, body)
    assert_complete(r, await env.reference(body))
    assert r.wall_s < auto["fallback_s"], (r.attempts, r.wall_s)  # the learnt timeout (the floor), not 5 s
    assert (eu.stats.requests_total, us.stats.requests_total) == (4, 1)
    out = row("stream stall after 20 tokens, adaptive stall timeout (auto, fallback 5 s)", r, env,
              "stall seen within the learnt 0.3 s, resumed in us-east")
    await healthy_after(env, gw, clear=True)
    return out


@scenario("stream cut twice, retry.max_resumes: 1")
async def resumes_capped(env: Env) -> Row:
    eu = await env.sim("eu-west", fault="cut_after:tokens=5")
    us = await env.sim("us-east", fault="cut_after:tokens=3")
    ap = await env.sim("ap-southeast")
    gw = await env.gateway(config({"eu-west": [eu.url], "us-east": [us.url], "ap-southeast": [ap.url]},
                                  retry={"max_resumes": 1}))
    r = await call(gw.url, STREAM)
    assert r.status == 200 and r.done == 0 and len(r.errors) == 1  # the in-band error, no [DONE]
    assert (eu.stats.requests_total, us.stats.requests_total, ap.stats.requests_total) == (1, 1, 0)
    out = row("stream cut twice, retry.max_resumes: 1", r, env, "one resume, then the in-band error")
    await healthy_after(env, gw, clear=True)
    return out


async def _with_fallback_model(env: Env, fault: str, one_pool: bool = False, **model: object) -> tuple[object, ...]:
    """tiny-chat on eu-west (with ``fault``) and, unless ``one_pool``, us-east; other-model on
    its own one-endpoint pool as tiny-chat's fallback."""
    eu = await env.sim("eu-west", fault=fault)
    us = None if one_pool else await env.sim("us-east")
    other = await env.sim("other-model", model="other-model")
    data = config({"eu-west": [eu.url]} if one_pool else {"eu-west": [eu.url], "us-east": [us.url]},
                  models={"*": dict(FAST), "tiny-chat": {**FAST, "fallbacks": ["other-model"], **model}})
    data["pools"].append({"name": "other-pool", "region": "ap-southeast", "models": ["other-model"],
                          "endpoints": [{"id": "other-0", "url": other.url}]})
    return await env.gateway(data), eu, us, other


async def _only_endpoint(env: Env, fault: str, model: str, attempts: int, asked: tuple[int, int],
                         fault_name: str, what: str) -> Row:
    """tiny-chat on one endpoint with ``fault``, other-model as its fallback: the answer comes
    from ``model`` after ``attempts`` attempts, the two sims asked ``asked`` times."""
    gw, eu, _, other = await _with_fallback_model(env, fault, one_pool=True)
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(clone(STREAM, model=model), model=model))
    assert r.models == {model} and r.attempts == attempts, (r.models, r.attempts)
    assert (eu.stats.requests_total, other.stats.requests_total) == asked
    out = row(fault_name, r, env, what)
    await healthy_after(env, gw, clear=True)
    return out


@scenario("429 Retry-After: 2 on the only endpoint, fallback model configured")
async def throttled_only_endpoint(env: Env) -> Row:
    out = await _only_endpoint(env, "429:retry_after=2,times=1", "tiny-chat", 2, (2, 0), throttled_only_endpoint.fault,
                               "waited out once, then served by the same endpoint")
    assert out.wall_s >= 2.0  # one wait of the Retry-After
    return out


@scenario("500 once on the only endpoint, fallback model configured")
async def error_once_only_endpoint(env: Env) -> Row:
    return await _only_endpoint(env, "500:times=1", "tiny-chat", 2, (2, 0), error_once_only_endpoint.fault,
                                "retried once on the same endpoint after backoff")


@scenario("500 always on the only endpoint, fallback model configured")
async def error_always_only_endpoint(env: Env) -> Row:  # one retry there, never a loop
    return await _only_endpoint(env, "500", "other-model", 3, (2, 1), error_always_only_endpoint.fault,
                                "one retry there, then the fallback model")


@scenario("400 content policy, one-endpoint pool, fallback model configured")
async def content_policy_not_to_fallback(env: Env) -> Row:
    gw, eu, _, other = await _with_fallback_model(env, "content_policy", one_pool=True)
    r = await call(gw.url, STREAM)
    assert_openai_error(r, 400, code="content_policy_violation")
    assert r.attempts == 1 and (eu.stats.requests_total, other.stats.requests_total) == (1, 0)
    out = row("400 content policy, one-endpoint pool, fallback model configured", r, env,
              "returned, one attempt, the fallback model not asked")
    await healthy_after(env, gw, clear=True)
    return out


@scenario("400 content policy, fallback_on: [content_policy]")
async def content_policy_fallback(env: Env) -> Row:
    gw, eu, us, other = await _with_fallback_model(env, "content_policy", fallback_on=["content_policy"])
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(clone(STREAM, model="other-model"), model="other-model"))
    assert r.models == {"other-model"} and r.headers["x-infercdn-model"] == "other-model"
    assert r.attempts == 2
    assert (eu.stats.requests_total, us.stats.requests_total, other.stats.requests_total) == (1, 0, 1)
    out = row("400 content policy, fallback_on: [content_policy]", r, env, "served by other-model, named as such")
    await healthy_after(env, gw, clear=True)
    return out

from tests.chaos import scenarios_crossmodel  # noqa: E402,F401  (registers issue 9 item 1: continuation on the fallback model)

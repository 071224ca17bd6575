"""One scenario per fault: set up simulators and a gateway, make the client call(s), assert what
the client saw, what the simulators counted and that the gateway is healthy afterwards; return
the row for the closing note's table.  Run by the tests and by ``python -m tests.chaos.report``.

The client is in London: its nearest region is eu-west, the next us-east.  Faults that would
also fail the simulator's ``/health`` take ``health=0`` where the scenario is about the request
path (so the request really meets the fault instead of being routed around it by a probe)."""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import aiohttp

from gateway.state import OBSERVATIONS
from tests.chaos.helpers import (CHAT, FAST, STREAM, Env, Reply, Row, assert_complete, assert_openai_error, call,
                                 clone, config, healthy_after, observations, row, wait_until)
from tests.conftest import LONDON, SINGAPORE, US

Scenario = Callable[[Env], Awaitable[Row]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fault: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[fault] = fn
        fn.fault = fault  # type: ignore[attr-defined]
        return fn
    return register


async def eu_faulty(env: Env, fault: str, **sections: object) -> tuple[object, object, object]:
    """eu-west (nearest to London) with ``fault``, us-east healthy, and a gateway over both."""
    eu = await env.sim("eu-west", fault=fault)
    us = await env.sim("us-east")
    gw = await env.gateway(config({"eu-west": [eu.url], "us-east": [us.url]}, **sections))
    return gw, eu, us


@scenario("429, no Retry-After")
async def throttled(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "429")
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.attempts == 2 and r.region == "us-east"
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("429, no Retry-After", r, env, "next region answered")
    await healthy_after(env, gw)
    return out


@scenario("429 with Retry-After: 2")
async def throttled_retry_after(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "429:retry_after=2")
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.attempts == 2 and r.region == "us-east"
    again = await call(gw.url, CHAT)  # Retry-After is honoured: eu-west is not asked again
    assert again.status == 200 and again.attempts == 1
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 2)
    out = row("429 with Retry-After: 2", r, env, "next region; the throttled one skipped for 2 s")
    await healthy_after(env, gw)
    return out


@scenario("429 everywhere")
async def throttled_everywhere(env: Env) -> Row:
    eu = await env.sim("eu-west", fault="429:retry_after=2")
    us = await env.sim("us-east", fault="429:retry_after=3")
    gw = await env.gateway(config({"eu-west": [eu.url], "us-east": [us.url]}, retry={"max_retry_after_s": 0.5}))
    r = await call(gw.url, CHAT)
    assert_openai_error(r, 429, "rate_limit_error")
    assert r.headers["retry-after"] == "2"  # the shortest wait any pool asked for
    assert r.attempts == 2
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("429 everywhere", r, env)
    await healthy_after(env, gw, clear=True, within_s=3)
    return out


@scenario("500 once, then healthy")
async def error_once(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "500_once")
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.attempts == 2 and r.region == "us-east"
    assert (eu.stats.requests_total, eu.stats.requests_failed, us.stats.requests_total) == (1, 1, 1)
    out = row("500 once, then healthy", r, env, "next region; the next request needs 1 attempt")
    after = await healthy_after(env, gw)
    assert after.attempts == 1
    return out


@scenario("503 always (one region)")
async def unavailable(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "503:health=0",
                                 outlier={"consecutive_failures": 1, "max_ejected_percent": 100})
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.attempts == 2 and r.region == "us-east"
    later = [await call(gw.url, CHAT) for _ in range(3)]
    assert [x.attempts for x in later] == [1, 1, 1]  # ejected after one failure: not asked again
    assert eu.stats.requests_total == 1 and us.stats.requests_total == 4
    out = row("503 always (one region)", r, env, "next region; then ejected (later requests: 1 attempt)")
    await healthy_after(env, gw)
    return out


@scenario("503 everywhere")
async def unavailable_everywhere(env: Env) -> Row:
    eu = await env.sim("eu-west", fault="503:health=0")
    us = await env.sim("us-east", fault="503:health=0")
    gw = await env.gateway(config({"eu-west": [eu.url], "us-east": [us.url]}))
    r = await call(gw.url, CHAT)
    err = assert_openai_error(r, 503, "service_unavailable_error")
    assert "2 attempt(s)" in err["message"] and "eu-west-0" not in err["message"]  # ids stay in the log
    assert r.attempts == 2 and (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("503 everywhere", r, env, "the message counts the attempts (the log names them)")
    await healthy_after(env, gw, clear=True, within_s=3)
    return out


@scenario("reset before headers")
async def reset(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "reset_before_headers:health=0")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.attempts == 2 and r.region == "us-east"
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("reset before headers", r, env, "next region")
    await healthy_after(env, gw)
    return out


@scenario("hang (accept, never answer), stream")
async def hang(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "hang:health=0")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.attempts == 2 and r.region == "us-east"
    assert FAST["ttft_deadline_s"] <= r.wall_s < FAST["ttft_deadline_s"] + 1.0
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)  # the hung request was dropped
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("hang (accept, never answer), stream", r, env, "TTFT deadline 0.5 s, next region")
    await healthy_after(env, gw)
    return out


@scenario("hang, non-stream")
async def hang_non_stream(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "hang:health=0")
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))  # asked upstream as a stream: the TTFT deadline applies
    assert r.attempts == 2 and r.region == "us-east"
    assert FAST["ttft_deadline_s"] <= r.wall_s < FAST["ttft_deadline_s"] + 1.0
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("hang, non-stream", r, env, "served from an upstream stream: TTFT deadline 0.5 s, next region")
    await healthy_after(env, gw)
    return out


@scenario("hang, non-stream, passthrough (total deadline 1 s)")
async def hang_non_stream_passthrough(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "hang:health=0",
                                 models={"*": {**FAST, "total_deadline_s": 1.0, "non_stream": "passthrough"}})
    r = await call(gw.url, CHAT)
    assert r.status in (503, 504)
    err = assert_openai_error(r, r.status)
    assert 1.0 <= r.wall_s < 2.0  # bounded by the total deadline
    assert eu.stats.requests_total == 1 and us.stats.requests_total == 0  # no per-attempt deadline
    out = row("hang, non-stream, passthrough (total deadline 1 s)", r, env, f"message: \"{err['message']}\"")
    await healthy_after(env, gw)
    return out


@scenario("slow first token (2 s > deadline 0.5 s)")
async def slow_first_token(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "slow_first_token:seconds=2")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.attempts == 2 and r.region == "us-east"
    assert r.wall_s < FAST["ttft_deadline_s"] + 1.0
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)
    out = row("slow first token (2 s > deadline 0.5 s)", r, env, "next region; the slow one cancelled")
    await healthy_after(env, gw)
    return out


@scenario("slow first token (0.6 s < deadline 3 s)")
async def slow_first_token_keepalive(env: Env) -> Row:
    eu = await env.sim("eu-west", fault="slow_first_token:seconds=0.6")
    gw = await env.gateway(config({"eu-west": [eu.url]}, gateway={"keepalive_comment_s": 0.1},
                                  models={"*": {**FAST, "ttft_deadline_s": 3}}))
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.comments >= 3  # keep-alive comments every 0.1 s while waiting
    assert eu.stats.requests_total == 1
    env.clear_faults()
    out = row("slow first token (0.6 s < deadline 3 s)", r, env, "served by the slow region")
    await healthy_after(env, gw)
    return out


@scenario("stream cut after 5 tokens")
async def cut(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "cut_after:tokens=5")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.region == "eu-west"  # it started there; the head was sent before the cut
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    assert us.stats.paths["/v1/completions"] == 1  # a token-level continuation
    out = row("stream cut after 5 tokens", r, env, "resumed in us-east")
    await healthy_after(env, gw)
    return out


@scenario("non-stream answer cut after 5 tokens")
async def cut_non_stream(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "cut_after:tokens=5")
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.attempts == 2 and r.region == "us-east"  # the pool that finished the answer
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    assert us.stats.paths["/v1/completions"] == 1  # a token-level continuation, not a new generation
    out = row("non-stream answer cut after 5 tokens", r, env, "resumed in us-east, one JSON answer")
    await healthy_after(env, gw)
    return out


@scenario("stream stall after 5 tokens")
async def stall(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "stall_after:tokens=5")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert FAST["stall_timeout_s"] <= r.wall_s < FAST["stall_timeout_s"] + 1.0
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)  # the silent upstream was closed
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("stream stall after 5 tokens", r, env, "stall watchdog 0.5 s, resumed in us-east")
    await healthy_after(env, gw)
    return out


@scenario("one malformed SSE event")
async def malformed(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "malformed_event:at=3")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))  # includes: nothing malformed reached the client
    assert eu.stats.faults["malformed_event"] == 1
    assert r.attempts == 1 and (eu.stats.requests_total, us.stats.requests_total) == (1, 0)
    out = row("one malformed SSE event", r, env, "the bad event dropped")
    await healthy_after(env, gw)
    return out


@scenario("stream without [DONE]")
async def no_done(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "no_done")
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.attempts == 1 and (eu.stats.requests_total, us.stats.requests_total) == (1, 0)
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as m:
        lines = [x for x in (await m.text()).splitlines() if x.startswith("infercdn_upstream_attempts_total")]
    # only its ending was lost: not a failed attempt against the endpoint (outlier detection, breaker)
    assert len(lines) == 1 and 'outcome="success"' in lines[0], lines
    assert (await observations(gw))["eu-west-0"]["breaker"] == "closed"
    out = row("stream without [DONE]", r, env, "generation had finished: the gateway wrote the ending, "
              "the endpoint not blamed")
    await healthy_after(env, gw)
    return out


@scenario("400 context_length_exceeded")
async def context_length(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "context_length:openai=1")
    r = await call(gw.url, CHAT)
    assert_openai_error(r, 400, code="context_length_exceeded")
    assert r.attempts == 1 and (eu.stats.requests_total, us.stats.requests_total) == (1, 0)
    out = row("400 context_length_exceeded", r, env, "returned unchanged (same bytes as the pool's), not retried")
    direct = await call(eu.url, CHAT)  # what the pool itself answers
    assert r.raw == direct.raw  # returned unchanged
    await healthy_after(env, gw, clear=True)
    return out


@scenario("400 context_length_exceeded, larger_context configured")
async def context_length_larger(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "context_length:openai=1",
                                 models={"*": {**FAST, "larger_context": ["us-east-pool"]}})
    r = await call(gw.url, CHAT)
    assert_complete(r, await env.reference(CHAT))
    assert r.headers["x-infercdn-pool"] == "us-east-pool" and r.attempts == 2
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("400 context_length_exceeded, larger_context configured", r, env, "served by the larger pool")
    await healthy_after(env, gw, clear=True)
    return out


@scenario("400 content policy")
async def content_policy(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "content_policy")
    r = await call(gw.url, CHAT)
    assert_openai_error(r, 400, code="content_policy_violation")
    assert r.attempts == 1 and (eu.stats.requests_total, us.stats.requests_total) == (1, 0)  # same model: no retry
    out = row("400 content policy", r, env, "returned, not retried on the same model")
    await healthy_after(env, gw, clear=True)
    return out


async def _flapping(env: Env, passive: bool) -> Row:
    fault = "flap:down_s=1,health=0" if passive else "flap:down_s=1"
    gw, eu, us = await eu_faulty(env, fault,
                                 outlier={"consecutive_failures": 1, "base_ejection_s": 0.3, "max_ejected_percent": 100},
                                 breaker={"failures": 1, "open_s": 0.3})
    expected = await env.reference(CHAT)
    t0 = time.monotonic()
    during = []
    while time.monotonic() - t0 < 0.9:  # requests while the endpoint flaps
        during.append(await call(gw.url, CHAT))
        await asyncio.sleep(0.05)  # pacing, not waiting for anything
    for r in during:
        assert_complete(r, expected)
    assert {r.region for r in during} == {"us-east"}
    flap_hits = eu.stats.requests_total
    # at most the first failure and a few half-open trials (the open period doubles each time)
    assert flap_hits <= 4 and sum(r.attempts == 2 for r in during) == flap_hits
    after = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # afterwards the endpoint is used again
        after = await call(gw.url, CHAT)
        if after.region == "eu-west":
            break
        await asyncio.sleep(0.05)
    state = (await observations(gw))["eu-west-0"]
    assert after is not None and after.region == "eu-west" and after.status == 200, \
        f"eu-west not used again 2 s after the flap ended: {state}"
    assert state["breaker"] == "closed" and not state["ejected"] and state["healthy"], state
    how = "ejection and breaker, then half-open trials" if passive else "its probes failed"
    out = row(f"flapping (503 for 1 s, then healthy){', passive detection only' if passive else ''}",
              during[0], env, f"{len(during)} requests during the flap all served by us-east "
              f"({flap_hits} tried eu-west first; {how}); eu-west used again "
              f"{time.monotonic() - t0:.1f} s after the flap began, breaker closed")
    await healthy_after(env, gw)
    return out


@scenario("flapping (503 for 1 s, then healthy)")
async def flapping(env: Env) -> Row:
    return await _flapping(env, passive=False)


@scenario("flapping, passive detection only (/health stays 200)")
async def flapping_passive(env: Env) -> Row:
    return await _flapping(env, passive=True)


@scenario("hedging (first region 2 s to first token, hedge after 50 ms)")
async def hedging(env: Env) -> Row:
    gw, eu, us = await eu_faulty(env, "slow_first_token:seconds=2",
                                 models={"*": {**FAST, "ttft_deadline_s": 5, "hedge": {"enabled": True, "after_ms": 50}}})
    r = await call(gw.url, STREAM)
    assert_complete(r, await env.reference(STREAM))
    assert r.region == "us-east" and r.wall_s < 1.0
    await eu.wait_for(lambda s: s.requests_cancelled == 1, 2)  # the loser is cancelled upstream
    assert (eu.stats.requests_total, us.stats.requests_total) == (1, 1)
    out = row("hedging (first region 2 s to first token, hedge after 50 ms)", r, env,
               "hedge in us-east won; the loser cancelled upstream")
    await healthy_after(env, gw)
    return out


@scenario("regional outage under load (40 streams, eu-west killed mid-run)")
async def regional_outage(env: Env) -> Row:
    eu = [await env.sim(f"eu-west-{i}", itl_ms=5.0) for i in range(2)]
    us = await env.sim("us-east", itl_ms=5.0)
    ap = await env.sim("ap-southeast", itl_ms=5.0)
    gw = await env.gateway(config({"eu-west": [s.url for s in eu], "us-east": [us.url], "ap-southeast": [ap.url]},
                                  models={"*": {**FAST, "total_deadline_s": 20}}))
    bodies = [clone(STREAM, max_tokens=30, messages=[{"role": "user", "content": f"story number {k}"}])
              for k in range(4)]
    expected = [await env.reference(b) for b in bodies]
    clients = [LONDON, LONDON, LONDON, US, SINGAPORE]  # most of the load lands on eu-west
    before, after = 24, 16

    async def client(i: int, delay: float) -> Reply:
        await asyncio.sleep(delay)  # arrivals spread out, as real traffic
        return await call(gw.url, bodies[i % 4], clients[i % len(clients)], timeout=10)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(client(i, i * 0.005)) for i in range(before)]
    # wait for streams that are well into their answer (5+ tokens: the gateway has read their
    # first ones), so that the kill cuts some mid-answer, not only before their first token
    await wait_until(lambda: sum(g.generated >= 5 for s in eu for g in s.core.active) >= 2,
                     5, "eu-west streams to be mid-answer")
    # the region dies at one instant: both simulators' live streams are cut in the same step of
    # the loop (no stream can start on one while the other is being stopped), then they stop
    # listening: new connections are refused
    streaming_in_eu = sum(len(s.core.active) for s in eu)
    # what the gateway held open there at that instant: a stream whose generation had just ended
    # but whose last bytes it had not read yet is cut too, and is resumed as well
    obs = gw.app[OBSERVATIONS]
    open_in_eu = sum(obs.view(f"eu-west-{i}").inflight for i in range(len(eu)))
    for s in eu:
        s.core.abort_live()
    for s in eu:
        await s.stop()
    killed_at = time.monotonic() - t0
    # requests that arrive during the outage, before any probe has noticed it
    tasks += [asyncio.create_task(client(before + i, i * 0.005)) for i in range(after)]
    replies = await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    lost = []
    for i, r in enumerate(replies):
        try:
            assert_complete(r, expected[i % 4])
        except AssertionError as exc:
            lost.append((i, str(exc)[:200]))
    assert not lost, f"{len(lost)} of {len(replies)} requests lost: {lost[:3]}"
    resumed = us.stats.paths["/v1/completions"] + ap.stats.paths["/v1/completions"]  # token-level continuations
    assert 1 <= resumed <= open_in_eu
    eu_total = sum(s.stats.requests_total for s in eu)
    out = Row("regional outage under load (40 streams, eu-west killed mid-run)",
              f"{len(replies)}/{len(replies)} streams complete and exact, 0 lost: {streaming_in_eu} running in "
              f"eu-west at the kill ({killed_at:.2f} s), {resumed} of them resumed mid-answer; {after} more "
              f"arrived during the outage",
              f"sims eu-west={eu_total} us-east={us.stats.requests_total} ap-southeast={ap.stats.requests_total}",
              wall)
    await healthy_after(env, gw)
    return out


@scenario("total outage with a small retry budget (ratio 0.1)")
async def retry_budget(env: Env) -> Row:
    sims = [await env.sim(f"{region}-{i}", fault="503:health=0")
            for region in ("eu-west", "us-east", "ap-southeast") for i in range(2)]
    urls = {region: [s.url for s in sims[k * 2:k * 2 + 2]] for k, region in enumerate(("eu-west", "us-east", "ap-southeast"))}
    gw = await env.gateway(config(urls, budget={"ratio": 0.1, "min_per_s": 0, "window_s": 10},
                                  breaker={"enabled": False}, outlier={"consecutive_failures": 1000}))
    n = 40
    t0 = time.monotonic()
    replies = await asyncio.gather(*(call(gw.url, CHAT, (LONDON, US, SINGAPORE)[i % 3]) for i in range(n)))
    wall = time.monotonic() - t0
    for r in replies:
        assert_openai_error(r, 503, "service_unavailable_error")
    upstream = sum(s.stats.requests_total for s in sims)
    # without a budget: 40 x 4 attempts = 160; with ratio 0.1: 40 first attempts + at most 4 extra
    assert n <= upstream <= n + math.ceil(0.1 * n), upstream
    out = Row("total outage with a small retry budget (ratio 0.1)",
               f"{n}/{n} clean 503 `no_healthy_upstream` (40 concurrent)",
               f"{upstream} upstream requests in all (unbudgeted: {n * 4}); headers "
               f"{sorted({r.attempts for r in replies})}", wall)
    await healthy_after(env, gw, clear=True, within_s=3)
    return out


def describe_row(r: Row) -> str:
    return f"| {r.fault} | {r.seen} | {r.attempts} | {r.wall_s:.2f} s |"


__all__ = ["SCENARIOS", "describe_row", "scenario"]


from tests.chaos import scenarios_fallback  # noqa: E402,F401  (registers issue 9's scenarios)

"""The deadlines a candidate gets (gateway.deadlines) and how the plan explanation shows them."""
from __future__ import annotations

import random

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.deadlines import candidate_deadlines
from gateway.snapshot import make_snapshot, observation_params
from gateway.state import OBSERVATIONS, Runtime
from infercdn.commands.route import plan_from_config, render
from routing.deadlines import Deadline
from routing.observations import Observations
from routing.plan import RequestContext
from routing.topology import Location
from tests.conftest import LONDON, base_config
from tests.routing.helpers import FakeClock

AUTO = {"ttft_deadline_s": "auto", "stall_timeout_s": "auto",
        "ttft_auto": {"factor": 3, "floor_s": 0.5, "ceiling_s": 20, "min_samples": 4, "fallback_s": 25},
        "stall_auto": {"factor": 2, "floor_s": 1, "ceiling_s": 20, "min_samples": 2, "fallback_s": 8}}


def _setup(pool_ttft: float | None = None):  # type: ignore[no-untyped-def]
    data = base_config({"eu-west": ["http://127.0.0.1:9"], "us-east": ["http://127.0.0.1:10"]},
                       models={"*": AUTO})
    if pool_ttft is not None:
        data["pools"][1]["ttft_deadline_s"] = pool_ttft
    cfg = parse_config(data)
    runtime = Runtime(clock=FakeClock(), rng=random.Random(0))
    obs = Observations(observation_params(cfg), runtime.clock)
    snapshot = make_snapshot(cfg, obs, runtime, {})
    plan = snapshot.planner.plan(RequestContext(model="tiny-chat", client=Location(50.1, 8.7)))
    return cfg, obs, plan


def test_each_candidate_gets_its_pools_deadlines() -> None:
    cfg, obs, plan = _setup(pool_ttft=3.0)
    for ms in (100.0, 200.0, 300.0, 400.0):
        obs.record_ttft("eu-west-0", ms)
        obs.record_stream_gaps("eu-west-0", ms * 10, gaps=20)
    deadlines = candidate_deadlines(cfg, "tiny-chat", obs)
    by_pool = {c.pool.name: deadlines(c) for c in plan.candidates}
    ttft = by_pool["eu-west-pool"].ttft
    assert ttft.seconds == pytest.approx(1.2) and ttft == Deadline(ttft.seconds, "auto", 4, 0.4)
    assert by_pool["eu-west-pool"].stall == Deadline(8.0, "auto", 4, 4.0)
    assert by_pool["us-east-pool"].ttft == Deadline(3.0, "pool")  # its own ttft_deadline_s
    assert by_pool["us-east-pool"].stall == Deadline(8.0, "fallback", 0)  # no streams seen there


def test_fixed_deadlines_are_reported_as_fixed() -> None:
    cfg = parse_config(base_config({"eu-west": ["http://127.0.0.1:9"]}))  # "*": 5 s and 5 s
    _, obs, plan = _setup()
    d = candidate_deadlines(cfg, "tiny-chat", obs)(plan.candidates[0])
    assert d.ttft == Deadline(5.0, "fixed") and d.stall == Deadline(5.0, "fixed")


def test_route_command_explains_the_deadlines() -> None:
    cfg = parse_config(base_config({"eu-west": ["http://127.0.0.1:9"]}, models={"*": AUTO}))
    plan = plan_from_config(cfg, None, "tiny-chat")
    assert plan["candidates"][0]["deadlines"] == {"ttft": {"s": 25.0, "source": "fallback", "samples": 0},
                                                  "stall": {"s": 8.0, "source": "fallback", "samples": 0}}
    text = render(plan)
    assert "first token within 25 s (fallback: 0 samples, too few), stall after 8 s (fallback: 0 samples" in text


async def test_admin_plan_shows_deadlines_from_the_gateways_observations(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, models={"*": AUTO}))
    obs = gw.app[OBSERVATIONS]
    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    async with aiohttp.ClientSession() as s:
        for _ in range(4):  # successful streams: each records its time to first token
            async with s.post(gw.url + "/v1/chat/completions", json=chat, headers={"X-Forwarded-For": LONDON}) as r:
                assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
        for _ in range(2):
            obs.record_stream_gaps("eu-west-0", 2000.0, gaps=10)
        async with s.get(gw.url + "/admin/plan", params={"model": "tiny-chat", "ip": LONDON}) as r:
            plan = await r.json()
    d = plan["candidates"][0]["deadlines"]
    assert d["ttft"]["source"] == "auto" and d["ttft"]["samples"] == 4
    assert d["ttft"]["s"] == max(0.5, 3 * d["ttft"]["p99_s"])  # tiny sim TTFTs: mostly the floor
    # 6 streams: the 4 relayed (each measured by the relay's GapMeter) and the 2 recorded here
    assert d["stall"] == {"s": 4.0, "source": "auto", "samples": 6, "p99_s": 2.0}

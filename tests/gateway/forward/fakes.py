"""Fakes for the forwarding path's parts: real observations, metrics and retry budget on a fake
clock, a one-pool topology, and a dialer whose attempts answer what a test scripts."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.config import UpstreamLimitsCfg, parse_config
from gateway.forward.exchange import Exchange
from gateway.request import parse
from gateway.forward.dialer import Dialer
from gateway.forward.ledger import Ledger
from gateway.forward.upstream import DEFAULT_LIMITS, Failed, Ready, Refused, UpstreamConn, UpstreamPool
from gateway.metrics import GatewayMetrics, build_metrics
from routing.budget import RetryBudget
from routing.observations import ObservationParams, Observations
from routing.plan import Candidate, ScoreComponents
from routing.topology import Endpoint, Location, Pool, Region, Topology
from tests.conftest import base_config
from tests.routing.helpers import FakeClock

HERE = Location(50.11, 8.68, "DE", "EU", "Frankfurt")
WALL = 1_800_000_000.0


def topology(endpoints: int = 3, pool: str = "eu-a", model: str = "m") -> Topology:
    eps = tuple(Endpoint(f"{pool}-{k}", f"http://127.0.0.1:{9000 + k}", pool) for k in range(endpoints))
    region = Region("eu-west", HERE)
    return Topology({"eu-west": region}, (Pool(pool, "eu-west", {model: f"up-{model}"}, eps),), HERE, "eu-west")


def candidates(topo: Topology, model: str = "m") -> list[Candidate]:
    pool = topo.pools[0]
    zero = ScoreComponents(0.0, 0.0, 0.0, 0.0)
    return [Candidate(pool, ep, pool.models[model], float(k), zero) for k, ep in enumerate(pool.endpoints)]


def observations(topo: Topology, clock: FakeClock) -> Observations:
    obs = Observations(ObservationParams(), clock)
    obs.sync(topo)
    return obs


def ledger(obs: Observations, clock: FakeClock, metrics: GatewayMetrics | None = None,
           budget: RetryBudget | None = None) -> Ledger:
    return Ledger(obs, metrics or build_metrics(), budget or RetryBudget(0.2, 10.0, 10.0, clock), clock,
                  lambda: WALL)


Answer = Ready | Failed | Refused
Script = Callable[[str], Awaitable[Answer]]


class ScriptedDialer(Dialer):
    """The real dialer (its leases, its classification of a 404) whose connections are replaced
    by ``script``: what the endpoint at a URL answers."""

    def __init__(self, obs: Observations, clock: FakeClock, script: Script) -> None:
        super().__init__(1.0, obs, clock)
        self.script = script
        self.calls: list[str] = []

    async def open(self, url: str, body: bytes, headers: dict[str, str], stream: bool, first_token_s: float,
                   limits: UpstreamLimitsCfg = DEFAULT_LIMITS) -> Answer:
        self.calls.append(url)
        return await self.script(url)


def inflight(obs: Observations, endpoint_id: str) -> int:
    return obs.view(endpoint_id).inflight


class _Transport:
    """Under a real connection: what its end does to the socket, counted."""

    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted > 0

    def get_extra_info(self, name: str) -> None:
        return None


def ready(first: bytes = b'data: {"choices":[{"text":"a"}]}\n\n') -> Ready:
    """An answer on a real upstream connection whose exchange is complete (released, it goes
    back to its pool; aborted, its transport is aborted): see :func:`fate`."""
    conn = UpstreamConn(UpstreamPool(1.0), ("http", "127.0.0.1", 9))
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.complete = conn.keep_alive = True
    return Ready(conn, first, 0.01, {})


def fate(answer: Ready) -> tuple[int, int]:
    """(times its connection went back to the pool, times it was aborted)."""
    conn = answer.conn
    transport = conn.transport
    assert isinstance(transport, _Transport)
    return len(conn.pool.idle.get(conn.key, [])), transport.aborted


def exchange(model: str = "m", stream: bool = True, deadline_s: float = 30.0, **sections: Any) -> Exchange:
    """An exchange for a chat request to ``model`` under the tests' base config (+ ``sections``)."""
    cfg = parse_config(base_config({"eu-west": ["http://127.0.0.1:9"]}, **sections), "<test>")
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    req = parse("chat", "/v1/chat/completions", orjson.dumps(body), "rid", started=0.0)
    return Exchange(req, cfg, cfg.model_cfg(model), asyncio.get_running_loop().time() + deadline_s)

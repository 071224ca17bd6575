from __future__ import annotations

import json

import pytest

from routing.breaker import BreakerParams
from routing.observations import EndpointView, ObservationParams, Observations
from routing.outcome import Outcome
from tests.routing.helpers import make_topology

PARAMS = ObservationParams(half_life_s=10.0, rise=2, fall=2, consecutive_failures=3,
                           base_ejection_s=30.0, max_ejection_s=300.0, max_ejected_percent=50.0,
                           load_stale_s=5.0)


@pytest.fixture
def events() -> list[tuple[str, str, str, str]]:
    return []


@pytest.fixture
def obs(clock, topology, events) -> Observations:  # type: ignore[no-untyped-def]
    o = Observations(PARAMS, clock, lambda *a: events.append(a))
    o.sync(topology)
    return o


def test_defaults_are_sensible() -> None:
    p = ObservationParams()
    assert p.half_life_s > 0 and p.rise >= 1 and p.fall >= 1 and p.consecutive_failures >= 1
    assert 0 < p.base_ejection_s <= p.max_ejection_s and 0 < p.max_ejected_percent <= 100
    assert p.load_stale_s > 0


def test_fresh_endpoint_view(obs) -> None:  # type: ignore[no-untyped-def]
    v = obs.view("us-east-0")
    assert v == EndpointView(healthy=True, ejected=False, ejected_until=None, latency_ms=None, inflight=0,
                             running=None, waiting=None, kv_usage=None, load_fresh=False,
                             consecutive_failures=0, error_rate=0.0)
    assert sorted(obs.endpoint_ids()) == sorted(make_topology().endpoints)


def test_probes_drive_health_and_latency(obs, events) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("eu-west-0", True, 12.0)
    assert obs.view("eu-west-0").latency_ms == 12.0
    obs.record_probe("eu-west-0", False, None)
    obs.record_probe("eu-west-0", False, None)
    assert not obs.view("eu-west-0").healthy
    assert ("eu-west-0", "health", "healthy", "unhealthy") in events
    assert obs.route_inputs("eu-west-0")[0] == "unhealthy"


def test_outcomes_eject_and_ttfb_feeds_latency(obs, clock, events) -> None:  # type: ignore[no-untyped-def]
    obs.record_outcome("us-east-1", Outcome.SUCCESS, ttfb_ms=90.0)
    assert obs.view("us-east-1").latency_ms == 90.0
    obs.record_outcome("us-east-1", Outcome.HTTP_5XX, ttfb_ms=5000.0)  # failures do not teach latency
    assert obs.view("us-east-1").latency_ms == 90.0
    assert obs.view("us-east-1").consecutive_failures == 1
    obs.record_outcome("us-east-1", Outcome.RESET)
    obs.record_outcome("us-east-1", Outcome.TIMEOUT)
    v = obs.view("us-east-1")
    assert v.ejected and v.ejected_until == clock.now + 30.0 and v.healthy
    assert v.error_rate == 0.0  # 4 requests: below the minimum volume, ejection does the work
    obs.record_outcome("us-east-1", Outcome.SUCCESS)
    assert obs.view("us-east-1").error_rate == pytest.approx(3 / 5)
    assert obs.route_inputs("us-east-1")[0] == "ejected"
    assert ("us-east-1", "outlier", "active", "ejected") in events
    clock.advance(30.0)
    assert not obs.view("us-east-1").ejected


def test_load_fresh_then_stale_is_unknown_not_idle(obs, clock) -> None:  # type: ignore[no-untyped-def]
    obs.record_load("ap-southeast-0", running=4, waiting=7, kv_usage=0.8)
    v = obs.view("ap-southeast-0")
    assert (v.running, v.waiting, v.kv_usage, v.load_fresh) == (4, 7, 0.8, True)
    clock.advance(5.0)
    assert obs.view("ap-southeast-0").load_fresh
    clock.advance(0.1)
    v = obs.view("ap-southeast-0")
    assert (v.running, v.waiting, v.kv_usage, v.load_fresh) == (None, None, None, False)
    assert obs.route_inputs("ap-southeast-0")[3:6] == (None, None, None)
    obs.record_load("ap-southeast-0", None, None, None)  # a scrape that told nothing
    assert not obs.view("ap-southeast-0").load_fresh


def test_inflight_never_negative(obs) -> None:  # type: ignore[no-untyped-def]
    obs.acquire("eu-west-1")
    obs.acquire("eu-west-1")
    assert obs.view("eu-west-1").inflight == 2
    for _ in range(4):
        obs.release("eu-west-1")
    assert obs.view("eu-west-1").inflight == 0


def test_unknown_ids_do_not_crash(obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("ghost", False, 1.0)
    obs.record_outcome("ghost", Outcome.HTTP_5XX)
    obs.record_load("ghost", 1, 2, 0.3)
    obs.acquire("ghost")
    obs.release("ghost")
    assert obs.view("ghost").healthy and obs.view("ghost").inflight == 0
    assert obs.route_inputs("ghost")[0] is None
    assert "ghost" not in obs.snapshot()


def test_sync_keeps_remaining_drops_removed_adds_new(obs, clock) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("eu-west-0", True, 15.0)
    obs.acquire("eu-west-0")
    for _ in range(3):
        obs.record_outcome("eu-west-0", Outcome.CONNECT_ERROR)
    obs.record_probe("us-east-0", True, 80.0)
    smaller = make_topology()
    pools = tuple(p for p in smaller.pools if p.name != "us-east-a")
    from routing.topology import Topology
    obs.sync(Topology(smaller.regions, pools, smaller.gateway_location))
    v = obs.view("eu-west-0")
    assert (v.latency_ms, v.inflight, v.ejected) == (15.0, 1, True)
    assert "us-east-0" not in obs.snapshot()
    obs.sync(make_topology())  # added back: starts afresh
    assert obs.view("us-east-0").latency_ms is None


def test_snapshot_is_json_ready(obs) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("eu-west-0", True, 15.0)
    obs.record_load("eu-west-0", 1, 0, 0.1)
    snap = json.loads(json.dumps(obs.snapshot()))
    e = snap["eu-west-0"]
    assert e["health"] == "healthy" and e["pool"] == "eu-west-a" and e["latency_ms"] == 15.0
    assert e["waiting"] == 0 and e["load_fresh"] is True and e["times_ejected"] == 0
    assert e["breaker"] == "closed" and e["throttled_until"] is None and e["breaker_trials"] == 0
    assert snap["us-east-0"]["health"] == "unknown" and snap["us-east-0"]["healthy"] is True


def test_breaker_opens_half_opens_and_closes_through_observations(clock, topology) -> None:  # type: ignore[no-untyped-def]
    events: list[tuple[str, str, str, str]] = []
    params = ObservationParams(consecutive_failures=100,
                               breaker=BreakerParams(failures=2, open_s=5.0, half_open_probes=1))
    obs = Observations(params, clock, lambda *a: events.append(a))
    obs.sync(topology)
    obs.record_outcome("eu-west-0", Outcome.HTTP_5XX)
    obs.record_outcome("eu-west-0", Outcome.RESET)
    assert obs.view("eu-west-0").breaker == "open" and obs.route_inputs("eu-west-0")[0] == "breaker_open"
    clock.advance(5.0)
    assert obs.route_inputs("eu-west-0")[0] is None and obs.view("eu-west-0").breaker == "half_open"
    obs.acquire("eu-west-0")  # the one trial
    assert obs.route_inputs("eu-west-0")[0] == "breaker_half_open"
    assert obs.snapshot()["eu-west-0"]["breaker_trials"] == 1
    obs.release("eu-west-0")
    obs.record_outcome("eu-west-0", Outcome.SUCCESS)
    assert obs.view("eu-west-0").breaker == "closed" and obs.route_inputs("eu-west-0")[0] is None
    assert [e for e in events if e[1] == "breaker"] == [
        ("eu-west-0", "breaker", "closed", "open"), ("eu-west-0", "breaker", "open", "half_open"),
        ("eu-west-0", "breaker", "half_open", "closed")]


def test_cancelled_trial_frees_its_slot_without_deciding(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(breaker=BreakerParams(failures=1, half_open_probes=2)), clock)
    obs.sync(topology)
    obs.record_outcome("us-east-1", Outcome.TIMEOUT)
    clock.advance(5.0)
    obs.acquire("us-east-1")
    obs.acquire("us-east-1")
    assert obs.route_inputs("us-east-1")[0] == "breaker_half_open"
    obs.release("us-east-1")
    obs.record_outcome("us-east-1", Outcome.CANCELLED)
    assert obs.route_inputs("us-east-1")[0] is None and obs.view("us-east-1").breaker == "half_open"


def test_ejection_is_reported_before_the_breaker(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(consecutive_failures=1, breaker=BreakerParams(failures=1)), clock)
    obs.sync(topology)
    obs.record_outcome("eu-west-1", Outcome.HTTP_5XX)
    assert obs.route_inputs("eu-west-1")[0] == "ejected"
    v = obs.view("eu-west-1")
    assert v.ejected and v.breaker == "open"


def test_disabled_breaker(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(consecutive_failures=100, breaker=BreakerParams(enabled=False)), clock)
    obs.sync(topology)
    for _ in range(20):
        obs.record_outcome("eu-west-1", Outcome.HTTP_5XX)
    assert obs.route_inputs("eu-west-1")[0] is None and obs.view("eu-west-1").breaker == "closed"


def test_throttle_until_it_expires(obs, clock) -> None:  # type: ignore[no-untyped-def]
    obs.throttle("ap-southeast-1", 2.5)
    assert obs.route_inputs("ap-southeast-1")[0] == "throttled"
    assert obs.view("ap-southeast-1").throttled_until == clock.now + 2.5
    obs.throttle("ap-southeast-1", 1.0)  # a shorter one does not shorten it
    clock.advance(2.4)
    assert obs.route_inputs("ap-southeast-1")[0] == "throttled"
    clock.advance(0.1)
    assert obs.route_inputs("ap-southeast-1")[0] is None
    assert obs.view("ap-southeast-1").throttled_until is None
    assert obs.snapshot()["ap-southeast-1"]["throttled_until"] is None


def test_throttle_is_capped_and_ignores_nonsense(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(max_throttle_s=60.0), clock)
    obs.sync(topology)
    obs.throttle("eu-west-0", 86400.0)
    assert obs.view("eu-west-0").throttled_until == clock.now + 60.0
    for bad in (0.0, -5.0, float("nan")):
        obs.throttle("eu-west-1", bad)
    assert obs.view("eu-west-1").throttled_until is None
    obs.throttle("ghost", 5.0)


def test_ttft_quantiles_per_pool(obs) -> None:  # type: ignore[no-untyped-def]
    for ms in range(1, 20):
        obs.record_ttft("eu-west-0" if ms % 2 else "eu-west-1", float(ms))
    assert obs.ttft_quantile("eu-west-a", 0.95) is None  # 19 samples: not enough
    obs.record_ttft("eu-west-0", 20.0)
    assert obs.ttft_quantile("eu-west-a", 0.95) == 19.0  # nearest rank: ceil(0.95 * 20) = 19th
    assert obs.ttft_quantile("eu-west-a", 0.5) == 10.0
    assert obs.ttft_quantile("us-east-a", 0.95) is None and obs.ttft_quantile("nope", 0.95) is None
    for ms in range(1, 101):
        obs.record_ttft("us-east-1", float(ms))
    assert obs.ttft_quantile("us-east-a", 0.95) == 95.0
    obs.record_ttft("ghost", 1.0)
    obs.record_ttft("us-east-1", float("nan"))
    obs.sync(make_topology())  # a reload keeps the windows of pools that remain
    assert obs.ttft_quantile("us-east-a", 0.95) == 95.0


def test_ttft_window_is_bounded(clock, topology) -> None:  # type: ignore[no-untyped-def]
    obs = Observations(ObservationParams(ttft_window=50, ttft_min_samples=20), clock)
    obs.sync(topology)
    for ms in range(1000):
        obs.record_ttft("eu-west-0", float(ms))
    assert obs.ttft_quantile("eu-west-a", 0.0) == 950.0  # only the last 50 remain
    assert obs.ttft_quantile("eu-west-a", 1.0) == 999.0


def test_set_params_applies_to_every_endpoint_and_keeps_its_state(obs, clock) -> None:  # type: ignore[no-untyped-def]
    obs.record_probe("eu-west-0", True, 12.0)
    obs.record_outcome("us-east-1", Outcome.HTTP_5XX)
    obs.record_outcome("us-east-1", Outcome.HTTP_5XX)  # 2 of the 3 that eject
    obs.set_params(ObservationParams(half_life_s=2.0, rise=5, fall=4, consecutive_failures=10,
                                     breaker=BreakerParams(failures=9), load_stale_s=1.0))
    obs.record_outcome("us-east-1", Outcome.HTTP_5XX)
    v = obs.view("us-east-1")
    assert not v.ejected and v.consecutive_failures == 3  # the count survived; 10 now eject
    assert obs.view("eu-west-0").latency_ms == 12.0
    obs.record_load("ap-southeast-0", running=1, waiting=0, kv_usage=0.1)
    clock.advance(1.5)
    assert not obs.view("ap-southeast-0").load_fresh  # the new staleness limit
    obs.record_probe("eu-west-0", False)
    obs.record_probe("eu-west-0", False)
    assert obs.view("eu-west-0").healthy  # fall is 4 now

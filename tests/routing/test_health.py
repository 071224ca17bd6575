from __future__ import annotations

import pytest

from routing.health import HealthCheck, HealthState


@pytest.fixture
def events() -> list[tuple[str, str, str, str]]:
    return []


def test_unknown_is_served_then_first_probe_decides(events) -> None:  # type: ignore[no-untyped-def]
    hc = HealthCheck("e1", rise=2, fall=3, on_transition=lambda *a: events.append(a))
    assert hc.state is HealthState.UNKNOWN and hc.healthy
    hc.record(False)
    assert hc.state is HealthState.UNHEALTHY and not hc.healthy
    assert events == [("e1", "health", "unknown", "unhealthy")]


def test_first_success_marks_healthy(events) -> None:  # type: ignore[no-untyped-def]
    hc = HealthCheck("e1", rise=3, fall=3, on_transition=lambda *a: events.append(a))
    assert hc.record(True) is HealthState.HEALTHY
    assert events == [("e1", "health", "unknown", "healthy")]


def test_fall_threshold(events) -> None:  # type: ignore[no-untyped-def]
    hc = HealthCheck("e1", rise=2, fall=3, on_transition=lambda *a: events.append(a))
    hc.record(True)
    hc.record(False)
    hc.record(False)
    assert hc.healthy  # two failures < fall
    hc.record(True)  # streak broken
    hc.record(False)
    hc.record(False)
    assert hc.healthy
    hc.record(False)
    assert hc.state is HealthState.UNHEALTHY
    assert events[-1] == ("e1", "health", "healthy", "unhealthy")


def test_rise_threshold(events) -> None:  # type: ignore[no-untyped-def]
    hc = HealthCheck("e1", rise=2, fall=1, on_transition=lambda *a: events.append(a))
    hc.record(False)
    hc.record(True)
    assert not hc.healthy
    hc.record(False)
    hc.record(True)
    assert not hc.healthy
    hc.record(True)
    assert hc.healthy
    assert [e[2:] for e in events] == [("unknown", "unhealthy"), ("unhealthy", "healthy")]


def test_no_callback_without_change_and_no_callback_ok() -> None:
    seen: list[tuple[str, str, str, str]] = []
    hc = HealthCheck("e1", rise=1, fall=1, on_transition=lambda *a: seen.append(a))
    for _ in range(5):
        hc.record(True)
    assert len(seen) == 1
    HealthCheck("e2", 1, 1).record(False)  # no callback given: fine
    with pytest.raises(ValueError):
        HealthCheck("e3", 0, 1)

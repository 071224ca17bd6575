"""Labelled metrics whose hot calls skip prometheus_client's per-call checks count exactly as
the library's own methods do."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from gateway.metrics import (Child, CounterChild, DirectCounterChild, DirectHistogramChild, HistogramChild,
                             build_metrics)


def test_fast_inc_and_observe_match_the_librarys() -> None:
    values = [0.0, 0.001, 0.005, 0.0051, 0.3, 7.0, 119.9, 120.0, 5000.0]
    m = build_metrics()
    reference = CollectorRegistry()
    counter = Counter("infercdn_requests", "Client requests by final status", ["model", "region", "status"],
                      registry=reference)
    hist = Histogram("infercdn_request_duration_seconds", "Client request duration", ["model", "stream"],
                     buckets=m.request_seconds._upper_bounds[:-1], registry=reference)
    for v in values:
        m.of(m.requests, "a", "r", "200").inc()
        m.of(m.requests, "a", "r", "200").inc(2)
        counter.labels("a", "r", "200").inc()
        counter.labels("a", "r", "200").inc(2)
        m.of(m.request_seconds, "a", "true").observe(v)
        hist.labels("a", "true").observe(v)
    ours = [line for line in m.render().decode().splitlines()
            if line.startswith(("infercdn_requests_total", "infercdn_request_duration_seconds_"))
            and "_created" not in line]
    theirs = [line for line in generate_latest(reference).decode().splitlines()
              if not line.startswith("#") and "_created" not in line]
    assert ours == theirs and len(ours) == 1 + len(m.request_seconds._upper_bounds) + 2


def test_a_negative_increment_is_the_librarys_error_and_other_calls_reach_the_child() -> None:
    m = build_metrics()
    child = m.of(m.requests, "a", "r", "200")
    assert isinstance(child, Child)
    with pytest.raises(ValueError):
        child.inc(-1)
    assert child._value.get() == 0  # nothing was added
    gauge = m.of(m.inflight, "e1")  # gauges are the library's own children
    gauge.inc()
    gauge.dec()
    assert gauge._value.get() == 0


def test_values_of_another_kind_keep_their_own_locked_inc() -> None:
    """Single-process values are added to directly (the event loop's thread is their only
    writer); any other value class — the multiprocess mode's file-backed one — keeps its inc."""
    m = build_metrics()
    assert isinstance(m.of(m.requests, "a", "r", "200"), DirectCounterChild)
    assert isinstance(m.of(m.request_seconds, "a", "true"), DirectHistogramChild)

    class FileBacked:
        def __init__(self) -> None:
            self.calls: list[float] = []

        def inc(self, amount: float) -> None:
            self.calls.append(amount)

    child = m.requests.labels("b", "r", "200")
    child._value = FileBacked()
    wrapped = Child.of(child)
    assert type(wrapped) is CounterChild
    wrapped.inc(2)
    assert child._value.calls == [2]
    hist = m.request_seconds.labels("b", "true")
    hist._sum = FileBacked()
    assert type(Child.of(hist)) is HistogramChild


def test_no_module_of_the_gateway_starts_a_thread() -> None:
    """What the direct children rely on: the event loop's thread is the only writer."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "gateway"
    words = ("threading", "Thread(", "to_thread", "run_in_executor", "ThreadPoolExecutor")
    found = [f"{p.relative_to(root.parent)}: {w}" for p in sorted(root.rglob("*.py"))
             for w in words if w in p.read_text()]
    assert found == []

"""The gateway reads the time and draws random numbers through its Runtime (as routing/ does
through its injected clock): what it reports and stamps follows an injected clock."""
from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

from gateway.app import build_app
from gateway.config import parse_config
from gateway.server import drain, start_site
from gateway.state import DRAINING, STATUS, Runtime
from tests.conftest import base_config
from tests.routing.helpers import FakeClock

ROOT = Path(__file__).resolve().parents[2]
# modules that still read the time themselves (request.py: a ParsedRequest's default start,
# for requests not made by the handlers).  app.py makes the production Runtime, state.py holds
# its defaults.
FORWARD = {"request.py"}
ALLOWED = {
    "app.py": {"time.monotonic", "random.Random"},  # the Runtime of a real gateway
    "state.py": {"time.time", "random.Random"},  # Runtime.wall's default, Runtime.rng's type
    "access.py": {"time.monotonic"},  # a request's duration: its Note is started in handlers.py (forward)
    "workers.py": {"time.monotonic"},  # the supervisor process (no app, no Runtime): restart back-off
}
READS = {"time.monotonic", "time.time", "time.perf_counter", "random.random", "random.Random", "random.uniform"}


def time_reads(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in READS:
                found.add(name)
    return found


def test_gateway_modules_take_time_and_randomness_from_the_runtime() -> None:
    wrong = {p.name: sorted(time_reads(p) - ALLOWED.get(p.name, set()))
             for p in sorted((ROOT / "gateway").rglob("*.py")) if p.name not in FORWARD}
    assert {name: reads for name, reads in wrong.items() if reads} == {}


def test_the_scan_sees_a_clock_read(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import time\n\ndef f(clock=time.monotonic):\n    return time.time()\n")
    assert time_reads(src) == {"time.monotonic", "time.time"}


async def test_status_and_drain_follow_the_injected_clock(geoip_reader: Any) -> None:
    clock = FakeClock(500.0)
    runtime = Runtime(clock=clock, rng=random.Random(0), wall=lambda: 1_800_000_000.5)
    cfg = parse_config(base_config({"eu-west": ["http://127.0.0.1:9"]}), "<test>")
    app = build_app(cfg, geoip_reader=geoip_reader, runtime=runtime)
    runner, _ = await start_site(app, "127.0.0.1", 0)
    try:
        assert app[STATUS].build(app)["time"] == 1_800_000_000.5
        clock.advance(7.0)
    finally:
        await drain(app, runner, cfg, notice=False)
    assert app[DRAINING].since == 507.0

"""Shared helpers for the routing tests: a fake clock and a three-region topology."""
from __future__ import annotations

from routing.topology import Endpoint, Location, Pool, Region, Topology

VIRGINIA = Location(38.9, -77.0, "US", "NA", "Ashburn")
FRANKFURT = Location(50.11, 8.68, "DE", "EU", "Frankfurt")
SINGAPORE = Location(1.35, 103.82, "SG", "AS", "Singapore")


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_topology(gateway: Location = FRANKFURT, *, draining: str | None = None) -> Topology:
    """us-east, eu-west, ap-southeast; one pool each ("<region>-a") of two endpoints serving
    tiny-chat; eu-west also carries tag soc2 and jurisdiction EU."""
    regions = {
        "us-east": Region("us-east", VIRGINIA, jurisdiction="US"),
        "eu-west": Region("eu-west", FRANKFURT, jurisdiction="EU", tags=frozenset({"gdpr"})),
        "ap-southeast": Region("ap-southeast", SINGAPORE, jurisdiction="SG"),
    }
    pools = []
    for i, name in enumerate(regions):
        eps = tuple(Endpoint(f"{name}-{k}", f"http://127.0.0.1:{8100 + 2 * i + k}", f"{name}-a")
                    for k in range(2))
        pools.append(Pool(f"{name}-a", name, {"tiny-chat": f"tiny-{name}"}, eps,
                          tags=frozenset({"soc2"}) if name == "eu-west" else frozenset(),
                          draining=(name == draining)))
    return Topology(regions, tuple(pools), gateway, gateway_region="eu-west")

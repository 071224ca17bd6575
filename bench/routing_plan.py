"""Time ``Planner.plan()``: 3 regions x 1 pool x 2 endpoints, every endpoint measured and
loaded, one client location (the geo cache warm, as in steady state).

    python bench/routing_plan.py [--n 20000] [--repeat 5]

Prints the best of ``--repeat`` runs in microseconds per plan (the least disturbed run), and
the median.  Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.observations import ObservationParams, Observations  # noqa: E402
from routing.plan import RequestContext, RoutingParams  # noqa: E402
from routing.planner import Planner  # noqa: E402
from routing.topology import Endpoint, Location, Pool, Region, Topology  # noqa: E402

REGIONS = {
    "us-east": Location(38.9, -77.0, "US", "NA"),
    "eu-west": Location(50.11, 8.68, "DE", "EU"),
    "ap-southeast": Location(1.35, 103.82, "SG", "AS"),
}


def build() -> tuple[Planner, RequestContext]:
    pools = tuple(
        Pool(f"{name}-a", name, {"tiny-chat": "tiny"},
             tuple(Endpoint(f"{name}-{k}", f"http://127.0.0.1:{8100 + 2 * i + k}", f"{name}-a") for k in range(2)))
        for i, name in enumerate(REGIONS))
    topology = Topology({n: Region(n, loc) for n, loc in REGIONS.items()}, pools, REGIONS["eu-west"])
    obs = Observations(ObservationParams(), time.monotonic)
    obs.sync(topology)
    for eid in topology.endpoints:
        obs.record_probe(eid, True, 20.0)
        obs.record_load(eid, 2, 1, 0.3)
    planner = Planner(topology, obs, RoutingParams(), random.Random(1))
    return planner, RequestContext(model="tiny-chat", client=Location(1.29, 103.85, "SG", "AS"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="plans per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs")
    args = ap.parse_args()
    planner, ctx = build()
    plan = planner.plan
    for _ in range(1000):  # warm-up
        plan(ctx)
    runs: list[float] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(args.n):
            plan(ctx)
        runs.append((time.perf_counter() - t0) / args.n * 1e6)
    print(f"plan(): 3 pools x 2 endpoints, {args.n} plans x {args.repeat} runs: "
          f"best {min(runs):.1f} us, median {statistics.median(runs):.1f} us per plan")


if __name__ == "__main__":
    main()

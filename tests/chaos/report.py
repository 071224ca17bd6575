"""Run every chaos scenario once and print the closing note's Markdown table:
fault → what the client saw, attempts, wall time.

    python -m tests.chaos.report

A scenario whose assertions fail is still listed, with the failure as what the client saw."""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import geoip2.database

from tests.chaos.helpers import Env, Row
from tests.chaos.scenarios import SCENARIOS, describe_row
from tests.geoip_fixture import write_test_city_db


async def run_all() -> tuple[list[Row], int]:
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        reader = geoip2.database.Reader(write_test_city_db(Path(tmp) / "test-city.mmdb"))
        try:
            for fault, fn in SCENARIOS.items():
                env = Env(reader)
                t0 = time.monotonic()
                try:
                    rows.append(await fn(env))
                except Exception as exc:  # report it and go on with the next scenario
                    failed += 1
                    message = " ".join(str(exc).split())[:160] or type(exc).__name__
                    rows.append(Row(fault, f"**FAILED**: {message}", env.counts(), time.monotonic() - t0))
                finally:
                    await env.close()
        finally:
            reader.close()
    return rows, failed


def main() -> int:
    rows, failed = asyncio.run(run_all())
    print("| fault | what the client saw | attempts (x-infercdn-attempts; requests each simulator received) | wall time |")
    print("|---|---|---|---|")
    for r in rows:
        print(describe_row(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

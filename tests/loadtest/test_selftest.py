from loadtest import fastserver
from loadtest.config import LoadConfig
from loadtest.selftest import measure


async def test_fast_server_and_measure() -> None:
    server, url = await fastserver.start(0)
    try:
        for stream in (True, False):
            cfg = LoadConfig(url=url, model="fast", concurrency=4, requests=40, stream=stream,
                             max_tokens="16").validate()
            row = await measure(cfg, "fast")
            assert row["errors"] == 0 and row["requests_per_s"] > 0 and row["cpu_us_per_request"] > 0
    finally:
        server.close()
        await server.wait_closed()

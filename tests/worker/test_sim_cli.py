"""``infercdn worker sim``: arguments, and a real process that prints its URL and stops on SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
import pytest

from worker.sim import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_map_onto_the_config() -> None:
    args = parse("--port", "0", "--model", "m", "--ttft-ms", "1", "--itl-ms", "2", "--rtt-ms", "3",
                 "--max-num-seqs", "4", "--seed", "5", "--tokens-per-chunk", "2", "--fault", "429:retry_after=1")
    cfg = cli.config_from_args(args)
    assert (args.host, args.port) == ("127.0.0.1", 0)
    assert (cfg.model, cfg.ttft_ms, cfg.itl_ms, cfg.rtt_ms, cfg.max_num_seqs, cfg.seed) == ("m", 1, 2, 3, 4, 5)
    assert (cfg.tokens_per_chunk, cfg.fault) == (2, "429:retry_after=1")


def test_a_bad_fault_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--fault", "explode")
    assert exit_info.value.code == 2 and "unknown fault kind" in capsys.readouterr().err


def test_a_bad_config_value_exits_2() -> None:
    assert cli.main(parse("--max-num-seqs", "0")) == 2


DIRECT = ("import argparse, sys\nfrom worker.sim import cli\np = argparse.ArgumentParser()\n"
          "cli.add_arguments(p)\nsys.exit(cli.main(p.parse_args(sys.argv[1:])))")


@pytest.mark.parametrize("launcher", [["-m", "infercdn.cli", "worker", "sim"], ["-c", DIRECT]],
                         ids=["infercdn-cli", "module-main"])
async def test_process_serves_until_sigterm(launcher: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *launcher, "--port", "0", "--ttft-ms", "0", "--fault", "503",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{url}/health") as resp:
                assert resp.status == 503
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

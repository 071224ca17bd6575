import argparse
import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from infercdn.cli import build_parser
from loadtest import cli

from .conftest import SSEServer, start_server


@pytest.fixture
def threaded_server() -> Iterator[SSEServer]:
    """The SSE server on its own loop in a thread, so ``cli.main`` can run its own loop."""
    server = SSEServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["runner"] = loop.run_until_complete(start_server(server))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield server
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(["loadtest", *argv]).parse_args(["loadtest", *argv])


def test_main_end_to_end(threaded_server: SSEServer, tmp_path, capsys) -> None:
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    args = _parse(["--url", threaded_server.url, "--concurrency", "4", "--requests", "20", "--max-tokens",
                   "uniform:2:8", "--clients", "singapore:3,london:2,virginia:1", "--seed", "1",
                   "--json", str(out_json), "--html", str(out_html), "--header", "X-Test: yes", "--no-progress"])
    assert cli.main(args) == 0
    report = json.loads(out_json.read_text())
    assert report["model"] == "tiny-chat"  # discovered from /v1/models
    assert report["totals"]["ok"] == 20 and report["config"]["headers"] == {"X-Test": "yes"}
    assert "<svg" in out_html.read_text()
    assert "requests 20  ok 20" in capsys.readouterr().out


def test_progress_line_goes_to_stderr(threaded_server: SSEServer, capsys) -> None:
    threaded_server.itl_s = 0.05
    args = _parse(["--url", threaded_server.url, "--model", "m", "--concurrency", "2", "--duration", "1.3",
                   "--max-tokens", "4"])
    assert cli.main(args) == 0
    assert "req/s" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--concurrency", "2"], "bounded"),
    (["--requests", "2"], "exactly one"),
    (["--rate", "5", "--concurrency", "2", "--requests", "2"], "exactly one"),
    (["--concurrency", "2", "--requests", "2", "--max-tokens", "uniform:9"], "uniform"),
    (["--concurrency", "2", "--requests", "2", "--clients", "atlantis"], "atlantis"),
    (["--concurrency", "2", "--requests", "2", "--header", "novalue"], "K:V"),
])
def test_bad_options_exit_2(argv: list[str], needle: str, capsys) -> None:
    assert cli.main(_parse(["--url", "http://127.0.0.1:9", "--model", "m", *argv])) == 2
    assert needle in capsys.readouterr().err


def test_unreachable_target_without_model_exits_1(capsys) -> None:
    assert cli.main(_parse(["--url", "http://127.0.0.1:9", "--concurrency", "1", "--requests", "1"])) == 1
    assert "cannot reach" in capsys.readouterr().err

"""The simulator answers the table of :mod:`tests.worker.vllm_table` with real vLLM 0.32's shapes:
the same status, content type and ``Allow``, the same JSON paths and types (ids, texts, numbers
and logprob values aside), the same event names; and both answers satisfy the invariants of
:func:`tests.worker.vllm_shapes.check_invariants` (choice numbering, one finish per choice,
usage arithmetic).  The vLLM side is recorded in ``fixtures/vllm/`` by
``record_vllm_fixtures.py``; vLLM need not run."""
from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest

from tests.worker.record_vllm_fixtures import FIXTURES, parse_stream
from tests.worker.vllm_shapes import answer_schema, check_invariants
from tests.worker.vllm_table import TABLE
from worker.sim import Simulator

# where the simulated model's text cannot produce the same value types as the tiny model's
PATHS_ONLY = {"completion_stop_n2_stream"}  # vLLM's first tokens carry no stop string: null and str
# error messages the simulator words differently on purpose (docs/simulator.md)
OTHER_MESSAGE = {"error_context_length"}  # max_tokens > max_model_len: "maximum context length"


async def ask(url: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """The simulator's answer, in the recorder's format."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.request(method, url + path, json=body) as resp:
        raw = await resp.read()
    out: dict[str, Any] = {"status": resp.status, "content_type": resp.headers.get("Content-Type", "")}
    if "Allow" in resp.headers:
        out["allow"] = resp.headers["Allow"]
    if out["content_type"].startswith("text/event-stream"):
        out["events"], out["done"] = parse_stream(raw.decode())
    else:
        out["body"] = json.loads(raw) if raw else None
    return out


def names(events: list[dict[str, Any]]) -> list[str | None]:
    """The event names in order, a run of the same name counted once (text deltas)."""
    out: list[str | None] = []
    for e in events:
        if not out or out[-1] != e["event"]:
            out.append(e["event"])
    return out


def digits_out(message: str) -> str:
    """An error message without its numbers (the vocabulary sizes differ)."""
    return re.sub(r"\d+", "N", message)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_every_table_entry_has_a_fixture() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
async def test_simulator_answers_like_vllm(sim: Simulator, name: str) -> None:
    real = fixture(name)
    method, path, body, _ = TABLE[name]
    assert real["request"] == {"method": method, "path": path, "body": body}, "re-record: the table changed"
    mine = await ask(sim.url, method, path, body)
    assert (mine["status"], mine.get("allow")) == (real["status"], real.get("allow"))
    assert mine["content_type"].split(";")[0] == real["content_type"].split(";")[0]
    assert ("events" in mine) == ("events" in real) and mine.get("done") == real.get("done")
    types = name not in PATHS_ONLY
    assert answer_schema(mine, types=types) == answer_schema(real, types=types)
    if "events" in real:
        assert names(mine["events"]) == names(real["events"])
    real_error, my_error = error_of(real), error_of(mine)
    if real["status"] == 200 and real_error is None and path in ("/v1/completions", "/v1/chat/completions"):
        check_invariants(real, body or {})
        check_invariants(mine, body or {})
    if real_error is not None and name not in OTHER_MESSAGE:
        assert my_error is not None
        assert digits_out(my_error["message"]) == digits_out(real_error["message"])
        assert my_error["param"] == real_error["param"]


def error_of(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The error object of an answer: its body's, or a stream's error event (vLLM sends errors
    found by the engine that way, with status 200)."""
    if "events" in answer:
        return next((e["data"]["error"] for e in answer["events"] if "error" in e["data"]), None)
    body = answer.get("body")
    return body.get("error") if isinstance(body, dict) else None


async def test_sample_i_is_seeded_seed_plus_i_in_vllm_and_the_simulator(sim: Simulator) -> None:
    """vLLM seeds choice ``i`` of ``n`` with ``seed + i``; the simulator does the same."""
    for answer in (fixture("completion_n2"), fixture("completion_seed8")):
        assert answer["request"]["body"]["prompt"] == fixture("completion_n2")["request"]["body"]["prompt"]
    assert (fixture("completion_n2")["body"]["choices"][1]["text"]
            == fixture("completion_seed8")["body"]["choices"][0]["text"])
    mine = [await ask(sim.url, *TABLE[name][:3]) for name in ("completion_n2", "completion_seed8")]
    assert mine[0]["body"]["choices"][1]["text"] == mine[1]["body"]["choices"][0]["text"]


async def test_return_token_ids_drops_the_echo_in_vllm_and_the_simulator(sim: Simulator) -> None:
    """vLLM 0.32 leaves the prompt out of an echo when token ids are returned."""
    def text(answer: dict[str, Any]) -> str:
        return answer["body"]["choices"][0]["text"]

    assert text(fixture("completion_echo_return_token_ids")) == text(fixture("completion"))
    assert text(fixture("completion_echo")) == "Once upon a time" + text(fixture("completion"))
    mine = {name: await ask(sim.url, *TABLE[name][:3])
            for name in ("completion", "completion_echo", "completion_echo_return_token_ids")}
    assert text(mine["completion_echo_return_token_ids"]) == text(mine["completion"])
    assert text(mine["completion_echo"]) == "Once upon a time" + text(mine["completion"])

"""Property-based fuzz of request bodies and headers against a live gateway on the simulator.

For every generated request: no 5xx from the gateway itself (a 502/503/504 must be the
documented ``no_healthy_upstream`` error, and the simulator is healthy), an answer within a
bound (no hang), an OpenAI-format error body for every 4xx, and a 200 stream that ends with
``[DONE]`` or the in-band error.  ``INFERCDN_FUZZ_EXAMPLES`` sets the number of cases (default
2000); ``INFERCDN_FUZZ_REPORT=path`` writes the status histogram as JSON.

The gateway and simulator run on an event loop in a second thread; hypothesis drives plain
blocking HTTP from the test's thread."""
from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import build_app
from gateway.config import parse_config
from gateway.server import start_site
from tests.conftest import base_config

EXAMPLES = int(os.environ.get("INFERCDN_FUZZ_EXAMPLES", "2000"))
HISTOGRAM: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module")
def live(geoip_reader: Any) -> Iterator[int]:
    """(port) of a gateway with auth and a healthy simulator, served from another thread."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        from worker.sim import SimConfig, Simulator

        sim = Simulator(SimConfig(model="tiny-chat", ttft_ms=0, itl_ms=0, max_model_len=512))
        await sim.start(host="127.0.0.1", port=0)
        data = base_config({"eu-west": [sim.url]}, gateway={"max_body_bytes": 65536, "access_log": "off"},
                           auth={"tenants": [{"name": "t", "api_keys": ["k-fuzz"], "models": ["tiny-chat"]}]})
        app = build_app(parse_config(data, "<fuzz>"), geoip_reader=geoip_reader)
        runner, port = await start_site(app, "127.0.0.1", 0)
        started["port"] = port
        ready.set()
        await stop.wait()
        await runner.cleanup()
        await sim.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield started["port"]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    report = os.environ.get("INFERCDN_FUZZ_REPORT")
    if report:
        with open(report, "w") as out:
            json.dump(dict(sorted(HISTOGRAM.items())), out, indent=1)
    print(f"\nfuzz status histogram ({sum(HISTOGRAM.values())} requests): {dict(sorted(HISTOGRAM.items()))}")


# --- what is generated --------------------------------------------------------------------------
_TEXT = st.text(max_size=40)
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | _TEXT,
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_TEXT, kids, max_size=4),
                     max_leaves=20)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x", 1]),
                                  "content": _TEXT | _JSON})
_FIELDS = {
    "model": st.sampled_from(["tiny-chat", "big-chat", "", None, 7]) | _TEXT,
    "messages": st.lists(_MESSAGE, max_size=3) | _JSON,
    "prompt": _TEXT | st.lists(st.integers(-1, 70000), max_size=5) | _JSON,
    "stream": st.booleans() | _JSON,
    "max_tokens": st.integers(-3, 8) | _JSON,
    "temperature": st.floats(-1, 3) | _JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | _JSON,
    "return_token_ids": st.booleans(),
    "n": st.integers(0, 3),
    "seed": st.integers(-1, 2**64),
}
_VALID_ISH = st.fixed_dictionaries({}, optional=_FIELDS)
_BODY = st.one_of(
    _VALID_ISH.map(lambda v: json.dumps(v).encode()),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.just(b"[" * 2000 + b"]" * 2000),
    st.just(b'{"model": "tiny-chat", "messages": ' + b"[" * 300 + b"]" * 300 + b"}"),
)
_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)
_HEADERS = st.fixed_dictionaries({}, optional={
    "Authorization": st.sampled_from(["Bearer k-fuzz", "Bearer nope", "Basic x", "Bearer "]) | _HEADER_VALUE,
    "X-Request-Id": _HEADER_VALUE,
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "zstd"]),
    "X-Forwarded-For": _HEADER_VALUE,
    "Forwarded": _HEADER_VALUE,
    "Accept": _HEADER_VALUE,
    "Accept-Encoding": _HEADER_VALUE,
})
_TARGET = st.sampled_from([("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
                           ("POST", "/v1/models"), ("GET", "/v1/chat/completions"), ("POST", "/v1/embeddings"),
                           ("GET", "/healthz"), ("POST", "/admin/reload")])


def _bounded(body: bytes) -> bytes:
    """Keep generations short (the simulator counts tokens, the test counts seconds)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(doc, dict) and ("max_tokens" not in doc or not isinstance(doc["max_tokens"], int)
                                  or doc["max_tokens"] > 8):
        doc["max_tokens"] = 4
        try:
            return orjson.dumps(doc)
        except TypeError:  # deeper than orjson writes: sent as it is (the gateway refuses it)
            return body
    return body


def _exchange(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)  # no hang: an answer within 20 s
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value.encode("latin-1"))
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(target=_TARGET, body=_BODY, headers=_HEADERS)
def test_fuzz_bodies_and_headers(live: int, target: tuple[str, str], body: bytes, headers: dict[str, str]) -> None:
    method, path = target
    status, raw = _exchange(live, method, path, _bounded(body), headers)
    HISTOGRAM[str(status)] += 1
    assert status != 500, raw
    if status >= 500:
        assert status in (502, 503, 504) and _error(raw)["code"] == "no_healthy_upstream", (status, raw)
    elif status >= 400:
        _error(raw)
    elif status == 200 and raw.startswith((b"data:", b":")):
        assert raw.endswith(b"data: [DONE]\n\n") or b'"error"' in raw.rsplit(b"\n\ndata: ", 1)[-1], raw[-300:]


def _error(raw: bytes) -> dict[str, Any]:
    doc = orjson.loads(raw)
    assert isinstance(doc, dict) and set(doc) == {"error"}, raw
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), raw
    return err

"""Conformance with real vLLM (issue 10): each request of the table (conformance_table.TABLE) sent
directly to the one vLLM server of the run and through the gateway, the answers compared field by
field after normalising only ids and timestamps; then the same requests through a gateway whose
first pool is cut mid-answer (tests/e2e_vllm/cutproxy.py), where the answer must still be vLLM's
own (a resume) or end with the in-band error (requests that are relayed, never resumed).

A case with ``differs`` is one where the gateway answers differently by design: what is
compared there is what must still agree (the status, and for a 405 the ``Allow`` header)."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.conformance_table import TABLE, Case, digest, normal
from tests.e2e_vllm.cutproxy import CutProxy
from tests.e2e_vllm.helpers import MARKS, cut_first_pool, vllm_config, wait_idle
from tests.vllm_fixture import VllmServer

pytestmark = MARKS
CUT_AFTER = 3  # events relayed before the cut


async def call(url: str, case: Case) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session:
        kwargs: dict[str, Any] = {"headers": {"X-Forwarded-For": LONDON}}
        if case.body is not None:
            kwargs["json"] = case.body
        async with session.request(case.method, url + case.path, **kwargs) as r:
            return r.status, await r.read(), r.headers


def comparable(case: Case, raw: bytes) -> Any:
    if case.stream and raw.lstrip().startswith((b"data:", b"event:")):
        return digest(raw)
    return normal(orjson.loads(raw)) if raw.strip() else raw


@pytest.mark.parametrize("case", TABLE, ids=[c.name for c in TABLE])
async def test_through_the_gateway_as_from_vllm(vllm_server: VllmServer, gateway_factory, case: Case) -> None:
    await wait_idle(vllm_server.url)
    gw = await gateway_factory(vllm_config(vllm_server))
    direct_status, direct, direct_headers = await call(vllm_server.url, case)
    status, relayed, headers = await call(gw.url, case)
    assert status == direct_status or not case.same_status, relayed
    if status == 405:
        assert headers["Allow"] == direct_headers["Allow"]
    if case.differs:
        return
    assert comparable(case, relayed) == comparable(case, direct)


CUT_CASES = [c for c in TABLE if c.cut != "none"]


@pytest.mark.parametrize("case", CUT_CASES, ids=[c.name for c in CUT_CASES])
async def test_cut_mid_answer(vllm_server: VllmServer, gateway_factory, case: Case) -> None:
    await wait_idle(vllm_server.url)
    _, direct, _ = await call(vllm_server.url, case)
    proxy = CutProxy("127.0.0.1", vllm_server.port, cut_after_events=CUT_AFTER)
    await proxy.start()
    try:
        gw = await gateway_factory(cut_first_pool(vllm_server, proxy.url))
        status, relayed, headers = await call(gw.url, case)
    finally:
        await proxy.stop()
    assert proxy.cuts == 1, "the first attempt must have been cut"
    assert status == 200
    if case.cut == "exact":
        if not case.stream:  # a stream's head (and its headers) went out before the cut
            assert headers["x-infercdn-attempts"] == "2"
        got, want = comparable(case, relayed), comparable(case, direct)
        if case.stream and b'"finish_reason":"' in proxy.relayed and isinstance(got, dict):
            # vLLM bundled tokens (a busy machine) and the cut fell after the finish, before the
            # usage chunk: the gateway writes the ending itself, and the build name vLLM puts in
            # that chunk (system_fingerprint) is the one field it cannot know
            for doc in (got, want):
                doc["fields"] = [f for f in doc["fields"] if f != "top.system_fingerprint"]
        assert got == want
        return
    got = digest(relayed)
    assert not got["done"] and got["errors"], got  # the in-band error, never a success lacking a part
    assert not any(name == "response.completed" for name, _ in got["named"])

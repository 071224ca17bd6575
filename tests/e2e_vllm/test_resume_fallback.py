"""Exact cross-model continuation on the real engine (issue 9, item 1).  The one vLLM server of
the run serves the tiny model under two names, standing in for two models: tiny-chat on eu-west
(behind a proxy that cuts the stream after K events) and tiny-chat-b, tiny-chat's fallback, on a
pool of its own.  No other endpoint serves tiny-chat, so the cut generation continues on
tiny-chat-b by text (an open assistant message with ``continue_final_message``, or prompt + text)
and, at temperature 0, the client gets exactly vLLM's direct answer.  The tiny model's text is
partly bytes its detokenizer cannot render (U+FFFD): such a text is not prefilled (it stands for
other tokens) but regenerated and skipped, which the test checks too (the resumes metric's strategy)."""
from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import LONDON
from tests.e2e_vllm.cutproxy import CutProxy
from tests.e2e_vllm.helpers import MARKS, MODEL, MODELS_CFG, cut_first_pool, wait_idle
from tests.e2e_vllm import test_resume
from tests.e2e_vllm.test_resume import CUT_AFTER, MAX_TOKENS, generate, text_of
from tests.vllm_fixture import SECOND_NAME, VllmServer

pytestmark = MARKS


def fallback_config(vllm: VllmServer, cut_url: str) -> dict[str, Any]:
    """tiny-chat only on eu-west-0 (``cut_url``), tiny-chat-b, its fallback, on us-east-0 (vLLM directly)."""
    data = cut_first_pool(vllm, cut_url)
    data["models"] = {**MODELS_CFG, MODEL: {"fallbacks": [SECOND_NAME]}}
    data["pools"][1]["models"] = [SECOND_NAME]
    return data


async def cut_then_generate(vllm: VllmServer, gateway_factory: Any, kind: str) -> tuple[Any, list[Any], Any]:
    """The gateway's answer with eu-west cut after ``CUT_AFTER`` events; its headers, chunks and URL."""
    proxy = CutProxy("127.0.0.1", vllm.port, cut_after_events=CUT_AFTER)
    await proxy.start()
    try:
        gw = await gateway_factory(fallback_config(vllm, proxy.url))
        headers, got = await generate(gw.url, kind, LONDON)
    finally:
        await proxy.stop()
    assert proxy.cuts == 1, "the first attempt must have been cut"
    return headers, got, gw


@pytest.mark.parametrize("kind,prompt", [("chat", None), ("completions", None),
                                         ("completions", "The quick brown fox jumps over the")])
async def test_stream_cut_continues_exactly_on_the_fallback_model(vllm_server: VllmServer, gateway_factory,
                                                                  monkeypatch: pytest.MonkeyPatch, kind: str,
                                                                  prompt: str | None) -> None:
    if prompt is not None:  # a prompt whose answer is plain text: continued from prompt + text
        monkeypatch.setattr(test_resume, "PROMPT", prompt)
    await wait_idle(vllm_server.url)
    _, expected = await generate(vllm_server.url, kind)
    headers, got, gw = await cut_then_generate(vllm_server, gateway_factory, kind)
    assert (headers["x-infercdn-region"], headers["x-infercdn-model"]) == ("eu-west", MODEL)
    assert text_of(kind, got) == text_of(kind, expected) and text_of(kind, got)
    usage = [c.usage for c in got if c.usage is not None]
    assert usage == [expected[-1].usage] and usage[0].completion_tokens == MAX_TOKENS
    assert {c.id for c in got} == {got[0].id} and {c.model for c in got} == {MODEL}  # one stream
    assert (got[-1].model_extra or {}).get("infercdn") == {"models": [MODEL, SECOND_NAME]}
    assert [c.choices[0].finish_reason for c in got if c.choices][-1] == "length"
    # the text the client had at the cut decides the strategy: a prefill where it round-trips
    have = text_of(kind, got[:CUT_AFTER])
    strategy = "regenerate" if "\ufffd" in have else "text"
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
        metrics = await r.text()
    assert f'infercdn_stream_resumes_total{{result="ok",strategy="{strategy}"}} 1.0' in metrics, (have, metrics[-2000:])
    print(f"{kind}: text at the cut {have!r}: continued by {strategy}")

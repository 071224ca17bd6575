"""Byte-level SSE helpers and the hot-path tracker."""
from __future__ import annotations

from gateway.sse import strip_token_ids
from gateway.streaming import StreamTracker

CHAT_FIRST = (b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
              b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":[1,2,3]}\n\n')
CHAT_NEXT = (b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" a"},"logprobs":null,'
             b'"finish_reason":null,"token_ids":[7]}]}\n\n')
COMPLETION_FIRST = (b'data: {"choices":[{"index":0,"text":" b","logprobs":null,"finish_reason":null,'
                    b'"stop_reason":null,"prompt_token_ids":[107,108],"token_ids":[539]}]}\n\n')
COMPLETION_NEXT = (b'data: {"choices":[{"index":0,"text":" x","logprobs":null,"finish_reason":null,'
                   b'"stop_reason":null,"prompt_token_ids":null,"token_ids":[5,6]}]}\n\n')


def test_strip_token_ids_everywhere_they_appear() -> None:
    for event in (CHAT_FIRST, CHAT_NEXT, COMPLETION_FIRST, COMPLETION_NEXT):
        out = strip_token_ids(event)
        assert b"token_ids" not in out
        assert out.count(b"{") == out.count(b"}") and b",}" not in out and b"{," not in out
    assert strip_token_ids(b'{"token_ids":[1],"a":1}') == b'{"a":1}'
    assert strip_token_ids(b'{"content":"say \\"token_ids\\": [1]"}') == b'{"content":"say \\"token_ids\\": [1]"}'


def test_tracker_strips_cuts_and_retains() -> None:
    for first, nxt in ((CHAT_FIRST, CHAT_NEXT), (COMPLETION_FIRST, COMPLETION_NEXT)):
        t = StreamTracker(strip_ids=True, retain=True)
        out = t.feed(first) + t.feed(nxt[:30]) + t.feed(nxt[30:]) + t.feed(nxt + b"data: [DONE]\n\n")
        assert b"token_ids" not in out
        assert out.count(b"\n\n") == 4 and out.endswith(b"data: [DONE]\n\n")
        assert t.done
        assert bytes(t.raw) == first + nxt + nxt + b"data: [DONE]\n\n"  # ids kept for a resume


def test_tracker_drops_malformed_events() -> None:
    t = StreamTracker(strip_ids=False, retain=False)
    out = t.feed(CHAT_NEXT + b'data: {"broken": \n\n' + CHAT_NEXT)
    assert out == CHAT_NEXT + CHAT_NEXT
    assert t.dropped == 1

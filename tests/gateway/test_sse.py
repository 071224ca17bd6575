"""Byte-level SSE helpers and the hot-path tracker."""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import null_token_ids
from gateway.forward.relay import StreamTracker
from gateway.forward.upstream import UpstreamTooLarge

CHAT_FIRST = (b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
              b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":[1,2,3]}\n\n')
CHAT_NEXT = (b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" a"},"logprobs":null,'
             b'"finish_reason":null,"token_ids":[7]}]}\n\n')
COMPLETION_FIRST = (b'data: {"choices":[{"index":0,"text":" b","logprobs":null,"finish_reason":null,'
                    b'"stop_reason":null,"prompt_token_ids":[107,108],"token_ids":[539]}]}\n\n')
COMPLETION_NEXT = (b'data: {"choices":[{"index":0,"text":" x","logprobs":null,"finish_reason":null,'
                   b'"stop_reason":null,"prompt_token_ids":null,"token_ids":[5,6]}]}\n\n')


def test_null_token_ids_everywhere_they_appear() -> None:
    """Issue 10: the fields stay, null, as vLLM sends them to a client that asked for no ids."""
    for event in (CHAT_FIRST, CHAT_NEXT, COMPLETION_FIRST, COMPLETION_NEXT):
        out = null_token_ids(event)
        assert out == event.replace(b"[1,2,3]", b"null").replace(b"[7]", b"null").replace(
            b"[107,108]", b"null").replace(b"[539]", b"null").replace(b"[5,6]", b"null")
        assert b"token_ids\":null" in out
    assert null_token_ids(b'{"token_ids":[1],"a":1}') == b'{"token_ids":null,"a":1}'
    assert null_token_ids(b'{"content":"say \\"token_ids\\": [1]"}') == b'{"content":"say \\"token_ids\\": [1]"}'


def test_null_token_ids_of_a_read_of_many_events_equals_event_by_event() -> None:
    """A read of many compact events (one regex pass) gives what each event gives alone, and a
    read where one event is not compact (the general scan) does too."""
    events = [CHAT_FIRST, CHAT_NEXT, COMPLETION_FIRST, COMPLETION_NEXT, CHAT_NEXT]
    spaced = b'data: {"choices": [{"token_ids": [1, 2], "prompt_token_ids": null}]}\n\n'
    for batch in (events, [*events, spaced], [spaced, *events]):
        want = b"".join(null_token_ids(e) for e in batch)
        assert null_token_ids(b"".join(batch)) == want
        assert want.count(b'token_ids":null') + want.count(b'token_ids": null') == \
            want.count(b'token_ids"')

def test_tracker_strips_cuts_and_retains() -> None:
    for first, nxt in ((CHAT_FIRST, CHAT_NEXT), (COMPLETION_FIRST, COMPLETION_NEXT)):
        t = StreamTracker(strip_ids=True, retain=True)
        out = t.feed(first) + t.feed(nxt[:30]) + t.feed(nxt[30:]) + t.feed(nxt + b"data: [DONE]\n\n")
        assert b"token_ids\":[" not in out and b"token_ids\":null" in out
        assert out.count(b"\n\n") == 4 and out.endswith(b"data: [DONE]\n\n")
        assert t.done
        assert bytes(t.raw) == first + nxt + nxt + b"data: [DONE]\n\n"  # ids kept for a resume


def test_tracker_drops_malformed_events() -> None:
    t = StreamTracker(strip_ids=False, retain=False)
    out = t.feed(CHAT_NEXT + b'data: {"broken": \n\n' + CHAT_NEXT)
    assert out == CHAT_NEXT + CHAT_NEXT
    assert t.dropped == 1


@pytest.mark.parametrize("before", [b"", CHAT_NEXT, CHAT_NEXT * 3, CHAT_NEXT + b'data: {"broken": \n\n',
                                    CHAT_NEXT + b": keep-alive\n\n"])
def test_the_read_that_ends_with_done_ends_the_stream_and_keeps_only_good_events(before: bytes) -> None:
    t = StreamTracker(strip_ids=False, retain=False)
    out = t.feed(before + b"data: [DONE]\n\n")
    assert t.done and out.endswith(b"data: [DONE]\n\n")
    assert out == before.replace(b'data: {"broken": \n\n', b"") + b"data: [DONE]\n\n"
    assert t.dropped == (b"broken" in before)


# --- defect 10: any separators the pool's JSON uses ------------------------------------------------

@pytest.mark.parametrize(("data", "want"), [
    (b'{"a": 1, "token_ids": [1, 2], "b": null}', {"a": 1, "token_ids": None, "b": None}),
    (b'{"token_ids": null, "x": 1}', {"token_ids": None, "x": 1}),
    (b'{"x": 1, "token_ids": null}', {"x": 1, "token_ids": None}),
    (b'{"x": 1 , "token_ids" : [3] }', {"x": 1, "token_ids": None}),
    (b'{"token_ids": [1]}', {"token_ids": None}),
    (b'{"a":[{"token_ids":[2],"prompt_token_ids":null,"a":null}]}',
     {"a": [{"token_ids": None, "prompt_token_ids": None, "a": None}]}),
    (b'{"choices": [{"index": 0, "token_ids": [5]}], "prompt_token_ids": [1, 2]}',
     {"choices": [{"index": 0, "token_ids": None}], "prompt_token_ids": None}),
])
def test_null_token_ids_leaves_valid_json_whatever_the_separators(data: bytes, want: dict) -> None:
    assert json.loads(null_token_ids(data)) == want


_KEYS = st.sampled_from(["a", "text", "token_ids", "prompt_token_ids", "index", "say token_ids"])
_LEAF = st.none() | st.integers(-5, 5) | st.text(max_size=8) | st.lists(st.integers(0, 99), max_size=3)
_DOCS = st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_KEYS, kids, max_size=4),
                     max_leaves=12)


def _without_ids(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: None if k in ("token_ids", "prompt_token_ids") and isinstance(v, list) else _without_ids(v)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_without_ids(v) for v in doc]
    return doc


@settings(max_examples=1000, deadline=None)
@given(doc=st.dictionaries(_KEYS, _DOCS, max_size=5), compact=st.booleans())
def test_null_token_ids_property(doc: dict, compact: bool) -> None:
    """For any JSON object, compact or with ", " / ": " separators: the result is valid JSON,
    equal to the object with its id lists set to null (any other value is left)."""
    data = orjson.dumps(doc) if compact else json.dumps(doc).encode()
    assert json.loads(null_token_ids(data)) == _without_ids(doc)


def test_an_event_over_the_bound_is_an_error_after_what_came_before() -> None:
    t = StreamTracker(strip_ids=False, retain=True, max_event=1024, max_retained=4096)
    out = t.feed(CHAT_NEXT + b'data: {"a": "' + b"x" * 600)
    assert out == CHAT_NEXT and t.error is None
    for _ in range(2):
        t.feed(b"x" * 600)
    assert isinstance(t.error, UpstreamTooLarge)


def test_the_resume_buffer_stops_at_its_bound() -> None:
    t = StreamTracker(strip_ids=False, retain=True, max_retained=len(CHAT_NEXT) * 3)
    for _ in range(3):
        t.feed(CHAT_NEXT)
    assert t.retain and len(t.raw) == len(CHAT_NEXT) * 3
    t.feed(CHAT_NEXT)
    assert not t.retain and len(t.raw) == 0  # this stream can no longer be resumed; the memory is free


def test_a_responses_stream_ends_with_its_last_named_event_whatever_the_reads() -> None:
    """The Responses API sends no [DONE]: its stream is complete at ``response.completed``, also
    when each event arrives in a read of its own."""
    created = b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
    completed = b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1}\n\n'
    for reads in ([created, completed], [created + completed], [created, completed[:20], completed[20:]]):
        t = StreamTracker(strip_ids=False, retain=True)
        out = b"".join(t.feed(r) for r in reads)
        assert out == created + completed and t.done and t.dropped == 0


def test_the_first_read_with_the_prompts_ids_takes_the_compact_path() -> None:
    from gateway.sse import _compact_ids

    first = (b'data: {"id":"a","choices":[{"index":0,"delta":{"role":"assistant","content":""},"token_ids":null}],'
             b'"prompt_token_ids":[1,2,3]}\n\n'
             b'data: {"id":"a","choices":[{"index":0,"delta":{"content":"x"},"token_ids":[5,6]}]}\n\n')
    out = _compact_ids(first)
    assert out is not None and out == null_token_ids(first)
    assert out.count(b"null") == 3 and b"[" not in out.replace(b'"choices":[', b"")
    # a list with whitespace is not compact: the careful scan takes it, with the same result
    spaced = first.replace(b'"token_ids":[5,6]', b'"token_ids": [5, 6]')
    assert _compact_ids(spaced) is None and b"[5, 6]" not in null_token_ids(spaced)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(_KEYS, _DOCS, max_size=5), compact=st.booleans())
def test_reads_after_the_first_still_null_the_prompts_ids(doc: dict, compact: bool) -> None:
    """``prompt=False`` (a read after the first) only skips looking for the prompt's ids in the
    one-pass form: any that come anyway are still set to null, by the careful scan."""
    data = orjson.dumps(doc) if compact else json.dumps(doc).encode()
    assert json.loads(null_token_ids(data, prompt=False)) == _without_ids(doc)
    late = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"token_ids":[5]}],"prompt_token_ids":[1,2]}\n\n'
    assert b"[1,2]" not in null_token_ids(late, prompt=False) and b"[5]" not in null_token_ids(late, prompt=False)

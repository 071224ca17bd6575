"""Reading a usage block: a JSON body's top-level usage from its tail, whatever follows it,
and the whole body where the tail is not the top-level field."""
from __future__ import annotations

import orjson
import pytest

from gateway.forward.usage import find_usage

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": None}


@pytest.mark.parametrize("doc", [
    {"id": "x", "choices": [{"text": "usage"}], "usage": USAGE},
    {"id": "x", "usage": USAGE, "kv_transfer_params": None, "note": {"a": [1, {"b": "}"}]}},
    {"id": "x", "usage": USAGE, "kind": "usage"},  # the last "usage" is a value
    {"id": "x", "usage": USAGE, "extra": {"usage": None}},  # the last one is nested
    {"response": {"usage": USAGE}},  # the Responses API's
])
def test_the_top_level_usage_of_a_json_body(doc: dict) -> None:
    for data in (orjson.dumps(doc), orjson.dumps(doc, option=orjson.OPT_INDENT_2)):
        assert find_usage(data) == USAGE, data


def test_no_usage_or_no_json_is_none() -> None:
    assert find_usage(b'{"id": "x"}') is None
    assert find_usage(b'{"usage": 5}') is None
    assert find_usage(b'{"usage": {"prompt_tokens": 1}') is None  # cut short


def test_the_last_event_of_a_stream_that_carries_usage() -> None:
    events = b'data: {"usage": null}\n\ndata: {"choices": [], "usage": {"total_tokens": 5}}\n\ndata: [DONE]\n\n'
    assert find_usage(events) == {"total_tokens": 5}

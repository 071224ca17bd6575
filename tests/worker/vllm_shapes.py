"""Shape comparison of answers (real vLLM fixtures against the simulator) and the invariants every
answer must satisfy (choice numbering, one finish per choice, usage arithmetic)."""
from __future__ import annotations

from collections import Counter
from typing import Any

# dicts keyed by data (token text or id) rather than by field names
_MAP_PARENTS = ("top_logprobs", "prompt_logprobs")
_OBJECT_MARKERS = ("token", "decoded_token")


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def schema(value: Any, path: str = "$", parent: str = "", out: set[str] | None = None) -> set[str]:
    """Every ``path: type`` in a JSON value; list items share ``[]``, data-keyed dicts ``{}``."""
    out = set() if out is None else out
    out.add(f"{path}: {_type(value)}")
    if isinstance(value, dict):
        is_map = parent in _MAP_PARENTS and not any(m in value for m in _OBJECT_MARKERS)
        for key, item in value.items():
            schema(item, f"{path}.{{}}" if is_map else f"{path}.{key}", parent if is_map else key, out)
    elif isinstance(value, list):
        for item in value:
            schema(item, f"{path}[]", parent, out)
    return out


def answer_schema(answer: dict[str, Any], *, types: bool = True) -> set[str]:
    """The schema of a recorded answer: its body's, or the union over its stream events (each
    under its event name, for the Responses API's typed events)."""
    if "events" in answer:
        paths: set[str] = set()
        for event in answer["events"]:
            paths |= schema(event["data"], f"${event['event'] or ''}")
    else:
        paths = schema(answer.get("body"))
    return paths if types else {p.rsplit(": ", 1)[0] for p in paths}


def check_invariants(answer: dict[str, Any], request: dict[str, Any]) -> None:
    """What any vLLM answer to a completions/chat ``request`` satisfies; raises AssertionError."""
    prompt = request.get("prompt")
    n_prompts = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else 1
    n_choices = n_prompts * request.get("n", 1)
    if "events" not in answer:
        body = answer["body"]
        assert [c["index"] for c in body["choices"]] == list(range(n_choices))
        assert all(c["finish_reason"] in ("length", "stop") for c in body["choices"])
        _check_usage(body["usage"], [c.get("token_ids") for c in body["choices"]],
                     [c.get("prompt_token_ids") for c in body["choices"]], request.get("n", 1))
        return
    events = [e["data"] for e in answer["events"]]
    assert answer["done"], "a completions/chat stream ends with data: [DONE]"
    assert len({e["id"] for e in events}) == 1
    assert all(len(e["choices"]) == 1 for e in events if e["choices"]), "one choice per chunk"
    usage_chunk = events[-1]["choices"] == []
    # system_fingerprint: on the usage chunk if any, else on each choice's finishing chunk
    assert ["system_fingerprint" in e for e in events] == [
        (e is events[-1]) if usage_chunk else bool(e["choices"][0]["finish_reason"]) for e in events]
    finishes = Counter(e["choices"][0]["index"] for e in events if e["choices"] and e["choices"][0]["finish_reason"])
    assert finishes == Counter(range(n_choices)), "each choice finishes exactly once"
    seen = [e["choices"][0]["index"] for e in events if e["choices"]]
    assert sorted(set(seen)) == list(range(n_choices))
    if "delta" in (events[0]["choices"] or [{}])[0]:  # chat: one role chunk per choice first
        assert [e["choices"][0]["delta"].get("role") for e in events[:n_choices]] == ["assistant"] * n_choices
    _check_continuous_usage(events, usage_chunk)
    if usage_chunk:
        ids: dict[int, list[int]] = {}
        prompts: dict[int, list[int] | None] = dict.fromkeys(range(n_choices))
        for e in events[:-1]:
            c = e["choices"][0]
            if c.get("token_ids") is not None:
                ids.setdefault(c["index"], []).extend(c["token_ids"])
            if c.get("prompt_token_ids") is not None:  # completions: in each choice's first chunk
                prompts[c["index"]] = c["prompt_token_ids"]
            elif e.get("prompt_token_ids") is not None:  # chat: at the top of each role chunk
                prompts[c["index"]] = e["prompt_token_ids"]
        _check_usage(events[-1]["usage"], list(ids.values()) if ids else [None],
                     [prompts[i] for i in range(n_choices)], request.get("n", 1))


def _check_continuous_usage(events: list[dict[str, Any]], usage_chunk: bool) -> None:
    """``continuous_usage_stats``: each chunk's usage is its choice's so far, growing to the end."""
    so_far: dict[int, int] = {}
    for e in events:
        if e["choices"] and "usage" in e:
            index, usage = e["choices"][0]["index"], e["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
            assert usage["completion_tokens"] >= so_far.get(index, 0)
            so_far[index] = usage["completion_tokens"]
    if so_far and usage_chunk:
        assert sum(so_far.values()) == events[-1]["usage"]["completion_tokens"]


def _check_usage(usage: dict[str, Any], token_ids: list[list[int] | None],
                 prompt_ids: list[list[int] | None], n: int) -> None:
    """Totals add up; completion tokens are all choices' tokens, prompt tokens each prompt's
    once (choices ``p * n .. p * n + n - 1`` share prompt ``p``), where the ids are known."""
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if all(t is not None for t in token_ids):
        assert usage["completion_tokens"] == sum(len(t) for t in token_ids)  # type: ignore[arg-type]
    if all(p is not None for p in prompt_ids):
        assert usage["prompt_tokens"] == sum(len(p) for p in prompt_ids[::n])  # type: ignore[arg-type]

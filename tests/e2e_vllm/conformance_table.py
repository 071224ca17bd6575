"""The requests of the conformance suite (tests/e2e_vllm/test_conformance.py) and how answers are
compared: field by field after normalising only what differs per request (ids, timestamps).

What vLLM itself varies run to run, and so is compared differently:
- the boundaries of stream events: vLLM merges the tokens a slow reader has not taken yet into
  one event, so a stream is compared as what it adds up to (each choice's text, logprobs,
  finish, the usage) plus the union of the fields its events carry and how it ends;
- sampled text without a seed (the table has none: temperature 0 or a seed everywhere)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

CHAT_MSG = [{"role": "user", "content": "Hello there"}]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | None = None
    method: str = "POST"
    cut: str = "none"  # with a cut mid-answer: "exact" (resumed, equal) | "error" (the in-band error)
    differs: str = ""  # why the gateway's answer differs from vLLM's by design ("" = equal)
    same_status: bool = True  # False: the status differs by design too
    stream: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream", bool((self.body or {}).get("stream")))


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "messages": CHAT_MSG, "max_tokens": 5, "temperature": 0, **kw}


def _cmpl(**kw: Any) -> dict[str, Any]:
    return {"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, **kw}


USAGE = {"stream_options": {"include_usage": True}}
TABLE = [
    Case("chat", "/v1/chat/completions", _chat(), cut="exact"),
    Case("chat stream", "/v1/chat/completions", _chat(stream=True, **USAGE), cut="exact"),
    Case("completion", "/v1/completions", _cmpl(), cut="exact"),
    Case("completion stream", "/v1/completions", _cmpl(stream=True, **USAGE), cut="exact"),
    Case("completion stream, no usage", "/v1/completions", _cmpl(stream=True), cut="exact"),
    Case("chat n=2 seeded", "/v1/chat/completions", _chat(n=2, seed=7, temperature=1.0)),
    Case("chat n=2 seeded stream", "/v1/chat/completions", _chat(n=2, seed=7, temperature=1.0, stream=True, **USAGE),
         cut="error"),
    Case("completion n=2 seeded", "/v1/completions", _cmpl(n=2, seed=7, temperature=1.0)),
    Case("completion n=2 seeded stream", "/v1/completions", _cmpl(n=2, seed=7, temperature=1.0, stream=True, **USAGE),
         cut="error"),
    Case("completion list prompts", "/v1/completions", _cmpl(prompt=["Once upon a time", "Hello there"])),
    Case("completion list prompts stream", "/v1/completions",
         _cmpl(prompt=["Once upon a time", "Hello there"], stream=True, **USAGE), cut="error"),
    Case("completion echo", "/v1/completions", _cmpl(echo=True)),
    Case("completion echo stream", "/v1/completions", _cmpl(echo=True, stream=True, **USAGE), cut="error"),
    Case("completion logprobs", "/v1/completions", _cmpl(logprobs=2)),
    Case("completion logprobs stream", "/v1/completions", _cmpl(logprobs=2, stream=True, **USAGE), cut="error"),
    Case("chat logprobs", "/v1/chat/completions", _chat(logprobs=True, top_logprobs=2)),
    Case("chat logprobs stream", "/v1/chat/completions", _chat(logprobs=True, top_logprobs=2, stream=True, **USAGE),
         cut="error"),
    Case("chat return_token_ids stream", "/v1/chat/completions", _chat(return_token_ids=True, stream=True, **USAGE)),
    Case("chat tools auto (no parser: 400)", "/v1/chat/completions", _chat(tools=TOOLS, tool_choice="auto")),
    Case("chat tools none", "/v1/chat/completions", _chat(tools=TOOLS, tool_choice="none")),
    Case("chat response_format json_object", "/v1/chat/completions",
         _chat(response_format={"type": "json_object"})),
    Case("completion stop", "/v1/completions", _cmpl(stop=["e"], max_tokens=8)),
    Case("completion seeded stream", "/v1/completions", _cmpl(seed=11, temperature=1.0, stream=True, **USAGE),
         cut="exact"),
    Case("chat seeded stream", "/v1/chat/completions", _chat(seed=11, temperature=1.0, stream=True, **USAGE),
         cut="exact"),
    Case("error: token id out of vocabulary", "/v1/completions", _cmpl(prompt=[1000000])),
    Case("error: token id out of vocabulary, stream", "/v1/completions", _cmpl(prompt=[1000000], stream=True)),
    Case("error: max_tokens over the context", "/v1/completions", _cmpl(max_tokens=5000)),
    Case("error: empty prompt in a list", "/v1/completions", _cmpl(prompt=["Hello", ""])),
    Case("responses", "/v1/responses", {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 5,
                                        "temperature": 0}),
    Case("responses stream", "/v1/responses", {"model": "tiny-chat", "input": "Hello there", "max_output_tokens": 5,
                                               "temperature": 0, "stream": True}, cut="error"),
    Case("tokenize", "/tokenize", {"model": "tiny-chat", "prompt": "Hello there"}),
    Case("tokenize messages", "/tokenize", {"model": "tiny-chat", "messages": CHAT_MSG}),
    Case("detokenize", "/detokenize", {"model": "tiny-chat", "tokens": [42, 536, 334]}),
    Case("embeddings (not served by a generation model)", "/v1/embeddings", {"model": "tiny-chat", "input": "Hi"},
         differs="vLLM: 404 {\"detail\": \"Not Found\"}; the gateway: 404 in OpenAI's error format naming the path"),
    Case("models", "/v1/models", method="GET",
         differs="owned_by is the gateway's (infercdn), created is the gateway's start"),
    Case("model card", "/v1/models/tiny-chat", method="GET",
         differs="vLLM has no /v1/models/{id} (404); the gateway answers the /v1/models entry", same_status=False),
    Case("health", "/health", method="GET"),
    Case("version", "/version", method="GET", differs="the gateway answers its own version"),
    Case("405 on /v1/models", "/v1/models", {}, method="POST",
         differs="same status and Allow; the body is an OpenAI error, not FastAPI's {\"detail\": ...}"),
]

_PER_REQUEST = {"id", "created", "created_at", "item_id"}


def normal(doc: Any) -> Any:
    """``doc`` without what differs per request (ids, timestamps)."""
    if isinstance(doc, dict):
        return {k: normal(v) for k, v in doc.items() if k not in _PER_REQUEST}
    if isinstance(doc, list):
        return [normal(v) for v in doc]
    return doc


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if data is not None:
            out.append((name, data))
    return out


def _add(acc: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        acc.setdefault(key, None)
    elif isinstance(value, str):
        acc[key] = (acc.get(key) or "") + value
    elif isinstance(value, list):
        acc[key] = (acc.get(key) or []) + value
    elif isinstance(value, dict):  # completions' logprobs: lists per field
        inner = acc.setdefault(key, {}) or {}
        for k, v in value.items():
            _add(inner, k, v)
        acc[key] = inner
    else:
        acc[key] = value


def digest(raw: bytes) -> dict[str, Any]:
    """What a stream adds up to, whatever its event boundaries: per choice the concatenated
    text/content/logprobs/token ids and the last finish; the usage; the errors; how it ends; the
    fields its events carry (top level, choice, delta); for named events (the Responses API) the
    names in order with the deltas merged and the final document."""
    out: dict[str, Any] = {"done": False, "choices": {}, "usage": None, "errors": [], "fields": set(), "named": []}
    for name, data in sse_events(raw):
        if data == b"[DONE]":
            out["done"] = True
            continue
        doc = normal(orjson.loads(data))
        out["fields"].update(f"top.{k}" for k in doc)
        if "error" in doc and name is None:
            out["errors"].append(doc)
            continue
        if name is not None:
            if name.endswith(".delta"):
                if out["named"] and out["named"][-1][0] == name:
                    out["named"][-1][1] += doc.get("delta", "")
                else:
                    out["named"].append([name, doc.get("delta", "")])
            else:
                out["named"].append([name, {k: v for k, v in doc.items() if k != "sequence_number"}])
            continue
        if isinstance(doc.get("usage"), dict):
            out["usage"] = doc["usage"]
        for choice in doc.get("choices") or ():
            acc = out["choices"].setdefault(choice["index"], {})
            out["fields"].update(f"choice.{k}" for k in choice)
            for k, v in choice.items():
                if k == "delta":
                    out["fields"].update(f"delta.{dk}" for dk in v)
                    for dk, dv in v.items():
                        _add(acc, f"delta.{dk}", dv.get("content") if dk == "logprobs" and isinstance(dv, dict) else dv)
                elif k == "logprobs" and isinstance(v, dict) and "content" in v:
                    _add(acc, "logprobs", v["content"])
                elif k != "index":
                    _add(acc, k, v)
    out["fields"] = sorted(out["fields"])
    return out

"""Response bodies and SSE events shaped like vLLM's.

Chat streams open with a ``delta: {"role": "assistant", "content": ""}`` chunk (which carries
``prompt_token_ids`` at the top level of the chunk when ``return_token_ids`` is set, as vLLM
does); completion streams carry ``prompt_token_ids`` inside the first choice. Every content
chunk carries ``token_ids`` in its choice when asked. ``stream_options.include_usage`` adds a
final ``"choices": []`` chunk with ``usage`` before ``data: [DONE]``.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from worker.sim.protocol import GenRequest

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_completion,
            "completion_tokens": n_completion}


class Encoder:
    """Builds the chunks and the final body of one request."""

    __slots__ = ("req", "model", "id", "created", "chat", "first")

    def __init__(self, req: GenRequest, model: str) -> None:
        self.req = req
        self.model = model
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.first = True

    def _head(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def opening(self) -> bytes:
        """The chat role chunk (empty for completions, whose first choice carries the prompt)."""
        if not self.chat:
            return b""
        chunk = self._head()
        chunk["choices"] = [{"index": 0, "delta": {"role": self.req.role, "content": ""},
                             "logprobs": None, "finish_reason": None}]
        if self.req.return_token_ids:
            chunk["prompt_token_ids"] = self.req.prompt_ids
        return sse(chunk)

    def chunk(self, ids: list[int], text: str, finish: str | None, stop_reason: str | None) -> bytes:
        choice: dict[str, Any] = (
            {"index": 0, "delta": {"content": text}} if self.chat else {"index": 0, "text": text}
        )
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        if finish is not None or not self.chat:
            choice["stop_reason"] = stop_reason
        if self.req.return_token_ids:
            if self.first and not self.chat:
                choice["prompt_token_ids"] = self.req.prompt_ids
            choice["token_ids"] = ids
        self.first = False
        chunk = self._head()
        chunk["choices"] = [choice]
        return sse(chunk)

    def usage_chunk(self, n_completion: int) -> bytes:
        chunk = self._head()
        chunk["choices"] = []
        chunk["usage"] = usage(len(self.req.prompt_ids), n_completion)
        return sse(chunk)

    def full(self, ids: list[int], text: str, finish: str | None, stop_reason: str | None) -> bytes:
        """The non-stream response body."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": self.req.role, "content": text, "refusal": None,
                                 "tool_calls": [], "reasoning_content": None}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish, stop_reason=stop_reason)
        if self.req.return_token_ids:
            choice["token_ids"] = ids
            if not self.chat:
                choice["prompt_token_ids"] = self.req.prompt_ids
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": [choice],
            "usage": {**usage(len(self.req.prompt_ids), len(ids)), "prompt_tokens_details": None},
        }
        if self.chat:
            body["prompt_logprobs"] = None
            body["prompt_token_ids"] = self.req.prompt_ids if self.req.return_token_ids else None
        return orjson.dumps(body)

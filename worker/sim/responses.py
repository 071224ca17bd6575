"""Response bodies and SSE events of the generation endpoints, shaped like vLLM 0.32's.

Every choice of an answer is one :class:`Choice` (index ``prompt * n + sample``); a stream sends
one chunk per choice per step, each chunk holding that one choice, interleaved in index order.
Chat streams open with one ``delta: {"role": "assistant", "content": ""}`` chunk per choice
(carrying ``prompt_token_ids`` at the chunk's top level, null unless ``return_token_ids``);
completion streams carry ``prompt_token_ids`` in each choice's first chunk (with
``return_token_ids`` or ``echo``, whose first chunk also starts with the prompt's text).  Fields
vLLM sends as null are sent as null.  ``stream_options.include_usage`` adds a final
``"choices": []`` chunk whose usage sums all choices (each prompt's tokens counted once, whatever
``n``); ``system_fingerprint`` is on that chunk, or without it on each choice's finishing chunk.
``continuous_usage_stats`` adds to every chunk the usage of its choice so far (its prompt, its
tokens).
"""
from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import orjson

from worker.sim.engine import Generation
from worker.sim.logprobs import Logprobs
from worker.sim.protocol import GenRequest

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_completion,
            "completion_tokens": n_completion}


def fingerprint(version: str, model: str) -> str:
    return f"vllm-{version}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


class Choice:
    """One choice of an answer: its generation and what its stream has sent so far."""

    __slots__ = ("index", "prompt", "gen", "first", "offset", "pos")

    def __init__(self, index: int, prompt: int, gen: Generation) -> None:
        self.index = index
        self.prompt = prompt  # index into the request's prompts
        self.gen = gen
        self.first = True
        self.offset = 0  # text offset of the next token (completions logprobs)
        self.pos = gen.n_prompt  # context position of the next token to report


def choices_of(req: GenRequest, gens: list[Generation]) -> list[Choice]:
    return [Choice(i, i // req.n, gen) for i, gen in enumerate(gens)]


class Encoder:
    """Builds the chunks and the final body of one request."""

    __slots__ = ("req", "model", "id", "created", "chat", "logprobs", "fingerprint")

    def __init__(self, req: GenRequest, model: str, logprobs: Logprobs, version: str) -> None:
        self.req = req
        self.model = model
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:16]
        self.created = int(time.time())
        self.logprobs = logprobs
        self.fingerprint = fingerprint(version, model)

    def _head(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _prompt_ids(self, c: Choice) -> list[int]:
        return self.req.prompts[c.prompt]

    def opening(self, choices: list[Choice]) -> bytes:
        """The chat role chunks, one per choice (nothing for completions)."""
        if not self.chat:
            return b""
        out = []
        for c in choices:
            chunk = self._head()
            chunk["choices"] = [{"index": c.index, "delta": {"role": self.req.role, "content": ""},
                                 "logprobs": None, "finish_reason": None}]
            if self.req.continuous_usage:
                chunk["usage"] = self._choice_usage(c)
            chunk["prompt_text"] = None
            chunk["prompt_token_ids"] = self._prompt_ids(c) if self.req.return_token_ids else None
            out.append(sse(chunk))
        return b"".join(out)

    def chunk(self, c: Choice, ids: list[int], text: str) -> bytes:
        """The chunk of choice ``c`` for the tokens ``ids`` just generated (``text`` to send)."""
        req, gen = self.req, c.gen
        end = c.pos + len(ids)
        choice: dict[str, Any]
        if self.chat:
            choice = {"index": c.index, "delta": {"content": text}}
            choice["logprobs"] = (None if req.logprobs is None
                                  else self.logprobs.chat(gen.ctx, c.pos, end, req.logprobs))
            choice["finish_reason"] = gen.finish_reason
            if gen.finish_reason is not None:
                choice["stop_reason"] = gen.stop_reason
        else:
            echo = c.first and req.echo
            if echo:
                text = req.prompt_texts[c.prompt] + text
            choice = {"index": c.index, "text": text, "logprobs": self._completion_logprobs(c, echo, end),
                      "finish_reason": gen.finish_reason, "stop_reason": gen.stop_reason,
                      "prompt_token_ids": (self._prompt_ids(c) if c.first and (req.return_token_ids or req.echo)
                                           else None)}
        choice["token_ids"] = ids if req.return_token_ids else None
        c.first = False
        c.pos = end
        chunk = self._head()
        chunk["choices"] = [choice]
        if req.continuous_usage:
            chunk["usage"] = self._choice_usage(c)
        if gen.finish_reason is not None and not req.include_usage:
            chunk["system_fingerprint"] = self.fingerprint
        return sse(chunk)

    def _completion_logprobs(self, c: Choice, echo: bool, end: int) -> dict[str, Any] | None:
        if self.req.logprobs is None:
            return None
        start = 0 if echo else c.pos
        obj, c.offset = self.logprobs.completion(c.gen.ctx, start, end, self.req.logprobs, c.offset,
                                                 c.gen.n_prompt)
        return obj

    def usage_chunk(self, choices: list[Choice]) -> bytes:
        chunk = self._head()
        chunk["choices"] = []
        chunk["system_fingerprint"] = self.fingerprint
        chunk["usage"] = self._usage(choices)
        return sse(chunk)

    def _choice_usage(self, c: Choice) -> dict[str, Any]:
        """``continuous_usage_stats``: this choice's prompt and its tokens so far."""
        out: dict[str, Any] = usage(len(self._prompt_ids(c)), c.gen.generated)
        if self.chat:
            out["completion_tokens_details"] = None
        return out

    def _usage(self, choices: list[Choice]) -> dict[str, int]:
        return usage(sum(len(p) for p in self.req.prompts), sum(c.gen.generated for c in choices))

    def full(self, choices: list[Choice], texts: list[str]) -> bytes:
        """The non-stream response body (``texts``: each choice's generated text)."""
        req = self.req
        out = []
        for c, text in zip(choices, texts, strict=True):
            gen = c.gen
            ids = gen.ctx[gen.n_prompt:]
            choice: dict[str, Any] = {"index": c.index}
            if self.chat:
                choice["message"] = {"role": req.role, "content": text, "refusal": None, "annotations": None,
                                     "audio": None, "function_call": None, "reasoning": None}
                choice["logprobs"] = (None if req.logprobs is None
                                      else self.logprobs.chat(gen.ctx, gen.n_prompt, len(gen.ctx), req.logprobs))
            else:
                echo_logprobs = req.echo and req.logprobs is not None
                choice["text"] = (req.prompt_texts[c.prompt] if req.echo else "") + text
                choice["logprobs"] = self._completion_logprobs(c, req.echo, len(gen.ctx))
                choice["prompt_logprobs"] = (self.logprobs.prompt_logprobs(gen.ctx, gen.n_prompt, req.logprobs or 0)
                                             if echo_logprobs else None)
                choice["prompt_token_ids"] = self._prompt_ids(c) if req.return_token_ids else None
            choice.update(finish_reason=gen.finish_reason, stop_reason=gen.stop_reason,
                          token_ids=ids if req.return_token_ids else None, routed_experts=None)
            out.append(choice)
        body: dict[str, Any] = {
            "id": self.id, "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created, "model": self.model, "choices": out,
            "service_tier": None, "system_fingerprint": self.fingerprint,
            "usage": {**self._usage(choices), "prompt_tokens_details": None, "completion_tokens_details": None},
        }
        if self.chat:
            body["prompt_logprobs"] = None
            body["prompt_token_ids"] = req.prompt_ids if req.return_token_ids else None
            body["prompt_text"] = None
        body.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return orjson.dumps(body)

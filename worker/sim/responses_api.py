"""``POST /v1/responses``: OpenAI's Responses API as vLLM 0.32 serves it (text in, text out).

``input`` is a string (one user message) or a list of messages (``content`` a string or a list of
``input_text``/``output_text`` parts); ``instructions`` becomes a system message first; the
prompt is the chat template with the generation prompt.  The answer is one ``message`` output
item holding one ``output_text`` part; ``status`` is ``completed``, or ``incomplete`` with
``incomplete_details.reason = "max_output_tokens"`` when the budget ran out.

A stream is ``event: TYPE`` + ``data: {json}`` blocks, numbered by ``sequence_number``, without
``data: [DONE]``: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, one ``response.output_text.delta`` per chunk,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done`` and
``response.completed`` (also when the status is ``incomplete``, as vLLM does).  Faults act as on
the other generation endpoints (``cut_after``/``stall_after`` count output tokens).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from worker.sim.config import SimConfig
from worker.sim.core import SimCore
from worker.sim.engine import Generation
from worker.sim.generate import (MALFORMED, Endpoint, Plan, abort, chunk_size, complete_with, finished,
                                 reached, stop_stream)
from worker.sim.protocol import ApiError, GenRequest, check_model, parse_chat
from worker.sim.responses import SSE_HEADERS
from worker.sim.tokenizer import Tokenizer

USAGE_DETAILS = {
    "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0, "cached_tokens_per_turn": [],
                             "input_tokens_per_turn": []},
    "output_tokens_details": {"output_tokens_per_turn": [], "reasoning_tokens": 0, "tool_output_tokens": 0,
                              "tool_output_tokens_per_turn": []},
}


def parse_responses(body: Mapping[str, Any], cfg: SimConfig, tok: Tokenizer) -> GenRequest:
    """The generation a Responses API request asks for (checked like a chat request)."""
    check_model(body, cfg)
    messages = input_messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "instructions must be a string.", param="instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"messages": messages, "stream": body.get("stream", False),
                            "temperature": body.get("temperature"), "seed": body.get("seed")}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
        if type(body["max_output_tokens"]) is not int:
            raise ApiError(400, "max_output_tokens must be an integer.", param="max_output_tokens")
    req = parse_chat(chat, cfg, tok)
    req.raw = body
    return req


def input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input must be a string or a non-empty list of messages.", param="input")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ApiError(400, f"input[{i}] must be a message with a string role.", param="input")
        content = item.get("content")
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                raise ApiError(400, f"input[{i}].content parts must carry text.", param="input")
            content = "".join(texts)  # type: ignore[arg-type]
        out.append({"role": item["role"], "content": content})
    return out


class ResponsesEncoder:
    """The body and the events of one Responses API answer."""

    def __init__(self, body: Mapping[str, Any], req: GenRequest, model: str) -> None:
        self.body, self.req, self.model = body, req, model
        self.id = "resp_" + uuid.uuid4().hex[:16]
        self.msg_id = "msg_" + uuid.uuid4().hex[:16]
        self.created = int(time.time())
        self.seq = 0

    def response(self, gen: Generation | None, text: str) -> dict[str, Any]:
        """The response object: in progress (``gen`` None) or finished."""
        body = self.body
        done = gen is not None
        incomplete = done and gen.finish_reason == "length"  # type: ignore[union-attr]
        return {
            "id": self.id, "created_at": self.created, "object": "response", "model": self.model,
            "background": False, "ec_transfer_params": None, "kv_transfer_params": None,
            "frequency_penalty": float(body.get("frequency_penalty") or 0.0),
            "presence_penalty": float(body.get("presence_penalty") or 0.0),
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "input_messages": None, "output_messages": None, "instructions": body.get("instructions"),
            "max_output_tokens": self.req.max_tokens, "max_tool_calls": body.get("max_tool_calls"),
            "metadata": body.get("metadata"), "output": [self.item(text, "completed")] if done else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"), "prompt": None, "reasoning": None,
            "service_tier": body.get("service_tier") or "auto",
            "status": ("incomplete" if incomplete else "completed") if done else "in_progress",
            "temperature": self.req.temperature, "text": None, "tool_choice": body.get("tool_choice", "none"),
            "tools": [], "top_logprobs": body.get("top_logprobs"), "top_p": float(body.get("top_p") or 1.0),
            "truncation": body.get("truncation") or "disabled", "user": body.get("user"),
            "usage": self.usage(gen) if done else None,
        }

    def usage(self, gen: Generation | None) -> dict[str, Any]:
        n_in, n_out = len(self.req.prompt_ids), gen.generated if gen else 0
        return {"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out, **USAGE_DETAILS}

    def item(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [self.part(text, None)]
        return {"id": self.msg_id, "type": "message", "role": "assistant", "status": status,
                "content": content, "phase": None}

    @staticmethod
    def part(text: str, logprobs: list[Any] | None) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    def full(self, gen: Generation, text: str) -> bytes:
        return orjson.dumps(self.response(gen, text))

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def opening(self) -> bytes:
        where = {"item_id": self.msg_id, "output_index": 0, "content_index": 0}
        return b"".join([
            self.event("response.created", response=self.response(None, "")),
            self.event("response.in_progress", response=self.response(None, "")),
            self.event("response.output_item.added", output_index=0, item=self.item(None, "in_progress")),
            self.event("response.content_part.added", **where, part=self.part("", [])),
        ])

    def delta(self, text: str) -> bytes:
        return self.event("response.output_text.delta", item_id=self.msg_id, output_index=0,
                          content_index=0, delta=text, logprobs=[])

    def closing(self, gen: Generation, text: str) -> bytes:
        where = {"item_id": self.msg_id, "output_index": 0, "content_index": 0}
        return b"".join([
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event("response.content_part.done", **where, part=self.part(text, None)),
            self.event("response.output_item.done", output_index=0, item=self.item(text, "completed")),
            self.event("response.completed", response=self.response(gen, text)),
        ])


async def _stream(core: SimCore, request: web.Request, req: GenRequest, plan: Plan) -> web.StreamResponse:
    cfg, loop = core.config, asyncio.get_running_loop()
    start = loop.time()
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    enc = ResponsesEncoder(req.raw or {}, req, cfg.model)
    gen = core.new_generation(req)
    if plan.kind is not None:
        core.record_fault(plan.kind)
    async with core.running(gen):
        await asyncio.sleep(cfg.ttft_ms / 1000 + plan.extra_ttft)
        sent, text = 0, []
        while not reached(plan, sent) and not gen.done:
            if sent:
                await asyncio.sleep(cfg.itl_ms / 1000)
            ids, piece = gen.step(chunk_size(cfg.tokens_per_chunk, plan, sent))
            core.stats.generation_tokens_total += len(ids)
            core.stats.kv_tokens += len(ids)
            data = (enc.opening() if sent == 0 else b"") + enc.delta(piece)
            if sent == 0:
                core.stats.ttft.observe(loop.time() - start)
            if plan.malformed_at is not None and sent <= plan.malformed_at < sent + len(ids):
                data = MALFORMED + data
            text.append(piece)
            await resp.write(data)
            sent += len(ids)
            core.stats.tokens_sent += len(ids)
            core.notify()
            if core.closing.is_set():
                return abort(request)
        if reached(plan, sent):
            return await stop_stream(core, request, plan.kind)
        await resp.write(enc.closing(gen, "".join(text)))
        await resp.write_eof()
    finished(core, [gen], loop.time() - start)
    return resp


async def _complete(core: SimCore, request: web.Request, req: GenRequest, plan: Plan) -> web.StreamResponse:
    enc = ResponsesEncoder(req.raw or {}, req, core.config.model)
    return await complete_with(core, request, req, plan,
                               lambda choices, texts: enc.full(choices[0].gen, texts[0]))


RESPONSES = Endpoint(parse_responses, _stream, _complete, chat=True)

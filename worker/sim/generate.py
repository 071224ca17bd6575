"""The generation endpoints: parse, apply faults, queue, stream (or answer) like vLLM.

Timing: response headers go out at once (after the simulated round trip), then the request
waits for a scheduler slot, then ``ttft_ms`` (plus a slow_first_token fault) before the first
chunk, then ``itl_ms`` between chunks of ``tokens_per_chunk`` tokens. A client that leaves
cancels the handler (``handler_cancellation``): generation stops at once and the request counts
as cancelled; ``tokens_sent`` only counts chunks written to the socket.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from worker.sim.config import SimConfig
from worker.sim.core import SimCore
from worker.sim.engine import Generation
from worker.sim.faults import FaultSpec
from worker.sim.protocol import ApiError, GenRequest, context_message, parse_chat, parse_completion, parse_json
from worker.sim.responses import DONE, SSE_HEADERS, Choice, Encoder, choices_of
from worker.sim.tokenizer import Tokenizer

STREAM_KINDS = frozenset({"slow_first_token", "cut_after", "stall_after", "malformed_event", "no_done"})
MALFORMED = b'data: {"id": "malformed", "choices": [{"index": 0, "delta": {"content": \n\n'


def error_response(err: ApiError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json",
                        headers=err.headers)


async def error_stream(request: web.Request, err: ApiError) -> web.StreamResponse:
    """An error the engine finds, sent to a stream request as vLLM does: a 200 stream holding
    one ``data: {"error": ...}`` event, then ``data: [DONE]``."""
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(b"data: " + err.body() + b"\n\n" + DONE)
    await resp.write_eof()
    return resp


def fault_error(core: SimCore, fault: FaultSpec, chat: bool) -> ApiError:
    """The error response of a fault that answers with an HTTP status."""
    kind, retry = fault.kind, fault.get("retry_after")
    headers = {"Retry-After": f"{retry:g}"} if retry is not None else {}
    param = "messages" if chat else "prompt"
    if kind == "429":
        return ApiError(429, "Too many requests (simulated fault).", headers=headers)
    if kind in ("500", "500_once"):
        return ApiError(500, "Internal server error (simulated fault).")
    if kind in ("503", "flap"):
        return ApiError(503, "Service unavailable (simulated fault).", headers=headers)
    if kind == "context_length":
        limit = core.config.max_model_len
        message = context_message(limit, limit, core.config.default_max_tokens)
        if fault.get("openai"):
            return ApiError(400, message, param=param, err_type="invalid_request_error",
                            code="context_length_exceeded")
        return ApiError(400, message, param="input_tokens")
    if kind == "content_policy":
        return ApiError(400, "The request was rejected by the content policy (simulated fault).",
                        param=param, code="content_policy_violation")
    return ApiError(400, "This pool cannot continue a final assistant message or a token-id "
                         "prompt (simulated fault).",
                    param="continue_final_message" if chat else "prompt")


def abort(request: web.Request) -> web.Response:
    """Close the connection with no response (aiohttp quietly fails to send the returned one)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


Parse = Callable[[dict[str, Any], SimConfig, Tokenizer], GenRequest]
Run = Callable[[SimCore, web.Request, GenRequest, "Plan"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A generation endpoint: how it parses a request, streams an answer, answers at once."""

    parse: Parse
    stream: Run
    complete: Run
    chat: bool  # errors name ``messages`` rather than ``prompt``


async def handle(core: SimCore, request: web.Request, chat: bool) -> web.StreamResponse:
    """/v1/chat/completions (``chat``) or /v1/completions."""
    return await handle_endpoint(core, request, CHAT if chat else COMPLETIONS)


async def handle_endpoint(core: SimCore, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    core.stats.requests_total += 1
    transport = request.transport
    if transport is not None:
        core.live.add(transport)
    try:
        return await _handle(core, request, endpoint)
    except asyncio.CancelledError:
        _cancelled(core)
        raise
    except ConnectionResetError:  # a write after the client left: nothing more to send
        _cancelled(core)
        return web.Response()
    finally:
        core.live.discard(transport)  # type: ignore[arg-type]
        core.notify()


def _cancelled(core: SimCore) -> None:
    core.stats.requests_cancelled += 1
    core.stats.finished["abort"] += 1


async def _handle(core: SimCore, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    chat = endpoint.chat
    fault = core.faults.before_parse()
    if fault is not None and fault.kind not in STREAM_KINDS:
        core.record_fault(fault.kind)
        if fault.kind == "reset_before_headers":
            return abort(request)
        if fault.kind == "hang":
            await request.read()
            await core.wait_closing(request.transport)
            return web.Response()
        return error_response(fault_error(core, fault, chat))
    body: dict[str, Any] = {}
    try:
        body = parse_json(await request.read())
        req = endpoint.parse(body, core.config, core.tokenizer)
    except ApiError as err:
        if err.in_stream and body.get("stream") is True:
            return await error_stream(request, err)
        return error_response(err)
    late = core.faults.after_parse(req.continuation)
    if late is not None:
        core.record_fault(late.kind)
        return error_response(fault_error(core, late, chat))
    if req.stream:
        return await endpoint.stream(core, request, req, Plan.of(fault, req))
    return await endpoint.complete(core, request, req, Plan.of(fault, req))


@dataclass(frozen=True, slots=True)
class Plan:
    """What a stream-level fault does to this request."""

    kind: str | None = None
    extra_ttft: float = 0.0
    stop_at: int | None = None  # cut_after / stall_after: tokens sent before the fault
    malformed_at: int | None = None
    done: bool = True

    @classmethod
    def of(cls, fault: FaultSpec | None, req: GenRequest) -> Plan:
        if fault is None:
            return cls()
        kind = fault.kind
        if kind == "slow_first_token":
            return cls(kind, extra_ttft=fault.params["seconds"])
        if kind in ("cut_after", "stall_after"):
            return cls(kind, stop_at=int(fault.params["tokens"]))
        if kind == "malformed_event":
            return cls(kind, malformed_at=int(fault.get("at", req.max_tokens // 2) or 0))
        return cls(kind, done=False)


async def _stream(core: SimCore, request: web.Request, req: GenRequest, plan: Plan) -> web.StreamResponse:
    """Each step sends one chunk per unfinished choice, in index order; ``cut_after`` and
    ``stall_after`` count the tokens of all choices together."""
    cfg, stats = core.config, core.stats
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    enc = core.encoder(req)
    choices = choices_of(req, core.new_generations(req))
    gens = [c.gen for c in choices]
    if plan.kind is not None:
        core.record_fault(plan.kind)
    async with core.running(gens):
        await asyncio.sleep(cfg.ttft_ms / 1000 + plan.extra_ttft)
        sent = 0
        while not reached(plan, sent) and not all(g.done for g in gens):
            if sent:
                await asyncio.sleep(cfg.itl_ms / 1000)
            data, step = _step(core, enc, choices, plan, sent)
            if sent == 0:
                data = enc.opening(choices) + data
                stats.ttft.observe(loop.time() - start)
            await resp.write(data)
            sent += step
            stats.tokens_sent += step
            core.notify()
            if core.closing.is_set():
                return abort(request)
        if reached(plan, sent):
            return await stop_stream(core, request, plan.kind)
        await _close_stream(resp, enc, req, choices, plan.done)
    finished(core, gens, loop.time() - start)
    return resp


def _step(core: SimCore, enc: Encoder, choices: list[Choice], plan: Plan, sent: int) -> tuple[bytes, int]:
    """One engine step: a chunk for each unfinished choice, in index order, until a fault's
    token count is reached; the events and how many tokens they hold."""
    data, step = b"", 0
    for c in choices:
        if c.gen.done or reached(plan, sent + step):
            continue
        ids, piece = _next_chunk(core, enc, c, chunk_size(core.config.tokens_per_chunk, plan, sent + step))
        if plan.malformed_at is not None and sent + step <= plan.malformed_at < sent + step + len(ids):
            piece = MALFORMED + piece
        data += piece
        step += len(ids)
    return data, step


def reached(plan: Plan, sent: int) -> bool:
    return plan.stop_at is not None and sent >= plan.stop_at


def chunk_size(tokens_per_chunk: int, plan: Plan, sent: int) -> int:
    return tokens_per_chunk if plan.stop_at is None else min(tokens_per_chunk, plan.stop_at - sent)


def _next_chunk(core: SimCore, enc: Encoder, c: Choice, k: int) -> tuple[list[int], bytes]:
    ids, text = c.gen.step(k)
    core.stats.generation_tokens_total += len(ids)
    core.stats.kv_tokens += len(ids)
    return ids, enc.chunk(c, ids, text)


async def stop_stream(core: SimCore, request: web.Request, kind: str | None) -> web.StreamResponse:
    """cut_after aborts the connection; stall_after keeps it open and silent."""
    if kind == "stall_after":
        await core.wait_closing(request.transport)
    return abort(request)


async def _close_stream(resp: web.StreamResponse, enc: Encoder, req: GenRequest, choices: list[Choice],
                        done: bool) -> None:
    tail = enc.usage_chunk(choices) if req.include_usage else b""
    if done:
        tail += DONE
    if tail:
        await resp.write(tail)
    await resp.write_eof()


def finished(core: SimCore, gens: list[Generation], elapsed: float) -> None:
    stats = core.stats
    stats.requests_completed += 1
    for gen in gens:
        stats.finished[gen.finish_reason or "length"] += 1
    stats.e2e.observe(elapsed)


async def _complete(core: SimCore, request: web.Request, req: GenRequest, plan: Plan) -> web.StreamResponse:
    enc = core.encoder(req)
    return await complete_with(core, request, req, plan, enc.full)


async def complete_with(core: SimCore, request: web.Request, req: GenRequest, plan: Plan,
                        render: Callable[[list[Choice], list[str]], bytes]) -> web.StreamResponse:
    """Non-stream: the whole answer (``render(choices, texts)``) after the time the stream would
    have taken. cut_after and stall_after abort or stall before the body; malformed_event sends
    a truncated JSON body."""
    cfg, loop = core.config, asyncio.get_running_loop()
    start = loop.time()
    choices = choices_of(req, core.new_generations(req))
    gens = [c.gen for c in choices]
    if plan.kind is not None and plan.kind != "no_done":  # no_done has no meaning without a stream
        core.record_fault(plan.kind)
    async with core.running(gens):
        texts, steps = [], 0
        for gen in gens:
            ids, text = gen.step(gen.max_tokens)
            texts.append(text)
            core.stats.generation_tokens_total += len(ids)
            core.stats.kv_tokens += len(ids)
            steps = max(steps, -(-len(ids) // cfg.tokens_per_chunk))
        await asyncio.sleep(cfg.ttft_ms / 1000 + plan.extra_ttft + cfg.itl_ms / 1000 * max(0, steps - 1))
    core.stats.ttft.observe(loop.time() - start)
    if plan.stop_at is not None:
        return await stop_stream(core, request, plan.kind)
    body = render(choices, texts)
    if plan.malformed_at is not None:
        body = body[: len(body) // 2]
    resp = web.Response(body=body, content_type="application/json")
    await resp.prepare(request)
    await resp.write_eof()
    core.stats.tokens_sent += sum(g.generated for g in gens)
    finished(core, gens, loop.time() - start)
    return resp

CHAT = Endpoint(parse_chat, _stream, _complete, chat=True)
COMPLETIONS = Endpoint(parse_completion, _stream, _complete, chat=False)

"""The simulator's aiohttp server: vLLM's endpoints plus a small control API.

vLLM endpoints: ``GET /health``, ``GET|POST /ping``, ``GET /version``, ``GET /v1/models``,
``GET /metrics``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (``n``, lists of
prompts, ``echo``, ``logprobs``), ``POST /v1/responses``, ``POST /tokenize``, ``POST /detokenize``.
Like vLLM 0.32 (FastAPI) an unknown path is a 404 ``{"detail": "Not Found"}`` (so are
``/v1/models/{id}`` and ``/v1/embeddings``, which vLLM does not serve for a chat model) and a
method not allowed is a 405 ``{"detail": "Method Not Allowed"}`` with ``Allow``.
Control (not part of vLLM, never delayed by ``rtt_ms`` nor hit by faults):
``GET /sim/stats`` (counters as JSON), ``GET /sim/fault``, ``POST /sim/fault`` with
``{"fault": "SPEC"}`` or ``{"fault": null}``.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from worker.sim import generate
from worker.sim.config import SimConfig
from worker.sim.core import SimCore
from worker.sim.faults import FaultSpec
from worker.sim.metrics import SimStats, render_metrics
from worker.sim.protocol import ApiError, parse_json
from worker.sim.responses_api import RESPONSES
from worker.sim.tokenize import detokenize, tokenize
from worker.sim.tokenizer import Tokenizer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class Simulator:
    """One simulated vLLM server on a real socket.

    >>> sim = Simulator(SimConfig(model="tiny-chat"))
    >>> url = await sim.start()          # "http://127.0.0.1:PORT"
    >>> sim.stats.tokens_sent, sim.set_fault("cut_after:tokens=3")
    >>> await sim.stop()
    """

    def __init__(self, config: SimConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SimConfig()
        self.core = SimCore(self.config, clock)
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    @property
    def stats(self) -> SimStats:
        return self.core.stats

    @property
    def tokenizer(self) -> Tokenizer:
        """The simulated model's tokenizer (to build token-id prompts in tests)."""
        return self.core.tokenizer

    @property
    def fault(self) -> FaultSpec | None:
        return self.core.faults.spec

    def set_fault(self, spec: str | FaultSpec | None) -> FaultSpec | None:
        """Install a fault now (``None`` clears it); raises ValueError on a bad spec."""
        return self.core.faults.set(spec)

    async def wait_for(self, predicate: Callable[[SimStats], bool], timeout: float = 5.0) -> None:
        """Wait (event-driven, no polling) until ``predicate(sim.stats)`` holds, e.g.
        ``await sim.wait_for(lambda s: s.requests_cancelled == 1)``; TimeoutError after ``timeout``."""
        await self.core.wait_for(predicate, timeout)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_get("/sim/stats", self._sim_stats)
        app.router.add_get("/sim/fault", self._get_fault)
        app.router.add_post("/sim/fault", self._post_fault)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); return the base URL."""
        runner = web.AppRunner(self.build_app(), handler_cancellation=True, access_log=None,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)  # load tests open thousands at once
        await site.start()
        self._runner = runner
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; in-flight requests (streams, hangs, stalls) end at once."""
        self.core.abort_live()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        control = request.path.startswith("/sim/")
        missing = request.match_info.http_exception
        if isinstance(missing, web.HTTPMethodNotAllowed):
            allow = ", ".join(sorted(missing.allowed_methods - {"HEAD"}))
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers={"Allow": allow})
        if isinstance(missing, web.HTTPNotFound):
            return web.json_response({"detail": "Not Found"}, status=404)
        if missing is None and not control:
            self.core.stats.paths[request.path] += 1
        if self.config.rtt_ms > 0 and not control:
            await asyncio.sleep(self.config.rtt_ms / 1000)
        return await handler(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await generate.handle(self.core, request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await generate.handle(self.core, request, chat=False)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await generate.handle_endpoint(self.core, request, RESPONSES)

    async def _tokenize(self, request: web.Request) -> web.Response:
        return await self._tokens(request, tokenize)

    async def _detokenize(self, request: web.Request) -> web.Response:
        return await self._tokens(request, detokenize)

    async def _tokens(self, request: web.Request,
                      run: Callable[[dict[str, Any], SimConfig, Tokenizer], dict[str, Any]]) -> web.Response:
        try:
            return _json(run(parse_json(await request.read()), self.config, self.tokenizer))
        except ApiError as err:
            return generate.error_response(err)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        fault = self.core.faults.for_health()
        if fault is None:
            return web.Response()
        self.core.record_fault(fault.kind, health=True)
        if fault.kind == "reset_before_headers":
            return generate.abort(request)
        if fault.kind == "hang":
            transport = request.transport
            if transport is not None:
                self.core.live.add(transport)
            await self.core.wait_closing(transport)
            return web.Response()
        return web.Response(status=503)

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": self.config.version})

    async def _models(self, request: web.Request) -> web.Response:
        name, now = self.config.model, int(time.time())
        permission = {"id": "modelperm-" + uuid.uuid4().hex[:16], "object": "model_permission", "created": now,
                      "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                      "organization": "*", "group": None, "is_blocking": False}
        card = {"id": name, "object": "model", "created": now, "owned_by": "vllm",
                "root": name, "parent": None, "max_model_len": self.config.max_model_len,
                "permission": [permission]}
        return _json({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        cfg = self.config
        text = render_metrics(self.stats, cfg.model, cfg.kv_cache_tokens, cfg.block_size)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats.as_dict())

    async def _get_fault(self, request: web.Request) -> web.Response:
        spec = self.fault
        return _json({"fault": spec.text if spec else None})

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("fault", 0), (str, type(None))):
                raise ValueError('expected {"fault": "SPEC"} or {"fault": null}')
            installed = self.set_fault(body["fault"])
        except ValueError as exc:
            return generate.error_response(ApiError(400, str(exc), param="fault"))
        return _json({"fault": installed.text if installed else None})

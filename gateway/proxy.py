"""The attempt loop: walk the plan, fail over before the first byte, relay after it.

Before anything is written to the client, every failure (connect error, reset, timeout,
5xx, 429, empty stream) moves on to the next candidate, within ``retry.max_attempts``
and with jittered backoff.  After the first byte, a broken upstream ends the stream with
an in-band error event: never a truncated stream presented as success."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.config import Config
from gateway.errors import RateLimited, Unavailable, sse_error_event
from gateway.metrics import GatewayMetrics
from gateway.relay import StreamTail, find_usage, pump
from gateway.request import ParsedRequest
from gateway.state import Runtime
from gateway.upstream import Failed, Ready, Refused, UpstreamClient
from routing.observations import Observations
from routing.outcome import Outcome
from routing.plan import Candidate, Plan
from routing.retry import backoff_delay, parse_retry_after


@dataclass(slots=True)
class AttemptLog:
    tried: list[tuple[Candidate, Outcome, str]] = field(default_factory=list)
    retry_after_s: float | None = None

    @property
    def count(self) -> int:
        return len(self.tried)

    def summary(self) -> str:
        return "; ".join(f"{c.endpoint.id} ({c.region}): {detail}" for c, _, detail in self.tried)


class Proxy:
    """Serves one parsed request against a plan.  Built per app; stateless per request."""

    def __init__(self, upstream: UpstreamClient, observations: Observations, metrics: GatewayMetrics,
                 runtime: Runtime) -> None:
        self.upstream = upstream
        self.obs = observations
        self.metrics = metrics
        self.rt = runtime

    async def serve(self, request: web.Request, req: ParsedRequest, plan: Plan, cfg: Config) -> web.StreamResponse:
        """Walk ``plan`` for ``req`` under the config of the snapshot the request started with."""
        log = AttemptLog()
        retry = cfg.retry
        for cand in plan.candidates[: retry.max_attempts]:
            if log.count:
                await asyncio.sleep(backoff_delay(log.count, retry.backoff_base_ms / 1000,
                                                  retry.backoff_max_ms / 1000, self.rt.rng))
            result = await self._attempt(cand, req, cfg.timeouts.first_byte_s)
            if isinstance(result, Failed):
                self._failed(cand, result, log)
                continue
            log.tried.append((cand, Outcome.SUCCESS, "ok"))
            headers = self._headers(req, cand, log, plan)
            if isinstance(result, Refused):
                self._record(cand, Outcome.CLIENT_ERROR, None)
                self._count(req, cand, str(result.status))
                return web.Response(status=result.status, body=result.body,
                                    headers={**result.headers, **headers})
            return await self._deliver(request, req, cand, result, headers, log)
        raise self._exhausted(req, plan, log)

    async def _attempt(self, cand: Candidate, req: ParsedRequest, first_byte_s: float) -> Ready | Failed | Refused:
        body = req.body_for(cand.upstream_model)
        headers = {"Content-Type": "application/json", "X-Request-Id": req.request_id,
                   "Accept": "text/event-stream" if req.stream else "application/json"}
        self.obs.acquire(cand.endpoint.id)
        try:
            result = await self.upstream.open(cand.endpoint.url + req.path, body, headers, req.stream,
                                              first_byte_s)
        except BaseException:
            self.obs.release(cand.endpoint.id)
            raise
        if not isinstance(result, Ready):
            self.obs.release(cand.endpoint.id)
        return result

    def _failed(self, cand: Candidate, failed: Failed, log: AttemptLog) -> None:
        log.tried.append((cand, failed.outcome, failed.detail))
        self._record(cand, failed.outcome, None)
        if failed.outcome is Outcome.HTTP_429:
            delay = parse_retry_after(failed.retry_after, time.time())
            if delay is not None:
                best = log.retry_after_s
                log.retry_after_s = delay if best is None else min(best, delay)

    def _exhausted(self, req: ParsedRequest, plan: Plan, log: AttemptLog) -> Exception:
        region = log.tried[-1][0].region if log.tried else "-"
        if log.tried and all(o is Outcome.HTTP_429 for _, o, _ in log.tried):
            self._count_status(req, region, "429")
            wait = log.retry_after_s if log.retry_after_s is not None else 1.0
            return RateLimited(f"every pool serving {req.model!r} is throttling requests; retry later",
                               headers={"Retry-After": str(max(1, round(wait))), **self._id_headers(req, log)})
        self._count_status(req, region, "503")
        if not plan.candidates:
            reasons = sorted({r.reason for r in plan.rejected})
            msg = f"no healthy pool can serve model {req.model!r} ({', '.join(reasons) or 'no candidates'})"
        else:
            msg = f"no upstream could serve the request after {log.count} attempt(s): {log.summary()}"
        return Unavailable(msg, headers=self._id_headers(req, log))

    async def _deliver(self, request: web.Request, req: ParsedRequest, cand: Candidate, ready: Ready,
                       headers: dict[str, str], log: AttemptLog) -> web.StreamResponse:
        self.metrics.ttft_seconds.labels(cand.region).observe(ready.ttfb_s)
        if log.count > 1:
            self.metrics.failovers.labels(log.tried[0][0].region, cand.region).inc()
        if not req.stream:
            return self._deliver_body(req, cand, ready, headers)
        return await self._deliver_stream(request, req, cand, ready, headers)

    def _deliver_body(self, req: ParsedRequest, cand: Candidate, ready: Ready,
                      headers: dict[str, str]) -> web.Response:
        ready.release()
        self.obs.release(cand.endpoint.id)
        self._record(cand, Outcome.SUCCESS, None)
        self._usage(req, find_usage(ready.first))
        self._count(req, cand, "200")
        return web.Response(status=200, body=ready.first, headers={**ready.headers, **headers})

    async def _deliver_stream(self, request: web.Request, req: ParsedRequest, cand: Candidate, ready: Ready,
                              headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={**ready.headers, **headers,
                                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        tail = StreamTail()
        outcome = Outcome.BAD_STREAM
        try:
            await response.prepare(request)
            await pump(response, ready.first, ready.chunks(), tail)
            outcome = Outcome.SUCCESS if tail.complete() else Outcome.BAD_STREAM
            if outcome is not Outcome.SUCCESS:
                await response.write(sse_error_event("the upstream stream ended before completion"))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            outcome = Outcome.TIMEOUT if isinstance(exc, asyncio.TimeoutError) else Outcome.RESET
            await _try_write(response, sse_error_event(f"the upstream stream was interrupted ({type(exc).__name__})"))
        except (ConnectionResetError, asyncio.CancelledError):
            outcome = Outcome.CANCELLED
            self.metrics.client_disconnects.labels(req.model).inc()
            raise
        finally:
            ready.close() if outcome is not Outcome.SUCCESS else ready.release()
            self.obs.release(cand.endpoint.id)
            self._record(cand, outcome, ready.headers_s * 1000 if ready.headers_s is not None else None)
            self._count(req, cand, "200" if outcome is Outcome.SUCCESS else outcome.value)
        self._usage(req, tail.usage())
        await response.write_eof()
        return response

    def _headers(self, req: ParsedRequest, cand: Candidate, log: AttemptLog, plan: Plan) -> dict[str, str]:
        return {"x-request-id": req.request_id, "x-infercdn-region": cand.region,
                "x-infercdn-pool": cand.pool.name, "x-infercdn-attempts": str(log.count)}

    @staticmethod
    def _id_headers(req: ParsedRequest, log: AttemptLog) -> dict[str, str]:
        return {"x-request-id": req.request_id, "x-infercdn-attempts": str(log.count)}

    def _record(self, cand: Candidate, outcome: Outcome, ttfb_ms: float | None) -> None:
        self.obs.record_outcome(cand.endpoint.id, outcome, ttfb_ms)
        self.metrics.attempts.labels(cand.pool.name, cand.endpoint.id, outcome.value).inc()

    def _count(self, req: ParsedRequest, cand: Candidate, status: str) -> None:
        self._count_status(req, cand.region, status)

    def _count_status(self, req: ParsedRequest, region: str, status: str) -> None:
        self.metrics.requests.labels(req.model, region, status).inc()
        self.metrics.request_seconds.labels(req.model, "true" if req.stream else "false").observe(
            time.monotonic() - req.started)

    def _usage(self, req: ParsedRequest, usage: dict | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                self.metrics.tokens.labels(req.model, kind.removesuffix("_tokens")).inc(value)


async def _try_write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionResetError, RuntimeError):
        pass



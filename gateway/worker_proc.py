"""One serving process of ``infercdn gateway --workers N`` (started by ``gateway/workers.py``):
``python -m gateway.worker_proc SPEC_JSON INDEX RESTARTS``.

It serves as a single gateway does — the same app, drain and SIGHUP reload — except that it
listens with SO_REUSEPORT beside its siblings, takes its health and load observations from the
host's prober over its link (worker 0 is that prober; it alone also reads the registry,
re-resolves DNS and runs the canary, and shares what they find), shares operator drains and its
live traffic with its siblings (``gateway/host_share.py``), tells the supervisor when POST
/admin/reload reloaded it (the others follow), and stops when the supervisor goes away."""
from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.app import build_app
from gateway.config import Config, ConfigError, EndpointCfg, load_config
from gateway.hostlimits import HostLimits
from gateway.host_link import HostLink
from gateway.host_share import shared_drains, shared_traffic
from gateway.reload import reload_on_signal
from gateway.server import drain, on_sighup, run, start_site, vllm_default, wait_for_signal, with_endpoints
from gateway.state import HOST_LINK, METRICS, RELOAD_PEERS, RUNTIME, SHARED_LIMITS
from gateway.tuning import settle_gc
from gateway.workers import WorkerSpec

log = logging.getLogger("infercdn.workers")

WORKER_HEADER = "x-infercdn-worker"
REPLAY_TIMEOUT_S = 10.0


def config_transform(spec: WorkerSpec) -> Callable[[Config], Config]:
    """What every config read from the file goes through here: the command's own preparation
    (``infercdn up --engine vllm``), then the vLLM servers the supervisor launched."""
    extra = {pool: [EndpointCfg(**e) for e in eps] for pool, eps in spec.endpoints.items()}
    prepare: Callable[[Config], Config] | None = None
    if spec.prepare == "vllm_default":
        prepare = vllm_default

    def transform(cfg: Config) -> Config:
        return with_endpoints(prepare(cfg) if prepare is not None else cfg, extra)

    return transform


async def host_limits(app: web.Application, path: str, index: int, workers: int) -> AsyncIterator[None]:
    """Without Redis, the tenant limits of the whole host (runs after build_app's own set-up)."""
    if app[SHARED_LIMITS] is not None:  # auth.shared: fleet-wide through Redis
        yield
        return
    limits = app[SHARED_LIMITS] = HostLimits(path, index, workers, app[RUNTIME].clock)
    yield
    await limits.close()


async def caught_up(link: HostLink, timeout_s: float = REPLAY_TIMEOUT_S) -> AsyncIterator[None]:
    """Listen only once the host's shared state (drains, discoveries, canary verdicts) is
    applied: a restarted worker never routes to an endpoint its siblings keep out."""
    try:
        async with asyncio.timeout(timeout_s):
            await link.replayed.wait()
    except TimeoutError:
        log.error("the supervisor's replay did not come within %.0f s; serving without it", timeout_s)
    yield


def first_config(spec: WorkerSpec) -> Config:
    """The file as it is now; when an edit broke it since the last reload, the last good copy."""
    try:
        return load_config(spec.config_path)
    except ConfigError as exc:
        log.error("%s; starting from the last valid copy", exc)
        return load_config(spec.fallback_config)


async def serve(spec: WorkerSpec, index: int, restart: bool) -> int:
    transform = config_transform(spec)
    cfg = transform(first_config(spec))
    link = await HostLink.connect(spec.hub, index)
    app = build_app(cfg, simulated=spec.simulated, config_path=spec.config_path, config_transform=transform)
    if restart:  # summed over the run's processes: the restarts of each worker
        app[METRICS].worker_restarts.labels(str(index)).inc()
    app[HOST_LINK] = link
    app[RELOAD_PEERS] = link.reload_peers
    app.cleanup_ctx.append(shared_drains)  # before the link reads: the handlers of what it replays
    app.cleanup_ctx.append(shared_traffic(spec.workers))
    app.cleanup_ctx.append(link.context)
    app.cleanup_ctx.append(lambda a: caught_up(link))
    if spec.limits is not None:
        app.cleanup_ctx.append(lambda a: host_limits(a, spec.limits, index, spec.workers))  # type: ignore[arg-type]
    name = str(index)

    async def tag(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = name

    app.on_response_prepare.append(tag)
    runner, _ = await start_site(app, spec.host, spec.port, shutdown_timeout=cfg.gateway.drain_timeout_s,
                                 reuse_port=True)
    on_sighup(lambda: reload_on_signal(app))
    settle_gc()
    link.ready()
    signalled = asyncio.create_task(wait_for_signal())
    orphaned = asyncio.create_task(link.lost.wait())
    await asyncio.wait([signalled, orphaned], return_when=asyncio.FIRST_COMPLETED)
    if orphaned.done() and not signalled.done():
        log.error("the supervisor is gone: stopping")
    signalled.cancel()
    orphaned.cancel()
    await drain(app, runner, cfg, notice=True)
    return 0


def main(argv: list[str]) -> int:
    spec, index, restarts = WorkerSpec.load(argv[0]), int(argv[1]), int(argv[2])
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    return run(lambda: serve(spec, index, restarts > 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

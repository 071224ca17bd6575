"""Self-registration of a worker in the fleet registry (``--register REDIS_URL``).

The worker announces its endpoint (URL, region, served models, max model length, health URL,
price) under its provider's name, signed with the provider's token (``routing.announce``), and
renews the announcement every ``lease_s / 3`` seconds; the key expires with the lease, so a worker
that dies drops out of every gateway within ``lease_s``.  ``withdraw()`` (on drain or stop)
deletes it at once.  Redis down: the worker keeps serving and keeps trying; it is logged once a
minute."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from routing.announce import Announcement, encode, registry_key

log = logging.getLogger("infercdn.register")

TOKEN_ENV = "INFERCDN_PROVIDER_TOKEN"
DEFAULT_LEASE_S = 10.0


@dataclass(frozen=True, slots=True)
class Registration:
    """What ``--register`` was given."""

    redis_url: str
    provider: str
    region: str
    token: str
    price_per_mtok: float | None = None
    lease_s: float = DEFAULT_LEASE_S
    key_prefix: str = "infercdn:"
    endpoint_id: str | None = None  # default: host:port of the announced URL
    advertise_url: str | None = None  # default: the URL the worker listens on


def default_id(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


@dataclass
class Registrar:
    """Keeps one announcement alive in Redis; ``run()`` renews until cancelled."""

    reg: Registration
    announcement: Announcement
    wall: Callable[[], float] = time.time
    client: Any = None
    withdrawn: bool = False
    renewals: int = 0
    _last_warning: float = field(default=float("-inf"))

    @classmethod
    def build(cls, reg: Registration, url: str, models: tuple[str, ...], max_model_len: int | None,
              health_url: str | None = None) -> Registrar:
        url = (reg.advertise_url or url).rstrip("/")
        ann = Announcement(provider=reg.provider, id=reg.endpoint_id or default_id(url), url=url,
                           region=reg.region, models=models, expires=0.0, health_url=health_url,
                           max_model_len=max_model_len,
                           price_per_mtok=None if reg.price_per_mtok is None else float(reg.price_per_mtok))
        return cls(reg, ann)

    @property
    def key(self) -> str:
        return registry_key(self.reg.key_prefix, self.reg.provider, self.announcement.id)

    def _connect(self) -> Any:
        if self.client is None:
            import redis.asyncio as aioredis

            timeout = min(2.0, self.reg.lease_s / 3)
            self.client = aioredis.Redis.from_url(self.reg.redis_url, socket_timeout=timeout,
                                                  socket_connect_timeout=timeout)
        return self.client

    async def renew(self) -> bool:
        """Write the announcement with a fresh lease; False (logged) when Redis fails."""
        if self.withdrawn:
            return False
        lease_ms = int(self.reg.lease_s * 1000)
        ann = replace(self.announcement, expires=float(self.wall() + self.reg.lease_s))
        try:
            await self._connect().set(self.key, encode(ann, self.reg.token), px=lease_ms)
        except Exception as exc:  # noqa: BLE001 - Redis trouble must not stop serving
            self._warn(exc)
            return False
        self.renewals += 1
        if self.renewals == 1:
            log.info("registered %s as %s:%s in %s (lease %g s)", ann.url, ann.provider, ann.id,
                     ann.region, self.reg.lease_s)
        return True

    async def run(self) -> None:
        """Renew every third of the lease until cancelled (or withdrawn)."""
        while not self.withdrawn:
            await self.renew()
            await asyncio.sleep(self.reg.lease_s / 3)

    def rejoin(self) -> None:
        """Renewals work again after a withdraw (a restarted server is ready again)."""
        self.withdrawn = False

    async def withdraw(self) -> None:
        """Leave the registry at once (draining, stopping, or the server died); renewals do
        nothing until ``rejoin``."""
        if self.withdrawn:
            return
        self.withdrawn = True
        try:
            async with asyncio.timeout(2.0):
                await self._connect().delete(self.key)
            log.info("withdrew %s:%s from the registry", self.announcement.provider, self.announcement.id)
        except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
            self._warn(exc)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
            self.client = None

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning("registry %s unavailable (%s: %s); still serving, retrying every %g s",
                        self.reg.redis_url, type(exc).__name__, exc or "timeout", self.reg.lease_s / 3)


@contextlib.asynccontextmanager
async def registered(registrar: Registrar | None):  # type: ignore[no-untyped-def]
    """Renew ``registrar`` in the background while the block runs; withdraw at its end."""
    if registrar is None:
        yield
        return
    await registrar.renew()
    task = asyncio.create_task(registrar.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await registrar.withdraw()
        await registrar.close()


def add_arguments(parser: Any) -> None:
    """``--register`` and its companions, for ``infercdn worker sim`` and ``worker vllm``."""
    add = parser.add_argument
    add("--register", metavar="REDIS_URL", help="announce this worker in the fleet registry at REDIS_URL")
    add("--provider", help="provider name (with --register); its token comes from $" + TOKEN_ENV)
    add("--region", help="region name of the gateways' config (with --register)")
    add("--price", type=float, help="price per 1M tokens, in dollars (with --register)")
    add("--lease", dest="lease_s", type=float, default=DEFAULT_LEASE_S,
        help="seconds an announcement lives without renewal (default %(default)s)")
    add("--advertise-url", help="URL gateways should use (default: the address listened on)")
    add("--endpoint-id", help="id within the provider (default: host:port of the URL)")
    add("--registry-prefix", default="infercdn:", help="key prefix in Redis (default %(default)s)")


def from_args(args: Any, environ: dict[str, str] | None = None, listen_host: str | None = None
              ) -> Registration | None:
    """The Registration the flags ask for, or None without ``--register``; ValueError names
    what is missing (``listen_host``: where the worker listens, to catch an unreachable URL)."""
    if not getattr(args, "register", None):
        return None
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "")
    missing = [flag for flag, value in (("--provider", args.provider), ("--region", args.region),
                                        (f"${TOKEN_ENV}", token)) if not value]
    if missing:
        raise ValueError(f"--register needs {', '.join(missing)}")
    if not args.register.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--register {args.register!r}: expected a redis://, rediss:// or unix:// URL")
    if args.lease_s <= 0 or (args.price is not None and args.price < 0):
        raise ValueError("--lease must be > 0 and --price >= 0")
    if listen_host in ("0.0.0.0", "::", "") and not args.advertise_url:
        raise ValueError(f"listening on all addresses ({listen_host or '*'}): give --advertise-url with an "
                         "address gateways can reach")
    return Registration(args.register, args.provider, args.region, token, args.price, args.lease_s,
                        args.registry_prefix, args.endpoint_id, args.advertise_url)

"""The run configuration: one frozen value built by the CLI (or a test) and validated once."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from .clients import parse_clients
from .dists import parse_dist


class ConfigError(ValueError):
    """An invalid option; the message names the option, the value and why."""


@dataclass(frozen=True)
class LoadConfig:
    url: str
    model: str | None = None
    api_key: str | None = None
    endpoint: str = "chat"          # chat | completions
    stream: bool = True
    rate: float | None = None       # open loop when set
    arrival: str = "poisson"        # constant | poisson
    concurrency: int | None = None  # closed loop when set
    requests: int | None = None
    duration: float | None = None
    prompt_tokens: str = "128"
    max_tokens: str = "64"
    clients: str | None = None
    seed: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 60.0
    grace: float = 10.0             # seconds after --duration for in-flight requests to finish
    max_inflight: int = 1024        # open loop: cap on requests in flight (and connections)
    ignore_eos: bool = False

    def validate(self) -> "LoadConfig":
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--url {self.url!r}: expected http(s)://host[:port]")
        if self.endpoint not in ("chat", "completions"):
            raise ConfigError(f"--endpoint {self.endpoint!r}: expected chat or completions")
        if (self.rate is None) == (self.concurrency is None):
            raise ConfigError("give exactly one of --rate (open loop) or --concurrency (closed loop)")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate {self.rate}: must be > 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency {self.concurrency}: must be >= 1")
        if self.requests is None and self.duration is None:
            raise ConfigError("give --requests, --duration or both: a run must be bounded")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"--requests {self.requests}: must be >= 1")
        for name in ("duration", "timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name} {value}: must be > 0")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError(f"--arrival {self.arrival!r}: expected constant or poisson")
        if self.max_inflight < 1 or self.grace < 0:
            raise ConfigError("--max-inflight must be >= 1 and --grace >= 0")
        try:
            parse_dist(self.prompt_tokens)
            parse_dist(self.max_tokens)
            parse_clients(self.clients)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return self

    def public(self) -> dict:
        """The configuration as it goes into the report (the API key is never written out)."""
        out = asdict(self)
        out["api_key"] = "***" if self.api_key else None
        out["headers"] = {k: ("***" if k.lower() == "authorization" else v) for k, v in self.headers}
        out["mode"] = "open" if self.rate else "closed"
        return out

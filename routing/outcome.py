"""What happened on one attempt against one endpoint, and whose fault it was.

``local`` outcomes (we could not connect, our deadline fired) are told apart from
``upstream`` ones (the server answered badly), as Envoy's Result enum does."""
from __future__ import annotations

import enum


class Outcome(enum.Enum):
    SUCCESS = "success"
    CONNECT_ERROR = "connect_error"  # local: refused, unreachable, DNS
    TIMEOUT = "timeout"  # local: connect/first-byte/total deadline fired
    RESET = "reset"  # upstream: connection dropped before or during the response
    HTTP_5XX = "http_5xx"  # upstream
    HTTP_429 = "http_429"  # upstream: overloaded, honour Retry-After
    BAD_STREAM = "bad_stream"  # upstream: malformed SSE, cut or stalled stream
    UPSTREAM_TOO_LARGE = "upstream_too_large"  # upstream: a head, event or body over upstream_limits
    CLIENT_ERROR = "client_error"  # 4xx other than 429: the request's fault, not the endpoint's
    CANCELLED = "cancelled"  # the client left; says nothing about the endpoint

    @property
    def is_failure(self) -> bool:
        """Counts against the endpoint (outlier detection, breakers)."""
        return self not in (Outcome.SUCCESS, Outcome.CLIENT_ERROR, Outcome.CANCELLED)

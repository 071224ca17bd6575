"""Retry arithmetic: how long to wait before the next attempt, and what an upstream's
Retry-After asks for.  Which answers go to the next candidate is decided where they are read,
in the gateway's upstream client: a failure (connect error, timeout, reset, 5xx, 429, bad
stream) tries the next candidate, a refusal (a 4xx: the request's own fault) ends the request."""
from __future__ import annotations

import datetime
import email.utils
import math
import random

def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: after ``attempt`` failed attempts (1 = the first
    failed), wait ``uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))``; 0 before any."""
    if attempt < 1 or base_s <= 0 or max_s <= 0:
        return 0.0
    cap = min(max_s, base_s * 2.0 ** min(attempt - 1, 62))
    return rng.uniform(0.0, cap)


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (a past
    date gives 0).  None when absent or unparsable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit() or text[0] in "+-.":
        try:
            seconds = float(text)
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime and "-0000" forms: HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now_epoch)

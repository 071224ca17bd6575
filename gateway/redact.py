"""Secrets in config problems: what a message may show (CLI, log, admin API)."""
from __future__ import annotations

import re
from typing import Any

MISSING = object()  # a problem with no value to show
# a field path segment that holds a secret (api_keys, api_key_sha256, password, provider tokens)
_SECRET_FIELD = re.compile(r"key|secret|passw|credential|(^|_)tokens?(_sha256)?$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact(path: str, value: Any, reason: str) -> tuple[Any, str]:
    """A problem as it may be shown (CLI, log, admin API): values of secret fields as ``***``,
    passwords in URLs masked, and neither repeated inside the reason."""
    if reason.startswith("Extra inputs") and isinstance(value, str):  # a misspelt `api_kyes` may hold a key
        return MISSING, reason
    secret = any(_SECRET_FIELD.search(seg) for seg in re.split(r"[.\[\]]", path) if seg and not seg.isdigit())
    if isinstance(value, str):
        masked = "***" if secret else _URL_USERINFO.sub("***@", value)
        if masked != value:
            reason = reason.replace(value, masked)
        return masked, reason
    if secret and value is not MISSING:
        return "***", reason
    return value, reason

"""The registry's wire format: what a worker announces in Redis and how a gateway checks it.

Shared by ``worker/register.py`` (writes) and ``gateway/registry.py`` (reads); pure stdlib, so
both sides may import it without breaking the import rules.

One Redis key per endpoint, ``{prefix}fleet:{provider}:{id}``, holds the JSON
``{"a": ANNOUNCEMENT, "sig": HEX}`` and expires with the lease (``PX``).  ``sig`` is the
HMAC-SHA256 of the canonical announcement (sorted keys, no spaces) keyed by the hex SHA-256 of
the provider's token: the gateway config holds only that hash, and whoever can write to Redis
without it cannot announce in a provider's name.  ``expires`` (the worker's wall clock) is
signed too, so a copied announcement stops counting when its lease would have ended."""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

WIRE_VERSION = 1
KEY_PART = "fleet:"


@dataclass(frozen=True, slots=True)
class Announcement:
    provider: str
    id: str  # the endpoint's id within its provider (default: host:port of url)
    url: str  # base URL, no /v1
    region: str
    models: tuple[str, ...]  # served model names
    expires: float  # unix time the lease ends
    health_url: str | None = None
    max_model_len: int | None = None
    price_per_mtok: float | None = None
    version: int = WIRE_VERSION

    def canonical(self) -> bytes:
        data = asdict(self)
        data["models"] = list(self.models)
        data["expires"] = float(self.expires)  # 5 and 5.0 must sign alike on both sides
        if self.price_per_mtok is not None:
            data["price_per_mtok"] = float(self.price_per_mtok)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class BadAnnouncement(ValueError):
    """A registry value that is not a well-formed announcement."""


def token_hash(token: str) -> str:
    """The hex SHA-256 of a provider token: what the gateway config holds."""
    return hashlib.sha256(token.encode()).hexdigest()


def sign(announcement: Announcement, token_sha256: str) -> str:
    return hmac.new(token_sha256.encode(), announcement.canonical(), hashlib.sha256).hexdigest()


def registry_key(prefix: str, provider: str, endpoint_id: str) -> str:
    return f"{prefix}{KEY_PART}{provider}:{endpoint_id}"


def encode(announcement: Announcement, token: str) -> bytes:
    """The value a worker stores: the announcement and its signature under ``token``."""
    body = {"a": json.loads(announcement.canonical()), "sig": sign(announcement, token_hash(token))}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(raw: bytes | str) -> tuple[Announcement, str]:
    """(announcement, signature) from a stored value; BadAnnouncement when malformed."""
    try:
        body = json.loads(raw)
        a, sig = body["a"], body["sig"]
        ann = Announcement(
            provider=_str(a, "provider"), id=_str(a, "id"), url=_str(a, "url"), region=_str(a, "region"),
            models=tuple(_str({"m": m}, "m") for m in a["models"]), expires=float(a["expires"]),
            health_url=_opt(a, "health_url", str), max_model_len=_opt(a, "max_model_len", int),
            price_per_mtok=_opt(a, "price_per_mtok", float), version=int(a.get("version", WIRE_VERSION)))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadAnnouncement(f"malformed announcement: {exc}") from None
    if not isinstance(sig, str) or not ann.models or not ann.url.startswith(("http://", "https://")):
        raise BadAnnouncement("malformed announcement: needs a signature, models and an http(s) url")
    return ann, sig


def verify(announcement: Announcement, sig: str, token_sha256: str) -> bool:
    return hmac.compare_digest(sign(announcement, token_sha256), sig)


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _opt(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    return None if value is None else kind(value)

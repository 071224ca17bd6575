"""From registry announcements to routable pools, with the operator's trust applied.

An announcement counts only when its provider is in ``registry.providers``, not revoked, its
signature checks out under one of the provider's token hashes, its signed lease has not ended,
it names a region of the config and that region's jurisdiction is one the operator allows the
provider.  Tags come from the provider's config entry alone; a registered pool does not inherit
its region's tags (a provider chooses its region, so region tags would be trust it claimed).

Endpoints of one provider in one region serving the same models at the same price form one
pool, named ``<provider>@<region>`` (``#2``, ``#3`` … for further groups); an endpoint's id is
``<provider>:<id>``."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import Config
from routing.announce import Announcement, BadAnnouncement, decode, verify
from routing.topology import Endpoint, Pool


@dataclass(frozen=True, slots=True)
class Refusal:
    provider: str | None
    endpoint: str | None
    reason: str  # malformed | unknown_provider | revoked | bad_signature | expired | unknown_region | jurisdiction


def check(cfg: Config, raw: bytes | str, now: float) -> Announcement | Refusal:
    """The announcement if the operator's config lets it count, else why not."""
    reg = cfg.registry
    try:
        ann, sig = decode(raw)
    except BadAnnouncement:
        return Refusal(None, None, "malformed")
    provider = reg.provider(ann.provider) if reg is not None else None
    if provider is None:
        return Refusal(ann.provider, ann.id, "unknown_provider")
    if provider.revoked:
        return Refusal(ann.provider, ann.id, "revoked")
    if not any(verify(ann, sig, h) for h in provider.token_sha256):
        return Refusal(ann.provider, ann.id, "bad_signature")
    if ann.expires + reg.max_clock_skew_s < now:  # type: ignore[union-attr]
        return Refusal(ann.provider, ann.id, "expired")
    region = next((r for r in cfg.regions if r.name == ann.region), None)
    if region is None:
        return Refusal(ann.provider, ann.id, "unknown_region")
    if provider.jurisdictions is not None and region.jurisdiction not in provider.jurisdictions:
        return Refusal(ann.provider, ann.id, "jurisdiction")
    return ann


def registered_pools(cfg: Config, raws: Iterable[bytes | str], now: float) -> tuple[list[Pool], list[Refusal]]:
    """Pools of the announcements that count (sorted, so equal inputs give equal pools), and the
    refusals of the others."""
    refused: list[Refusal] = []
    groups: dict[tuple[object, ...], list[Announcement]] = {}
    seen: set[tuple[str, str]] = set()
    static = {p.name for p in cfg.pools}
    for raw in raws:
        got = check(cfg, raw, now)
        if isinstance(got, Refusal):
            refused.append(got)
            continue
        if (got.provider, got.id) in seen:
            continue
        seen.add((got.provider, got.id))
        key = (got.provider, got.region, tuple(sorted(got.models)), got.price_per_mtok, got.max_model_len)
        groups.setdefault(key, []).append(got)
    pools: list[Pool] = []
    count: dict[tuple[str, str], int] = {}
    for key in sorted(groups, key=repr):
        anns = sorted(groups[key], key=lambda a: a.id)
        first = anns[0]
        n = count[(first.provider, first.region)] = count.get((first.provider, first.region), 0) + 1
        name = f"{first.provider}@{first.region}" + (f"#{n}" if n > 1 else "")
        if name in static:
            refused.extend(Refusal(a.provider, a.id, "name_taken") for a in anns)
            continue
        provider = cfg.registry.provider(first.provider)  # type: ignore[union-attr]
        eps = tuple(Endpoint(f"{a.provider}:{a.id}", a.url.rstrip("/"), name, 1.0, a.health_url) for a in anns)
        pools.append(Pool(name, first.region, {m: m for m in first.models}, eps,
                          frozenset(provider.tags) if provider else frozenset(), first.price_per_mtok,
                          max_context=first.max_model_len, region_tags=False, provider=first.provider))
    return pools, refused

"""Trust is granted by the gateway's config, never claimed by an announcement; the config of
the open fleet is validated like the rest (file, field, reason)."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.canary import disagreement
from gateway.config import ConfigError, parse_config
from gateway.fleet import Refusal, check, registered_pools
from routing.announce import Announcement, encode, token_hash
from tests.conftest import base_config

NOW = 1_800_000_000.0


def config(**provider: Any) -> Any:
    data = base_config({"eu-west": ["http://127.0.0.1:9"]})
    data["regions"][0]["tags"] = ["soc2"]
    data["registry"] = {"redis_url": "redis://127.0.0.1:1", "providers": [
        {"name": "acme", "token_sha256": token_hash("tok"), "tags": ["verified"], **provider}]}
    return parse_config(data)


def ann(**changes: Any) -> Announcement:
    base = dict(provider="acme", id="h:1", url="http://h:1", region="us-east", models=("tiny-chat",),
                expires=NOW + 10, price_per_mtok=0.5, max_model_len=4096)
    return Announcement(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("provider, announcement, token, reason", [
    ({}, ann(provider="nobody"), "tok", "unknown_provider"),
    ({"revoked": True}, ann(), "tok", "revoked"),
    ({}, ann(), "wrong", "bad_signature"),
    ({}, ann(expires=NOW - 31), "tok", "expired"),  # past the 30 s skew allowance
    ({}, ann(region="mars"), "tok", "unknown_region"),
    ({"jurisdictions": ["eu"]}, ann(region="us-east"), "tok", "jurisdiction"),
])
def test_refusals(provider: dict, announcement: Announcement, token: str, reason: str) -> None:
    got = check(config(**provider), encode(announcement, token), NOW)
    assert isinstance(got, Refusal) and got.reason == reason
    assert check(config(), b"not json", NOW) == Refusal(None, None, "malformed")


def test_tags_come_from_the_provider_entry_not_the_region() -> None:
    pools, refused = registered_pools(config(), [encode(ann(region="eu-west"), "tok"),
                                                 encode(ann(id="h:2", url="http://h:2", region="eu-west"), "tok")], NOW)
    assert refused == []
    [pool] = pools
    assert (pool.name, pool.tags, pool.region_tags, pool.price_per_mtok, pool.max_context, pool.provider) == \
        ("acme@eu-west", frozenset({"verified"}), False, 0.5, 4096, "acme")
    assert [e.id for e in pool.endpoints] == ["acme:h:1", "acme:h:2"]


def test_different_prices_in_one_region_form_separate_pools() -> None:
    pools, _ = registered_pools(config(), [encode(ann(), "tok"), encode(ann(id="h:2", price_per_mtok=2.0), "tok")], NOW)
    assert sorted(p.name for p in pools) == ["acme@us-east", "acme@us-east#2"]


def test_token_rotation_accepts_either_hash() -> None:
    cfg = config(token_sha256=[token_hash("old"), token_hash("new")])
    assert isinstance(check(cfg, encode(ann(), "old"), NOW), Announcement)
    assert isinstance(check(cfg, encode(ann(), "new"), NOW), Announcement)


def test_a_registry_alone_needs_no_static_pool_but_something_does() -> None:
    data = base_config({})
    with pytest.raises(ConfigError, match="at least one pool"):
        parse_config(data)
    data["registry"] = {"redis_url": "redis://127.0.0.1:6379"}
    data["auth"] = {"tenants": [{"name": "t", "models": ["served-by-registered-pools"], "policy": "cost"}]}
    assert parse_config(data).pools == ()


@pytest.mark.parametrize("section, path", [
    ({"registry": {"redis_url": "http://x"}}, "registry.redis_url"),
    ({"registry": {"redis_url": "redis://x", "providers": [{"name": "a", "token_sha256": "abc"}]}},
     "registry.providers[0].token_sha256"),
    ({"registry": {"redis_url": "redis://x", "providers": [{"name": "a b", "token_sha256": "0" * 64}]}},
     "registry.providers[0].name"),
    ({"canary": {"tolerance": 1.5}}, "canary.tolerance"),
    ({"auth": {"tenants": [{"name": "t", "policy": "cheapest"}]}}, "auth.tenants[0].policy"),
])
def test_config_errors_name_the_field(section: dict, path: str) -> None:
    data = base_config({"eu-west": ["http://127.0.0.1:9"]}, **section)
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert path in str(exc.value)


def test_duplicate_providers_are_refused() -> None:
    p = {"name": "a", "token_sha256": "0" * 64}
    data = base_config({"eu-west": ["http://127.0.0.1:9"]}, registry={"redis_url": "redis://x", "providers": [p, p]})
    with pytest.raises(ConfigError, match="duplicate provider"):
        parse_config(data)


@pytest.mark.parametrize("ref, got, expected", [
    ((1, 2, 3, 4), (1, 2, 3, 4), 0.0), ((1, 2, 3, 4), (1, 2, 9, 9), 0.5), ((1, 2, 3, 4), (9, 2, 3, 4), 1.0),
    ((1, 2, 3, 4), (1, 2), 0.5), ((), (), 0.0)])
def test_disagreement_is_the_share_after_the_first_divergence(ref: tuple, got: tuple, expected: float) -> None:
    assert disagreement(ref, got) == expected

"""The registry's wire format: signed by the worker, checked by the gateway with the token's hash."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from routing.announce import Announcement, BadAnnouncement, decode, encode, registry_key, token_hash, verify

ANN = Announcement(provider="acme", id="10.0.0.5:8000", url="http://10.0.0.5:8000", region="eu-west",
                   models=("tiny-chat",), expires=1_800_000_000, health_url=None, max_model_len=2048,
                   price_per_mtok=1)


def test_round_trip_verifies_under_the_tokens_hash_only() -> None:
    ann, sig = decode(encode(ANN, "s3cret"))
    assert ann == replace(ANN, expires=1_800_000_000.0, price_per_mtok=1.0)
    assert verify(ann, sig, token_hash("s3cret"))
    assert not verify(ann, sig, token_hash("guess"))


@pytest.mark.parametrize("field, value", [("region", "us-east"), ("price_per_mtok", 0.01), ("expires", 1.9e9),
                                          ("url", "http://evil:1"), ("models", ["other"])])
def test_any_change_breaks_the_signature(field: str, value: object) -> None:
    body = json.loads(encode(ANN, "s3cret"))
    body["a"][field] = value
    ann, sig = decode(json.dumps(body))
    assert not verify(ann, sig, token_hash("s3cret"))


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"a": {}, "sig": "x"}', b'{"a": {"provider": "p"}}',
                                 json.dumps({"a": {**json.loads(ANN.canonical()), "url": "ftp://x"}, "sig": "x"})])
def test_malformed_values_are_refused(raw: bytes | str) -> None:
    with pytest.raises(BadAnnouncement):
        decode(raw)


def test_key_names_agree_between_worker_and_gateway() -> None:
    assert registry_key("infercdn:", "acme", "h:1") == "infercdn:fleet:acme:h:1"

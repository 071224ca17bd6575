"""Defect 11's loose ends (the model list, /metrics, the admin API from a browser, secrets in
config errors) and defects 7-8 end to end (where a client says it is)."""
from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from multidict import CIMultiDict

from infercdn.commands import load_or_report
from gateway.config import ConfigError, parse_config
from gateway.reload import reload_on_signal
from tests.conftest import LONDON, SINGAPORE, base_config
from tests.security.helpers import call, openai_error

KEYS = {"required": True, "tenants": [{"name": "small", "api_keys": ["k-small-secret"], "models": ["tiny-chat"]},
                                      {"name": "all", "api_keys": ["k-all-secret"]}]}


def two_models(tiny_url: str, big_url: str, **sections: object) -> dict:
    data = base_config({"eu-west": [tiny_url]}, auth=KEYS, **sections)
    data["pools"].append({"name": "big", "region": "us-east", "models": ["big-chat"],
                          "endpoints": [{"id": "big-0", "url": big_url}]})
    return data


async def test_the_model_list_needs_a_key_and_shows_the_tenants_models(sim_factory, gateway_factory) -> None:
    tiny, big = await sim_factory(), await sim_factory(model="big-chat")
    gw = await gateway_factory(two_models(tiny.url, big.url))
    status, body, _ = await call(gw.url, path="/v1/models", method="GET")
    assert status == 401 and openai_error(body)["code"] == "invalid_api_key"
    for key, want in (("k-small-secret", ["tiny-chat"]), ("k-all-secret", ["big-chat", "tiny-chat"])):
        status, body, _ = await call(gw.url, path="/v1/models", method="GET", headers={"Authorization": f"Bearer {key}"})
        assert status == 200 and [m["id"] for m in orjson.loads(body)["data"]] == want
    for path in ("/healthz", "/readyz"):  # probes stay open
        assert (await call(gw.url, path=path, method="GET"))[0] == 200


async def test_metrics_are_behind_their_networks(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"metrics_networks": ["10.0.0.0/8"]}))
    status, body, _ = await call(gw.url, path="/metrics", method="GET")
    assert status == 403 and openai_error(body)["code"] == "forbidden"
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"admin_networks": ["10.0.0.0/8"]}))
    assert (await call(gw.url, path="/metrics", method="GET"))[0] == 403  # default: the admin networks
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    assert (await call(gw.url, path="/metrics", method="GET"))[0] == 200


@pytest.fixture
async def reloadable(sim_factory, gateway_factory, tmp_path: Path):
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url]})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    return gw, path, data


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
async def test_a_cross_site_form_cannot_trigger_a_reload(reloadable, content_type) -> None:
    gw, _, _ = reloadable
    headers = {"Content-Type": content_type} if content_type else {}
    status, body, _ = await call(gw.url, path="/admin/reload", data=b"x=1" if content_type else b"", headers=headers)
    assert status == 415 and openai_error(body)["code"] == "admin_header_required"


async def test_a_reload_with_json_or_the_admin_header_is_accepted(reloadable) -> None:
    gw, _, _ = reloadable
    assert (await call(gw.url, {}, path="/admin/reload"))[0] == 200
    assert (await call(gw.url, path="/admin/reload", headers={"X-Infercdn-Admin": "1"}))[0] == 200


def _with_bad_keys(data: dict) -> dict:
    data = dict(data)
    data["auth"] = {"required": True, "tenants": [
        {"name": "a", "api_keys": ["sk-plaintext-one", "sk-plaintext-one"], "models": ["nope"]},
        {"name": "b", "api_key_sha256": ["sk-plaintext-two"], "api_kyes": "sk-plaintext-three"},
        {"name": "c", "api_keys": "sk-plaintext-four"}],
        "shared": {"redis_url": "redis://:sk-plaintext-five@127.0.0.1:6379/0", "timeout_ms": -1}}
    return data


SECRETS = ("sk-plaintext-one", "sk-plaintext-two", "sk-plaintext-three", "sk-plaintext-four", "sk-plaintext-five")


def test_config_errors_never_show_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with_bad_keys(base_config({"eu-west": ["http://127.0.0.1:9"]})), "f.yaml")
    text = str(info.value)
    assert text.count("f.yaml:") >= 4  # the problems are still named, field by field
    assert not any(s in text for s in SECRETS), text


def test_cross_check_errors_never_show_secrets() -> None:
    data = base_config({"eu-west": ["http://127.0.0.1:9"]})
    data["auth"] = {"tenants": [{"name": "a", "api_keys": ["sk-plaintext-one"], "models": ["nope"]},
                                {"name": "b", "api_keys": ["sk-plaintext-one"]}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "f.yaml")
    text = str(info.value)
    assert "given twice" in text and "auth.tenants[0].models[0] = 'nope'" in text and "sk-plaintext" not in text


async def test_a_refused_reload_shows_no_secrets_in_its_answer_or_the_log(reloadable, caplog) -> None:
    gw, path, data = reloadable
    path.write_text(yaml.safe_dump(_with_bad_keys(data)))
    status, body, _ = await call(gw.url, {}, path="/admin/reload")
    assert status == 400 and "auth.tenants" in openai_error(body)["message"]
    assert not any(s.encode() in body for s in SECRETS)
    caplog.set_level(logging.ERROR)
    reload_on_signal(gw.app)  # what SIGHUP runs
    assert "config reload refused" in caplog.text and not any(s in caplog.text for s in SECRETS)


def test_infercdn_check_shows_no_secrets(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with_bad_keys(base_config({"eu-west": ["http://127.0.0.1:9"]}))))
    assert load_or_report(str(path)) is None  # what `infercdn check` and the other commands print
    err = capsys.readouterr().err
    assert "auth.tenants[1]" in err and not any(s in err for s in SECRETS), err


async def test_repeated_forwarded_for_lines_are_one_list(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    headers = CIMultiDict([("X-Forwarded-For", f"{SINGAPORE}"), ("X-Forwarded-For", f"{LONDON}")])
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/admin/plan?model=tiny-chat", headers=headers) as r:
        assert (await r.json())["ip"] == LONDON  # the line the (trusted) last proxy added


async def test_forwarded_is_read_when_configured_and_ignored_otherwise(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    fwd = {"Forwarded": f'for="{SINGAPORE}:4711";proto=https, for={LONDON}', "X-Forwarded-For": SINGAPORE}
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}, gateway={"forwarded_header": "forwarded"}))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/admin/plan?model=tiny-chat", headers=fwd) as r:
        assert (await r.json())["ip"] == LONDON
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/admin/plan?model=tiny-chat", headers=fwd) as r:
        assert (await r.json())["ip"] == SINGAPORE  # X-Forwarded-For decides; a client's Forwarded does not

"""A reload tells the truth: every config field takes effect on reload or is named as needing a
restart; and the YAML loader keeps ``off``/``on``/``no`` as words where the docs write them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import Config, load_config, parse_config
from gateway.reload_fields import LIVE, RESTART, leaves, restart_needed
from gateway.snapshot import observation_params
from gateway.state import OBSERVATIONS, PROXY
from routing.outcome import Outcome
from tests.conftest import base_config


def test_every_config_field_has_a_reload_decision() -> None:
    fields = set(leaves(Config))
    assert "outlier.consecutive_failures" in fields and "pools[].endpoints[].url" in fields
    assert "models.*.hedge.after_ms" in fields and "auth.shared.redis_url" in fields
    undecided = sorted(fields - LIVE - RESTART)
    assert not undecided, f"decide in gateway/reload_fields.py whether a reload applies these: {undecided}"
    assert not LIVE & RESTART, sorted(LIVE & RESTART)
    assert not (LIVE | RESTART) - fields, f"no such config fields: {sorted((LIVE | RESTART) - fields)}"


def _cfg(**sections: object) -> Config:
    data = base_config({"eu-west": ["http://127.0.0.1:1"]}, **sections)
    return parse_config(data, "<test>")


@pytest.mark.parametrize("path", sorted(RESTART))
def test_every_restart_field_is_reported_when_changed(path: str) -> None:
    data = base_config({"eu-west": ["http://127.0.0.1:1"]})
    data["pools"][0].update(simulate={}, launch={})
    data["auth"] = {"shared": {"redis_url": "redis://127.0.0.1:1"}}
    data["registry"] = {"redis_url": "redis://127.0.0.1:1"}
    data["canary"] = {}
    old = parse_config(data, "<old>")
    changed = _changed(old, path.split("."))
    assert restart_needed(old, changed) == [path.replace("pools[]", "pools[eu-west-pool]")]


def _changed(node: Any, parts: list[str]) -> Any:
    """``node`` with the field at ``parts`` (``pools[]`` = the first pool) set to a new value
    (model_copy does not validate: the comparison only needs a different value)."""
    head, rest = parts[0].removesuffix("[]"), parts[1:]
    if not rest:
        return node.model_copy(update={head: "<changed>"})
    child = getattr(node, head)
    if parts[0].endswith("[]"):
        return node.model_copy(update={head: (_changed(child[0], rest), *child[1:])})
    return node.model_copy(update={head: _changed(child, rest)})


def test_adding_or_removing_an_optional_section_is_reported() -> None:
    without = _cfg()
    with_shared = _cfg(auth={"shared": {"redis_url": "redis://127.0.0.1:1"}})
    assert restart_needed(without, with_shared) == ["auth.shared.key_prefix", "auth.shared.redis_url",
                                                    "auth.shared.timeout_ms"]  # lease_s: None either way
    assert restart_needed(with_shared, without) == restart_needed(without, with_shared)


def test_a_live_change_needs_no_restart() -> None:
    old = _cfg()
    new = _cfg(outlier={"consecutive_failures": 100}, breaker={"failures": 50}, latency={"half_life_s": 3.0},
               retry={"max_retry_after_s": 1.0})
    assert restart_needed(old, new) == []


CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_reload_applies_outlier_breaker_latency_and_retry_settings(tmp_path: Path, sim_factory,
                                                                         gateway_factory) -> None:
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url, sim.url]}, outlier={"consecutive_failures": 2},
                       breaker={"failures": 100}, budget={"ratio": 0.5})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    obs = gw.app[OBSERVATIONS]
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200  # PROXY exists once the app runs

    data.update(outlier={"consecutive_failures": 100, "base_ejection_s": 1.0}, breaker={"failures": 7},
                latency={"half_life_s": 3.0}, retry={**data["retry"], "max_retry_after_s": 1.0},
                budget={"ratio": 0.25, "min_per_s": 2.0}, health={**data["health"], "rise": 3})
    path.write_text(yaml.safe_dump(data))
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/admin/reload", json={}) as r:
        answer = await r.json()
    assert (r.status, answer["restart_needed_for"]) == (200, [])

    for _ in range(5):  # the case: ejected after 2 failures with 100 allowed
        obs.record_outcome("eu-west-0", Outcome.HTTP_5XX)
    assert not obs.view("eu-west-0").ejected
    assert obs.params == observation_params(load_config(path))
    assert obs.outliers.params.consecutive_failures == 100
    st = obs._eps["eu-west-1"]
    assert (st.breaker.params.failures, st.latency.half_life_s, st.health.rise) == (7, 3.0, 3)
    obs.throttle("eu-west-1", 60.0)  # capped by the new retry.max_retry_after_s
    until = obs.view("eu-west-1").throttled_until
    assert until is not None and until - gw.app[PROXY].parts.rt.clock() <= 1.0
    assert (gw.app[PROXY].budget.ratio, gw.app[PROXY].budget.min_per_s) == (0.25, 2.0)


async def test_reload_names_restart_fields(tmp_path: Path, sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    data = base_config({"eu-west": [sim.url]})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = await gateway_factory(data, config_path=str(path))
    data["health"]["interval_s"] = 5.0
    data["timeouts"]["connect_s"] = 1.0
    path.write_text(yaml.safe_dump(data))
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/admin/reload", json={}) as r:
        answer = await r.json()
    assert answer["restart_needed_for"] == ["health.interval_s", "timeouts.connect_s"]


def test_yaml_off_on_no_are_words_in_string_fields_and_booleans_in_boolean_fields(tmp_path: Path) -> None:
    data = base_config({"eu-west": ["http://127.0.0.1:1"]})
    text = yaml.safe_dump(data).replace("gateway:\n", "gateway:\n  access_log: off\n", 1)
    text += "breaker:\n  enabled: off\nload:\n  enabled: no\n  scrape_interval_s: 0.2\n"
    text += "auth:\n  tenants:\n  - {name: 'no', api_keys: [on]}\n"
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.gateway.access_log == "off"
    assert (cfg.breaker.enabled, cfg.load.enabled) == (False, False)
    assert cfg.auth.tenants[0].api_keys == ("on",)

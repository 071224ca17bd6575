from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config_env import expand_env

CONFIG = """\
gateway: {location: {lat: 50.1, lon: 8.7}}
regions: [{name: eu, location: {lat: 50.1, lon: 8.7}}]
pools:
  - {name: p, region: eu, models: [m], endpoints: [{url: "http://127.0.0.1:${SIM_PORT}"}]}
auth:
  tenants:
    - {name: acme, api_key_sha256: [${ACME_KEY}]}
  shared: {redis_url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
"""
KEY = "a" * 64


def test_references_are_replaced_with_the_environment_or_the_default(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("SIM_PORT", "18710")
    monkeypatch.setenv("ACME_KEY", KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = load_config(path)
    assert cfg.pools[0].endpoints[0].url == "http://127.0.0.1:18710"
    assert cfg.auth.tenants[0].api_key_sha256 == (KEY,)
    assert cfg.auth.shared is not None and cfg.auth.shared.redis_url == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://:secret@10.0.0.9:6380/1")
    assert load_config(path).auth.shared.redis_url == "redis://:secret@10.0.0.9:6380/1"


def test_unset_names_are_reported_with_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    monkeypatch.delenv("SIM_PORT", raising=False)
    monkeypatch.delenv("ACME_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [p[0] for p in err.value.problems] == ["line 4", "line 7"]
    assert f"{path}: line 4: ${{SIM_PORT}}: not set in the environment" in str(err.value)


def test_comments_and_escapes_are_left_alone() -> None:
    text, unset = expand_env("# ${NOT_SET} in a comment\nx: $${LITERAL}\ny: ${A}${B:-}z\n", {"A": "1"})
    assert text == "# ${NOT_SET} in a comment\nx: ${LITERAL}\ny: 1z\n"
    assert unset == []

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config
from tests.conftest import base_config

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_default_is_configs_local_yaml() -> None:
    assert DEFAULT_CONFIG.read_bytes() == (ROOT / "configs" / "local.yaml").read_bytes()
    cfg = load_config()
    assert [r.name for r in cfg.regions] == ["us-east", "eu-west", "ap-southeast"]
    assert all(p.simulate is not None and p.simulate.endpoints == 2 for p in cfg.pools)
    assert {m for p in cfg.pools for m in p.models} == {"tiny-chat"}


def test_valid_config_parses_and_normalises_urls() -> None:
    data = base_config({"us-east": ["http://127.0.0.1:9/v1/"]})
    cfg = parse_config(data)
    assert cfg.pools[0].endpoints[0].url == "http://127.0.0.1:9"
    assert cfg.pools[0].models == {"tiny-chat": "tiny-chat"}


def _problems(data: dict, file: str = "f.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, file)
    return info.value.lines()


def test_bad_url_names_file_field_path_value_and_reason() -> None:
    data = base_config({"us-east": ["http://127.0.0.1:9"]})
    data["pools"][0]["endpoints"][0]["url"] = "htp://nowhere"
    (line,) = _problems(data)
    assert line.startswith("f.yaml: pools[0].endpoints[0].url = 'htp://nowhere': ")
    assert "http(s) URL" in line


def test_unknown_field_and_type_errors_are_all_reported() -> None:
    data = base_config({"us-east": ["http://127.0.0.1:9"]})
    data["gateway"]["prot"] = 1
    data["health"]["rise"] = "two"
    lines = _problems(data)
    assert any(line.startswith("f.yaml: gateway.prot = 1: ") for line in lines)
    assert any(line.startswith("f.yaml: health.rise = 'two': ") for line in lines)


def test_cross_references_are_checked() -> None:
    data = base_config({"us-east": ["http://127.0.0.1:9"], "eu-west": ["http://127.0.0.1:10"]})
    data["pools"][1]["region"] = "mars"
    data["pools"][1]["endpoints"][0]["id"] = "us-east-0"
    data["routing"] = {"policy": "fastest-please", "balancer": "round-robin"}
    lines = _problems(data)
    assert any("pools[1].region = 'mars': unknown region" in line for line in lines)
    assert any("pools[1].endpoints[0].id = 'us-east-0': duplicate endpoint id" in line for line in lines)
    assert any("routing.policy = 'fastest-please': unknown policy" in line for line in lines)
    assert any("routing.balancer = 'round-robin': unknown balancer; known: ['p2c', 'prefix_affinity']" in line
               for line in lines)


def test_pool_without_endpoints_is_rejected() -> None:
    data = base_config({"us-east": []})
    (line,) = _problems(data)
    assert "pools[0]" in line and "endpoints" in line


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: <root>: invalid YAML: line \d+"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_access_log_file_must_be_in_an_existing_folder(tmp_path: Path) -> None:
    data = base_config({"us-east": ["http://127.0.0.1:9"]})
    data["gateway"]["access_log"] = str(tmp_path / "missing" / "access.jsonl")
    lines = _problems(data)
    assert any(line.startswith("f.yaml: gateway.access_log = ") and "does not exist" in line for line in lines)
    data["gateway"]["access_log"] = str(tmp_path / "access.jsonl")
    assert parse_config(data, "f.yaml").gateway.access_log == str(tmp_path / "access.jsonl")

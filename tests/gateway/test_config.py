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


def _two_models(**models: object) -> dict:
    """Pools serving tiny-chat (us-east) and small-chat (eu-west), with ``models``."""
    data = base_config({"us-east": ["http://127.0.0.1:9"], "eu-west": ["http://127.0.0.1:10"]})
    data["pools"][1]["models"] = ["small-chat"]
    data["models"] = dict(models)
    return data


def test_a_model_entry_inherits_from_star_field_by_field() -> None:
    cfg = parse_config(_two_models(**{"*": {"total_deadline_s": 40, "stall_timeout_s": 3,
                                            "hedge": {"enabled": True, "max_hedges": 2},
                                            "ttft_auto": {"factor": 5, "min_samples": 10}},
                                      "tiny-chat": {"ttft_deadline_s": 7, "hedge": {"max_hedges": 3},
                                                    "ttft_auto": {"floor_s": 4}}}))
    m = cfg.model_cfg("tiny-chat")
    assert (m.total_deadline_s, m.stall_timeout_s, m.ttft_deadline_s) == (40, 3, 7)  # from *, from *, own
    assert m.hedge.enabled and m.hedge.max_hedges == 3 and m.hedge.min_after_ms == 50.0  # nested: merged
    assert (m.ttft_auto.factor, m.ttft_auto.min_samples, m.ttft_auto.floor_s, m.ttft_auto.ceiling_s) == (5, 10, 4, 30)
    other = cfg.model_cfg("small-chat")  # no entry of its own: "*"
    assert other.total_deadline_s == 40 and other.ttft_deadline == "auto" and other.hedge.max_hedges == 2
    assert cfg.model_cfg("tiny-chat") is m  # cached


def test_without_star_the_defaults_apply() -> None:
    cfg = parse_config(_two_models(**{"tiny-chat": {"total_deadline_s": 9}}))
    m = cfg.model_cfg("tiny-chat")
    assert m.total_deadline_s == 9 and m.ttft_deadline == "auto" and m.stall_timeout == "auto"
    assert (m.ttft_deadline_s, m.stall_timeout_s) == (30.0, 10.0)  # auto's fallbacks before samples
    assert cfg.model_cfg("small-chat").total_deadline_s == 600


def test_star_fallbacks_apply_to_every_model_but_their_targets() -> None:
    data = _two_models(**{"*": {"fallbacks": ["small-chat"], "total_deadline_s": 20}, "small-chat": {"resume": "text"}})
    data["pools"][0]["models"] = ["tiny-chat", "big-chat"]
    cfg = parse_config(data)
    assert cfg.model_cfg("tiny-chat").fallbacks == ("small-chat",)
    assert cfg.model_cfg("big-chat").fallbacks == ("small-chat",)
    small = cfg.model_cfg("small-chat")
    assert small.fallbacks == () and small.total_deadline_s == 20 and small.resume == "text"
    data["models"]["big-chat"] = {"fallbacks": []}  # opting out
    assert parse_config(data).model_cfg("big-chat").fallbacks == ()
    del data["models"]["big-chat"]
    del data["models"]["small-chat"]  # a target without an entry of its own: the same
    cfg = parse_config(data)
    assert cfg.model_cfg("small-chat").fallbacks == () and cfg.model_cfg("small-chat").total_deadline_s == 20


def test_fallback_to_itself_or_to_an_unserved_model_is_an_error() -> None:
    lines = _problems(_two_models(**{"tiny-chat": {"fallbacks": ["small-chat", "tiny-chat", "huge-chat"]}}))
    assert "f.yaml: models.tiny-chat.fallbacks[1] = 'tiny-chat': a model cannot fall back to itself" in lines
    assert "f.yaml: models.tiny-chat.fallbacks[2] = 'huge-chat': no pool serves this model" in lines
    assert len(lines) == 2


def test_fallback_loops_are_errors_following_the_chains() -> None:
    data = _two_models(**{"tiny-chat": {"fallbacks": ["small-chat"]}, "small-chat": {"fallbacks": ["mid-chat"]},
                          "mid-chat": {"fallbacks": ["tiny-chat"]}})
    data["pools"][1]["models"] = ["small-chat", "mid-chat"]
    (line,) = _problems(data)
    assert line == ("f.yaml: models.mid-chat.fallbacks[0] = 'tiny-chat': the fallback chain loops: "
                    "mid-chat -> tiny-chat -> small-chat -> mid-chat")
    (line,) = _problems(_two_models(**{"tiny-chat": {"fallbacks": ["small-chat"]},
                                      "small-chat": {"fallbacks": ["tiny-chat"]}}))
    assert "the fallback chain loops: small-chat -> tiny-chat -> small-chat" in line
    # a loop through what a model inherits from "*": big -> small (its own), small -> big? no:
    # small is a target of "*", so it inherits no fallbacks, and this chain is fine
    data = _two_models(**{"*": {"fallbacks": ["small-chat"]}, "tiny-chat": {}})
    assert parse_config(data).model_cfg("tiny-chat").fallbacks == ("small-chat",)


def test_a_loop_made_of_inherited_fallbacks_is_found() -> None:
    data = _two_models(**{"*": {"fallbacks": ["tiny-chat"]}, "tiny-chat": {"fallbacks": ["small-chat"]}})
    (line,) = _problems(data)  # small-chat inherits [tiny-chat]; tiny-chat falls back to small-chat
    assert line == ("f.yaml: models.tiny-chat.fallbacks[0] = 'small-chat': the fallback chain loops: "
                    "tiny-chat -> small-chat -> tiny-chat (small-chat: fallbacks from models.*)")


def test_registry_mode_allows_fallbacks_to_models_only_registered_pools_serve() -> None:
    data = _two_models(**{"tiny-chat": {"fallbacks": ["registered-chat"]}})
    data["registry"] = {"redis_url": "redis://127.0.0.1:1"}
    assert parse_config(data).model_cfg("tiny-chat").fallbacks == ("registered-chat",)
    data["models"]["tiny-chat"]["fallbacks"] = ["tiny-chat"]  # still no self-fallback
    assert "a model cannot fall back to itself" in _problems(data)[0]


def test_deadlines_accept_auto_or_seconds() -> None:
    cfg = parse_config(_two_models(**{"tiny-chat": {"ttft_deadline_s": "auto", "stall_timeout_s": 4.5,
                                                    "stall_auto": {"fallback_s": 6}}}))
    s = cfg.model_cfg("tiny-chat").deadline_settings()
    assert s.stall == 4.5 and s.ttft.fallback_s == 30.0 and s.ttft.min_samples == 50
    # a section written in part keeps its own defaults for the rest (not another section's)
    m = parse_config(_two_models(**{"tiny-chat": {"stall_auto": {"factor": 3}, "ttft_auto": {"factor": 2}}}))
    stall, ttft = m.model_cfg("tiny-chat").stall_auto, m.model_cfg("tiny-chat").ttft_auto
    assert (stall.factor, stall.fallback_s, stall.min_samples) == (3, 10.0, 20)
    assert (ttft.factor, ttft.fallback_s, ttft.min_samples) == (2, 30.0, 50)
    lines = _problems(_two_models(**{"tiny-chat": {"ttft_deadline_s": "soon", "stall_timeout_s": 0}}))
    assert "f.yaml: models.tiny-chat.ttft_deadline_s = 'soon': must be auto or a number of seconds > 0" in lines
    assert "f.yaml: models.tiny-chat.stall_timeout_s = 0: must be auto or a number of seconds > 0" in lines


def test_deadline_inputs_are_built_once_and_again_for_a_copy_with_other_pools() -> None:
    cfg = parse_config(_two_models(**{"tiny-chat": {"stall_timeout_s": 4.5}}))
    settings, pools = cfg.deadline_inputs("tiny-chat")
    assert settings == cfg.model_cfg("tiny-chat").deadline_settings() and settings.stall == 4.5 and pools == {}
    assert cfg.deadline_inputs("tiny-chat")[0] is settings  # built once
    first = cfg.pools[0].model_copy(update={"ttft_deadline_s": 3.0})
    copy = cfg.model_copy(update={"pools": (first, *cfg.pools[1:])})
    assert copy.deadline_inputs("tiny-chat")[1] == {first.name: 3.0}
    assert cfg.deadline_inputs("tiny-chat")[1] == {}


def test_auto_floor_over_ceiling_is_an_error_also_when_inherited() -> None:
    (line,) = _problems(_two_models(**{"tiny-chat": {"ttft_auto": {"floor_s": 40}}}))
    assert line.startswith("f.yaml: models.tiny-chat.ttft_auto: ") and "floor_s (40) must not exceed ceiling_s (30)" in line
    (line,) = _problems(_two_models(**{"*": {"stall_auto": {"ceiling_s": 5}}, "tiny-chat": {"stall_auto": {"floor_s": 8}}}))
    assert line.startswith("f.yaml: models.tiny-chat.stall_auto: with what it inherits from models.*: ")
    # a chain through a model whose inherited settings are invalid: that problem, and no crash
    lines = _problems(_two_models(**{"*": {"stall_auto": {"ceiling_s": 5}}, "small-chat": {"fallbacks": ["tiny-chat"]},
                                     "tiny-chat": {"stall_auto": {"floor_s": 8}}}))
    assert len(lines) == 1 and "models.tiny-chat.stall_auto" in lines[0]


def test_new_retry_resume_refusal_and_prefill_fields() -> None:
    data = _two_models(**{"tiny-chat": {"resume_deadline_s": 12, "fallback_on": ["content_policy"]}})
    data["retry"].update(max_resumes=1, max_wait_s=0.5)
    data["pools"][1]["prefill"] = False
    cfg = parse_config(data)
    m = cfg.model_cfg("tiny-chat")
    assert (m.resume_deadline_s, m.fallback_on) == (12, ("content_policy",))
    assert (cfg.retry.max_resumes, cfg.retry.max_wait_s) == (1, 0.5)
    assert [p.prefill for p in cfg.pools] == [True, False]
    defaults = parse_config(_two_models())
    assert (defaults.retry.max_resumes, defaults.retry.max_wait_s) == (3, 2.5)
    assert defaults.model_cfg("tiny-chat").fallback_on == ()
    data["models"]["tiny-chat"]["fallback_on"] = ["rate_limit"]
    data["retry"]["max_resumes"] = -1
    lines = _problems(data)
    assert any(line.startswith("f.yaml: models.tiny-chat.fallback_on[0] = 'rate_limit': ") for line in lines)
    assert any(line.startswith("f.yaml: retry.max_resumes = -1: ") for line in lines)

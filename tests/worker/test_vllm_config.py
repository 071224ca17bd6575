"""Worker config: YAML + flags, validated once, errors that name file, field, value and reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from worker.vllm.config import Backoff, ConfigError, build_config, load_config


def test_yaml_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("model: /m\nserved_model_name: tiny\nport: 9000\ndtype: float32\n"
                    "enforce_eager: true\nextra_args: [--seed, '0']\nbackoff: {initial_s: 0.5}\n")
    cfg = load_config(path, {"port": 9100})
    assert (cfg.model, cfg.name, cfg.port, cfg.dtype, cfg.enforce_eager) == ("/m", "tiny", 9100, "float32", True)
    assert cfg.extra_args == ("--seed", "0")
    assert cfg.backoff == Backoff(initial_s=0.5)


def test_name_defaults_to_model() -> None:
    assert build_config({"model": "org/m"}).name == "org/m"


@pytest.mark.parametrize(("values", "field"), [
    ({}, "model"),
    ({"model": "m", "prot": 1}, "prot"),
    ({"model": "m", "port": "80"}, "port"),
    ({"model": "m", "port": 0}, "port"),
    ({"model": "m", "drain_timeout_s": -1}, "drain_timeout_s"),
    ({"model": "m", "enforce_eager": "yes"}, "enforce_eager"),
    ({"model": "m", "extra_args": "--seed 0"}, "extra_args"),
    ({"model": "m", "env": {"A": 1}}, "env"),
    ({"model": "m", "backoff": {"initial_s": 5, "max_s": 1}}, "backoff.max_s"),
    ({"model": "m", "backoff": {"jitter": 1}}, "backoff.jitter"),
])
def test_invalid_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values, "w.yaml")
    assert info.value.field == field and str(info.value).startswith(f"w.yaml: {field}=")


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="w.yaml: <root>"):
        load_config(path)

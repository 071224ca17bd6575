"""``infercdn up --engine vllm`` and ``configs/local-vllm.yaml`` without starting vLLM (the run's
one real server belongs to the fixture; starting the whole thing was verified by hand, see
README "Real vLLM on the CPU"): the config, the fleet's endpoints, and the errors that say what
to run."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from infercdn.cli import main as cli
from infercdn.commands.up import banner, vllm_default
from infercdn.fleet import LaunchedVllm, LaunchError, LocalFleet

ROOT = Path(__file__).resolve().parents[2]
LOCAL_VLLM = ROOT / "configs" / "local-vllm.yaml"


def test_local_vllm_yaml_is_the_embedded_default_with_vllm_in_eu_west() -> None:
    cfg = load_config(LOCAL_VLLM)
    assert cfg == vllm_default(load_config())
    launched = [p for p in cfg.pools if p.launch is not None]
    assert [(p.name, p.region, p.simulate) for p in launched] == [("eu-west-vllm", "eu-west", None)]
    assert all(p.simulate is not None for p in cfg.pools if p.launch is None)
    assert cli(["check", str(LOCAL_VLLM)]) == 0


def test_fleet_adds_launched_server_with_control_port_health() -> None:
    cfg = load_config(LOCAL_VLLM)
    fleet = LocalFleet(engine="vllm")
    fleet.launched.append(LaunchedVllm("eu-west-vllm", "http://127.0.0.1:8001", "http://127.0.0.1:9001",
                                       proc=None, log_path=Path("x.log")))  # type: ignore[arg-type]
    pool = fleet.config(cfg).pool_cfg("eu-west-vllm")
    assert pool is not None
    (ep,) = pool.endpoints
    assert (ep.id, ep.url, ep.health_url) == ("eu-west-vllm-vllm0", "http://127.0.0.1:8001",
                                              "http://127.0.0.1:9001/health")
    assert fleet.config(cfg).pool_cfg("us-east-sim") == cfg.pool_cfg("us-east-sim")


def _only_launched(cfg: Any) -> Any:
    return cfg.model_copy(update={"pools": tuple(p for p in cfg.pools if p.launch is not None)})


def test_launched_pool_without_engine_vllm_is_an_error() -> None:
    with pytest.raises(LaunchError, match="--engine vllm"):
        asyncio.run(LocalFleet().start(_only_launched(load_config(LOCAL_VLLM))))


def test_missing_vllm_venv_or_model_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERCDN_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("INFERCDN_CACHE", str(tmp_path))
    cfg = _only_launched(load_config(LOCAL_VLLM))
    with pytest.raises(LaunchError, match="make vllm-cpu tiny-model"):
        asyncio.run(LocalFleet(engine="vllm").start(cfg))
    monkeypatch.setenv("INFERCDN_VLLM_PYTHON", "/bin/true")
    with pytest.raises(LaunchError, match=r"no model in .*make vllm-cpu tiny-model"):
        asyncio.run(LocalFleet(engine="vllm", model_dir=str(tmp_path)).start(cfg))


def test_engine_vllm_needs_a_pool_to_launch(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["up", "--engine", "vllm", "--config", str(ROOT / "configs" / "local.yaml")]) == 1
    assert "no pool has a `launch` block" in capsys.readouterr().err


def test_banner_names_the_vllm_pid_to_kill() -> None:
    text = banner(8080, ["eu-west"], {"eu-west-vllm": [10], "us-east-sim": [11, 12]},
                  [("eu-west-vllm", "http://127.0.0.1:8001", 42)])
    assert "kill -9 42" in text and "us-east-sim: kill 11 12" in text and "eu-west-vllm: kill" not in text

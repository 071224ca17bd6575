"""``infercdn worker tiny-model``: delegation to the vLLM venv, and byte-identical builds."""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_clear_error_without_a_vllm_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tiny_model, "_can_build_here", lambda: False)
    monkeypatch.delenv("INFERCDN_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("INFERCDN_CACHE", str(tmp_path / "cache"))
    assert tiny_model.main(argparse.Namespace(dir=tmp_path / "m", python=None)) == 2
    err = capsys.readouterr().err
    assert "INFERCDN_VLLM_PYTHON" in err and "make vllm-cpu" in err


@pytest.mark.vllm
@pytest.mark.timeout(180)
@pytest.mark.skipif(not os.environ.get("INFERCDN_VLLM_PYTHON"), reason="set INFERCDN_VLLM_PYTHON")
def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    builds = []
    for name in ("a", "b"):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "infercdn.cli", "worker", "tiny-model", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        builds.append(digest(out))
    assert builds[0] == builds[1]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(builds[0])
    cached = os.environ.get("INFERCDN_TINY_MODEL")
    if cached and Path(cached).is_dir():
        assert digest(Path(cached)) == builds[0], "the tiny model in INFERCDN_TINY_MODEL is stale"

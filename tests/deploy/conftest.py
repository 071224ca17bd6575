"""Session fixtures of the deploy tests: a Docker engine and the images, built once per session
(the base image and dependency wheels are cached under ~/.cache/infercdn between sessions)."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.deploy import engine

TAG = "test"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    try:
        with engine.docker_engine(tmp_path_factory.mktemp("dockerd")):
            yield
    except engine.Unavailable as exc:
        pytest.skip(f"deploy tests need a Docker engine: {exc}")


@pytest.fixture(scope="session")
def images(docker_engine: None) -> tuple[str, str]:
    """(gateway image, simulator image), built from this checkout."""
    try:
        base = engine.base_image()
    except engine.Unavailable as exc:
        pytest.skip(f"deploy tests: {exc}")
    return engine.build_images(base, TAG)


@pytest.fixture(scope="session")
def demo_tools(docker_engine: None) -> str:
    """An image with redis-server and prometheus, standing in for the compose demo's public images
    (no registry here); $INFERCDN_DEMO_TOOLS_IMAGE names one, else make-base.sh makes it."""
    if os.environ.get("INFERCDN_DEMO_TOOLS_IMAGE"):
        return os.environ["INFERCDN_DEMO_TOOLS_IMAGE"]
    try:
        return engine.make_base(EXTRA="redis-server,prometheus", NAME="infercdn-demo-tools")
    except engine.Unavailable as exc:
        pytest.skip(f"deploy tests: {exc}")

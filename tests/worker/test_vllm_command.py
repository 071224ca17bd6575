"""The launcher's pure parts: vLLM command line, environment, backoff, metrics reading."""
from __future__ import annotations

import random
from pathlib import Path

from worker.vllm.command import (backoff_delay, build_command, build_env, consecutive_failures,
                                 requests_in_flight)
from worker.vllm.config import Backoff, WorkerConfig


def test_minimal_command_has_no_cpu_specific_flags() -> None:
    cmd = build_command(WorkerConfig(model="org/model"), "/py")
    assert cmd == ["/py", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model",
                   "--served-model-name", "org/model", "--host", "127.0.0.1", "--port", "8000",
                   "--dtype", "auto"]


def test_full_command_keeps_extra_args_last_and_verbatim() -> None:
    cfg = WorkerConfig(model="/m", served_model_name="tiny-chat", host="0.0.0.0", port=9001,
                       dtype="float32", max_model_len=2048, kv_cache_memory_bytes=268435456,
                       max_num_seqs=1, enforce_eager=True, extra_args=("--seed", "0"))
    assert build_command(cfg, "py")[3:] == [
        "--model", "/m", "--served-model-name", "tiny-chat", "--host", "0.0.0.0", "--port", "9001",
        "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", "268435456",
        "--max-num-seqs", "1", "--enforce-eager", "--seed", "0"]


def test_env_isolates_caches_and_goes_offline_for_local_models(tmp_path: Path) -> None:
    base = {"HOME": "/home/u", "PATH": "/bin", "PYTHONPATH": "/checkout", "TMPDIR": "/tmp"}
    env = build_env(WorkerConfig(model="/m"), tmp_path, base, model_is_local=True)
    assert env["PATH"] == "/bin" and "PYTHONPATH" not in env
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["XDG_CACHE_HOME"] == str(tmp_path / "xdg")
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert env["HF_HOME"] == "/home/u/.cache/huggingface"  # the hub cache stays where it was
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == "1"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"


def test_env_online_for_hub_models_and_operator_values_win(tmp_path: Path) -> None:
    base = {"HOME": "/h", "VLLM_HOST_IP": "10.0.0.5", "HF_HOME": "/models"}
    cfg = WorkerConfig(model="org/m", env={"VLLM_CPU_OMP_THREADS_BIND": "0"})
    env = build_env(cfg, tmp_path, base, model_is_local=False)
    assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env
    assert env["VLLM_HOST_IP"] == "10.0.0.5" and env["HF_HOME"] == "/models"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    forced = build_env(WorkerConfig(model="/m", offline=False), tmp_path, base, model_is_local=True)
    assert "HF_HUB_OFFLINE" not in forced


def test_backoff_doubles_then_caps() -> None:
    policy = Backoff(initial_s=1, factor=2, max_s=10)
    assert [backoff_delay(n, policy) for n in range(0, 7)] == [0, 1, 2, 4, 8, 10, 10]
    assert backoff_delay(10_000, policy) == 10


def test_backoff_jitter_stays_within_upper_half() -> None:
    policy, rng = Backoff(initial_s=4, factor=2, max_s=60), random.Random(7)
    delays = [backoff_delay(2, policy, rng) for _ in range(200)]
    assert all(4 <= d <= 8 for d in delays) and len(set(delays)) > 100


def test_failures_reset_after_a_stable_run() -> None:
    policy = Backoff(stable_after_s=60)
    assert consecutive_failures(0, None, policy) == 1
    assert consecutive_failures(3, None, policy) == 4  # never became ready
    assert consecutive_failures(3, 5.0, policy) == 4  # died soon after ready
    assert consecutive_failures(3, 600.0, policy) == 1


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-chat"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny-chat"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny-chat"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-chat",reason="capacity"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-chat"} 0.5
"""


def test_in_flight_sums_running_and_waiting_over_engines() -> None:
    assert requests_in_flight(METRICS) == 6.0


def test_in_flight_unknown_when_absent() -> None:
    assert requests_in_flight("") is None
    assert requests_in_flight('vllm:kv_cache_usage_perc{engine="0"} 0.1\n') is None
    assert requests_in_flight("vllm:num_requests_running 0\n") == 0.0

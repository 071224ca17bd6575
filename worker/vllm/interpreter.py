"""Where the Python that has vLLM (and torch) installed lives.

On CPU-only machines vLLM lives in its own virtual environment built by ``make vllm-cpu``
(``scripts/vllm_cpu_env.sh``), cached outside the clone and keyed by version; keep the versions
below in step with that script."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
ENV_VAR = "INFERCDN_VLLM_PYTHON"
COMPLETE_MARKER = ".infercdn-complete"


class VllmPythonNotFound(RuntimeError):
    """No interpreter with vLLM was named and the cached CPU venv is absent or incomplete."""


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    root = environ.get("INFERCDN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "infercdn"


def cached_venv(environ: Mapping[str, str] = os.environ) -> Path:
    return cache_root(environ) / f"vllm-cpu-{VLLM_CPU_VERSION}-torch-{TORCH_VERSION}"


def find_vllm_python(environ: Mapping[str, str] = os.environ) -> Path:
    """``$INFERCDN_VLLM_PYTHON`` if set, else the complete cached CPU venv's python."""
    named = environ.get(ENV_VAR)
    if named:
        path = Path(named)
        if not os.access(path, os.X_OK):
            raise VllmPythonNotFound(f"{ENV_VAR}={named} is not an executable file")
        return path
    venv = cached_venv(environ)
    python = venv / "bin" / "python"
    if (venv / COMPLETE_MARKER).is_file() and os.access(python, os.X_OK):
        return python
    raise VllmPythonNotFound(
        f"no Python with vLLM found: set {ENV_VAR} to one, or run `make vllm-cpu` "
        f"to build the CPU venv in {venv}"
    )

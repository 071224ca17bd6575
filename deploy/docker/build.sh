#!/usr/bin/env bash
# Build the gateway and simulator images (`make image`):
#
#     bash deploy/docker/build.sh [--base IMAGE] [--tag TAG]     # TAG default: latest
#
# -> infercdn-gateway:TAG and infercdn-sim:TAG.  The project and its dependencies are built into
# wheels on this host (`pip wheel` of $PYTHON, default .venv/bin/python or python3.11: it must be
# 3.11 like the images) and installed in the image with `--no-index`.  Dependency wheels are cached
# under $INFERCDN_CACHE/docker-wheels keyed by a hash of pyproject.toml; the project's own wheel
# is rebuilt each time.  BASE defaults to python:3.11-slim (the Dockerfile's default);
# deploy/docker/make-base.sh makes a local one where no registry is reachable.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="" tag="latest"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (use --base IMAGE, --tag TAG)" >&2; exit 2 ;;
  esac
done
# the project's venv has pip (Debian's python3.11 may not); else python3.11 from PATH
[ -n "${PYTHON:-}" ] || { [ -x "$root/.venv/bin/python" ] && PYTHON="$root/.venv/bin/python" || PYTHON=python3.11; }
command -v "$PYTHON" >/dev/null || { echo "build.sh: need $PYTHON on PATH (set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "build.sh: $PYTHON is not Python 3.11 (the images run 3.11; the wheels must match)" >&2; exit 1; }

cache="${INFERCDN_CACHE:-$HOME/.cache/infercdn}/docker-wheels"
deps_key=$(cat "$root/pyproject.toml" | sha256sum | cut -c1-12)
deps="$cache/deps-$deps_key"
ctx=$(mktemp -d "${TMPDIR:-/tmp}/infercdn-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

if [ ! -f "$deps/.complete" ]; then
  echo "build.sh: building dependency wheels into $deps ..." >&2
  rm -rf "$deps" && mkdir -p "$deps"
  "$PYTHON" -m pip wheel -q --wheel-dir "$deps" "$root" >&2
  # redis needs async-timeout below Python 3.11.3 (Debian bookworm has 3.11.2): a marker this
  # host's newer 3.11 skips, so fetch it explicitly
  "$PYTHON" -m pip wheel -q --wheel-dir "$deps" "async-timeout>=4.0.3" >&2
  rm -f "$deps"/infercdn-*.whl
  touch "$deps/.complete"
fi
mkdir -p "$ctx/wheels/deps" "$ctx/wheels/project"
cp "$deps"/*.whl "$ctx/wheels/deps/"
# the project's own wheel, from a copy of the sources (no build/ or egg-info left in the clone)
src="$ctx/src" && mkdir -p "$src"
(cd "$root" && cp -r pyproject.toml README.md infercdn gateway routing worker loadtest "$src/")
find "$src" -name __pycache__ -prune -exec rm -rf {} +
# fixed timestamps: the same sources give the same wheel, and the image build reuses its layer
export SOURCE_DATE_EPOCH=315532800
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$ctx/wheels/project" "$src" >&2
rm -rf "$src"
cp "$here/Dockerfile" "$here/healthcheck.py" "$here/gateway.yaml" "$ctx/"
# the compiled core (infercdn/core.py) where this tree has a fresh build: the images' Python (3.11 on
# Debian, as here) loads the same extensions; without one (an empty folder) they run it as Python
mkdir -p "$ctx/core"
if (cd "$root" && "$PYTHON" -m infercdn.cli core status >/dev/null 2>&1); then
  cp -r "$root/build/core/." "$ctx/core/"
else
  echo "build.sh: no fresh compiled core in $root/build/core (make install builds it): the images run the core as Python" >&2
fi

# BuildKit needs the buildx plugin with a recent client; the classic builder does the same here.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
args=(--network host)
[ -n "$base" ] && args+=(--build-arg "BASE=$base")
for target in gateway sim; do
  echo "build.sh: infercdn-$target:$tag${base:+ (base $base)}" >&2
  docker build -q "${args[@]}" --target "$target" -t "infercdn-$target:$tag" "$ctx" >&2
done
# the images a rebuild replaced (untagged now): only ours, only dangling ones
docker image prune -f --filter label=io.infercdn.image=1 >/dev/null
echo "infercdn-gateway:$tag infercdn-sim:$tag"

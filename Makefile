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

test-swift:
	@if [ -d swift ] && command -v swift >/dev/null; then \
	  .venv/bin/python scripts/make_swift_fixtures.py && cd swift && swift test; \
	else echo "swift: toolchain or package not present, skipped"; fi

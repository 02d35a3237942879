# Everything a fresh machine needs, then the job. `make demo` and `make test` each do all set-up.
#
# The virtual environment is exactly requirements.lock (every package pinned, with hashes) plus tunesmith
# itself, installed by uv at the version the lock pins. `make lock` re-resolves after a change to
# pyproject.toml's dependencies (keeping today's pins where they still fit); `make upgrade` moves every
# package to the newest version allowed, runs the suite, and keeps the new lock only when it is green.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
STAMP  := $(VENV)/.tunesmith-installed
EXAMPLE := examples/support-tickets/tunesmith.yaml
# Where the CPU build of torch that the lock pins lies (constraints.txt); any folder or URL of wheels.
TORCH_WHEELS ?= /opt/wheels
export TORCH_WHEELS

.PHONY: setup demo test pytest lint check lock upgrade clean llama-server

$(STAMP): $(LOCK) pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "$(LOCK) is resolved for Python 3.11 (the CPU torch wheel is cp311); run with PYTHON=python3.11"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip only bootstraps uv, from the lock's own pin and hashes; uv then installs the whole lock.
	awk '/^uv==/{p=1; print; next} p && /^[^ ]/{p=0} p' $(LOCK) > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r $(VENV)/uv-requirement.txt
	# --compile-bytecode: the .pyc files are written once here. A machine with PYTHONDONTWRITEBYTECODE set (this
	# project's, for one) never writes them, and every process compiled torch's and transformers' sources
	# again on import: about 11 s of each `tunesmith` command and of each process the tests start.
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python --require-hashes --find-links $(TORCH_WHEELS) $(LOCK)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/tunesmith model prepare builtin:smollm2-135m-instruct

demo: setup
	$(BIN)/tunesmith run $(EXAMPLE)

test: setup pytest

# One pytest worker per core (pytest-xdist); worksteal hands a finished worker the queue of a busy one, so
# no long end-to-end test is left to run alone at the end. TEST_JOBS=0 runs everything in this process.
TEST_JOBS ?= auto
PYTEST_FLAGS ?=
pytest:
	$(BIN)/python -m compileall -q src  # tunesmith's own .pyc, refreshed (editable install: see $(STAMP))
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist worksteal --durations=10 $(PYTEST_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts
	$(BIN)/mypy src benchmarks

check: lint test

lock: $(STAMP)
	scripts/lock

upgrade: setup
	scripts/upgrade

# llama.cpp's server, built from pinned source into $$TUNESMITH_HOME/llama.cpp/: the GGUF export's chat-path
# check and the serving benchmark's peer use it (CI builds it; elsewhere the check is skipped without it).
llama-server:
	scripts/build-llama-server

clean:
	rm -rf $(VENV) runs

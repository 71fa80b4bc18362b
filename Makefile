# The targets the README and CI call. Everything installs into .venv, from scratch if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# iproute2 ships an unrelated /usr/sbin/bridge: always call the virtualenv's.
BRIDGE := $(BIN)/bridge
PYTEST_ARGS ?=
# Most tests wait on processes and sleeps, not CPU: run modules in parallel (a module stays on one worker,
# so its shared stack is started once).
PARALLEL ?= -n 4 --dist loadfile

.PHONY: install demo test chaos unit integration lint typecheck bench emulator clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install ## Run the main job: the demo on the local Data Pipeline service
	$(BIN)/python examples/demo.py

test: install lint typecheck ## Lint, type-check, unit and integration tests (< 10 minutes)
	$(BIN)/pytest tests/unit tests/integration $(PARALLEL) $(PYTEST_ARGS)

CHAOS_PARALLEL ?= -n 2 --dist loadfile

chaos: install ## The chaos suite: crashes, restarts and faults in real multi-process runs (< 20 minutes)
	$(BIN)/pytest tests/chaos $(CHAOS_PARALLEL) $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/pytest tests/integration $(PARALLEL) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check bridge workers emulator tests bench examples
	$(BIN)/ruff format --check bridge workers emulator tests bench examples

typecheck: install
	$(BIN)/mypy

BENCH_ARGS ?=

bench: install ## Benchmarks: issue 8's five scenarios, then the service's round trips (never part of make test)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/emulator_roundtrip.py

emulator: install ## Run the local Data Pipeline service on 127.0.0.1:8999
	$(BRIDGE) emulator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

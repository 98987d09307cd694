# Two entry points on a fresh machine: `make run` (the daemon on desired-state/) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run apply plan status down test schemas clean

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The reconciler alone: what `make run` needs.
$(VENV)/.installed: pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet -e .
	touch $@

# Plus the test tools and the `llama` extra, which the engine tests run for real:
# llama-cpp-python builds from source once (~15 min on 2 cores), then pip's cache serves it.
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,llama]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/reconciler run desired-state

apply: $(VENV)/.installed
	$(BIN)/reconciler apply --wait desired-state

plan: $(VENV)/.installed
	$(BIN)/reconciler plan desired-state; test $$? -ne 1

status: $(VENV)/.installed
	$(BIN)/reconciler status desired-state

down: $(VENV)/.installed
	$(BIN)/reconciler down desired-state

test: $(VENV)/.installed-test
	$(BIN)/pytest

schemas: $(VENV)/.installed
	$(BIN)/reconciler schemas

clean:
	rm -rf $(VENV) build *.egg-info

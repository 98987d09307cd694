# Two entry points on a fresh machine: `make run` (the daemon on desired-state/) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run apply plan status down test schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,llama]'  # llama-cpp-python builds from source once (~15 min), then pip's cache serves it
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/reconciler run desired-state

apply: $(STAMP)
	$(BIN)/reconciler apply --wait desired-state

plan: $(STAMP)
	$(BIN)/reconciler plan desired-state; test $$? -ne 1

status: $(STAMP)
	$(BIN)/reconciler status desired-state

down: $(STAMP)
	$(BIN)/reconciler down desired-state

test: $(STAMP)
	$(BIN)/pytest

schemas: $(STAMP)
	$(BIN)/reconciler schemas

clean:
	rm -rf $(VENV) build *.egg-info

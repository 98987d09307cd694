# Two entry points on a fresh machine: `make run` (the daemon on desired-state/) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run apply plan status down test faults bench schemas docs clean

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

# The Debian packages the suite runs for real (docker.io, busybox-static, git, openssh-client, faketime) are
# installed when missing: as root, else through sudo (.ci/debian-packages).
test: $(VENV)/.installed-test
	.ci/debian-packages
	$(BIN)/pytest

# The fault suite at full counts (50 daemon kills, a 60 s freeze, 500 specs, 10,000 fuzzed documents per
# fuzz test); `make test` runs it shorter. Prints the table and writes it to faults-report.md.
faults: $(VENV)/.installed-test
	RECONCILER_FAULTS=long RECONCILER_FUZZ_EXAMPLES=10000 RECONCILER_FAULTS_REPORT=faults-report.md \
		$(BIN)/pytest -q -p no:cacheprovider tests/faults tests/test_fuzz.py tests/test_gate_properties.py tests/test_gguf_header.py

# Side by side with supervisord and docker-compose (Debian's docker.io, busybox-static and docker-compose
# must be installed; the container scenarios start a private dockerd). Writes bench/results.{json,md}.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,llama,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run $(BENCH_ARGS)

schemas: $(VENV)/.installed
	$(BIN)/reconciler schemas

# The documentation site (mkdocs.yml: strict, a broken link is an error) on http://127.0.0.1:8000, rebuilt on each save.
$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) build *.egg-info

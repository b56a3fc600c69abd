# Two entry points: `make run` (the quickstart) and `make test`. Both create .venv when absent and
# install what they need; the stamp makes a second run skip the install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test test-all lint results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.quickstart

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything, including the tests marked slow and notebook (what CI runs after `make test`).
# pytest exits 5 when the tier selects no test: not a failure.
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or notebook" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] || exit $$rc

# Re-measure the README's results tables (benchmarks + quickstart, about an hour on two cores)
# and rewrite them in README.md from results/*.json; RESULTS_ARGS="--only quickstart" for one.
RESULTS_ARGS ?=
results: $(STAMP)
	$(PY) -m experiments.results $(RESULTS_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check zorro_jax pallas_kernels experiments tests

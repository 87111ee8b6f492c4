# Everything a fresh machine needs: `make test` creates .venv, installs torch
# first (CPU build by default, override with TORCH_SPEC), then the project.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser test test-fast bench-quick clean

# The monitor's browser tests drive the system Chromium through Playwright
# (never `playwright install`: it downloads its own browsers).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(STAMP)

browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Two pytest workers: most tests wait on real torchrun jobs; the monitor's tests share one
# session run on one worker (xdist_group "monitor", --dist loadgroup), and each module with a
# costly module-scoped fixture runs on one worker (its own xdist_group).
PYTEST_ARGS ?= -n 2 --dist loadgroup

test: setup browser
	$(VENV)/bin/torchrt doctor
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench-quick: setup
	$(PY) benchmarks/rendezvous.py --quick --json benchmarks/results-quick.json

clean:
	rm -rf $(VENV) torchrt_runs .pytest_cache

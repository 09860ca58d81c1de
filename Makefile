# rlguard: `sudo make run` and `sudo make test` set up a fresh Debian/Ubuntu
# host (scripts/setup.sh, idempotent and quick when already done) and go.

VENV        := .venv
PY          := $(VENV)/bin/python
ARGS        ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

# Targets that install packages, mount filesystems or load eBPF programs.
ROOT_GOALS := setup setup-test run test demo bench
ifneq ($(filter $(ROOT_GOALS),$(MAKECMDGOALS)),)
ifneq ($(shell id -u),0)
$(error 'make $(MAKECMDGOALS)' needs root (it installs packages and loads eBPF programs): run 'sudo make $(MAKECMDGOALS)')
endif
endif

.DEFAULT_GOAL := help
.PHONY: help setup setup-test run test test-unit lint check clean demo bench

help:
	@echo "sudo make run    set up this host, then run the monitor (ARGS='...' passes options)"
	@echo "sudo make test   set up this host with test tools, then run the test suite (PYTEST_ARGS='...')"
	@echo "sudo make demo   stage the incident (reverse SSH tunnel + miner) in a namespace and watch rlguard catch it"
	@echo "sudo make bench  bare / rlguard / bpftrace side by side (BENCH_ARGS='--quick --rounds 1')"
	@echo "                 the fleet ledger on PostgreSQL: BENCH_ARGS='--fleet-only' (or --fleet)"
	@echo "make test-unit   unit tests only (no root once the venv exists)"
	@echo "make lint        ruff and mypy"
	@echo "make check       rlguard check: can this host run the monitor?"
	@echo "make setup       set up only (setup-test: with test tools)"
	@echo "make clean       remove the venv and build outputs"

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

run: setup
	$(VENV)/bin/rlguard run $(ARGS)

test: setup-test
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup-test
	$(VENV)/bin/rlguard demo

bench: setup-test
	$(PY) bench/run.py $(BENCH_ARGS)

# These only need the venv; make it (as root) when it is missing.
$(PY):
	scripts/setup.sh

test-unit: | $(PY)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: | $(PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy monitor

check: | $(PY)
	$(VENV)/bin/rlguard check

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache \
		bench/out tests/helpers/build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

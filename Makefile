# Librorum developer entry points. Every target creates .venv on first use, so a fresh machine
# with only Python 3.11 needs nothing else: `make run`, `make test`.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Reinstall whenever the project metadata changes.
STAMP  := $(VENV)/.installed
EXTRAS := test,lint,fuzz
FUZZ_SECONDS ?= 30
FUZZ_LONG_SECONDS ?= 1800

.PHONY: help venv install run test test-fast coverage coverage-html lint fmt type fuzz fuzz-smoke check bench bench-quick bench-protocol bench-store clean

help:
	@echo "make run            start the daemon (creates .venv and installs on first use)"
	@echo "make test           lint + type check + the whole test suite under coverage + a fuzz smoke run"
	@echo "make coverage       the test suite alone, with its coverage report (fails below 90 %)"
	@echo "make coverage-html  the coverage report as HTML, in htmlcov/"
	@echo "make test-fast      protocol tests only, few Hypothesis examples"
	@echo "make lint | fmt | type | fuzz | check | bench-protocol | bench-store | clean"
	@echo "make bench          side-by-side benchmark vs gRPC and the limits (bench-quick: ~2 min)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv install: $(STAMP)

run: $(STAMP)
	$(BIN)/librorum serve $(ARGS)

# Every check runs even when one fails, so that one run shows all there is to fix.
# lint-imports checks the layer contracts in pyproject.toml ([tool.importlinter]); --no-cache
# because the graph takes under a second to build and a cache is one more thing to keep out of
# git.
lint: $(STAMP)
	@rc=0; \
	$(BIN)/ruff check librorum tests fuzz bench || rc=1; \
	$(BIN)/ruff format --check librorum tests fuzz bench || rc=1; \
	$(BIN)/lint-imports --no-cache || rc=1; \
	$(PY) scripts/unasync.py --check || rc=1; \
	exit $$rc

fmt: $(STAMP)
	$(BIN)/ruff check --fix librorum tests fuzz bench
	$(BIN)/ruff format librorum tests fuzz bench

type: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
define PYTEST
	$(BIN)/pytest $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc
endef

# The suite under coverage.py, subprocesses included (the CLI and daemon tests run real
# processes; see [tool.coverage] in pyproject.toml): each process writes a .coverage.* file and
# `coverage combine` merges them into .coverage, also when a test failed.
define COVERED_PYTEST
	$(BIN)/coverage erase; \
	HYPOTHESIS_PROFILE=ci $(BIN)/coverage run -m pytest $(1); rc=$$?; \
	$(BIN)/coverage combine --quiet || rc=1; \
	exit $$rc
endef

test: $(STAMP) lint type coverage
	$(MAKE) --no-print-directory fuzz-smoke

# Branch coverage of librorum/ over every process; fails below fail_under (pyproject.toml).
coverage: $(STAMP)
	$(call COVERED_PYTEST,-q)
	$(BIN)/coverage report

# From the data of the last `make test` or `make coverage`; without any, runs the suite first.
coverage-html: $(STAMP)
	@if [ ! -f .coverage ]; then ( $(call COVERED_PYTEST,-q) ) || true; fi
	$(BIN)/coverage html --fail-under=0
	@echo "open htmlcov/index.html"

test-fast: $(STAMP)
	HYPOTHESIS_PROFILE=fast $(call PYTEST,-q tests/protocol)

fuzz-smoke: $(STAMP)
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

fuzz: $(STAMP)
	$(PY) fuzz/run.py --seconds $(FUZZ_LONG_SECONDS)

check: lint type test

bench-protocol: $(STAMP)
	$(PY) -m bench.protocol

bench-store: $(STAMP)
	$(PY) -m bench.store $(ARGS)

# The side-by-side benchmark needs the bench extra (grpcio, matplotlib) on top of the others.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),bench]"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench

bench-quick: $(BENCH_STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.* htmlcov

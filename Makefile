# dbmail: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# sam build for python3.12 needs python3.12 first on PATH: the virtualenv provides it.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup up down demo test unit conformance integration integration-stack handlers lint build coverage bench chaos clean

setup:
	@./scripts/setup.sh

up: setup
	$(BIN)/python -m dbmail_local up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m dbmail_local down; fi

demo: setup
	$(BIN)/python -m dbmail_local demo

# Fast checks first: lint, then unit, handler and integration tests, then the build. Coverage of
# dbmail/ (branches) accumulates over the three test runs and is reported, and held at 90%, last.
# The unit tests run on every core (pytest-xdist); the integration tests share one local stack each, in order.
# The small fault campaign runs on its own stack beside the unit and handler tests: it mostly waits
# (the sends a SIGKILL cut short come back after the queue's 180 s visibility timeout), and it is
# over before the timed integration tests start.
COV := --cov=dbmail --cov-branch --cov-report=
CHAOS_LOG := build/chaos.log

test: setup lint
	@mkdir -p build; $(BIN)/pytest -q -s -p no:cacheprovider tests/integration/test_chaos.py > $(CHAOS_LOG) 2>&1 & chaos=$$!; \
	status=0; $(MAKE) --no-print-directory unit handlers || status=$$?; \
	wait $$chaos || status=1; echo "--- the fault campaign (tests/integration/test_chaos.py):"; cat $(CHAOS_LOG); \
	exit $$status
	@$(MAKE) --no-print-directory integration-stack build coverage

unit:
	$(BIN)/pytest -q -n auto --durations=10 tests/unit $(COV)

# Part of unit: each template of tests/corpus/django/ against Django's own engine ("N/N templates match Django").
conformance:
	$(BIN)/pytest -q tests/unit/test_django_conformance.py

handlers:
	$(BIN)/pytest -q -n auto tests/handlers $(COV) --cov-append

integration: integration-stack
	$(BIN)/pytest -q -s tests/integration/test_chaos.py

# The integration tests but the fault campaign.
integration-stack:
	$(BIN)/pytest -q tests/integration --ignore=tests/integration/test_chaos.py $(COV) --cov-append

coverage:
	@echo "branch coverage of dbmail/ over the unit, handler and integration tests:"
	$(BIN)/coverage report --fail-under=90

# The fault campaign at full size (see tests/integration/test_chaos.py); DBMAIL_CHAOS_SEED replays a run.
chaos: setup
	DBMAIL_CHAOS_RECIPIENTS=$${DBMAIL_CHAOS_RECIPIENTS:-20000} DBMAIL_CHAOS_KILLS=$${DBMAIL_CHAOS_KILLS:-4} \
		$(BIN)/pytest -q -s tests/integration/test_chaos.py

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/sam validate --lint --template template.yaml
	$(BIN)/cfn-lint template.yaml

build:
	$(BIN)/sam build --template template.yaml --build-dir .aws-sam/build

# dbmail against the floor (bare SES, bare writes, the bare stream, Django's per-recipient path) in
# one run on one local stack; prints the ratios against issue 11's targets and writes
# docs/performance.md (BENCH_SIZES, BENCH_REPEATS, BENCH_STRICT=1, BENCH_DOCS=0: see bench/__main__.py).
bench: setup
	$(BIN)/python -m bench

clean: down
	rm -rf .aws-sam .local

# dbmail: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# sam build for python3.12 needs python3.12 first on PATH: the virtualenv provides it.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup up down demo test unit integration handlers lint build bench clean

setup:
	@./scripts/setup.sh

up: setup
	$(BIN)/python -m dbmail_local up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m dbmail_local down; fi

demo: setup
	$(BIN)/python -m dbmail_local demo

test: setup unit handlers integration lint build

unit:
	$(BIN)/pytest -q tests/unit

handlers:
	$(BIN)/pytest -q tests/handlers

integration:
	$(BIN)/pytest -q tests/integration

lint:
	$(BIN)/sam validate --lint --template template.yaml
	$(BIN)/cfn-lint template.yaml

build:
	$(BIN)/sam build --template template.yaml --build-dir .aws-sam/build

bench: setup
	$(BIN)/python -m bench

clean: down
	rm -rf .aws-sam .local

# Conveyor: two commands from a fresh clone, `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv run stop status test test-services test-all bench lint clean

help:
	@echo "make run            start the local fleet and Airflow (http://localhost:8080)"
	@echo "make stop           stop everything 'make run' started"
	@echo "make test           run the test suite (no external services needed)"
	@echo "make test-services  tests that need PostgreSQL/Redis on 127.0.0.1"
	@echo "make bench          benchmarks under bench/"
	@echo "make lint           ruff"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: venv
	@bash scripts/run.sh

stop:
	@bash scripts/stop.sh

status: venv
	@. scripts/env.sh && $(BIN)/conveyor fleet status

test: venv
	$(BIN)/python -m pytest -m "not services" $(PYTEST_ARGS)

test-services: venv
	$(BIN)/python -m pytest -m services $(PYTEST_ARGS)

test-all: test test-services

bench: venv
	$(BIN)/python bench/canary.py
	$(BIN)/python bench/deploy.py

lint: venv
	$(BIN)/ruff check plugins dags tests bench include

clean: stop
	rm -rf .airflow .conveyor

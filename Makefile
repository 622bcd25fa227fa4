# Conveyor: two commands from a fresh clone, `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv run run-celery stop status test test-services unleash test-all faults bench lint clean compose-env

help:
	@echo "make run            start the local fleet and Airflow (http://localhost:8080)"
	@echo "make run-celery     the same on CeleryExecutor, PostgreSQL and Redis (127.0.0.1:5432, :6379)"
	@echo "make stop           stop everything 'make run' or 'make run-celery' started"
	@echo "make test           run the test suite (no external services needed)"
	@echo "make test-services  tests that need PostgreSQL/Redis on 127.0.0.1 (and Unleash, installed by make unleash)"
	@echo "make faults         the fault-injection suite (last line: faults_held=N/M)"
	@echo "make bench          benchmarks under bench/"
	@echo "make lint           ruff"
	@echo "make compose-env    random secrets for docker-compose.yaml in .env (kept if already there)"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: venv
	@bash scripts/run.sh

run-celery: venv
	@CONVEYOR_EXECUTOR=celery bash scripts/run.sh

stop:
	@bash scripts/stop.sh

status: venv
	@. scripts/env.sh && $(BIN)/conveyor fleet status

# Test files run in parallel (pytest-xdist, one file per worker at a time: a module's platform and fixtures
# stay in one process). End-to-end tests mostly wait on windows and hosts, so 2 workers halve the wall time
# even on 2 cores. PYTEST_WORKERS=0 runs in this process (for a debugger or -x).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

test: venv
	$(BIN)/python -m pytest $(XDIST) -m "not services and not faults" $(PYTEST_ARGS)

# Unleash (feature flags) for the services tests: the npm package in a cache dir, run by node there.
UNLEASH_VERSION := 8.2.0
UNLEASH_DIR := .cache/unleash
UNLEASH_STAMP := $(UNLEASH_DIR)/.installed-$(UNLEASH_VERSION)

unleash: $(UNLEASH_STAMP)

$(UNLEASH_STAMP):
	npm install --prefix $(UNLEASH_DIR) --no-audit --no-fund --loglevel=error unleash-server@$(UNLEASH_VERSION)
	touch $(UNLEASH_STAMP)

test-services: venv unleash
	$(BIN)/python -m pytest $(XDIST) -m "services and not faults" $(PYTEST_ARGS)

faults: venv
	$(BIN)/python -m pytest $(XDIST) -m faults tests/faults $(PYTEST_ARGS)

test-all: test test-services

bench: venv
	$(BIN)/python bench/canary.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/rollout.py

lint: venv
	$(BIN)/ruff check plugins dags tests bench include

clean: stop
	rm -rf .airflow .conveyor

# The secrets docker-compose.yaml needs, as random values in $(ENV_FILE) (mode 0600). A value already
# in the file is kept (a new Fernet key or database password would lock out the existing data).
ENV_FILE ?= .env
define COMPOSE_ENV_PY
import base64, os, secrets, sys
path = sys.argv[1]
wanted = {
    "AIRFLOW_UID": str(os.getuid()),
    "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48),
    "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
    "CONVEYOR_API_PASSWORD": secrets.token_urlsafe(24),
}
lines = open(path).read().splitlines() if os.path.exists(path) else []
seen, added = set(), []
for i, line in enumerate(lines):
    key, sep, value = line.partition("=")
    if sep and key in wanted and key not in seen:
        seen.add(key)
        if value.strip().strip("\"'") == "":
            lines[i] = f"{key}={wanted[key]}"
            added.append(key)
for key in [k for k in wanted if k not in seen]:
    lines.append(f"{key}={wanted[key]}")
    added.append(key)
tmp = f"{path}.tmp"
with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write("".join(line + "\n" for line in lines))
os.chmod(tmp, 0o600)
os.replace(tmp, path)
print(f"{path}: set {', '.join(sorted(added))}" if added else f"{path}: every secret is already set; nothing changed")
endef
export COMPOSE_ENV_PY

compose-env:
	@$(PYTHON) -c "$$COMPOSE_ENV_PY" "$(ENV_FILE)"

